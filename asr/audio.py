"""Audio input: files or bytes in, mono float32 samples at 16 kHz out.

Containers (WAV, FLAC, OGG and anything else libsndfile reads) are decoded by soundfile; headerless
LINEAR16 and 8-bit G.711 mu-law need their sample rate (and channel count) from the caller. Every failure
raises `AudioError` with a message that says what was wrong.
"""

from __future__ import annotations

import io
import os
import re
from enum import StrEnum

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000  # the rate every later stage works at
MIN_RATE = 8000  # lowest input rate accepted (telephone band)
MAX_RATE = 48000  # highest input rate accepted


class AudioError(ValueError):
    """Input audio that cannot be decoded, with the reason in the message."""


class Encoding(StrEnum):
    """How input bytes are laid out."""

    AUTO = "AUTO"  # a container read from its header: WAV, FLAC, OGG, ...
    LINEAR16 = "LINEAR16"  # headerless signed 16-bit little-endian PCM
    MULAW = "MULAW"  # headerless 8-bit G.711 mu-law
    FLAC = "FLAC"  # FLAC container (the header says the rate)
    WAV = "WAV"
    OGG = "OGG"


RAW_SUBTYPES = {
    Encoding.LINEAR16: ("PCM_16", 2),
    Encoding.MULAW: ("ULAW", 1),
}  # soundfile subtype, bytes/sample


def check_rate(sample_rate: int) -> None:
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {sample_rate} Hz: expected {MIN_RATE} to {MAX_RATE} Hz")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32, channels averaged."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation) of mono float32 samples."""
    check_rate(sample_rate)
    if sample_rate == target or samples.size == 0:
        return samples
    return AF.resample(torch.from_numpy(samples), sample_rate, target).numpy()


def parse_encoding(encoding: Encoding | str) -> Encoding:
    """An Encoding from its name (any case); AudioError naming the known ones otherwise."""
    try:
        return Encoding(encoding.upper() if isinstance(encoding, str) else encoding)
    except ValueError:
        names = ", ".join(e.value for e in Encoding)
        raise AudioError(f"unknown encoding {encoding!r}: expected one of {names}") from None


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> LINEAR16 bytes (16-bit sources come back exactly as they were)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def decode_raw(data: bytes, encoding: Encoding, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Headerless LINEAR16 or MULAW bytes -> (frames, channels) float32 at `sample_rate`."""
    subtype, width = RAW_SUBTYPES[encoding]
    check_rate(sample_rate)
    if channels < 1:
        raise AudioError(f"audio_channel_count must be at least 1, got {channels}")
    frame = width * channels
    if len(data) % frame:
        raise AudioError(
            f"expected {encoding.value} at {sample_rate} Hz, got {len(data)} bytes "
            f"(not a multiple of {frame} bytes per frame for {channels} channel(s))"
        )
    if encoding is Encoding.LINEAR16:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        samples, _ = sf.read(
            io.BytesIO(data),
            format="RAW",
            subtype=subtype,
            samplerate=sample_rate,
            channels=channels,
            dtype="float32",
            always_2d=True,
        )
    return samples.reshape(-1, channels)


def decode_container(data: bytes, what: str = "audio") -> tuple[np.ndarray, int]:
    """Bytes of a WAV/FLAC/OGG/... file -> ((frames, channels) float32, sample rate)."""
    if not data:
        raise AudioError(f"{what} is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(err)).replace("Error : ", "")
        raise AudioError(f"cannot decode {what}: {reason}") from None
    return samples, rate


def decode(
    data: bytes,
    encoding: Encoding | str = Encoding.AUTO,
    sample_rate: int | None = None,
    channels: int = 1,
) -> np.ndarray:
    """Decode bytes into mono float32 at 16 kHz.

    `sample_rate` is required for LINEAR16 and MULAW; for containers, when given, it must match the header.
    """
    encoding = parse_encoding(encoding)
    if encoding in RAW_SUBTYPES:
        if not sample_rate:
            raise AudioError(f"{encoding.value} audio needs a sample rate")
        if not data:
            raise AudioError(f"expected {encoding.value} at {sample_rate} Hz, got 0 bytes")
        samples, rate = decode_raw(data, encoding, sample_rate, channels), sample_rate
    else:
        what = "audio" if encoding is Encoding.AUTO else f"{encoding.value} audio"
        samples, rate = decode_container(data, what)
        if sample_rate and rate != sample_rate:
            raise AudioError(f"sample rate {sample_rate} Hz was given but the header says {rate} Hz")
    if samples.shape[0] == 0:
        raise AudioError("audio holds no samples")
    check_rate(rate)
    return resample(to_mono(samples), rate)


def load(
    path: str | os.PathLike,
    encoding: Encoding | str = Encoding.AUTO,
    sample_rate: int | None = None,
    channels: int = 1,
) -> np.ndarray:
    """Read a file and decode it like `decode`; a missing or unreadable file is an AudioError too."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise AudioError(f"cannot read {path}: {err.strerror}") from None
    try:
        return decode(data, encoding, sample_rate, channels)
    except AudioError as err:
        raise AudioError(f"{path}: {err}") from None


def duration(path: str | os.PathLike) -> float:
    """Length of an audio file in seconds, from its header."""
    try:
        return sf.info(str(path)).duration
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"cannot read {path}: {err}") from None
