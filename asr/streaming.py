"""Recognition sessions: streaming features + model state + decoder state + endpointing, one per stream.

A `Recognizer` holds what every stream shares: the acoustic model (eval mode, no autograd), the feature
normalisation statistics, the feature config and the beam-search resources (LM, lexicon) loaded once per
decoder config. `recognizer.session(config)` makes a `Session`, which holds everything that belongs to one
stream and passes it explicitly: the feature extractor, buffered feature frames, the model's `ModelState`,
the decoder of the current utterance, endpointing counters and stream time offsets.

    session = recognizer.session(StreamingConfig())
    for piece in pieces:                     # mono float32 at 16 kHz, any sizes
        for result in session.accept(piece):
            print(result.is_final, result.text)
    results = session.finish()              # end of input: the last final

Stepping. Features are cut into model steps of `chunk` output frames plus `right` frames of look-ahead exactly
as `asr.model.next_step` says, so the log-probs of a stream are the same however its audio was split into
pieces, and equal `asr.evaluate.stream_log_probs` of the whole file. A session's work is split in two so that
many streams can share one forward call: `pending()` says which chunk it needs stepped and `advance()` applies
the model's output. `step_sessions` gathers the sessions with a ready chunk, groups them by chunk shape,
stacks their states, runs ONE `model.step` per group, unstacks and writes back; `BatchScheduler` does that
on a worker thread for server handler threads, which push audio and wait on futures. `Session.accept()` used
alone steps only itself.

Results. After each decoded chunk a partial result (`is_final=False`) carries the current best hypothesis
of the utterance when its text changed, with a `stability` estimate. A final result closes an utterance at an
endpoint; its text never changes afterwards. Endpoints:

- trailing silence: `endpoint_silence_s` of frames whose argmax is blank (or the word separator) after the
  last frame whose argmax is a letter. This is the CTC model's own speech/non-speech decision, free, and it
  needs no energy threshold that would depend on the recording level and the background noise;
- `max_utterance_s`: the utterance is cut where it reaches that length (even inside a word);
- end of input (`finish()`).

The utterance is cut at the exact frame where the endpoint is reached, also in the middle of a chunk; the rest
of the chunk belongs to the next utterance. After an endpoint only the decoder is reset by default: the model
state carries on (as in sherpa's endpointing), so the model hears one continuous stream and the finals of a
stream together are the decode of the whole stream's log-probs. With `reset_at_endpoint` the model state
also goes back to zero at the next chunk boundary (the frames between the endpoint and it are non-speech by
construction), so every utterance starts as a training utterance did; the finals are then the decode of each
stretch between resets (`Session.resets`) as a stream of its own. With the bundled model resets are worse
on joined FSDD digits and on padded an4 clips and level on plain ones (`make eval-long`, README), so they are
off by default. An utterance in which nothing was said restarts silently every `endpoint_silence_s`
(resetting the model state too when resets are on), so leading silence does not pile up. With
`single_utterance` the session is `done` after the first final and ignores later audio.

Memory and CPU per second of audio are bounded however long a stream runs: the session keeps the buffered
frames of at most one chunk plus its look-ahead (plus the last piece of audio not yet stepped), the model
state, and the current utterance's decoder state, which `max_utterance_s` bounds. Nothing of past
utterances is kept.

Time. An output frame covers `subsample * hop` samples (30 ms by default): output frame j of the stream spans
[j, j + 1) * frame_duration seconds of stream time. Word timings come from the decoder's per-frame token path
(the argmax path for greedy decoding, flashlight's best path for beam search).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from asr import checkpoint, decoding
from asr.decoding import BeamResources, DecoderConfig, GreedyDecoder, Hypothesis, StreamDecoder
from asr.features import FeatureConfig, FeatureExtractor, FeatureStats
from asr.model import (
    DEFAULT_CHUNK,
    DEFAULT_RIGHT,
    AcousticModel,
    ModelState,
    next_step,
    quantize_int8,
    stack_states,
    unstack_state,
)
from asr.text import SPACE_ID

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz: what sessions accept (asr.audio converts everything else)
MAX_BATCH = 64  # streams stepped in one forward call at most


# --------------------------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class StreamingConfig:
    """How one stream is recognised."""

    chunk: int = DEFAULT_CHUNK  # output frames per model step (30 ms each with the default model)
    right: int = DEFAULT_RIGHT  # look-ahead output frames per step (latency-controlled right context)
    endpoint_silence_s: float = 0.8  # non-speech after the last letter that ends an utterance (whole frames)
    max_utterance_s: float = 30.0  # an utterance this long is cut with a final result
    single_utterance: bool = False  # stop after the first final result; later audio is ignored
    interim_results: bool = True  # emit partial results (is_final=False) while an utterance goes on
    max_alternatives: int = 1  # alternatives in a final result (more than one only with beam search)
    reset_at_endpoint: bool = False  # zero the model state after an endpoint (see the module docstring)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # greedy unless it says beam
    hotwords: tuple[tuple[str, float], ...] = ()  # (phrase, boost per letter) biasing beam search

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.right < 0:
            raise ValueError(f"chunk must be at least 1 and right at least 0, got {self.chunk}, {self.right}")
        if not self.endpoint_silence_s > 0 or not self.max_utterance_s > 0:
            raise ValueError("endpoint_silence_s and max_utterance_s must be positive")
        if self.max_alternatives < 1:
            raise ValueError("max_alternatives must be at least 1")
        try:  # any iterable of pairs (a list from a request, say) becomes a hashable tuple of tuples
            hotwords = tuple((phrase, float(boost)) for phrase, boost in self.hotwords)
        except (TypeError, ValueError):
            raise ValueError(f"hotwords must be (phrase, boost) pairs, got {self.hotwords!r}") from None
        for phrase, boost in hotwords:
            if not isinstance(phrase, str) or not np.isfinite(boost):
                raise ValueError(f"hotwords must be (phrase, finite boost) pairs, got {(phrase, boost)!r}")
        object.__setattr__(self, "hotwords", hotwords)


@dataclass(frozen=True)
class Word:
    """A recognised word with its stream time span."""

    word: str
    start_s: float  # start of the frame where its first letter starts
    end_s: float  # end of the frame where its last letter ends
    confidence: float  # lowest peak posterior of its letters, in [0, 1]


@dataclass(frozen=True)
class Result:
    """A partial or final transcript of one utterance of a stream."""

    text: str  # the best hypothesis, words separated by single spaces
    is_final: bool  # True: this utterance is closed and its text never changes
    stability: float  # 0..1: how likely the text is to stay as it is (1 for finals)
    start_s: float  # stream time where the utterance starts
    end_s: float  # stream time of the end of the last frame decoded into this result
    confidence: float  # mean word confidence of `text`, in [0, 1]
    words: list[Word] = field(default_factory=list)  # words of `text` with timings
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # (text, confidence), best first


class Chunk(NamedTuple):
    """A model step a session is waiting for."""

    feats: Tensor  # (F, n_mels): normalised feature frames, the last right * subsample of them look-ahead
    right: int  # right-context output frames among them


# --------------------------------------------------------------------------------------------- recognizer


class Recognizer:
    """What all streams share: the model, normalisation stats, feature config, beam-search resources.

    Thread-safe: the model is only run in inference mode and never changed; sessions are made from any thread.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: AcousticModel,
        stats: FeatureStats,
        feature_config: FeatureConfig = FeatureConfig(),
    ) -> None:
        if feature_config.sample_rate != SAMPLE_RATE:
            raise ValueError(f"features must be at {SAMPLE_RATE} Hz, got {feature_config.sample_rate}")
        if feature_config.n_mels != model.config.n_mels:
            raise ValueError(
                f"the model takes {model.config.n_mels} mel bins, the features have {feature_config.n_mels}"
            )
        self.model = model.eval()
        self.stats = stats
        self.feature_config = feature_config
        self.device = next(model.parameters()).device
        self._resources: dict[tuple[str | None, str | None], BeamResources] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike = checkpoint.DEFAULT_MODEL, device: str | torch.device = "cpu",
             int8: bool = False) -> Recognizer:  # fmt: skip
        """A recognizer for a checkpoint (default: the bundled model); `int8`: CPU int8 recurrent layers."""
        model, stats, feature_config, _ = checkpoint.load(path, device)
        return cls(quantize_int8(model) if int8 else model, stats, feature_config)

    @property
    def subsample(self) -> int:
        """Feature frames per output frame."""
        return self.model.config.subsample

    @property
    def frame_samples(self) -> int:
        """Audio samples per output frame (480 with the default model)."""
        return self.subsample * self.feature_config.hop_length

    @property
    def frame_duration(self) -> float:
        """Seconds per output frame (0.03 with the default model)."""
        return self.frame_samples / self.sample_rate

    def frame_time(self, frame: int) -> float:
        """Stream time in seconds of the start of output frame `frame` (0.9, not 0.8999...)."""
        return frame * self.frame_samples / self.sample_rate

    def algorithmic_latency_s(self, config: StreamingConfig | None = None) -> float:
        """Longest wait from a sample's arrival to its frame's output, before any compute time.

        A chunk is stepped once its `chunk` frames and `right` look-ahead frames are complete; the last
        feature frame needs one analysis window of audio. So: (chunk + right) * frame duration + window.
        """
        config = config or StreamingConfig()
        window = self.feature_config.win_length / self.feature_config.sample_rate
        return (config.chunk + config.right) * self.frame_duration + window

    def resources(self, config: DecoderConfig) -> BeamResources:
        """Beam-search resources (LM, lexicon trie) for `config`, loaded on first use and then shared."""
        key = (config.lexicon_path, config.lm_path)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = decoding.load_resources(config)
            return self._resources[key]

    def make_decoder(self, config: StreamingConfig) -> StreamDecoder:
        """The per-stream decoder for `config` (greedy, or beam search with shared resources and hotwords)."""
        decoder = config.decoder
        if decoder.nbest < config.max_alternatives:
            decoder = dataclasses.replace(decoder, nbest=config.max_alternatives)
        hotwords = list(config.hotwords) or None
        if decoder.method == "greedy" and not hotwords:
            return decoding.make_decoder(decoder)
        return decoding.make_decoder(decoder, hotwords, self.resources(decoder))

    def session(self, config: StreamingConfig | None = None) -> Session:
        """A new stream."""
        config = config or StreamingConfig()
        return Session(self, config, self.make_decoder(config))

    def step(self, chunks: Tensor, states: Sequence[ModelState], right: int
             ) -> tuple[Tensor, list[ModelState]]:  # fmt: skip
        """One forward call for a batch of streams.

        chunks (B, F, n_mels): each stream's next frames, the last `right * subsample` of them look-ahead;
        states: B single-stream states. Returns log_probs (B, (F - right * subsample) // subsample, vocab)
        as float32 on the CPU, and the B states after the step.
        """
        with torch.inference_mode():
            state = stack_states(list(states)) if len(states) > 1 else states[0]
            log_probs, state = self.model.step(chunks.to(self.device), state, right)
            return log_probs.float().cpu(), (unstack_state(state) if len(states) > 1 else [state])

    def recognize(self, samples: np.ndarray, config: StreamingConfig | None = None) -> list[Result]:
        """The final results of a whole recording streamed through one session."""
        session = self.session(config)
        results = session.accept(samples) + session.finish()
        return [r for r in results if r.is_final]


# --------------------------------------------------------------------------------------------- session


class Session:
    """One stream: feature extractor, buffered frames, model state, decoder, endpointing, time offsets.

    Not thread-safe: one thread at a time (a handler thread, or the `BatchScheduler` worker) drives it.
    Use `accept`/`finish` to step it alone, or `feed`/`end_input` + `pending`/`advance` (via
    `step_sessions` or a `BatchScheduler`) to step it together with other streams.
    """

    def __init__(self, recognizer: Recognizer, config: StreamingConfig, decoder: StreamDecoder) -> None:
        self.recognizer = recognizer
        self.config = config
        self.done = False  # no more results will come: input ended, or single_utterance got its final
        self.finals = 0  # final results emitted so far
        frame_s = recognizer.frame_duration
        self._silence_frames = max(1, round(config.endpoint_silence_s / frame_s))  # endpoint after these
        self._max_frames = max(1, round(config.max_utterance_s / frame_s))  # longest utterance
        self._greedy = isinstance(decoder, GreedyDecoder)  # greedy never revises what it has emitted
        self._extractor = FeatureExtractor(recognizer.feature_config, recognizer.stats)
        self._feats = torch.zeros(0, recognizer.feature_config.n_mels)  # (N, n_mels) frames not yet consumed
        self._state = recognizer.model.init_state(1)  # the model's state after the frames consumed
        self._cut: tuple[int, int] | None = None  # (frames, right) of the chunk pending() handed out
        self._input_ended = False
        self._frames = 0  # output frames decoded since the stream started
        self._decoder = decoder
        self._outbox: list[Result] = []  # results not yet taken
        self._reset_due = False  # an endpoint was reached: zero the model state at the next chunk boundary
        self.resets: list[int] = []  # stream output frames where the model state was zeroed (diagnostics)
        self._new_utterance()

    # ---- per-utterance state -------------------------------------------------------------------------
    def _new_utterance(self) -> None:
        self._decoder.begin()
        self._utt_start = self._frames  # stream frame where the utterance starts
        self._utt_frames = 0  # frames decoded in it
        self._last_speech: int | None = None  # utterance frame of the last letter, None: none yet
        self._partial_text = ""  # text of the last partial result

    # ---- input ---------------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> None:
        """Append audio (mono float32 at 16 kHz, shape (n,) or (n, 1)) without stepping the model."""
        if self.done:
            return  # single_utterance got its final, or the input ended: later audio is ignored
        if self._input_ended:
            raise RuntimeError("audio after end of input")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"expected mono samples of shape (n,), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("samples must be finite")
        feats = self._extractor.accept(x)
        if len(feats):
            self._feats = torch.cat([self._feats, feats]) if len(self._feats) else feats

    def end_input(self) -> None:
        """No more audio: the buffered tail is stepped in short chunks and the last utterance closed."""
        if not self._input_ended:
            self._input_ended = True
            self._extractor.finish()
        self._maybe_end()

    # ---- stepping ------------------------------------------------------------------------------------
    def pending(self) -> Chunk | None:
        """The next chunk to step through the model, or None until more audio (or the end of input) comes.

        Calling it again before `advance` returns the same chunk.
        """
        if self.done:
            return None
        S = self.recognizer.subsample
        cut = next_step(len(self._feats), self.config.chunk, self.config.right, S, self._input_ended)
        self._cut = cut
        if cut is None:
            return None
        frames, right = cut
        return Chunk(self._feats[:frames], right)

    @property
    def state(self) -> ModelState:
        """The model state after the frames consumed so far (single stream)."""
        return self._state

    def advance(self, log_probs: Tensor, state: ModelState) -> None:
        """Apply the model's output for the chunk `pending()` returned.

        log_probs (n, vocab): the chunk's output frames; state: the single-stream state after it. Results
        go to the outbox (`take_results`).
        """
        if self._cut is None:
            raise RuntimeError("advance() without a pending chunk")
        frames, right = self._cut
        S = self.recognizer.subsample
        consumed = frames - right * S
        if log_probs.ndim != 2 or log_probs.shape[0] != consumed // S:
            raise ValueError(f"expected ({consumed // S}, vocab) log-probs, got {tuple(log_probs.shape)}")
        self._cut = None
        self._feats = self._feats[consumed:]
        if not len(self._feats):
            self._feats = self._feats.new_zeros(0, self._feats.shape[1])  # drop the old storage
        self._state = state
        self._decode(log_probs)
        self._maybe_end()
        if self._reset_due and not self.done:
            self._reset_due = False
            self._state = self.recognizer.model.init_state(1)
            self.resets.append(self._frames)

    def step(self) -> None:
        """Step this session alone until it waits for audio."""
        while (chunk := self.pending()) is not None:
            log_probs, states = self.recognizer.step(chunk.feats[None], [self._state], chunk.right)
            self.advance(log_probs[0], states[0])

    def take_results(self) -> list[Result]:
        """The results produced since the last call, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def accept(self, samples: np.ndarray) -> list[Result]:
        """Feed audio and step this session alone; returns the partial and final results it produced."""
        self.feed(samples)
        self.step()
        return self.take_results()

    def finish(self) -> list[Result]:
        """End of input: step the rest, close the last utterance; returns the remaining results."""
        self.end_input()
        self.step()
        return self.take_results()

    # ---- decoding and endpointing -------------------------------------------------------------------------
    def _decode(self, log_probs: Tensor) -> None:
        """Feed (n, vocab) output frames to the decoder, cutting utterances at endpoints; then a partial.

        What comes out depends only on the frames, never on how the audio arrived or when the end of input
        was known, so a session stepped alone and one stepped by a busy scheduler give the same results.
        """
        speech = (log_probs.argmax(-1) > SPACE_ID).tolist()  # a letter (not blank, not space) wins the frame
        i, n = 0, len(speech)
        while i < n and not self.done:
            j, cut = i, None
            while j < n and cut is None:
                t = self._utt_frames + j - i  # utterance frame of frame j
                if speech[j]:
                    self._last_speech = t
                j += 1
                if self._last_speech is not None and t - self._last_speech >= self._silence_frames:
                    cut = "endpoint"
                elif t + 1 >= self._max_frames:
                    cut = "max"
                elif self._last_speech is None and t + 1 >= self._silence_frames:
                    cut = "idle"
            self._decoder.step(log_probs[i:j])
            self._frames += j - i
            self._utt_frames += j - i
            if cut in ("endpoint", "max"):
                self._close_utterance()
            if cut is not None and not self.done:
                self._new_utterance()
                self._reset_due |= cut != "max" and self.config.reset_at_endpoint
            i = j
        if self.config.interim_results and not self.done and self._utt_frames:
            self._emit_partial()

    def _seconds(self, frame: int) -> float:
        """Stream time of the start of utterance frame `frame`."""
        return self.recognizer.frame_time(self._utt_start + frame)

    def _words(self, hyp: Hypothesis) -> list[Word]:
        return [
            Word(w.word, self._seconds(w.start_frame), self._seconds(w.end_frame), w.confidence)
            for w in hyp.words()
        ]

    def _emit_partial(self) -> None:
        hyp = self._decoder.partial()
        text = hyp.text
        if not text or text == self._partial_text:
            return
        words = text.split()
        if self._greedy:  # emitted tokens never change: only the last word may still grow
            stable = len(words) if hyp.tokens[-1] == SPACE_ID else len(words) - 1
        else:  # beam search may still revise: words that survived a chunk unchanged, the last one excepted
            previous = self._partial_text.split()[:-1]
            stable = 0
            while stable < min(len(words) - 1, len(previous)) and words[stable] == previous[stable]:
                stable += 1
        stability = len(" ".join(words[:stable])) / len(text)
        self._partial_text = text
        self._outbox.append(
            Result(
                text=text,
                is_final=False,
                stability=stability,
                start_s=self._seconds(0),
                end_s=self._seconds(self._utt_frames),
                confidence=hyp.confidence,
                words=self._words(hyp),
                alternatives=[(text, hyp.confidence)],
            )
        )

    def _close_utterance(self) -> None:
        """End the decoder's utterance; a final result if anything was said."""
        hyps = self._decoder.end()[: self.config.max_alternatives]
        best = hyps[0]
        if not best.text:
            return
        self.finals += 1
        self._outbox.append(
            Result(
                text=best.text,
                is_final=True,
                stability=1.0,
                start_s=self._seconds(0),
                end_s=self._seconds(self._utt_frames),
                confidence=best.confidence,
                words=self._words(best),
                alternatives=[(h.text, h.confidence) for h in hyps],
            )
        )
        if self.config.single_utterance:
            self.done = True
            self._release()

    def _maybe_end(self) -> None:
        """At the end of input, once the last chunk is stepped: close the last utterance."""
        if self._input_ended and not self.done and self.pending() is None:
            if self._utt_frames:
                self._close_utterance()
            self.done = True
            self._release()

    def _release(self) -> None:
        """Drop the buffers of a finished stream."""
        self._feats = self._feats.new_zeros(0, self._feats.shape[1])
        self._cut = None

    # ---- diagnostics --------------------------------------------------------------------------------
    def footprint(self) -> dict[str, int]:
        """Sizes of what the session holds (for tests and metrics): all bounded however long it runs."""
        return {
            "feature_frames": len(self._feats),  # buffered feature frames
            "utterance_frames": self._utt_frames,  # output frames in the decoder's utterance
            "decoder_frames": getattr(self._decoder, "frames", 0),  # frames the decoder holds state for
            "outbox": len(self._outbox),  # results not yet taken
        }

    @property
    def time_s(self) -> float:
        """Stream time decoded so far."""
        return self.recognizer.frame_time(self._frames)


# --------------------------------------------------------------------------------------------- batching


def step_sessions(recognizer: Recognizer, sessions: Iterable[Session], max_batch: int = MAX_BATCH
                  ) -> dict[Session, list[Result]]:  # fmt: skip
    """Step sessions together until none has a ready chunk; returns each session's new results.

    Each round gathers one ready chunk per session, groups the chunks by shape (frames, right), and runs one
    `recognizer.step` per group of at most `max_batch` (a stream's short last chunk usually forms a group
    of its own), then hands each session its output. The results equal stepping each session alone.
    """
    sessions = list(dict.fromkeys(sessions))
    while True:
        groups: dict[tuple[int, int], list[tuple[Session, Chunk]]] = defaultdict(list)
        for session in sessions:
            chunk = session.pending()
            if chunk is not None:
                groups[(len(chunk.feats), chunk.right)].append((session, chunk))
        if not groups:
            break
        for (_, right), members in groups.items():
            for k in range(0, len(members), max_batch):
                batch = members[k : k + max_batch]
                feats = torch.stack([chunk.feats for _, chunk in batch])
                log_probs, states = recognizer.step(feats, [s.state for s, _ in batch], right)
                for n, (session, _) in enumerate(batch):
                    session.advance(log_probs[n], states[n])
    return {session: session.take_results() for session in sessions}


class _Job(NamedTuple):
    samples: np.ndarray | None  # audio to feed, None: end of input
    future: Future


def _cancel(jobs: Iterable[_Job]) -> None:
    """Cancel jobs not started yet, waking whoever waits on them (also in `concurrent.futures.wait`)."""
    for job in jobs:
        if job.future.cancel():
            job.future.set_running_or_notify_cancel()


class BatchScheduler:
    """Steps the sessions of many threads together, on one worker thread.

    A handler thread calls `submit(session, samples)` (or `finish(session)`) and waits on the returned future
    for that audio's results. The worker takes the oldest queued piece of every session with work, feeds them,
    and steps all those sessions with `step_sessions` (shared forward calls of up to `max_batch` streams);
    each future then gets the results its piece produced. A session's pieces are applied in order. `close`
    forgets a session (a stream that ended or was cancelled): its queued pieces are cancelled. Errors in one
    session's audio fail only that future.

    Only the worker touches a session once it was submitted here; do not also call its methods directly.
    """

    def __init__(self, recognizer: Recognizer, max_batch: int = MAX_BATCH) -> None:
        self.recognizer = recognizer
        self.max_batch = max_batch
        self._queues: dict[Session, deque[_Job]] = {}  # sessions with work or open streams, in arrival order
        self._cv = threading.Condition()
        self._stopping = False
        self.rounds = 0  # rounds of feeding and stepping run (metrics)
        self._worker = threading.Thread(target=self._loop, name="asr-batch-scheduler", daemon=True)
        self._worker.start()

    def submit(self, session: Session, samples: np.ndarray) -> Future[list[Result]]:
        """Queue audio for `session`; the future gets the results it produced (possibly none)."""
        return self._put(session, np.array(samples, dtype=np.float32))

    def finish(self, session: Session) -> Future[list[Result]]:
        """Queue the end of `session`'s input; the future gets its last results (the last final)."""
        return self._put(session, None)

    def _put(self, session: Session, samples: np.ndarray | None) -> Future[list[Result]]:
        future: Future[list[Result]] = Future()
        with self._cv:
            if self._stopping:
                raise RuntimeError("the scheduler is shut down")
            self._queues.setdefault(session, deque()).append(_Job(samples, future))
            self._cv.notify()
        return future

    def close(self, session: Session) -> None:
        """Forget `session`: cancel its queued pieces. A piece being stepped right now still completes."""
        with self._cv:
            jobs = self._queues.pop(session, ())
        _cancel(jobs)

    @property
    def sessions(self) -> int:
        """Sessions the scheduler holds (with queued work or not yet closed)."""
        with self._cv:
            return len(self._queues)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker after the round it is running; queued pieces are cancelled."""
        with self._cv:
            self._stopping = True
            queues, self._queues = self._queues, {}
            self._cv.notify_all()
        for jobs in queues.values():
            _cancel(jobs)
        if wait and threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not any(self._queues.values()):
                    self._cv.wait()
                if self._stopping:
                    return
                jobs = [(session, queue.popleft()) for session, queue in self._queues.items() if queue]
            try:
                self._run(jobs)
            except BaseException as err:  # a bug here must not leave handlers waiting forever
                log.exception("batch scheduler round failed")
                for _, job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)

    def _run(self, jobs: list[tuple[Session, _Job]]) -> None:
        live = []
        for session, job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if job.samples is None:
                    session.end_input()
                else:
                    session.feed(job.samples)
            except Exception as err:  # bad audio fails its own future only
                job.future.set_exception(err)
                continue
            live.append((session, job))
        try:
            results = step_sessions(self.recognizer, [s for s, _ in live], self.max_batch)
        except Exception as err:  # a failed forward call fails the streams stepped with it
            results, error = {}, err
        self.rounds += 1
        with self._cv:  # finished streams whose handler did not close them are forgotten too
            for session, _ in live:
                if session.done and not self._queues.get(session, True):
                    del self._queues[session]
        for session, job in live:
            if session in results:
                job.future.set_result(results[session])
            else:
                job.future.set_exception(error)
