"""Acoustic model: causal conv front end that subsamples time, a stack of (bi)LSTM/GRU layers, a CTC head.

The same weights run two ways:

- full context, `forward(features, lengths)`: every layer sees the whole utterance (batch work);
- latency-controlled (LC-BLSTM, Zhang et al. 2016): the subsampled frames are cut into chunks of
  `chunk` frames with `right` frames of right context. Each layer's forward direction carries its state
  from chunk to chunk over the chunk frames only; its backward direction starts fresh at the end of each
  chunk's right context; only the chunk frames are emitted. `forward_chunked` does this for whole
  utterances (training); `init_state` + `step` do it chunk by chunk for streaming, with the same result.

The conv front end is causal (left context only, zero-padded at the start of a stream), so its output for
a frame never depends on how the stream was chunked; the left context it needs lives in the state.
Backward directions never see padding: each padded sequence is reversed within its own length.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.text import TOKENS


@dataclass(frozen=True)
class ModelConfig:
    n_mels: int = 80  # input feature bins
    conv_channels: int = 256  # channels of the conv front end
    conv_kernel: int = 5  # kernel (in frames) of the first, stride-1 conv
    subsample: int = 3  # time stride of the second conv: output frame rate = 100 / subsample Hz
    rnn_type: str = "lstm"  # "lstm" or "gru"
    rnn_layers: int = 3  # recurrent layers
    hidden: int = 256  # hidden units per direction
    bidirectional: bool = True  # backward direction too (latency-controlled when streaming)
    dropout: float = 0.1  # dropout between layers during training
    vocab: int = len(TOKENS)  # output tokens, blank included

    def __post_init__(self):
        if self.rnn_type not in ("lstm", "gru"):
            raise ValueError(f"rnn_type must be 'lstm' or 'gru', got {self.rnn_type!r}")
        if self.subsample < 1 or self.conv_kernel < 1:
            raise ValueError("subsample and conv_kernel must be at least 1")

    @property
    def conv_context(self) -> tuple[int, int]:
        """Left-context frames each conv keeps (kernel - stride); the second conv has kernel 2 * stride."""
        return self.conv_kernel - 1, self.subsample


# Streaming chunk and right context in output frames: 300 ms + 180 ms at subsample 3; + 25 ms window = 505 ms
# latency. 8 + 4 (385 ms) put the bundled model's streaming WER on an4 34% above full context (README).
DEFAULT_CHUNK = 10
DEFAULT_RIGHT = 6

PRESETS: dict[str, ModelConfig] = {
    # the bundled model: ~4.6M parameters, 30 ms output frames
    "default": ModelConfig(),
    # for tests: trains in seconds
    "tiny": ModelConfig(conv_channels=64, conv_kernel=3, subsample=2, rnn_layers=2, hidden=64, dropout=0.0),
}


class ModelState(NamedTuple):
    """Streaming state of a batch of streams; every tensor has the batch on dimension `BATCH_DIM[i]`."""

    conv1: Tensor  # (B, n_mels, conv_kernel - 1): last input frames, left context of the first conv
    conv2: Tensor  # (B, conv_channels, subsample): left context of the second conv
    h: Tensor  # (layers, B, hidden): forward-direction hidden state of each layer
    c: Tensor  # (layers, B, hidden): forward-direction LSTM cell state (zeros, unused, for GRU)


BATCH_DIM = ModelState(conv1=0, conv2=0, h=1, c=1)


def stack_states(states: list[ModelState]) -> ModelState:
    """Join single- or multi-stream states along the batch dimension."""
    return ModelState(
        *(torch.cat(parts, dim=d) for parts, d in zip(zip(*states, strict=True), BATCH_DIM, strict=True))
    )


def unstack_state(state: ModelState) -> list[ModelState]:
    """Split a batched state into one state per stream."""
    split = [t.split(1, dim=d) for t, d in zip(state, BATCH_DIM, strict=True)]
    return [ModelState(*parts) for parts in zip(*split, strict=True)]


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of a (B, T, D) batch within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    idx = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class AcousticModel(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        cfg = config
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.conv_channels, cfg.conv_kernel)
        self.conv2 = nn.Conv1d(cfg.conv_channels, cfg.conv_channels, 2 * cfg.subsample, stride=cfg.subsample)
        rnn = nn.LSTM if cfg.rnn_type == "lstm" else nn.GRU
        dirs = 2 if cfg.bidirectional else 1
        self.fwd = nn.ModuleList()
        self.bwd = nn.ModuleList()
        for i in range(cfg.rnn_layers):
            size_in = cfg.conv_channels if i == 0 else cfg.hidden * dirs
            self.fwd.append(rnn(size_in, cfg.hidden, batch_first=True))
            if cfg.bidirectional:
                self.bwd.append(rnn(size_in, cfg.hidden, batch_first=True))
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden * dirs, cfg.vocab)

    @property
    def is_lstm(self) -> bool:
        return self.config.rnn_type == "lstm"

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames out of the front end for `lengths` input frames."""
        return torch.div(lengths, self.config.subsample, rounding_mode="floor")

    def log_probs(self, x: Tensor) -> Tensor:
        """CTC head: (..., hidden * dirs) -> (..., vocab) log-probabilities, normalised in float32 also
        under bfloat16 autocast (bfloat16 keeps 3 significant digits: too few for CTC's log-probs)."""
        return self.head(x).float().log_softmax(-1)

    # ---- front end -------------------------------------------------------------------------------
    def _front(self, x: Tensor, ctx1: Tensor, ctx2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, n_mels) with left contexts (B, C, k) -> (B, T // subsample, conv_channels).

        Also returns each conv's input (its left context followed by the new frames), from which the
        streaming state is cut.
        """
        a = torch.cat([ctx1, x.transpose(1, 2)], dim=2)
        b = torch.cat([ctx2, F.gelu(self.conv1(a))], dim=2)
        if b.shape[2] < self.conv2.kernel_size[0]:  # fewer new frames than one stride: no output yet
            return b.new_zeros(b.shape[0], 0, b.shape[1]), a, b
        return F.gelu(self.conv2(b)).transpose(1, 2), a, b

    def _zero_contexts(self, batch: int, ref: Tensor) -> tuple[Tensor, Tensor]:
        k1, k2 = self.config.conv_context
        return (
            ref.new_zeros(batch, self.config.n_mels, k1),
            ref.new_zeros(batch, self.config.conv_channels, k2),
        )

    # ---- recurrent layers ------------------------------------------------------------------------
    def _run(self, rnn: nn.Module, x: Tensor, hc: tuple[Tensor, Tensor] | None):
        """One direction of one layer. hc: (h, c) each (1, B, H), or None for zeros."""
        if self.is_lstm:
            return rnn(x, hc)
        out, h = rnn(x, None if hc is None else hc[0])
        return out, (h, torch.zeros_like(h))

    def _backward_dir(self, layer: int, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The backward direction of one layer over (B, T, D); lengths None: no padding (a plain flip)."""
        if lengths is None:
            out, _ = self._run(self.bwd[layer], x.flip(1), None)
            return out.flip(1)
        out, _ = self._run(self.bwd[layer], reverse_padded(x, lengths), None)
        return reverse_padded(out, lengths)

    def forward(
        self, features: Tensor, lengths: Tensor, chunk: int | None = None, right: int = 0
    ) -> tuple[Tensor, Tensor]:
        """features (B, T, n_mels), lengths (B,) -> log_probs (B, T // subsample, vocab), lengths (B,).

        Full context by default; latency-controlled (`forward_chunked`) when `chunk` is given.
        """
        if chunk is not None:
            return self.forward_chunked(features, lengths, chunk, right)
        x, _, _ = self._front(features, *self._zero_contexts(features.shape[0], features))
        out_len = self.output_lengths(lengths)
        for i in range(self.config.rnn_layers):
            x = self.dropout(x) if i else x
            y, _ = self._run(self.fwd[i], x, None)
            if self.config.bidirectional:
                y = torch.cat([y, self._backward_dir(i, x, out_len)], dim=2)
            x = y
        return self.log_probs(self.dropout(x)), out_len

    def _lc_layers(self, windows: Tensor, win_len: Tensor | None, chunk: int, h: Tensor, c: Tensor):
        """Latency-controlled layers over windows of chunk + right frames.

        windows (B, N, chunk + right, D): N consecutive chunks, each with its right context;
        win_len (B, N): valid frames of each window, None when all are whole; h, c (layers, B, H): forward
        state before the first chunk. Returns the last layer's output on the chunk frames (B, N, chunk, D')
        and the state after the last chunk.
        """
        B, N, W, _ = windows.shape
        layers = self.config.rnn_layers
        hs, cs = [], []
        for i in range(layers):
            x = self.dropout(windows) if i else windows
            # forward direction over the chunk frames, carried from chunk to chunk
            hc = (h[i : i + 1], c[i : i + 1])
            if self.is_lstm:  # the cell state at each chunk end is only known by stopping there
                centre, ends = [], []
                for n in range(N):
                    out, hc = self._run(self.fwd[i], x[:, n, :chunk], hc)
                    centre.append(out)
                    ends.append(hc)
                fwd = torch.stack(centre, dim=1)  # (B, N, chunk, H)
                h_end = torch.cat([e[0] for e in ends]).transpose(0, 1)  # (B, N, H)
                c_end = torch.cat([e[1] for e in ends]).transpose(0, 1)
            else:  # a GRU's state is its output: one call over all chunk frames gives every chunk end
                out, hc = self._run(self.fwd[i], x[:, :, :chunk].reshape(B, N * chunk, -1), hc)
                fwd = out.reshape(B, N, chunk, -1)
                h_end = fwd[:, :, -1]
                c_end = torch.zeros_like(h_end)
            hs.append(hc[0])
            cs.append(hc[1])
            last = i == layers - 1  # only its chunk frames are output: its right context needs no forward
            if W > chunk and not last:  # forward over the right context, from each chunk's end state
                h0, c0 = h_end.reshape(1, B * N, -1), c_end.reshape(1, B * N, -1)
                out, _ = self._run(self.fwd[i], x[:, :, chunk:].reshape(B * N, W - chunk, -1), (h0, c0))
                fwd = torch.cat([fwd, out.reshape(B, N, W - chunk, -1)], dim=2)
            if self.config.bidirectional:  # backward direction: fresh from each window's end
                lengths = None if win_len is None else win_len.reshape(-1)
                bwd = self._backward_dir(i, x.reshape(B * N, W, -1), lengths).reshape(B, N, W, -1)
                fwd = torch.cat([fwd, bwd[:, :, : fwd.shape[2]]], dim=3)
            windows = fwd
        return windows, torch.cat(hs), torch.cat(cs)

    def forward_chunked(
        self, features: Tensor, lengths: Tensor, chunk: int, right: int, state: ModelState | None = None
    ) -> tuple[Tensor, Tensor]:
        """Latency-controlled forward of whole utterances; chunk and right are in output frames.

        features (B, T, n_mels), lengths (B,) -> log_probs (B, T', vocab), lengths (B,).
        """
        B = features.shape[0]
        state = state if state is not None else self.init_state(B, features)
        x, _, _ = self._front(features, state.conv1, state.conv2)
        out_len = self.output_lengths(lengths)
        T = x.shape[1]
        N = max(1, -(-T // chunk))
        x = F.pad(x, (0, 0, 0, N * chunk + right - T))
        windows = x.unfold(1, chunk + right, chunk).transpose(2, 3)  # (B, N, chunk + right, D)
        starts = torch.arange(N, device=x.device) * chunk
        win_len = (out_len.unsqueeze(1) - starts).clamp(0, chunk + right)
        y, _, _ = self._lc_layers(windows, win_len, chunk, state.h, state.c)
        y = y.reshape(B, N * chunk, -1)[:, :T]
        return self.log_probs(self.dropout(y)), out_len

    def init_state(self, batch: int = 1, ref: Tensor | None = None) -> ModelState:
        """State of `batch` streams that have not started."""
        ref = ref if ref is not None else self.head.weight
        k1, k2 = self._zero_contexts(batch, ref)
        hid = ref.new_zeros(self.config.rnn_layers, batch, self.config.hidden)
        return ModelState(k1, k2, hid, hid.clone())

    def step(self, chunk: Tensor, state: ModelState, right: int = 0) -> tuple[Tensor, ModelState]:
        """Stream one chunk. chunk (B, F, n_mels): new frames followed by `right * subsample` look-ahead
        frames; the new frames must be a multiple of `subsample` except in a stream's last chunk.
        Returns log_probs (B, new // subsample, vocab) for the new frames only, and the state after them.
        """
        S = self.config.subsample
        B, nF, _ = chunk.shape
        new = nF - right * S
        if new < 0:
            raise ValueError(f"chunk of {nF} frames is shorter than its {right * S} frames of right context")
        x, a, b = self._front(chunk, state.conv1, state.conv2)  # x: (B, nF // S, D)
        n_out = new // S
        used = n_out * S  # input frames consumed; only a stream's last chunk leaves a remainder
        k1, k2 = self.config.conv_context
        conv1, conv2 = a[:, :, used : used + k1], b[:, :, used : used + k2]
        if n_out == 0:
            return x.new_zeros(B, 0, self.config.vocab), ModelState(conv1, conv2, state.h, state.c)
        y, h, c = self._lc_layers(x.unsqueeze(1), None, n_out, state.h, state.c)
        return self.log_probs(y[:, 0, :n_out]), ModelState(conv1, conv2, h, c)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.config)


def widen(model: AcousticModel, hidden: int, generator: torch.Generator | None = None) -> AcousticModel:
    """The same function with `hidden` units per direction and layer (net2net-style growth of a trained
    model): old units keep their weights; new units get fresh incoming weights (PyTorch's default
    initialisation) and zero outgoing ones (to the next layer, their own layer's recurrence and the head),
    so nothing reads them until training moves those weights off zero. Outputs equal the old model's."""
    cfg = model.config
    if hidden < cfg.hidden:
        raise ValueError(f"can only widen: {hidden} < {cfg.hidden} hidden units")
    wide = AcousticModel(ModelConfig(**{**asdict(cfg), "hidden": hidden}))
    old, new = model.state_dict(), wide.state_dict()
    H, W = cfg.hidden, hidden
    gates = 4 if model.is_lstm else 3
    dirs = 2 if cfg.bidirectional else 1
    # where each old unit sits in the new layout: per gate (rows), and in a concatenation of directions
    rows = torch.cat([torch.arange(H) + g * W for g in range(gates)])
    cat_cols = torch.cat([torch.arange(H) + d * W for d in range(dirs)])
    bound = W**-0.5
    for name, w in new.items():
        src = old[name]
        if name.startswith(("conv", "head.bias")):
            w.copy_(src)
            continue
        if name == "head.weight":
            w.zero_()
            w[:, cat_cols] = src
            continue
        # a recurrent layer's tensor: fwd.{i}.* / bwd.{i}.*; fresh rows for the new units, zero columns
        # wherever a new unit's output would be read
        w.uniform_(-bound, bound, generator=generator)
        if name.endswith(("bias_ih_l0", "bias_hh_l0")):
            w[rows] = src
            continue
        layer = int(name.split(".")[1])
        if name.endswith("weight_hh_l0"):
            cols = torch.arange(H)
        else:  # weight_ih_l0: layer 0 reads the conv output (unchanged), later layers read both directions
            cols = torch.arange(src.shape[1]) if layer == 0 else cat_cols
        w[rows] = 0.0
        w[rows[:, None], cols] = src
    wide.load_state_dict(new)
    return wide.train(model.training)


def next_step(available: int, chunk: int, right: int, subsample: int, final: bool) -> tuple[int, int] | None:
    """How to cut the next `step()` from `available` buffered feature frames.

    Returns (frames to pass, right-context output frames among them), or None to wait for more audio. The
    caller then drops the first `frames - right * subsample` frames. At the end of input (`final`) the tail
    goes in chunks of `chunk` with whatever right context is left, exactly as `forward_chunked` cuts it.
    """
    need = (chunk + right) * subsample
    if available >= need:
        return need, right
    if not final or available == 0:
        return None
    r = min(right, max(0, available // subsample - chunk))
    if available // subsample > chunk:
        return (chunk + r) * subsample, r
    return available, 0


def quantize_int8(model: AcousticModel) -> AcousticModel:
    """A CPU copy whose recurrent layers run with dynamic int8 weights (torch's dynamic quantisation).

    Inference only. Streaming one utterance at a time ran about 3x faster on this CPU, WER within half a point
    (README, Performance). Activations are quantised per call with the ranges that call sees, so `step()`
    matches the chunked `forward()` only closely (~1e-3 in log-probability), not exactly.
    """
    with warnings.catch_warnings():  # torch marks the quantisation API deprecated; 2.14 still ships it
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu().eval(), {nn.LSTM, nn.GRU}, dtype=torch.qint8
        )
