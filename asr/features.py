"""Log-mel front end: one extractor, streaming-shaped; offline extraction feeds it everything at once.

Framing is pad-free (no centre padding), so frame k always covers samples [k*HOP, k*HOP + WIN) of the
stream and features from any chunking of the audio equal the offline features. Normalisation uses fixed
per-bin mean/std computed over a training manifest (`compute_stats`), never per utterance or per chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio

SAMPLE_RATE = 16000  # Hz; asr.audio resamples everything to this
WIN_MS = 25  # analysis window
HOP_MS = 10  # frame shift
N_MELS = 80  # mel bins
LOG_FLOOR = 1e-6  # added to mel power before the log: about -60 dB, the noise floor of real recordings


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE  # input sample rate in Hz
    n_mels: int = N_MELS  # number of mel filterbank channels
    win_length: int = SAMPLE_RATE * WIN_MS // 1000  # window length in samples (400)
    hop_length: int = SAMPLE_RATE * HOP_MS // 1000  # hop in samples (160)
    n_fft: int = SAMPLE_RATE * WIN_MS // 1000  # FFT size; equal to the window, so no zero padding
    f_min: float = 0.0  # lowest mel filter edge in Hz
    f_max: float = SAMPLE_RATE / 2  # highest mel filter edge in Hz
    log_floor: float = LOG_FLOOR  # added to the mel power before taking the log

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames pad-free framing yields from `num_samples` samples."""
        return 0 if num_samples < self.win_length else 1 + (num_samples - self.win_length) // self.hop_length


@dataclass(frozen=True)
class FeatureStats:
    """Per-bin normalisation statistics of log-mel features."""

    mean: torch.Tensor  # (n_mels,)
    std: torch.Tensor  # (n_mels,)

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32))

    @classmethod
    def identity(cls, n_mels: int = N_MELS) -> FeatureStats:
        return cls(torch.zeros(n_mels), torch.ones(n_mels))


@functools.lru_cache(maxsize=8)
def _mel_transform(config: FeatureConfig) -> torchaudio.transforms.MelSpectrogram:
    """The torchaudio transform for `config`, built once and shared by every stream."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate,
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        f_min=config.f_min,
        f_max=config.f_max,
        n_mels=config.n_mels,
        center=False,
        power=2.0,
    )


def log_mel(samples: torch.Tensor, config: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """(..., num_samples) float -> (..., frames, n_mels) log-mel power, un-normalised, pad-free framing."""
    with torch.no_grad():
        mel = _mel_transform(config)(samples)  # (..., n_mels, frames)
    return torch.log(mel + config.log_floor).transpose(-1, -2)


class FeatureExtractor:
    """Streaming log-mel extractor for one audio stream.

    `accept(samples)` returns the frames completed by those samples (possibly none); `finish()` ends the
    stream. Feeding everything at once gives the offline features; any other chunking gives the same frames.
    The trailing samples that do not fill a whole window are dropped.
    """

    def __init__(self, config: FeatureConfig = FeatureConfig(), stats: FeatureStats | None = None):
        self.config = config
        self.stats = stats
        self._pending = torch.zeros(0)  # samples from the start of the next frame onwards
        self.frames_out = 0  # frames emitted so far
        self.finished = False

    def accept(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Append mono float samples; returns (new_frames, n_mels)."""
        if self.finished:
            raise RuntimeError("accept() after finish()")
        samples = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        buf = torch.cat([self._pending, samples]) if self._pending.numel() else samples
        n = self.config.num_frames(buf.numel())
        if n == 0:
            self._pending = buf
            return torch.zeros(0, self.config.n_mels)
        hop, win = self.config.hop_length, self.config.win_length
        feats = log_mel(buf[: (n - 1) * hop + win], self.config)
        self._pending = buf[n * hop :].clone()
        self.frames_out += n
        return self.stats.apply(feats) if self.stats is not None else feats

    def finish(self) -> torch.Tensor:
        """End of input: no frame is left to emit with pad-free framing; returns an empty (0, n_mels)."""
        self.finished = True
        self._pending = torch.zeros(0)
        return torch.zeros(0, self.config.n_mels)


def extract(
    samples: np.ndarray | torch.Tensor,
    config: FeatureConfig = FeatureConfig(),
    stats: FeatureStats | None = None,
) -> torch.Tensor:
    """Offline features of a whole utterance: the streaming extractor fed everything at once."""
    ex = FeatureExtractor(config, stats)
    return torch.cat([ex.accept(samples), ex.finish()])


def compute_stats(feats: Iterable[torch.Tensor]) -> FeatureStats:
    """Per-bin mean and standard deviation over all frames of un-normalised (frames, n_mels) features."""
    total, total_sq, count = 0.0, 0.0, 0
    for f in feats:
        f = f.double()
        total = total + f.sum(0)
        total_sq = total_sq + (f * f).sum(0)
        count += f.shape[0]
    if count == 0:
        raise ValueError("no frames to compute feature statistics from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-8).sqrt()
    return FeatureStats(mean.float(), std.float())


def manifest_stats(
    entries: Iterable, config: FeatureConfig = FeatureConfig(), limit: int | None = None
) -> FeatureStats:
    """`compute_stats` over the audio of manifest entries (anything with `.path`), the first `limit`."""
    from asr import audio

    entries = list(entries)[:limit]
    return compute_stats(extract(audio.load(e.path), config) for e in entries)
