"""Incremental audio decoding: bytes that arrive in pieces in, mono float32 samples at 16 kHz out.

`StreamDecoder.feed(data)` returns the samples the new bytes complete (possibly none); `finish()` returns
the rest at the end of the stream. The output for any split of the bytes equals `asr.audio.decode` of all
of them (up to float rounding), so a stream recognised piece by piece sees the same audio as a file.

- Headerless LINEAR16 and MULAW are decoded as they arrive; bytes that split a sample (or a frame of
  interleaved channels) wait for the next piece.
- WAV: the RIFF header is parsed as soon as it is complete and the `data` chunk is then streamed like
  headerless audio (PCM 8/16/24/32-bit, IEEE float, mu-law). A data size of 0 or 0xFFFFFFFF (written by
  streaming encoders that do not know the length) means "until the end of the stream". Other WAV
  subformats (A-law, ADPCM, big-endian RIFX, RF64) are buffered and decoded at the end.
- FLAC and OGG are buffered and decoded when the stream ends: a truncated FLAC/OGG stream cannot be decoded
  reliably by libsndfile, so these containers give results only after the last byte. Send LINEAR16, MULAW
  or WAV for low-latency results.
- Rates other than 16 kHz are resampled on the stream by `StreamResampler`: torchaudio's sinc kernel
  (`torchaudio.transforms.Resample`, the same filter `asr.audio.resample` uses) applied block by block with
  the input it still needs carried over, so the output equals offline resampling of the whole signal, with
  a look-ahead of `width` input samples (6 zero crossings: under 1 ms).

Every failure raises `asr.audio.AudioError` with a message that says what was wrong.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from asr.audio import (
    RAW_SUBTYPES,
    SAMPLE_RATE,
    AudioError,
    Encoding,
    check_rate,
    decode,
    parse_encoding,
    to_mono,
)

MAGIC = {  # how each container's bytes begin
    Encoding.FLAC: (b"fLaC", b"ID3"),
    Encoding.OGG: (b"OggS",),
    Encoding.WAV: (b"RIFF", b"RIFX", b"RF64"),
}
WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data chunk sizes that mean "until the end of the stream"
WAV_MAX_HEADER = 1 << 20  # bytes of chunks before `data` we are willing to wait through

# G.711 mu-law byte -> float, exactly as libsndfile (and so asr.audio.decode) reads it
_ULAW_TABLE = sf.read(
    io.BytesIO(bytes(range(256))), format="RAW", subtype="ULAW", samplerate=8000, channels=1, dtype="float32"
)[0]


class StreamResampler:
    """Exact streaming twin of `asr.audio.resample` for one mono stream.

    torchaudio's resampler pads the signal with `width` zeros on the left and `width + orig` on the right
    and convolves with stride `orig` (rates divided by their gcd): output block i (of `new` samples) reads
    input samples [i*orig - width, (i+1)*orig + width). We keep the input from the next block's first
    sample onwards and emit every block whose input has arrived.
    """

    def __init__(self, orig_rate: int, new_rate: int = SAMPLE_RATE):
        check_rate(orig_rate)
        gcd = math.gcd(orig_rate, new_rate)
        self.orig, self.new = orig_rate // gcd, new_rate // gcd
        self.identity = orig_rate == new_rate
        self.kernel, self.width = torch.zeros(1, 1, 1), 0  # (new, 1, 2*width + orig), int
        if not self.identity:
            resampler = torchaudio.transforms.Resample(orig_rate, new_rate)  # as asr.audio.resample does
            self.kernel, self.width = resampler.kernel, resampler.width
        self._buf = torch.zeros(self.width)  # input from block `_block`'s left edge; starts with the padding
        self.samples_in = 0
        self.samples_out = 0

    def _blocks(self, buf: torch.Tensor) -> torch.Tensor:
        k = self.kernel.shape[-1]
        n = 0 if buf.numel() < k else (buf.numel() - k) // self.orig + 1
        if n == 0:
            self._buf = buf
            return torch.zeros(0)
        with torch.no_grad():
            out = F.conv1d(buf[None, None, : (n - 1) * self.orig + k], self.kernel, stride=self.orig)
        self._buf = buf[n * self.orig :].clone()
        return out[0].transpose(0, 1).reshape(-1)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 input samples -> the output samples they complete."""
        self.samples_in += samples.size
        if self.identity:
            self.samples_out += samples.size
            return samples
        if samples.size == 0:
            return np.zeros(0, np.float32)
        out = self._blocks(torch.cat([self._buf, torch.from_numpy(np.ascontiguousarray(samples))]))
        self.samples_out += out.numel()
        return out.numpy()

    def finish(self) -> np.ndarray:
        """End of input: the remaining output, cut to the length offline resampling gives."""
        if self.identity:
            return np.zeros(0, np.float32)
        total = math.ceil(self.new * self.samples_in / self.orig) if self.samples_in else 0
        out = self._blocks(torch.cat([self._buf, torch.zeros(self.width + self.orig)]))
        out = out[: max(0, total - self.samples_out)]
        self.samples_out += out.numel()
        self._buf = torch.zeros(0)
        return out.numpy()


def _pcm_reader(fmt: int, bits: int):
    """bytes (whole frames) -> float32 samples, for a WAV sample format; None when not streamable."""
    if fmt == 1 and bits == 16:
        return lambda b: np.frombuffer(b, "<i2").astype(np.float32) / 32768.0
    if fmt == 1 and bits == 8:
        return lambda b: (np.frombuffer(b, np.uint8).astype(np.float32) - 128.0) / 128.0
    if fmt == 1 and bits == 24:

        def read24(b: bytes) -> np.ndarray:
            u = np.frombuffer(b, np.uint8).reshape(-1, 3).astype(np.int32)
            v = u[:, 0] | (u[:, 1] << 8) | (u[:, 2] << 16)
            return (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)

        return read24
    if fmt == 1 and bits == 32:
        return lambda b: (np.frombuffer(b, "<i4") / float(1 << 31)).astype(np.float32)
    if fmt == 3 and bits == 32:
        return lambda b: np.frombuffer(b, "<f4").astype(np.float32)
    if fmt == 3 and bits == 64:
        return lambda b: np.frombuffer(b, "<f8").astype(np.float32)
    if fmt == 7 and bits == 8:
        return lambda b: _ULAW_TABLE[np.frombuffer(b, np.uint8)]
    return None


class StreamDecoder:
    """Decodes one stream of audio bytes arriving in pieces into mono float32 at 16 kHz.

    `encoding`, `sample_rate` and `channels` mean what they mean for `asr.audio.decode`. The constructor
    checks them (raising AudioError) so a bad configuration fails before any audio is sent.
    """

    def __init__(self, encoding: Encoding | str = Encoding.AUTO, sample_rate: int | None = None,
                 channels: int = 1):  # fmt: skip
        self.encoding = parse_encoding(encoding)
        self.sample_rate = sample_rate or None
        self.channels = channels
        if channels < 1:
            raise AudioError(f"audio_channel_count must be at least 1, got {channels}")
        if self.sample_rate is not None:
            check_rate(self.sample_rate)
        self.bytes_in = 0  # bytes fed so far
        self.finished = False
        self._pending = (
            bytearray()
        )  # raw bytes not yet decoded: a split frame, or a header / container buffer
        self._mode = "header"  # "raw": streaming frames; "buffer": decode everything at the end; "header"
        self._reader = None  # bytes -> float32 samples, in "raw" mode
        self._frame = 0  # bytes per frame, in "raw" mode
        self._left = None  # data-chunk bytes still expected (WAV), None for unbounded
        self._resampler: StreamResampler | None = None
        self.input_rate: int | None = None  # rate of the audio, once known
        if self.encoding in RAW_SUBTYPES:
            if not self.sample_rate:
                raise AudioError(f"{self.encoding.value} audio needs a sample rate")
            width = RAW_SUBTYPES[self.encoding][1]
            reader = _pcm_reader(1, 16) if self.encoding is Encoding.LINEAR16 else _pcm_reader(7, 8)
            self._start_raw(reader, width, self.sample_rate)

    # ---- state ---------------------------------------------------------------------------------------
    @property
    def buffered_bytes(self) -> int:
        """Bytes held waiting to be decoded (a whole FLAC/OGG stream grows here until the end)."""
        return len(self._pending)

    @property
    def streaming(self) -> bool:
        """Whether samples come out as bytes arrive (False: only at the end of the stream)."""
        return self._mode == "raw"

    @property
    def seconds_decoded(self) -> float:
        """Input audio decoded so far, in seconds."""
        if self._resampler is None:
            return 0.0
        return self._resampler.samples_in / self.input_rate

    def _start_raw(self, reader, width: int, rate: int) -> None:
        self._mode, self._reader, self._frame = "raw", reader, width * self.channels
        self.input_rate = rate
        self._resampler = StreamResampler(rate)

    def _what(self) -> str:
        return "audio" if self.encoding is Encoding.AUTO else f"{self.encoding.value} audio"

    # ---- feeding -------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> np.ndarray:
        """The next bytes of the stream -> the mono 16 kHz samples they complete (possibly none)."""
        if self.finished:
            raise RuntimeError("feed() after finish()")
        self.bytes_in += len(data)
        self._pending += data
        if self._mode == "header":
            self._sniff()
        if self._mode == "raw":
            return self._decode_frames(final=False)
        return np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        """End of the stream: the remaining samples. Raises AudioError for a truncated or bad stream."""
        if self.finished:
            return np.zeros(0, np.float32)
        self.finished = True
        if self._mode == "raw":
            out = self._decode_frames(final=True)
            return np.concatenate([out, self._resampler.finish()])
        if not self._pending:  # nothing was sent: no audio, no error
            return np.zeros(0, np.float32)
        data, self._pending = bytes(self._pending), bytearray()
        samples = decode(data, self.encoding, self.sample_rate, self.channels)
        self._resampler = StreamResampler(SAMPLE_RATE)
        self.input_rate = SAMPLE_RATE
        self._resampler.samples_in = samples.size
        return samples

    def _decode_frames(self, final: bool) -> np.ndarray:
        data = self._pending
        if self._left is not None:  # WAV data chunk of known size: ignore whatever follows it
            data = data[: self._left]
        usable = len(data) - len(data) % self._frame
        if final and usable != len(data):
            raise AudioError(
                f"expected {self.encoding.value if self.encoding in RAW_SUBTYPES else 'WAV'} audio at "
                f"{self.input_rate} Hz, got {self.bytes_in} bytes in all (the last {len(data) - usable} "
                f"bytes do not make a whole frame of {self._frame} bytes for {self.channels} channel(s))"
            )
        if self._left is not None:
            self._left -= usable
            self._pending = bytearray() if self._left == 0 else data[usable:]
        else:
            self._pending = data[usable:]
        if usable == 0:
            return np.zeros(0, np.float32)
        samples = self._reader(data[:usable]).reshape(-1, self.channels)
        return self._resampler.feed(to_mono(samples))

    # ---- containers ----------------------------------------------------------------------------------
    def _sniff(self) -> None:
        """Decide from the first bytes how to decode: WAV streams, everything else is buffered."""
        head = self._pending
        if len(head) < 4:
            return
        expected = MAGIC.get(self.encoding)
        if expected and not head.startswith(expected):
            raise AudioError(
                f"cannot decode {self._what()}: the stream does not start with a {self.encoding.value} "
                f"header (first bytes {bytes(head[:4])!r})"
            )
        if head.startswith(b"RIFF") and self.encoding in (Encoding.AUTO, Encoding.WAV):
            self._parse_wav()
        else:
            self._mode = "buffer"

    def _parse_wav(self) -> None:
        """Once the header up to the `data` chunk has arrived, switch to streaming its frames."""
        buf = self._pending
        if len(buf) >= 12 and buf[8:12] != b"WAVE":
            raise AudioError(
                f"cannot decode {self._what()}: RIFF file is not WAVE (it says {bytes(buf[8:12])!r})"
            )
        pos, fmt = 12, None
        while len(buf) >= pos + 8:
            cid, size = buf[pos : pos + 4], struct.unpack("<I", buf[pos + 4 : pos + 8])[0]
            body = pos + 8
            if cid == b"data":
                if fmt is None:
                    raise AudioError(f"cannot decode {self._what()}: data chunk before the fmt chunk")
                self._start_wav_data(fmt, body, size)
                return
            if len(buf) < body + size + (size & 1):
                break
            if cid == b"fmt ":
                fmt = buf[body : body + size]
            pos = body + size + (size & 1)
        if len(buf) > WAV_MAX_HEADER:
            raise AudioError(
                f"cannot decode {self._what()}: no data chunk in the first {WAV_MAX_HEADER} bytes"
            )

    def _start_wav_data(self, fmt: bytes, body: int, size: int) -> None:
        if len(fmt) < 16:
            raise AudioError(f"cannot decode {self._what()}: fmt chunk of {len(fmt)} bytes is too short")
        tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
        if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the GUID
            tag = struct.unpack("<H", fmt[24:26])[0]
        if self.sample_rate and rate != self.sample_rate:
            raise AudioError(f"sample rate {self.sample_rate} Hz was given but the header says {rate} Hz")
        check_rate(rate)
        reader = _pcm_reader(tag, bits)
        if reader is None or channels < 1 or align != channels * bits // 8:
            self._mode = "buffer"  # a subformat we do not stream: libsndfile decodes it at the end
            return
        self.channels = channels
        self._start_raw(reader, bits // 8, rate)
        self._pending = self._pending[body:]
        self._left = None if size in WAV_UNKNOWN_SIZES else size
