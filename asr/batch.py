"""Batch transcription: many whole files at once, with word timings, confidences and subtitles.

    transcriber = BatchTranscriber.load("models/default.pt", device="cuda")
    for item, outcome in transcribe_items(transcriber, find_audio(["recordings/"])):
        print(item.path, outcome.text if isinstance(outcome, Transcript) else f"failed: {outcome}")

Two modes compute a file's transcript:

- "full" (the default): each file in full context (`AcousticModel.forward`, both directions over the whole
  file), files batched by length like `asr.evaluate.transcribe_full`, greedy CTC. The most accurate and the
  fastest on a GPU. Its transcripts equal `asr.evaluate.transcribe_full`'s.
- "stream": each file through a recognition session (latency-controlled chunks, endpointing), many sessions
  stepped together by `asr.streaming.step_sessions`; exactly what the server's Recognize call returns with its
  default streaming settings, utterance by utterance.

Files are read and their features computed on a few threads ahead of the model (`transcribe_items`), so
decoding audio overlaps the forward calls; a file that cannot be read fails alone (its outcome is the
exception) and never stops the others.

Inputs come from `find_audio` (files, and folders searched recursively for audio extensions) or `read_list`
(a JSONL manifest or a `transcripts.tsv`, with reference transcripts). `read_list` does not open the audio
(unlike `asr.data.read_manifest`, which reads durations from the headers), so one corrupt file in a
manifest fails on its own when it is transcribed.
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from asr import audio, checkpoint, decoding, features
from asr.data import ManifestError
from asr.decoding import DecoderConfig, Hypothesis
from asr.streaming import MAX_BATCH, Recognizer, StreamingConfig, Word, step_sessions

MODES = ("full", "stream")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")  # libsndfile's
BATCH_FRAMES = 30000  # padded feature frames per forward call in full-context mode
BLOCK_FRAMES = 8 * BATCH_FRAMES  # feature frames (10 ms) gathered before the model runs: ~40 min of audio
BLOCK_FILES = 512  # files gathered before the model runs, at most
PREFETCH = 64  # files read ahead of the model, at most


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Item:
    """One file to transcribe."""

    path: str  # the audio file, as found or as the manifest names it (resolved against the manifest folder)
    name: str  # a relative name for files written about it (subtitles): its path under the searched folder
    reference: str | None = None  # the transcript a manifest gives (None: unknown)


def find_audio(paths: Iterable[str | os.PathLike]) -> list[Item]:
    """Files as given, folders searched recursively for AUDIO_EXTENSIONS (sorted). A path that does not exist
    is kept as an item: it fails when it is read, like an unreadable file."""
    items = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file():
                    items.append(Item(str(f), str(f.relative_to(p))))
        else:
            items.append(Item(str(p), p.name))
    return items


def read_list(manifest: str | os.PathLike) -> list[Item]:
    """A JSONL manifest (`path`, `text`), a `transcripts.tsv` (header row with `path`, `text`) or a folder
    holding one, as items with references. Relative paths are relative to the manifest's folder. The audio
    is not opened; a malformed manifest raises `asr.data.ManifestError`."""
    path = Path(manifest)
    if path.is_dir():
        path = path / "transcripts.tsv"
    base = path.parent
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix == ".tsv":
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if not reader.fieldnames or "path" not in reader.fieldnames:
                    raise ManifestError(f"{path}: expected a header row with a 'path' column")
                rows = [(n, row) for n, row in enumerate(reader, 2)]
            else:
                rows = []
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append((n, json.loads(line)))
                        except ValueError as err:
                            raise ManifestError(f"{path}:{n}: bad manifest line: {err}") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest: {err.strerror}") from None
    items = []
    for n, row in rows:
        if not isinstance(row, dict) or not row.get("path"):
            raise ManifestError(f"{path}:{n}: no path")
        name = Path(row["path"])
        full = name if name.is_absolute() else Path(os.path.normpath(base / name))
        rel = str(name) if not name.is_absolute() else name.name
        text = row.get("text")
        items.append(Item(str(full), rel, text if isinstance(text, str) else None))
    return items


# --------------------------------------------------------------------------------------------- transcripts


def _f32(x: float) -> float:
    """A confidence as the wire carries it (float32), so that local and server outputs print the same."""
    return float(np.float32(x))


@dataclass(frozen=True)
class Transcript:
    """The transcript of one file."""

    text: str  # words separated by single spaces
    words: list[Word] = field(default_factory=list)  # with times from the start of the file and confidences
    duration: float = 0.0  # seconds of audio

    @property
    def confidence(self) -> float:
        """Mean word confidence, 0 when nothing was recognised."""
        return sum(_f32(w.confidence) for w in self.words) / len(self.words) if self.words else 0.0

    def to_dict(self, path: str) -> dict:
        """The JSON line of asr-transcribe: times in seconds and confidences, to 3 decimals."""
        return {
            "path": path,
            "text": self.text,
            "words": [
                {
                    "word": w.word,
                    "start": round(w.start_s, 3),
                    "end": round(w.end_s, 3),
                    "confidence": round(_f32(w.confidence), 3),
                }
                for w in self.words
            ],
            "confidence": round(self.confidence, 3),
            "duration": round(self.duration, 3),
        }


@torch.no_grad()
def full_log_probs(
    model, feats: Sequence[Tensor], device: str | torch.device = "cpu", batch_frames: int = BATCH_FRAMES
) -> Iterator[tuple[int, Tensor]]:
    """(index, (T', vocab) float CPU log-probs) of normalised (T, n_mels) features, full context.

    Length-sorted batches of at most `batch_frames` padded frames per forward call. Features too short for
    one output frame are skipped.
    """
    S = model.config.subsample
    order = sorted((i for i in range(len(feats)) if feats[i].shape[0] >= S), key=lambda i: feats[i].shape[0])
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * feats[order[j]].shape[0] <= batch_frames:
            j += 1
        idx = order[i:j]
        x = torch.nn.utils.rnn.pad_sequence([feats[k] for k in idx], batch_first=True).to(device)
        lengths = torch.tensor([feats[k].shape[0] for k in idx], device=device)
        log_probs, out_len = model(x, lengths)
        log_probs = log_probs.float().cpu()
        for n, k in enumerate(idx):
            yield k, log_probs[n, : int(out_len[n])]
        i = j


def decode_full(
    model,
    feats: Sequence[Tensor],
    device: str | torch.device = "cpu",
    batch_frames: int = BATCH_FRAMES,
    decode: Callable[[Tensor], Hypothesis] = decoding.greedy,
) -> list[Hypothesis]:
    """Hypotheses (token frames and confidences kept) of `full_log_probs`, greedy unless `decode` says;
    too short: empty."""
    out = [Hypothesis() for _ in feats]
    for k, log_probs in full_log_probs(model, feats, device, batch_frames):
        out[k] = decode(log_probs)
    return out


class Prepared(NamedTuple):
    """A file made ready for the model (on a loader thread)."""

    duration: float  # seconds of audio
    data: Tensor | np.ndarray  # full mode: normalised features (T, n_mels); stream mode: samples at 16 kHz

    @property
    def frames(self) -> int:
        """Its size in 10 ms feature frames, for sizing blocks."""
        return len(self.data) if isinstance(self.data, Tensor) else len(self.data) // 160


class BatchTranscriber:
    """Whole files -> Transcripts, many at once, with one loaded model.

    `prepare` (thread-safe, run on loader threads) decodes nothing itself: it takes samples and computes what
    the model needs; `transcribe` runs the model over a list of prepared files.
    """

    def __init__(
        self,
        recognizer: Recognizer,
        mode: str = "full",
        stream_config: StreamingConfig | None = None,
        decoder: DecoderConfig | None = None,
    ) -> None:
        """`decoder` decodes in both modes (default: that of `stream_config`, greedy unless it says)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.recognizer = recognizer
        self.mode = mode
        self.stream_config = stream_config or StreamingConfig(interim_results=False)
        if decoder is not None:
            self.stream_config = replace(self.stream_config, decoder=decoder)
        self.batch_frames = BATCH_FRAMES

    @classmethod
    def load(
        cls,
        path: str | os.PathLike = checkpoint.DEFAULT_MODEL,
        device: str = "cpu",
        mode: str = "full",
        decoder: DecoderConfig | None = None,
    ) -> BatchTranscriber:
        return cls(Recognizer.load(path, device), mode, decoder=decoder)

    def _decode(self, log_probs: Tensor) -> Hypothesis:
        """Full mode's decoding: that of `stream_config`, so both modes decode alike."""
        config = self.stream_config.decoder
        if config.method == "greedy":
            return decoding.greedy(log_probs)
        return decoding.beam_search(log_probs, config, resources=self.recognizer.resources(config))[0][0]

    def prepare(self, samples: np.ndarray) -> Prepared:
        """Mono float32 samples at 16 kHz -> what `transcribe` takes."""
        duration = len(samples) / audio.SAMPLE_RATE
        if self.mode == "stream":
            return Prepared(duration, samples)
        r = self.recognizer
        return Prepared(duration, features.extract(samples, r.feature_config, r.stats))

    def transcribe(self, prepared: Sequence[Prepared]) -> list[Transcript]:
        if self.mode == "stream":
            return self._stream(prepared)
        r = self.recognizer
        hyps = decode_full(r.model, [p.data for p in prepared], r.device, self.batch_frames, self._decode)
        return [
            Transcript(
                h.text,
                [
                    Word(w.word, r.frame_time(w.start_frame), r.frame_time(w.end_frame), w.confidence)
                    for w in h.words()
                ],  # fmt: skip
                p.duration,
            )
            for h, p in zip(hyps, prepared, strict=True)
        ]

    def _stream(self, prepared: Sequence[Prepared]) -> list[Transcript]:
        sessions = [self.recognizer.session(self.stream_config) for _ in prepared]
        for session, p in zip(sessions, prepared, strict=True):
            session.feed(p.data)
            session.end_input()
        results = step_sessions(self.recognizer, sessions, MAX_BATCH)
        out = []
        for session, p in zip(sessions, prepared, strict=True):
            finals = [r for r in results[session] if r.is_final]
            out.append(
                Transcript(" ".join(r.text for r in finals), [w for r in finals for w in r.words], p.duration)
            )
        return out


def transcribe_items(
    transcriber: BatchTranscriber, items: Sequence[Item], jobs: int = 4
) -> Iterator[tuple[Item, Transcript | Exception]]:
    """(item, its Transcript or the exception that failed it), in the order of `items`.

    `jobs` threads read and prepare files ahead of the model (at most PREFETCH of them); the model runs on
    blocks of up to BLOCK_FILES files or BLOCK_FRAMES frames, so memory stays bounded for any number of files.
    """

    def load(item: Item) -> Prepared:
        return transcriber.prepare(audio.load(item.path))

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="asr-load") as pool:
        queue: deque = deque()
        todo = iter(items)
        for item in todo:
            queue.append((item, pool.submit(load, item)))
            if len(queue) >= PREFETCH:
                break
        block: list[tuple[Item, Prepared | Exception]] = []
        frames = 0
        while queue:
            item, future = queue.popleft()
            if (nxt := next(todo, None)) is not None:
                queue.append((nxt, pool.submit(load, nxt)))
            try:
                prepared = future.result()
                frames += prepared.frames
            except Exception as err:
                prepared = err
            block.append((item, prepared))
            if frames >= BLOCK_FRAMES or len(block) >= BLOCK_FILES or not queue:
                yield from _run_block(transcriber, block)
                block, frames = [], 0


def _run_block(transcriber: BatchTranscriber, block: list[tuple[Item, Prepared | Exception]]):
    ok = [(i, p) for i, (_, p) in enumerate(block) if isinstance(p, Prepared)]
    outcomes: list[Transcript | Exception] = [p for _, p in block]  # the exceptions stay
    if ok:
        try:
            for (i, _), t in zip(ok, transcriber.transcribe([p for _, p in ok]), strict=True):
                outcomes[i] = t
        except Exception as err:  # a failing batch: retry its files one by one, so only the culprit fails
            if len(ok) == 1:
                outcomes[ok[0][0]] = err
            else:
                for i, p in ok:
                    try:
                        outcomes[i] = transcriber.transcribe([p])[0]
                    except Exception as one:
                        outcomes[i] = one
    for (item, _), outcome in zip(block, outcomes, strict=True):
        yield item, outcome


# --------------------------------------------------------------------------------------------- subtitles


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str  # one or two lines


LINE_CHARS = 42  # longest subtitle line (the usual broadcast guideline)
CUE_S = 6.0  # longest cue
CUE_GAP_S = 0.7  # a pause this long between words starts a new cue


def cues(words: Sequence[Word], line_chars: int = LINE_CHARS, max_s: float = CUE_S, gap_s: float = CUE_GAP_S
         ) -> list[Cue]:  # fmt: skip
    """Words -> subtitle cues of at most two lines of `line_chars`, `max_s` long, split at pauses."""
    out: list[Cue] = []
    group: list[Word] = []

    def flush() -> None:
        if group:
            out.append(
                Cue(group[0].start_s, group[-1].end_s, _two_lines([w.word for w in group], line_chars))
            )
            group.clear()

    for w in words:
        if group:
            text_len = sum(len(g.word) + 1 for g in group) + len(w.word)
            if (
                w.start_s - group[-1].end_s >= gap_s
                or w.end_s - group[0].start_s > max_s
                or (text_len > 2 * line_chars)
            ):
                flush()
        group.append(w)
    flush()
    return out


def _two_lines(words: list[str], line_chars: int) -> str:
    text = " ".join(words)
    if len(text) <= line_chars or len(words) < 2:
        return text
    best = min(range(1, len(words)), key=lambda k: abs(len(" ".join(words[:k])) - len(" ".join(words[k:]))))
    return " ".join(words[:best]) + "\n" + " ".join(words[best:])


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(max(seconds, 0.0) * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(cue_list: Sequence[Cue]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    return "".join(
        f"{n}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n\n"
        for n, c in enumerate(cue_list, 1)
    )


def vtt(cue_list: Sequence[Cue]) -> str:
    """WebVTT: a header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`."""
    return "WEBVTT\n\n" + "".join(
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n\n" for c in cue_list
    )
