"""The training loop: CTC on (bi)LSTM/GRU, one process or DDP under torchrun, AMP on GPU.

Read it top to bottom: configuration, learning-rate schedule, data (features cached in memory, batches
bucketed by length), one training step, validation, checkpoints, `main()`.

    python -m asr.train --out runs/default                  # resumes from runs/default/last.pt if there
    torchrun --nproc-per-node 2 -m asr.train --out runs/ddp  # several processes (gloo on CPU, nccl on GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchaudio
from tqdm import tqdm

from asr import audio, checkpoint, evaluate, features, text
from asr.data import Utterance, read_manifest
from asr.model import PRESETS, AcousticModel

CORPUS = "corpus"  # where `make data` writes its manifests


@dataclass(frozen=True)
class TrainConfig:
    train: tuple[str, ...] = (f"{CORPUS}/train.jsonl",)  # training manifests (after the clean warm-up)
    train_repeat: tuple[str, ...] = ()  # times per epoch each --train manifest is heard (one each; default 1)
    clean: tuple[str, ...] = (f"{CORPUS}/train-clean.jsonl",)  # manifests of the clean warm-up epochs
    dev: tuple[str, ...] = (  # validation manifests, scored each epoch
        f"{CORPUS}/dev-fsdd.jsonl",
        f"{CORPUS}/dev-an4.jsonl",
        f"{CORPUS}/dev-pocketsphinx.jsonl",
        f"{CORPUS}/dev-asterisk.jsonl",
        f"{CORPUS}/dev-synth.jsonl",
    )
    out: str = "runs/default"  # run directory: last.pt, best.pt, metrics.jsonl
    preset: str = "default"  # model preset from asr.model.PRESETS
    init: str = ""  # start from these weights (e.g. models/default.pt) instead of random ones
    epochs: int = 12  # passes over the training data, clean warm-up epochs included
    clean_epochs: int = 1  # first epochs on the clean manifests, without SpecAugment
    max_steps: int = 0  # stop after this many optimizer steps in all (0: no limit)
    batch_frames: int = 24000  # padded feature frames per batch (100 per second of audio)
    max_batch: int = 64  # utterances per batch at most
    max_seconds: float = 16.0  # longer utterances are left out of training
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 300  # linear warm-up steps
    weight_decay: float = 1e-2  # AdamW weight decay
    clip: float = 5.0  # gradient norm clipping
    freq_masks: int = 2  # SpecAugment frequency masks per utterance
    freq_width: int = 12  # widest frequency mask in mel bins
    time_masks: int = 2  # SpecAugment time masks per utterance
    time_width: int = 30  # widest time mask in frames
    voice_warp: float = 0.1  # each utterance's spectrum is warped f -> a*f, a drawn from 1 +- this (0: off)
    tilt_db: float = 6.0  # each utterance gets a random smooth spectral curve of at most +- this many dB
    tempo_warp: float = 0.0  # each ~0.15 s stretch is played at a rate within 1 +- this, log-uniform (0: off)
    gain_min_db: float = -25.0  # each utterance's level changes by a gain drawn from [gain_min_db,
    gain_max_db: float = 6.0  # gain_max_db] (both 0: off); real microphones are often far quieter than ours
    pad_prob: float = 0.25  # share of batches whose utterances get long non-speech before and after (0: none)
    pad_max_s: float = 2.0  # longest non-speech added at each end of such an utterance
    pad_blank_weight: float = 1.0  # weight of the loss that asks for blank on non-speech (0: none)
    quiet_min_s: float = 0.3  # quiet stretches this long count as non-speech too (0: only the added)
    split_at_pauses: bool = True  # CTC per stretch between inner pauses (needs quiet_min_s and the weight)
    full_context_prob: float = 0.4  # share of batches trained in full context; the rest latency-controlled
    chunk_min: int = 4  # smallest chunk (output frames) of a latency-controlled batch
    chunk_max: int = 16  # largest chunk
    right_min: int = 2  # smallest right context (output frames)
    right_max: int = 6  # largest right context
    distill_weight: float = 0.0  # latency-controlled batches also learn the full-context output (KL; 0: off)
    checkpoint_every: int = 200  # optimizer steps between checkpoints (also one at each epoch end)
    log_every: int = 20  # optimizer steps between metrics lines
    stats_utterances: int = 3000  # utterances sampled to compute the feature normalisation
    dev_limit: int = 0  # utterances per dev set in validation (0: all)
    seed: int = 0  # seeds data order, augmentation and initialisation
    threads: int = 0  # CPU threads per process (0: all cores shared among processes)
    device: str = ""  # "cpu", "cuda" (default: cuda when available)
    amp: str = "auto"  # bfloat16 autocast: on, off, or auto (on CUDA and on CPUs with native bfloat16)


AMP_SETTINGS = ("auto", "on", "off")
MAX_BAD_STEPS = 20  # non-finite gradients in a row before training stops as diverged


# ---- schedule -----------------------------------------------------------------------------------------
def get_lr(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `total_steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# ---- data ---------------------------------------------------------------------------------------------
def inside(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames) bool: True on each sequence's frames below its length, False on the padding after it."""
    return torch.arange(frames, device=lengths.device)[None] < lengths[:, None]


@dataclass
class Corpus:
    """Utterances with their un-normalised features (fp16, in memory) and target ids."""

    utterances: list[Utterance]
    feats: list[torch.Tensor]
    targets: list[torch.Tensor]

    def frames(self, i: int) -> int:
        return self.feats[i].shape[0]


def load_corpus(manifests: tuple[str, ...], max_seconds: float, desc: str, quiet: bool) -> Corpus:
    unique = {u.path: u for m in manifests for u in read_manifest(m)}  # manifests may overlap
    utts = [u for u in unique.values() if u.duration <= max_seconds]
    corpus = Corpus([], [], [])
    skipped = 0
    for u in tqdm(utts, desc=f"features {desc}", unit="utt", disable=quiet, mininterval=2):
        try:
            target = text.encode(text.normalize(u.text))
            feats = features.extract(audio.load(u.path)).half()
        except (audio.AudioError, ValueError) as err:
            skipped += 1
            if not quiet:
                tqdm.write(f"skipping {u.path}: {err}")
            continue
        corpus.utterances.append(u)
        corpus.feats.append(feats)
        corpus.targets.append(torch.tensor(target, dtype=torch.long))
    if not corpus.feats:
        raise SystemExit(f"no usable utterances in {', '.join(manifests)}")
    return corpus


def repeated_ids(corpus: Corpus, manifests: tuple[str, ...], repeats: list[int]) -> list[int]:
    """Indices into `corpus` of one epoch's utterances: each once per repeat of its manifest (`repeats`,
    one per manifest, or empty for once each). An utterance in two manifests takes the larger count.
    The copies are augmented independently, and being equally long they usually share a batch."""
    repeats = repeats or [1] * len(manifests)
    times: dict[str, int] = {}
    for manifest, r in zip(manifests, repeats, strict=True):
        for u in read_manifest(manifest):
            times[u.path] = max(times.get(u.path, 0), r)
    return [i for i, u in enumerate(corpus.utterances) for _ in range(times.get(u.path, 0))]


def compute_stats(corpus: Corpus, n: int, seed: int) -> features.FeatureStats:
    idx = random.Random(seed).sample(range(len(corpus.feats)), min(n, len(corpus.feats)))
    return features.compute_stats(corpus.feats[i] for i in idx)


def make_batches(corpus: Corpus, cfg: TrainConfig, epoch: int, world: int) -> list[list[int]]:
    """Length-bucketed batches: sorted by length, cut by padded-frame budget; shuffled after epoch 0.

    Every utterance is kept, even one whose output frames cannot hold its target (a clipped "three": 5
    frames for 5 letters and the blank between the "e"s). Its CTC loss is infinite, and `zero_infinity`
    zeroes it, unless `--pad-prob`'s padding lengthens it enough. The count of batches is a multiple of
    `world` so every process steps equally.
    """
    order = sorted(range(len(corpus.feats)), key=corpus.frames)
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * corpus.frames(i) > cfg.batch_frames or len(cur) >= cfg.max_batch:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    if epoch > 0:
        random.Random(cfg.seed * 1000 + epoch).shuffle(batches)
    return batches[: len(batches) // world * world] if world > 1 else batches


def extend_nonspeech(feats: torch.Tensor, lead: int, trail: int, generator: torch.Generator) -> torch.Tensor:
    """(T, n_mels) log-mel -> (lead + T + trail, n_mels): frames drawn from the utterance's own quietest tenth
    (its background: digital silence and dither, or a recording's room noise) put before and after it.

    The corpus pads utterances with at most half a second of silence, but a stream or a long file has
    seconds of non-speech between utterances. Padding alone did not stop the model from emitting a word's
    first letter at the start of the utterance; with `nonspeech_blank_loss` on the added frames it did.
    """
    k = max(1, feats.shape[0] // 10)
    quiet = feats.float().sum(-1).topk(k, largest=False).indices
    extra = feats[quiet[torch.randint(k, (lead + trail,), generator=generator)]]
    return torch.cat([extra[:lead], feats, extra[lead:]])


def quiet_frames(
    feats: torch.Tensor, min_frames: int, floor_db: float = 6.0, min_range_db: float = 13.0, trim: int = 5
) -> torch.Tensor:
    """(T, n_mels) log-mel -> (T,) bool: frames in stretches of at least `min_frames` whose loudness (mean
    log-mel) stays within `floor_db` of the utterance's quietest tenth, less `trim` frames at each inner edge.
    These are the corpus's leading and trailing pads, the pauses of joins and of pause augmentation, and a
    recording's own silences. Nothing is marked where the quietest and loudest tenths lie less than
    `min_range_db` apart (heavy noise or reverberation), because there quiet is not told from speech.

    With `nonspeech_blank_loss` on them no letter comes out inside a pause (measured: a letter held back
    through a pause then came out at the next word's onset instead); `pause_segments` puts it before.
    """
    loud = feats.float().mean(-1) * (10 / math.log(10))  # dB (features are natural-log power)
    low, high = loud.quantile(0.1), loud.quantile(0.9)
    if min_frames <= 0 or high - low < min_range_db:
        return torch.zeros(len(loud), dtype=torch.bool)
    quiet = loud < low + floor_db
    run = torch.cat([torch.ones(1, dtype=torch.bool), quiet[1:] != quiet[:-1]]).cumsum(0) - 1
    quiet &= torch.bincount(run)[run] >= min_frames
    near = F.max_pool1d((~quiet).float()[None, None], 2 * trim + 1, 1, padding=trim)  # edges stay
    return near[0, 0] == 0


TEMPO_SEGMENT = 15  # input frames (0.15 s, about a syllable) that `warp_tempo` plays at one rate


def warp_tempo(
    feats: torch.Tensor, nonspeech: torch.Tensor, warp: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, n_mels) log-mel and its (T,) non-speech mask, each TEMPO_SEGMENT-frame stretch played at its own
    rate r, log-uniform within [1 / (1 + warp), 1 + warp] (r > 1 is faster: fewer frames): the way talkers
    hurry over some syllables and dwell on others. Synthesisers say every syllable in full; real speech
    shortens unstressed vowels and word ends, which is most of what the model deletes on real sentences
    (README). Frames are interpolated linearly between the source frames; the mask takes the nearest."""
    t = feats.shape[0]
    if not warp or t < 2:
        return feats, nonspeech
    segments = -(-t // TEMPO_SEGMENT)
    log_rate = (torch.rand(segments, generator=generator) * 2 - 1) * math.log1p(warp)
    dwell = torch.exp(-log_rate).repeat_interleave(TEMPO_SEGMENT)[:t]  # output frames per source frame
    starts = torch.cumsum(dwell, 0) - dwell  # output time at which each source frame begins
    n_out = max(2, int(starts[-1] + dwell[-1]))
    at = torch.arange(n_out, dtype=dwell.dtype)
    src = (torch.searchsorted(starts, at, right=True) - 1).clamp(0, t - 1)
    pos = (src + (at - starts[src]) / dwell[src]).clamp(0, t - 1)
    i0 = pos.floor().long().clamp(max=t - 2)
    w = (pos - i0).unsqueeze(-1)
    out = feats[i0].float() * (1 - w) + feats[i0 + 1].float() * w
    return out.to(feats.dtype), nonspeech[pos.round().long()]


def collate(
    corpus: Corpus,
    idx: list[int],
    stats: features.FeatureStats,
    device,
    pad_frames: int = 0,
    seed: int = 0,
    quiet_min: int = 0,
    voice: dict | None = None,
    tempo_warp: float = 0.0,
):
    """A padded, normalised batch: x (B, T, n_mels), lengths, targets, target_lengths and `nonspeech` (B, T).
    With `pad_frames`, each utterance gets up to that many frames of its own background before and after it
    (`extend_nonspeech`, lengths drawn from `seed`). `nonspeech` is True on those added frames and, with
    `quiet_min`, on the utterance's own quiet stretches of at least that many frames (`quiet_frames`), and
    beyond each utterance's end.
    `voice` holds `perturb_voice`'s keyword arguments, which perturb each utterance's voice and channel;
    `tempo_warp` changes each utterance's tempo syllable by syllable (`warp_tempo`), its mask with it."""
    feats = [corpus.feats[i] for i in idx]
    ends = [(0, 0)] * len(feats)
    gen = torch.Generator().manual_seed(seed)
    if pad_frames:
        ends = torch.randint(pad_frames + 1, (len(feats), 2), generator=gen).tolist()
    ones = torch.ones(pad_frames, dtype=torch.bool)
    nonspeech = [
        torch.cat([ones[:lead], quiet_frames(f, quiet_min), ones[:trail]])
        for f, (lead, trail) in zip(feats, ends, strict=True)
    ]
    if pad_frames:
        feats = [extend_nonspeech(f, lead, trail, gen) for f, (lead, trail) in zip(feats, ends, strict=True)]
    if tempo_warp:
        warped = [warp_tempo(f, m, tempo_warp, gen) for f, m in zip(feats, nonspeech, strict=True)]
        feats, nonspeech = [f for f, _ in warped], [m for _, m in warped]
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).float()
    if voice:
        x = perturb_voice(x, lengths, gen, **voice)
    x = (x - stats.mean) / stats.std * inside(lengths, x.shape[1]).unsqueeze(-1)
    nonspeech = torch.nn.utils.rnn.pad_sequence(nonspeech, batch_first=True, padding_value=True)
    targets = torch.cat([corpus.targets[i] for i in idx])
    target_lengths = torch.tensor([len(corpus.targets[i]) for i in idx])
    return tuple(t.to(device) for t in (x, lengths, targets, target_lengths, nonspeech))


def nonspeech_blank_loss(
    log_probs: torch.Tensor, out_len: torch.Tensor, nonspeech: torch.Tensor, subsample: int, margin: int = 2
):
    """Summed -log P(blank) over the output frames that lie wholly in non-speech, `margin` output frames
    away from the speech. log_probs (B, T', vocab); out_len (B,) output frames of each utterance; nonspeech
    (B, T) input frames, True beyond each utterance's end (as `collate` pads it).

    CTC alone lets a bidirectional model put a word's first letter anywhere before the word, and ours learnt
    to put it on the first frame of the utterance: fine in full context, a blind guess ("e") with a small
    right context, so streaming lost onsets after long silence. This loss rules those alignments out.
    It covers an utterance's last frames too: when the end of the batch's padding counted as speech, the
    model learnt to hold a word's last letter to the last frame of the utterance, however much non-speech
    came after the word ("sto" ... 1.5 s ... "p"), and a stream's endpoint split it off as a final of its own.
    """
    speech = (~nonspeech).float()[:, None]  # (B, 1, T)
    speech = F.max_pool1d(speech, subsample, subsample, ceil_mode=True)
    speech = F.max_pool1d(speech, 2 * margin + 1, 1, padding=margin)[:, 0]  # (B, T'')
    n = min(speech.shape[1], log_probs.shape[1])
    return -(log_probs[:, :n, text.BLANK_ID].float() * (1 - speech[:, :n]) * inside(out_len, n)).sum()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, out_len: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) over the output frames of each utterance: in-place distillation of the
    full-context output into the latency-controlled one (Yu et al. 2021, "Dual-mode ASR"). student, teacher
    (B, T', vocab) log-probs of the same batch from the same weights, the teacher's without gradient.

    Both modes share every weight and most of their CTC spikes fall on the same frames (93% of the bundled
    weights' full-context letter spikes on an4), so the targets mostly teach what the chunked output lacks
    the look-ahead for. Where the spikes differ they ask for letters it cannot hear yet: at weight 2 both
    modes got worse within an epoch, and at 0.3 an4 did (README, variant Z), so it is off by default.
    """
    teacher = teacher.float()
    kl = (teacher.exp() * (teacher - student.float())).sum(-1)
    return (kl * inside(out_len, student.shape[1])).sum()


def inner_pauses(nonspeech: torch.Tensor, length: int, subsample: int) -> list[tuple[int, int]]:
    """Output-frame spans [a, z) of the non-speech stretches strictly inside an utterance: not touching its
    first frame or its last (those are its lead and trail). nonspeech: (T,) input frames."""
    spans, start = [], None
    for t, quiet in enumerate([*nonspeech[:length].tolist(), False]):
        if quiet and start is None:
            start = t
        elif not quiet and start is not None:
            if start > 0 and t < length:
                a, z = -(-start // subsample), t // subsample
                if z - a >= 2:
                    spans.append((a, z))
            start = None
    return spans


def pause_segments(
    log_probs: torch.Tensor,
    out_len: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    nonspeech: torch.Tensor,
    subsample: int,
    reach: int = 10,
) -> list[tuple[int, int, int, int, int]]:
    """(utterance, first frame, end frame, first target, end target) pieces for CTC: each utterance
    (`lengths` input frames, `out_len` output frames) cut in the middle of its inner pauses, the words before
    a pause in one piece and those after it in the next.

    CTC alone let the model hold a word's last letter (and the space) back through a pause until the next
    word began, so a stream's final lost it; the blank loss on the pause only moved the letter to the next
    word's onset. Which word ends at a pause is not stored with the corpus: the current model's forced
    alignment (torchaudio) says which space lies nearest the pause, within `reach` output frames of it, and
    the cut goes after that space. Utterances without such a pause stay whole.
    """
    pieces = []
    ends = torch.cumsum(target_lengths, 0).tolist()
    for b, (end, n) in enumerate(zip(ends, target_lengths.tolist(), strict=True)):
        start, frames = end - n, int(out_len[b])
        pauses = [(a, z) for a, z in inner_pauses(nonspeech[b], int(lengths[b]), subsample) if z <= frames]
        target = targets[start:end]
        cuts: list[tuple[int, int]] = []
        if pauses and (target == text.SPACE_ID).any():
            try:
                path, scores = torchaudio.functional.forced_align(
                    log_probs[b : b + 1, :frames].detach().float().cpu(),
                    target[None].int().cpu(),
                    blank=text.BLANK_ID,
                )
            except (RuntimeError, IndexError):  # too few frames for the target, or no path at all
                path = None
            # where no path is possible (a token the model gives no probability, NaN) torchaudio returns
            # garbage, not an error: a path that does not spell the target leaves the utterance whole too
            spaces = []
            if path is not None and torch.isfinite(scores).all():
                spans = torchaudio.functional.merge_tokens(path[0], scores[0].exp(), blank=text.BLANK_ID)
                if [sp.token for sp in spans] == target.tolist():
                    spaces = [(k, sp) for k, sp in enumerate(spans) if sp.token == text.SPACE_ID]
            if spaces:
                for a, z in pauses:
                    dist, k = min((max(a - sp.end, sp.start - z, 0), k) for k, sp in spaces)
                    if dist <= reach and (not cuts or (k + 1 > cuts[-1][1] and (a + z) // 2 > cuts[-1][0])):
                        cuts.append(((a + z) // 2, k + 1))
        bounds = [(0, 0), *cuts, (frames, n)]
        pieces += [(b, t0, t1, start + k0, start + k1) for (t0, k0), (t1, k1) in itertools.pairwise(bounds)]
    return pieces


def pieces_ctc(ctc, log_probs: torch.Tensor, targets: torch.Tensor, pieces) -> torch.Tensor:
    """The CTC loss (`ctc`, summed) of `pause_segments`' pieces."""
    x = torch.nn.utils.rnn.pad_sequence([log_probs[b, t0:t1] for b, t0, t1, _, _ in pieces])  # (T, N, V)
    target = torch.cat([targets[k0:k1] for _, _, _, k0, k1 in pieces])
    lengths = torch.tensor([t1 - t0 for _, t0, t1, _, _ in pieces])
    target_lengths = torch.tensor([k1 - k0 for *_, k0, k1 in pieces])
    return ctc(x.float(), target, lengths, target_lengths)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # the HTK mel scale, torchaudio's MelSpectrogram default


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def warp_spectrum(feats: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Log-mel features (B, T, F) of each utterance as if its spectrum were warped f -> a*f (`factors`, (B,)):
    a vocal-tract-length change, interpolated between mel bins; the edge bins fill what lies beyond them."""
    n_mels = feats.shape[-1]
    cfg = features.FeatureConfig(n_mels=n_mels)
    lo, hi = _hz_to_mel(torch.tensor(cfg.f_min)), _hz_to_mel(torch.tensor(cfg.f_max))
    step = (hi - lo) / (n_mels + 1)
    centres_hz = _mel_to_hz(lo + step * torch.arange(1, n_mels + 1))
    src = ((_hz_to_mel(centres_hz / factors[:, None]) - lo) / step - 1).clamp(0, n_mels - 1)  # (B, F)
    i0 = src.floor().long().clamp(max=n_mels - 2)
    w = (src - i0)[:, None, :]
    index = i0[:, None, :].expand(-1, feats.shape[1], -1)
    return torch.gather(feats, 2, index) * (1 - w) + torch.gather(feats, 2, index + 1) * w


def channel_gain(feats: torch.Tensor, db: torch.Tensor, log_floor: float = features.LOG_FLOOR):
    """Log-mel features (B, T, F) of each utterance as if its signal had passed a gain of `db` dB per mel bin
    ((B, F), or (B, 1) for a plain gain) before the front end's `log_floor` is added: exactly the features of
    the scaled audio, so a bin left empty (8 kHz audio above 4 kHz) stays at the floor as it would."""
    power = (feats.exp() - log_floor).clamp(min=0.0)
    return torch.log(power * 10.0 ** (db[:, None, :] / 10.0) + log_floor)


def perturb_voice(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    generator: torch.Generator,
    warp: float = 0.0,
    tilt_db: float = 0.0,
    gain_db: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Per-utterance voice and channel perturbation of un-normalised log-mel features (B, T, F), drawn afresh
    each time a batch is made: the spectrum warped f -> a*f with a within 1 +- `warp` (`warp_spectrum`); a
    smooth random curve of at most +- `tilt_db` dB (a tilt plus a half-cosine bump: the colour of a microphone
    or channel) and a gain drawn from `gain_db`, both applied to the signal (`channel_gain`).
    Frames beyond `lengths` stay 0."""
    b, _, n_mels = feats.shape
    out = feats
    if warp:
        out = warp_spectrum(out, 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * warp)
    gain = gain_db != (0.0, 0.0)
    if tilt_db or gain:
        db = torch.zeros(b, n_mels)
        if tilt_db:
            pos = torch.linspace(-1.0, 1.0, n_mels)
            coef = (torch.rand(b, 2, generator=generator) * 2 - 1) * (tilt_db / 2)
            db += coef[:, :1] * pos + coef[:, 1:] * torch.cos(pos * math.pi / 2)
        if gain:
            low, high = gain_db
            db += low + torch.rand(b, 1, generator=generator) * (high - low)
        out = channel_gain(out, db)
    return out * inside(lengths, out.shape[1]).unsqueeze(-1)


def spec_augment(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """SpecAugment masks (torchaudio) on normalised features (B, T, F); masked values become 0 (the mean)."""
    spec = x.transpose(1, 2)  # (B, F, T)
    for _ in range(cfg.freq_masks):
        spec = torchaudio.transforms.FrequencyMasking(cfg.freq_width, iid_masks=True)(spec)
    for _ in range(cfg.time_masks):
        spec = torchaudio.transforms.TimeMasking(cfg.time_width, iid_masks=True, p=0.2)(spec)
    return spec.transpose(1, 2)


# ---- distributed --------------------------------------------------------------------------------------
def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = cfg.device == "cuda" or (not cfg.device and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def native_bf16_cpu() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX), as oneDNN uses it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_amp(setting: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast. "auto": on CUDA, and on CPUs with native bfloat16, where a
    training step of the default model takes 1.7x (latency-controlled) to 2.5x (full context) less time
    than in float32 (README); elsewhere bfloat16 is emulated and slower."""
    if setting not in AMP_SETTINGS:
        raise ValueError(f"amp must be one of {', '.join(AMP_SETTINGS)}, not {setting!r}")
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())
    return setting == "on"


# ---- the loop -----------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    rank, world, device = setup_distributed(cfg)
    main_proc = rank == 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    quiet = not main_proc
    corpus = load_corpus(tuple(dict.fromkeys(cfg.train + cfg.clean)), cfg.max_seconds, "train", quiet)
    clean_paths = {u.path for m in cfg.clean for u in read_manifest(m)} if cfg.clean else set()
    clean_ids = [i for i, u in enumerate(corpus.utterances) if u.path in clean_paths]
    train_ids = repeated_ids(corpus, cfg.train, [int(r) for r in cfg.train_repeat])

    resume = out / "last.pt"
    payload = checkpoint.read(resume) if resume.exists() else None
    if payload is None and cfg.init:
        payload = checkpoint.read(cfg.init)
        payload = {k: payload[k] for k in ("model_config", "model", "stats", "feature_config")}
    model_config = PRESETS[cfg.preset]
    if payload is not None:
        model_config = type(model_config)(**payload["model_config"])
        stats = features.FeatureStats.from_dict(payload["stats"])
    else:
        stats = compute_stats(corpus, cfg.stats_utterances, cfg.seed)
    model = AcousticModel(model_config).to(device)
    if payload is not None:
        model.load_state_dict(payload["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos = payload.get("train_state", {"step": 0, "epoch": 0, "batch": 0}) if payload else None
    pos = pos or {"step": 0, "epoch": 0, "batch": 0}
    if payload is not None and "optimizer" in payload:
        optimizer.load_state_dict(payload["optimizer"])
    best = payload.get("best_wer", math.inf) if payload else math.inf
    best_sets = payload.get("best_sets") if payload else None  # the dev sets `best` is a mean over
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    ctc = torch.nn.CTCLoss(blank=text.BLANK_ID, reduction="sum", zero_infinity=True)
    amp = use_amp(cfg.amp, device)

    def epoch_corpus(epoch: int) -> Corpus:
        ids = clean_ids if epoch < cfg.clean_epochs and clean_ids else train_ids
        return Corpus(*([lst[i] for i in ids] for lst in (corpus.utterances, corpus.feats, corpus.targets)))

    steps_per_epoch = [len(make_batches(epoch_corpus(e), cfg, e, world)) // world for e in range(cfg.epochs)]
    total_steps = sum(steps_per_epoch) if not cfg.max_steps else min(cfg.max_steps, sum(steps_per_epoch))
    if main_proc:
        print(
            f"model {cfg.preset}: {model.num_parameters() / 1e6:.2f}M parameters; {len(train_ids)} training "
            f"utterances ({sum(corpus.frames(i) for i in train_ids) / 360000:.2f} h); {total_steps} steps; "
            f"device {device}{' (bfloat16 autocast)' if amp else ''}, {world} process(es), "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
    metrics = open(out / "metrics.jsonl", "a") if main_proc else None

    def save(name: str, **extra):
        if main_proc:
            checkpoint.save(
                out / name,
                model,
                stats,
                optimizer=optimizer.state_dict(),
                train_state=dict(pos),
                best_wer=best,
                best_sets=best_sets,
                train_config=dataclasses.asdict(cfg),
                **extra,
            )

    voice = dict(warp=cfg.voice_warp, tilt_db=cfg.tilt_db, gain_db=(cfg.gain_min_db, cfg.gain_max_db))
    step = pos["step"]
    run_audio_s = 0.0  # audio trained on since this process started (all epochs)
    skipped = bad_run = 0  # steps skipped for a non-finite gradient: in all, and in a row
    for epoch in range(pos["epoch"], cfg.epochs):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        ec = epoch_corpus(epoch)
        batches = make_batches(ec, cfg, epoch, world)
        mine = batches[rank::world]
        start = pos["batch"] if epoch == pos["epoch"] else 0
        model.train()
        bar = tqdm(
            total=len(mine),
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=quiet,
            mininterval=2,
            unit="batch",
        )
        t0, audio_s, loss_sum, loss_n = time.time(), 0.0, 0.0, 0
        for b in range(start, len(mine)):
            if cfg.max_steps and step >= cfg.max_steps:
                break
            step_seed = cfg.seed * 7919 + step  # this step's draws depend on nothing else (resumable)
            rng = random.Random(step_seed)
            chunk = (
                None if rng.random() < cfg.full_context_prob else rng.randint(cfg.chunk_min, cfg.chunk_max)
            )
            right = rng.randint(cfg.right_min, cfg.right_max)
            augment = epoch >= cfg.clean_epochs
            pad = round(cfg.pad_max_s * 100) if augment and rng.random() < cfg.pad_prob else 0
            quiet_min = round(cfg.quiet_min_s * 100) if cfg.pad_blank_weight else 0
            perturb = dict(voice=voice, tempo_warp=cfg.tempo_warp) if augment else {}
            batch = collate(ec, mine[b], stats, device, pad, step_seed, quiet_min, **perturb)
            x, lengths, targets, target_lengths, nonspeech = batch
            if augment:
                x = spec_augment(x, cfg)
            for group in optimizer.param_groups:
                group["lr"] = get_lr(step, cfg, total_steps)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                log_probs, out_len = ddp(x, lengths, chunk, right)
                teacher = None
                if cfg.distill_weight and chunk is not None:
                    model.eval()  # the teacher's output without dropout
                    with torch.no_grad():
                        teacher, _ = model(x, lengths, None, right)
                    model.train()
            if cfg.split_at_pauses and quiet_min:
                pieces = pause_segments(
                    log_probs, out_len, lengths, targets, target_lengths, nonspeech, model_config.subsample
                )
                loss = pieces_ctc(ctc, log_probs, targets, pieces)
            else:
                loss = ctc(log_probs.float().transpose(0, 1), targets, out_len, target_lengths)
            if cfg.pad_blank_weight and (pad or quiet_min):
                loss = loss + cfg.pad_blank_weight * nonspeech_blank_loss(
                    log_probs, out_len, nonspeech, model_config.subsample
                )
            if teacher is not None:
                loss = loss + cfg.distill_weight * distill_loss(log_probs, teacher, out_len)
            loss = loss / len(mine[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # on every rank, skipped or not: DDP averages the gradients here
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            if torch.isfinite(norm):
                optimizer.step()
                bad_run = 0
                loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
            else:  # one NaN step would poison the weights and Adam's moments, and last.pt with them
                skipped, bad_run = skipped + 1, bad_run + 1
                ids = [ec.utterances[i].path for i in mine[b]]
                print(f"step {step}: non-finite loss or gradient, step skipped; batch {ids}", file=sys.stderr)
                if bad_run >= MAX_BAD_STEPS:
                    raise FloatingPointError(
                        f"{bad_run} steps in a row had a non-finite gradient (step {step}): training has "
                        f"diverged; {out / 'last.pt'} holds the last good weights"
                    )
            step += 1
            pos.update(step=step, epoch=epoch, batch=b + 1)
            step_audio_s = lengths.sum().item() / 100 * world
            audio_s += step_audio_s
            run_audio_s += step_audio_s
            speed = audio_s / (time.time() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}", audio_s_per_s=f"{speed:.0f}", refresh=False)
            bar.update()
            if main_proc and step % cfg.log_every == 0:
                row = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss_sum / loss_n if loss_n else math.nan,
                    "skipped": skipped,
                    "lr": get_lr(step, cfg, total_steps),
                    "audio_s_per_s": speed,
                    "audio_s": run_audio_s,
                    "time": time.time(),
                }
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                loss_sum, loss_n = 0.0, 0
            if step % cfg.checkpoint_every == 0:
                save("last.pt")
        bar.close()
        if pos["epoch"] == epoch and pos["batch"] < len(mine):  # stopped by max_steps mid-epoch
            save("last.pt")
            break
        pos.update(epoch=epoch + 1, batch=0)
        if main_proc and cfg.dev:
            result = validate(model, stats, cfg, device)
            wer = float(np.mean([r["wer"] for r in result.values()])) if result else math.inf
            if sorted(result) != best_sets:  # a dev set appeared or went since: the means do not compare
                best, best_sets = math.inf, sorted(result)
            metrics.write(
                json.dumps({"step": step, "epoch": epoch + 1, "dev": result, "time": time.time()}) + "\n"
            )
            metrics.flush()
            print(evaluate.format_table(result, f"epoch {epoch + 1}, step {step}"), flush=True)
            if wer <= best:
                best = wer
                save("best.pt", dev=result)
        save("last.pt")
    if world > 1:
        dist.barrier()
    if metrics:
        metrics.close()
    return {"step": step, "best_wer": best, "model": model}


def validate(model: AcousticModel, stats, cfg: TrainConfig, device) -> dict:
    """WER/CER of greedy decoding on each dev manifest, full context."""
    result = {}
    for manifest in cfg.dev:
        if not Path(manifest).exists():
            continue
        utts = read_manifest(manifest)
        if cfg.dev_limit:
            utts = utts[: cfg.dev_limit]
        result[Path(manifest).stem] = evaluate.score(model, stats, utts, mode="full", device=device)
    model.train()
    return result


def _parse_bool(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return value.lower() in ("1", "true", "yes")


def parse_args(argv=None) -> TrainConfig:
    """Command-line flags generated from TrainConfig's fields."""
    parser = argparse.ArgumentParser(description="Train the CTC acoustic model (resumes from OUT/last.pt).")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="*", default=f.default)
        else:
            parser.add_argument(
                flag, type=_parse_bool if isinstance(f.default, bool) else type(f.default), default=f.default
            )
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()})
    if cfg.preset not in PRESETS:
        parser.error(f"unknown preset {cfg.preset!r}: choose from {', '.join(PRESETS)}")
    if cfg.train_repeat and (
        len(cfg.train_repeat) != len(cfg.train)
        or not all(r.isdigit() and int(r) >= 1 for r in cfg.train_repeat)
    ):
        parser.error("--train-repeat takes one whole number of at least 1 for each --train manifest")
    if cfg.amp not in AMP_SETTINGS:
        parser.error(f"--amp must be one of {', '.join(AMP_SETTINGS)}, not {cfg.amp!r}")
    return cfg


def main(argv=None) -> None:
    cfg = parse_args(argv)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {result['step']}, best mean dev WER {result['best_wer']:.3f}; in {cfg.out}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
