"""The compute floor: model FLOPs per second of audio (from the config) against a measured matmul rate.

FLOPs count multiply-adds twice and cover the dense work only (convolutions, recurrent gate matrices, the
CTC head); elementwise gate nonlinearities, the log-softmax and the feature extraction are left out, so the
floor is a bound no implementation can beat, not a prediction.
"""

from __future__ import annotations

import time

import torch

from asr.features import FeatureConfig
from asr.model import DEFAULT_CHUNK, DEFAULT_RIGHT, ModelConfig


def flops_per_audio_second(
    cfg: ModelConfig,
    chunk: int | None = None,
    right: int = DEFAULT_RIGHT,
    feature_config: FeatureConfig = FeatureConfig(),
    stepped: bool = True,
) -> dict[str, float]:
    """FLOPs of one second of audio through the model: {'conv', 'rnn', 'head', 'total'}.

    Full context when `chunk` is None. Latency-controlled (streaming `step()` and `forward_chunked`): each
    chunk of `chunk` output frames is computed with `right` frames of look-ahead that both directions of
    every layer but the last process again as part of the next chunk, a factor of (chunk + right) / chunk;
    the last layer's forward direction runs on the chunk frames alone. Streaming (`stepped`) runs the conv
    front end on the look-ahead again too; `forward_chunked` (training) runs it once over the utterance.
    """
    in_fps = feature_config.frame_rate  # feature frames per second
    out_fps = in_fps / cfg.subsample  # output frames per second
    recompute = 1.0 if chunk is None else (chunk + right) / chunk
    conv = 2 * cfg.n_mels * cfg.conv_channels * cfg.conv_kernel * in_fps  # stride-1 conv on every frame
    conv += 2 * cfg.conv_channels * cfg.conv_channels * 2 * cfg.subsample * out_fps  # kernel 2S, stride S
    conv *= recompute if stepped else 1.0
    gates = 4 if cfg.rnn_type == "lstm" else 3
    dirs = 2 if cfg.bidirectional else 1
    rnn = 0.0
    for layer in range(cfg.rnn_layers):
        size_in = cfg.conv_channels if layer == 0 else cfg.hidden * dirs
        per_dir = 2 * gates * cfg.hidden * (size_in + cfg.hidden) * out_fps
        if layer < cfg.rnn_layers - 1:
            rnn += dirs * per_dir * recompute
        else:  # the forward direction on the chunk frames only; the backward one on the whole window
            rnn += per_dir + (dirs - 1) * per_dir * recompute
    head = 2 * cfg.hidden * dirs * cfg.vocab * out_fps
    return {"conv": conv, "rnn": rnn, "head": head, "total": conv + rnn + head}


def matmul_gflops(threads: int, n: int = 1024, min_time_s: float = 1.0) -> float:
    """Measured float32 torch.mm rate (GFLOP/s) of n x n matrices on `threads` CPU threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):  # warm up: thread pool, caches
            torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_time_s or reps < 3:
            torch.mm(a, b)
            reps += 1
        return 2 * n**3 * reps / elapsed / 1e9
    finally:
        torch.set_num_threads(before)


def streaming_flops(cfg: ModelConfig) -> float:
    """FLOPs per audio second of the server's default streaming (chunk, right)."""
    return flops_per_audio_second(cfg, DEFAULT_CHUNK, DEFAULT_RIGHT)["total"]
