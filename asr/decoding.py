"""CTC decoding: greedy and beam search, streaming-shaped, with KenLM, lexicon and per-request hotwords.

Input everywhere is CTC log-probabilities, shape (T, V), float32, V = len(asr.text.TOKENS), blank at index 0.

- `greedy` / `GreedyDecoder`: the argmax path, collapsed. The incremental decoder's result after any chunking
  equals `greedy` of the whole matrix exactly (tokens, frames, confidences and score).
- `BeamDecoder` / `beam_search`: flashlight's beam search through torchaudio's `CTCDecoder` (incremental
  `decode_begin/decode_step/decode_end` for streams, batched `__call__` for whole utterances). Without a
  lexicon it is lexicon-free over characters; with a lexicon (or a word LM, whose unigrams then serve as the
  lexicon) it only produces lexicon words, scored by a word-level KenLM model (ARPA or binary).
- Hotwords: a `HotwordLM` (torchaudio's `CTCDecoderLM`) wraps the shared LM (or none) and adds a bonus to
  hypotheses that spell a phrase; it is built per request and needs nothing rebuilt (see `HotwordBooster`).
- `build_arpa`: an interpolated modified Kneser-Ney word n-gram model written as ARPA, in pure Python
  (`python -m asr.decoding build-lm --text corpus.txt --order 3 --out lm.arpa`); `write_lexicon` spells words
  the way flashlight wants them.

Both decoders return `Hypothesis`: tokens with the exact frame span of each (from the argmax path, or from
flashlight's per-frame path), a score, and per-token confidences (peak posterior of the token over its span)
from which word timings and confidences follow. Frames are indices of the (T, V) rows fed in, counted from
the start of the utterance; the caller converts them to seconds with its frame duration.

Expensive things (the KenLM model, the lexicon, its trie) live in `BeamResources`, built once per process
from a `DecoderConfig` and shared read-only by all streams; `make_decoder(config, hotwords, resources)` makes
the cheap per-stream object.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from flashlight.lib.text.decoder import (
    LM,
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    LexiconFreeDecoder,
    LexiconFreeDecoderOptions,
    SmearingMode,
    Trie,
    ZeroLM,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary
from torch import Tensor
from torchaudio.models.decoder import CTCDecoder, CTCDecoderLM, CTCDecoderLMState

from asr.decoder_config import BUNDLED_LEXICON, BUNDLED_LM, DecoderConfig  # noqa: F401  (re-exported)
from asr.text import BLANK_ID, SPACE_ID, TOKEN_TO_ID, TOKENS, normalize

log = logging.getLogger(__name__)

WORD_SEPARATOR = "|"  # flashlight's name for the word boundary token; our space token plays that role
FLASHLIGHT_TOKENS = tuple(WORD_SEPARATOR if t == " " else t for t in TOKENS)  # same indices as TOKENS
UNK_WORD = "<unk>"  # the unknown word of the LM and of flashlight's word dictionary
SENTENCE_START, SENTENCE_END = "<s>", "</s>"  # ARPA sentence markers
_EXACT = 2.0**149  # float32 values times this are integers: lets greedy sum scores exactly, in any order


# --------------------------------------------------------------------------------------------- hypotheses


@dataclass(frozen=True)
class Word:
    """One word of a hypothesis, its frame span [start_frame, end_frame) and its confidence in [0, 1]."""

    word: str
    start_frame: int  # first frame of the word's first character
    end_frame: int  # one past the last frame of the word's last character
    confidence: float  # the lowest peak posterior of the word's characters

    def seconds(self, frame_duration: float) -> tuple[float, float]:
        """(start, end) in seconds, for frames `frame_duration` seconds apart."""
        return self.start_frame * frame_duration, self.end_frame * frame_duration


@dataclass(frozen=True)
class Hypothesis:
    """A decoded token sequence with the frame span and confidence of every token.

    Tokens are collapsed and blank-free, spaces included as decoded (`text` strips and squeezes them).
    """

    tokens: tuple[int, ...] = ()  # token ids (asr.text.TOKENS)
    starts: tuple[int, ...] = ()  # frame where each token's run of frames starts
    ends: tuple[int, ...] = ()  # one past the last frame of each token's run
    token_confidences: tuple[float, ...] = ()  # peak posterior of each token over its run, in [0, 1]
    score: float = 0.0  # greedy: the path's summed log-probs; beam: flashlight's (acoustic + LM + bonuses)

    @property
    def text(self) -> str:
        return " ".join("".join(TOKENS[t] for t in self.tokens).split())

    def words(self) -> list[Word]:
        """The words (runs of non-space tokens) with their frame spans and confidences."""
        words: list[Word] = []
        first = None
        for i, tok in enumerate((*self.tokens, SPACE_ID)):
            if tok != SPACE_ID and first is None:
                first = i
            elif tok == SPACE_ID and first is not None:
                words.append(
                    Word(
                        word="".join(TOKENS[t] for t in self.tokens[first:i]),
                        start_frame=self.starts[first],
                        end_frame=self.ends[i - 1],
                        confidence=min(self.token_confidences[first:i]),
                    )
                )
                first = None
        return words

    @property
    def confidence(self) -> float:
        """Mean word confidence; 0 for an empty hypothesis."""
        words = self.words()
        return sum(w.confidence for w in words) / len(words) if words else 0.0


class _Runs:
    """Builds a Hypothesis's token spans from a per-frame token path fed chunk by chunk."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.peaks: list[float] = []  # max log-prob of each token over its run
        self.frames = 0  # frames seen
        self._last = -1  # token of the last frame seen (-1: none yet)

    def extend(self, path: Tensor, scores: Tensor) -> None:
        """path: (T,) token of each frame; scores: (T,) log-prob of that token at that frame."""
        if path.numel() == 0:
            return
        prev = torch.cat([path.new_tensor([self._last]), path[:-1]])
        new_run = path != prev  # (T,) a run starts at this frame
        run_id = new_run.cumsum(0)  # (T,) 0 for frames continuing the previous chunk's last run
        peaks = torch.full((int(run_id[-1]) + 1,), -math.inf).scatter_reduce(
            0, run_id, scores.float(), "amax"
        )
        if not new_run[0] and self._last != BLANK_ID:  # the last token's run goes on in this chunk
            self.ends[-1] = self.frames + int((run_id == 0).sum())
            self.peaks[-1] = max(self.peaks[-1], float(peaks[0]))
        starts = new_run.nonzero().flatten().tolist()
        tokens = path[starts].tolist()
        for k, (start, tok) in enumerate(zip(starts, tokens, strict=True)):
            if tok != BLANK_ID:
                end = starts[k + 1] if k + 1 < len(starts) else len(path)
                self.tokens.append(tok)
                self.starts.append(self.frames + start)
                self.ends.append(self.frames + end)
                self.peaks.append(float(peaks[k + 1]))
        self._last = int(path[-1])
        self.frames += len(path)

    def hypothesis(self, score: float) -> Hypothesis:
        return Hypothesis(
            tokens=tuple(self.tokens),
            starts=tuple(self.starts),
            ends=tuple(self.ends),
            token_confidences=tuple(math.exp(p) for p in self.peaks),
            score=score,
        )


def _check_log_probs(log_probs: Tensor) -> Tensor:
    """(T, V) log-probs as a contiguous float32 CPU tensor, V checked against the token set."""
    if log_probs.ndim != 2 or log_probs.shape[1] != len(TOKENS):
        raise ValueError(f"log_probs must be (T, {len(TOKENS)}), got {tuple(log_probs.shape)}")
    return log_probs.detach().to("cpu", torch.float32).contiguous()


# --------------------------------------------------------------------------------------------- greedy


class StreamDecoder(Protocol):
    """What a recognition session needs from a decoder: one utterance at a time, fed in chunks."""

    def begin(self) -> None:
        """Forget everything and start a new utterance at frame 0."""

    def step(self, log_probs: Tensor) -> None:
        """Consume the next (T, V) frames."""

    def partial(self) -> Hypothesis:
        """The current best hypothesis over the frames consumed so far."""

    def end(self) -> list[Hypothesis]:
        """Finish the utterance; returns its alternatives, best first (also kept for `result`)."""

    def result(self) -> list[Hypothesis]:
        """The alternatives of the finished utterance, best first."""


class GreedyDecoder:
    """Incremental greedy CTC decoding: the argmax path, collapsed, one chunk of frames at a time.

    After `step` over any chunking of a (T, V) matrix, `partial()` (and `end()`) equal `greedy` of the whole
    matrix, a token whose frames span a chunk boundary included; frame indices count from `begin()`.
    """

    def __init__(self) -> None:
        self.begin()

    def begin(self) -> None:
        self._runs = _Runs()
        self._score = 0  # sum of the path's log-probs times _EXACT: an exact integer
        self._final: list[Hypothesis] | None = None

    reset = begin

    @property
    def frames(self) -> int:
        """Frames consumed since `begin()`."""
        return self._runs.frames

    def step(self, log_probs: Tensor) -> None:
        """Consume log_probs (T, V)."""
        if self._final is not None:
            raise RuntimeError("the utterance has ended; call begin() first")
        log_probs = _check_log_probs(log_probs)
        if len(log_probs) == 0:
            return
        best, path = log_probs.max(dim=1)  # (T,), (T,)
        if not torch.isfinite(best).all():
            raise ValueError("log_probs has a frame without a finite value")
        self._score += sum(map(int, (best.double() * _EXACT).tolist()))
        self._runs.extend(path, best)

    def partial(self) -> Hypothesis:
        return self._runs.hypothesis(self._score / _EXACT)

    def end(self) -> list[Hypothesis]:
        if self._final is None:
            self._final = [self.partial()]
        return self._final

    def result(self) -> list[Hypothesis]:
        if self._final is None:
            raise RuntimeError("the utterance has not ended; call end() first")
        return self._final


def greedy(log_probs: Tensor) -> Hypothesis:
    """Greedy CTC decoding of log_probs (T, V): argmax per frame, repeats collapsed, blanks dropped."""
    decoder = GreedyDecoder()
    decoder.step(log_probs)
    return decoder.end()[0]


# --------------------------------------------------------------------------------------------- hotwords


class _Node:
    """A phrase prefix in HotwordBooster's trie."""

    __slots__ = ("children", "units", "bonus", "path_bonus", "pending", "commit", "end")

    def __init__(self, units: tuple[int, ...], bonus: float) -> None:
        self.children: dict[int, int] = {}  # unit -> node id
        self.units = units  # the prefix, in decoding units
        self.bonus = bonus  # earned on the edge into this node
        self.path_bonus = 0.0  # earned on the whole path from the root
        self.pending = 0.0  # earned since the last completed phrase: refunded if the match breaks here
        self.commit = 0  # index in units where the pending part starts
        self.end = False  # a phrase ends here


class HotwordBooster:
    """Rewards hypotheses that spell hotword phrases, for one request.

    A trie over the phrases' decoding units: characters (token ids, spaces included) for lexicon-free
    decoding, word ids for lexicon decoding. Matching starts at word starts. Each matched letter earns the
    phrase's `boost` (natural-log units, like the acoustic scores; a word earns boost * its letters), so a
    phrase earns boost * (its letters) in all; when a match breaks before the phrase is complete (or, for
    characters, before the phrase is followed by a space or the end of the utterance) the bonus is taken
    back, and matching resumes at the longest phrase prefix that starts at a word start within the broken
    part (Aho-Corasick failure, restricted to word starts). Nodes are ints (ROOT: no match at a word start)
    and transitions are memoised, so that a decoder's LM can call `advance` cheaply for every candidate.

    Boosts of about 0.5-2 decide near ties; a letter the acoustics rule out costs about 5 per frame, so
    boosts near that make the decoder write the phrase where it was not said.
    """

    ROOT = 0  # at a word start, no phrase under way
    OUTSIDE = 1  # inside a word that no phrase starts (character units only)

    def __init__(
        self, phrases: Sequence[tuple[Sequence[int], Sequence[float]]], boundary: int | None
    ) -> None:
        """phrases: (units, bonus of each unit); boundary: the word separator unit, None for word units."""
        self.boundary = boundary
        self._nodes = [_Node((), 0.0), _Node((), 0.0)]  # ROOT, OUTSIDE
        self._moves: dict[tuple[int, int], tuple[int, float]] = {}  # memoised advance()
        for units, bonuses in phrases:
            node = self._nodes[self.ROOT]
            for unit, bonus in zip(units, bonuses, strict=True):
                if unit not in node.children:
                    node.children[unit] = len(self._nodes)
                    self._nodes.append(_Node((*node.units, unit), bonus))
                child = self._nodes[node.children[unit]]
                child.bonus = max(child.bonus, bonus)
                node = child
            node.end = True
        stack = [self._nodes[self.ROOT]]
        while stack:  # path bonus and pending part of every node, now that the phrase ends are known
            node = stack.pop()
            for unit, index in node.children.items():
                child = self._nodes[index]
                child.path_bonus = node.path_bonus + child.bonus
                if boundary is None and child.end:  # a phrase of words is complete on its last word
                    child.pending, child.commit = 0.0, len(child.units)
                elif boundary is not None and node.end and unit == boundary:  # phrase followed by space
                    child.pending, child.commit = 0.0, len(child.units)
                else:
                    child.pending, child.commit = node.pending + child.bonus, node.commit
                stack.append(child)

    @classmethod
    def for_characters(cls, hotwords: Iterable[tuple[str, float]]) -> HotwordBooster:
        """For lexicon-free decoding: units are token ids; spaces in a phrase must match but earn nothing."""
        phrases = []
        for phrase, boost in hotwords:
            units = [TOKEN_TO_ID[c] for c in normalize(phrase)]
            if units:
                phrases.append((units, [0.0 if u == SPACE_ID else boost for u in units]))
        return cls(phrases, boundary=SPACE_ID)

    @classmethod
    def for_words(cls, hotwords: Iterable[tuple[str, float]], word_dict: Dictionary) -> HotwordBooster:
        """For lexicon decoding: units are word ids of `word_dict`; phrases with other words are skipped."""
        phrases = []
        for phrase, boost in hotwords:
            words = normalize(phrase).split()
            missing = [w for w in words if not word_dict.contains(w)]
            if missing:
                log.warning("hotword %r skipped: %s not in the lexicon", phrase, ", ".join(missing))
            elif words:
                phrases.append(([word_dict.get_index(w) for w in words], [boost * len(w) for w in words]))
        return cls(phrases, boundary=None)

    def advance(self, node: int, unit: int) -> tuple[int, float]:
        """The node after `unit` and the bonus earned (negative when a broken match is refunded)."""
        move = self._moves.get((node, unit))
        if move is None:
            move = self._moves[node, unit] = self._advance(node, unit)
        return move

    def _advance(self, index: int, unit: int) -> tuple[int, float]:
        if index == self.OUTSIDE:
            return (self.ROOT if unit == self.boundary else self.OUTSIDE), 0.0
        node = self._nodes[index]
        if unit in node.children:
            child = node.children[unit]
            return child, self._nodes[child].bonus
        if node.end and unit == self.boundary:  # a phrase followed by a space: keep its bonus
            return self.ROOT, 0.0
        units = (*node.units[node.commit :], unit)  # the broken part: its bonus is refunded
        for start in range(len(units) + 1):
            if self.boundary is not None and start > 0 and units[start - 1] != self.boundary:
                continue  # not a word start
            target: int | None = self.ROOT
            for u in units[start:]:
                target = self._nodes[target].children.get(u)
                if target is None:
                    break
            if target is not None:
                return target, self._nodes[target].path_bonus - node.pending
        return self.OUTSIDE, -node.pending  # character units: inside a word no phrase starts

    def finish(self, node: int) -> float:
        """Bonus at the end of the utterance: refunds an incomplete phrase."""
        return 0.0 if node == self.OUTSIDE or self._nodes[node].end else -self._nodes[node].pending


class HotwordLM(CTCDecoderLM):
    """A flashlight LM: the scores of a base LM (a shared KenLM, or none) plus a request's hotword bonuses.

    It sees what the decoder's LM sees: token ids in lexicon-free decoding, word ids in lexicon decoding; the
    booster must use the same units. Bonuses are divided by `lm_weight` (the decoder multiplies LM scores by
    it), so they count in acoustic log-prob units whatever the weight. One instance per stream: it keeps a
    state table per utterance, cleared by `start`.
    """

    def __init__(self, booster: HotwordBooster, base: LM | None = None, lm_weight: float = 1.0) -> None:
        CTCDecoderLM.__init__(self)
        self._booster = booster
        self._base = base
        self._scale = 1.0 / lm_weight
        # state -> (base LM state, booster node, score of the unit that led here). Flashlight's states are
        # identified by object; the keys keep their Python objects alive, so that flashlight hands back
        # the same ones. Without a base LM, the many states inside words no phrase starts (OUTSIDE) are
        # left out: a state not in the table is one of them. Plain ints and floats in the entries keep the
        # table out of the garbage collector's way.
        self._states: dict = {}
        self._outside = (None, HotwordBooster.OUTSIDE, 0.0)

    def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
        self._states.clear()
        state = CTCDecoderLMState()
        base = self._base.start(start_with_nothing) if self._base is not None else None
        self._states[state] = (base, HotwordBooster.ROOT, 0.0)
        return state

    def score(self, state: CTCDecoderLMState, usr_token_idx: int) -> tuple[CTCDecoderLMState, float]:
        out = state.child(usr_token_idx)
        entry = self._states.get(out)
        if entry is None:
            base, node, _ = self._states.get(state, self._outside)
            base_score = 0.0
            if self._base is not None:
                base, base_score = self._base.score(base, usr_token_idx)
            node, bonus = self._booster.advance(node, usr_token_idx)
            entry = (base, node, base_score + bonus * self._scale)
            if node != HotwordBooster.OUTSIDE or self._base is not None:
                self._states[out] = entry
        return out, entry[2]

    def finish(self, state: CTCDecoderLMState) -> tuple[CTCDecoderLMState, float]:
        base, node, _ = self._states.get(state, self._outside)
        base_score = self._base.finish(base)[1] if self._base is not None else 0.0
        return state, base_score + self._booster.finish(node) * self._scale


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, eq=False)
class BeamResources:
    """What beam search streams share read-only: built once per process by `load_resources`."""

    lexicon_path: str | None  # as in the DecoderConfig these came from
    lm_path: str | None  # as in the DecoderConfig these came from
    tokens: Dictionary = field(repr=False)  # FLASHLIGHT_TOKENS
    word_dict: Dictionary | None = field(repr=False)  # UNK_WORD then the lexicon's words (lexicon decoding)
    lm: LM | None = field(repr=False)  # the KenLM model, or None
    trie: Trie | None = field(repr=False)  # the lexicon's spellings, smeared with LM unigram scores


KENLM_CHATTER = ("Loading the LM will be faster", "Reading ", "----5---10", "*****")  # its progress report


@contextlib.contextmanager
def _without_kenlm_chatter():
    """KenLM reports its progress on the process's stderr (file descriptor 2) each time it reads an ARPA
    file. Hold fd 2 in a temporary file meanwhile and pass on every line that is not that report."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if line.strip() and not line.startswith(KENLM_CHATTER):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_resources(config: DecoderConfig) -> BeamResources:
    """Load the LM and the lexicon of `config` and build the lexicon trie: the expensive part, done once."""
    tokens = Dictionary(list(FLASHLIGHT_TOKENS))
    if not config.uses_lexicon:
        return BeamResources(config.lexicon_path, config.lm_path, tokens, None, None, None)
    if config.lexicon_path:
        lexicon = read_lexicon(config.lexicon_path)
    else:
        lexicon = {w: [spell(w)] for w in arpa_words(config.lm_path)}
    word_dict = Dictionary([UNK_WORD, *sorted(w for w in lexicon if w != UNK_WORD)])
    word_dict.set_default_index(0)
    lm = None
    if config.lm_path:
        with _without_kenlm_chatter():
            lm = KenLM(config.lm_path, word_dict)
    scorer = lm if lm is not None else ZeroLM()
    trie = Trie(len(FLASHLIGHT_TOKENS), SPACE_ID)
    start = scorer.start(False)
    for word, spellings in lexicon.items():
        if word == UNK_WORD:
            continue
        index = word_dict.get_index(word)
        _, score = scorer.score(start, index)
        for spelling in spellings:
            trie.insert([tokens.get_index(t) for t in spelling], index, score)
    trie.smear(SmearingMode.MAX)
    return BeamResources(config.lexicon_path, config.lm_path, tokens, word_dict, lm, trie)


# --------------------------------------------------------------------------------------------- beam search


class _SharedCTCDecoder(CTCDecoder):
    """torchaudio's CTCDecoder around a flashlight decoder built from shared `BeamResources`.

    torchaudio's factory (`ctc_decoder`) parses the lexicon, loads the LM and builds the lexicon trie (a
    Python loop scoring every word) for every decoder; here those are built once and each stream only makes
    this. Its `decode_begin/decode_step/decode_end` and `__call__` are torchaudio's; `_to_hypo` is replaced
    to keep flashlight's per-frame token paths, which torchaudio reduces to token starts (shifted by the
    initial state: a token starting at frame t gets timestep t + 1).
    """

    def __init__(self, resources: BeamResources, lm: LM, config: DecoderConfig, lm_weight: float) -> None:
        # not CTCDecoder.__init__: that would build the lexicon trie again
        self.nbest = config.beam_size  # all final hypotheses: alternatives are deduplicated by text later
        self.word_dict = resources.word_dict
        self.tokens_dict = resources.tokens
        self.blank = BLANK_ID
        self.lm = lm  # keeps a Python LM alive while flashlight holds it (pytorch/audio#3218)
        beam_size_token = config.beam_size_token or len(FLASHLIGHT_TOKENS)
        if resources.trie is not None:
            options = LexiconDecoderOptions(
                beam_size=config.beam_size,
                beam_size_token=beam_size_token,
                beam_threshold=config.beam_threshold,
                lm_weight=lm_weight,
                word_score=config.word_score,
                unk_score=-math.inf,
                sil_score=config.sil_score,
                log_add=config.log_add,
                criterion_type=CriterionType.CTC,
            )
            unk = resources.word_dict.get_index(UNK_WORD)
            self.decoder = LexiconDecoder(options, resources.trie, lm, SPACE_ID, BLANK_ID, unk, [], False)
        else:
            options = LexiconFreeDecoderOptions(
                beam_size=config.beam_size,
                beam_size_token=beam_size_token,
                beam_threshold=config.beam_threshold,
                lm_weight=lm_weight,
                sil_score=config.sil_score,
                log_add=config.log_add,
                criterion_type=CriterionType.CTC,
            )
            self.decoder = LexiconFreeDecoder(options, lm, SPACE_ID, BLANK_ID, [])

    def _to_hypo(self, results):  # flashlight DecodeResults as they are (see the class docstring)
        return list(results)


def _flush_frame() -> Tensor:
    """(1, V): a frame that can only be a word separator (or blank).

    The lexicon decoder emits a word on the separator after its spelling, so a last word that no separator
    follows would be lost; fed after the last real frame, this completes it.
    """
    frame = torch.full((1, len(TOKENS)), -math.inf)
    frame[0, [BLANK_ID, SPACE_ID]] = 0.0
    return frame


def _make_ctc(
    config: DecoderConfig, resources: BeamResources, hotwords: Sequence[tuple[str, float]] | None
) -> _SharedCTCDecoder:
    if (resources.lexicon_path, resources.lm_path) != (config.lexicon_path, config.lm_path):
        raise ValueError("resources were loaded for another lexicon or LM than the config names")
    lm_weight = config.lm_weight if resources.lm is not None else 1.0
    lm: LM = resources.lm if resources.lm is not None else ZeroLM()
    if hotwords:
        if resources.word_dict is not None:
            booster = HotwordBooster.for_words(hotwords, resources.word_dict)
        else:
            booster = HotwordBooster.for_characters(hotwords)
        lm = HotwordLM(booster, resources.lm, lm_weight)
    return _SharedCTCDecoder(resources, lm, config, lm_weight)


def _alternatives(results, log_probs: Tensor, nbest: int) -> list[Hypothesis]:
    """Flashlight's final results (best first) -> up to `nbest` Hypotheses with distinct texts.

    log_probs (T, V): the frames decoded; each result's tokens are the initial state, one token per frame,
    then (in final results) whatever followed: the flush frame, the end.
    """
    hyps: list[Hypothesis] = []
    seen: set[str] = set()
    frames = len(log_probs)
    for result in results:
        path = torch.tensor(result.tokens[1 : frames + 1], dtype=torch.long)
        runs = _Runs()
        runs.extend(path, log_probs.gather(1, path[:, None])[:, 0])
        hyp = runs.hypothesis(result.score)
        if hyp.text not in seen:
            seen.add(hyp.text)
            hyps.append(hyp)
            if len(hyps) == nbest:
                break
    return hyps


class BeamDecoder:
    """Incremental beam search (flashlight through torchaudio's CTCDecoder) for one stream.

    Frames are decoded as they come (`decode_step`); `partial()` is the best hypothesis so far (in lexicon
    decoding, its last word may be a prefix of a lexicon word), `end()` the n-best alternatives. It keeps
    the utterance's frames (for confidences) and flashlight keeps every frame's hypotheses and their LM
    states, so end utterances at endpoints rather than stream for hours.
    """

    def __init__(
        self,
        config: DecoderConfig,
        resources: BeamResources,
        hotwords: Sequence[tuple[str, float]] | None = None,
    ) -> None:
        self.config = config
        self._ctc = _make_ctc(config, resources, hotwords)
        self._lexicon = resources.trie is not None
        self.begin()

    def begin(self) -> None:
        self._ctc.decode_begin()
        self._chunks: list[Tensor] = []
        self.frames = 0  # frames consumed since begin()
        self._final: list[Hypothesis] | None = None

    reset = begin

    def _log_probs(self) -> Tensor:
        """(T, V): all frames of the utterance."""
        if len(self._chunks) != 1:
            self._chunks = [torch.cat(self._chunks) if self._chunks else torch.zeros(0, len(TOKENS))]
        return self._chunks[0]

    def step(self, log_probs: Tensor) -> None:
        """Consume log_probs (T, V)."""
        if self._final is not None:
            raise RuntimeError("the utterance has ended; call begin() first")
        log_probs = _check_log_probs(log_probs)
        if len(log_probs):
            self._ctc.decode_step(log_probs)
            self._chunks.append(log_probs)
            self.frames += len(log_probs)

    def partial(self) -> Hypothesis:
        if self._final is not None:
            return self._final[0]
        if self.frames == 0:
            return Hypothesis()
        # not flashlight's get_best_hypothesis: in lexicon decoding it backs off to the last completed word
        best = max(self._ctc.decoder.get_all_final_hypothesis(), key=lambda r: r.score)
        return _alternatives([best], self._log_probs(), 1)[0]

    def end(self) -> list[Hypothesis]:
        if self._final is None:
            if self._lexicon:
                self._ctc.decode_step(_flush_frame())
            self._ctc.decode_end()
            results = self._ctc.decoder.get_all_final_hypothesis()
            self._final = _alternatives(results, self._log_probs(), self.config.nbest) or [Hypothesis()]
        return self._final

    def result(self) -> list[Hypothesis]:
        if self._final is None:
            raise RuntimeError("the utterance has not ended; call end() first")
        return self._final


def beam_search(
    log_probs: Tensor,
    config: DecoderConfig = DecoderConfig(method="beam"),
    lengths: Tensor | None = None,
    hotwords: Sequence[tuple[str, float]] | None = None,
    resources: BeamResources | None = None,
) -> list[list[Hypothesis]]:
    """Beam search over whole utterances with torchaudio's batched CTCDecoder call.

    log_probs: (B, T, V), or (T, V) for one utterance; lengths: (B,) valid frames of each (None: all T).
    Returns up to config.nbest alternatives per utterance, best first.
    """
    if log_probs.ndim == 2:
        log_probs = log_probs[None]
    if log_probs.ndim != 3 or log_probs.shape[2] != len(TOKENS):
        raise ValueError(f"log_probs must be (B, T, {len(TOKENS)}), got {tuple(log_probs.shape)}")
    log_probs = log_probs.detach().to("cpu", torch.float32)
    batch, frames, _ = log_probs.shape
    lengths = torch.full((batch,), frames) if lengths is None else lengths.cpu().long()
    resources = resources if resources is not None else load_resources(config)
    ctc = _make_ctc(config, resources, hotwords)
    emissions = log_probs
    if resources.trie is not None:  # a flush frame right after each utterance's last frame
        emissions = torch.cat([log_probs, torch.zeros(batch, 1, len(TOKENS))], dim=1)
        emissions[torch.arange(batch), lengths] = _flush_frame()[0]
    results = ctc(emissions.contiguous(), lengths + int(resources.trie is not None))
    return [
        _alternatives(res, log_probs[b, : lengths[b]], config.nbest) or [Hypothesis()]
        for b, res in enumerate(results)
    ]


def make_decoder(
    config: DecoderConfig = DecoderConfig(),
    hotwords: Sequence[tuple[str, float]] | None = None,
    resources: BeamResources | None = None,
) -> GreedyDecoder | BeamDecoder:
    """A stream decoder for `config` with a request's hotwords [(phrase, boost per letter), ...].

    Greedy decoding cannot use hotwords, so hotwords make it a beam search with the config's beam settings.
    Pass `resources` (from `load_resources(config)`, made once) unless the config has no LM and no lexicon:
    without them the LM and lexicon are loaded here, for this one decoder.
    """
    if config.method == "greedy" and not hotwords:
        return GreedyDecoder()
    if resources is None:
        resources = load_resources(config)
    return BeamDecoder(config, resources, hotwords)


# --------------------------------------------------------------------------------------------- lexicon


def spell(word: str) -> list[str]:
    """A word's spelling in FLASHLIGHT_TOKENS: its characters and the word separator that ends it."""
    return [*word, WORD_SEPARATOR]


def _spellable(word: str) -> bool:
    return bool(word) and all(c in TOKEN_TO_ID and c != " " for c in word)


def write_lexicon(words: Iterable[str], path: str | Path) -> Path:
    """Write a flashlight lexicon: one "word<TAB>w o r d |" line per distinct word of our token set."""
    path = Path(path)
    kept = sorted({w for w in words if _spellable(w)})
    path.write_text("".join(f"{w}\t{' '.join(spell(w))}\n" for w in kept))
    return path


def read_lexicon(path: str | Path) -> dict[str, list[list[str]]]:
    """A flashlight lexicon file -> {word: [spelling, ...]}, every spelling ending in the word separator."""
    lexicon: dict[str, list[list[str]]] = defaultdict(list)
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        word, *spelling = line.split()
        if spelling and spelling[-1] != WORD_SEPARATOR:
            spelling.append(WORD_SEPARATOR)
        bad = [t for t in spelling if t not in FLASHLIGHT_TOKENS or t == TOKENS[BLANK_ID]]
        if not spelling or bad:
            raise ValueError(f"{path}:{number}: spelling of {word!r} has tokens outside the token set: {bad}")
        lexicon[word].append(spelling)
    return dict(lexicon)


def arpa_words(path: str | Path) -> list[str]:
    """The unigrams of an ARPA file that our tokens can spell (no <s>, </s>, <unk>)."""
    words = []
    in_unigrams = False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                in_unigrams = line == "\\1-grams:"
            elif in_unigrams and line:
                word = line.split()[1]
                if _spellable(word):
                    words.append(word)
    if not words:
        raise ValueError(f"{path}: no ARPA unigrams found (a binary KenLM model needs lexicon_path)")
    return words


# --------------------------------------------------------------------------------------------- ARPA LM


def _discounts(counts: Counter) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ (Chen & Goodman) from adjusted counts of one order.

    Falls back to (0.5, 1.0, 1.5) when the counts of counts are too few to estimate them (KenLM's
    --discount_fallback), as they are in small corpora.
    """
    n = Counter(min(c, 5) for c in counts.values())
    if all(n[k] > 0 for k in (1, 2, 3, 4)):
        y = n[1] / (n[1] + 2 * n[2])
        d = (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
        if all(0 < dk < k for k, dk in enumerate(d, 1)):
            return d
    return 0.5, 1.0, 1.5


def build_arpa(texts: Iterable[str], path: str | Path, order: int = 3) -> Path:
    """Train an interpolated modified Kneser-Ney word n-gram model on `texts` and write it as ARPA.

    texts: sentences, one per item (a list of strings or an open file); each is `asr.text.normalize`d.
    Counting is KenLM's: one <s> before and one </s> after each sentence; n-grams below the top order count
    their distinct left extensions, except those starting with <s>, which keep their counts. Unigrams are
    interpolated with the uniform distribution over the vocabulary and <unk>. The model is stored unpruned
    in backoff form (interpolated probabilities, backoff weight = the context's interpolation weight), so
    every context's probabilities sum to one. Returns `path`.
    """
    if order < 1:
        raise ValueError("order must be at least 1")
    raw: list[Counter] = [Counter() for _ in range(order)]  # raw[n - 1][ngram]: occurrences
    for line in texts:
        words = normalize(line).split()
        if not words:
            continue
        seq = (SENTENCE_START, *words, SENTENCE_END)
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                raw[n - 1][seq[i : i + n]] += 1
    del raw[0][(SENTENCE_START,)]
    if not raw[0]:
        raise ValueError("no words to build an LM from")
    order = max(n for n in range(1, order + 1) if raw[n - 1])

    adjusted: list[Counter] = [Counter() for _ in range(order)]
    adjusted[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in raw[n])  # distinct left extensions of each n-gram
        adjusted[n - 1] = Counter(
            {g: left[g] if g[0] != SENTENCE_START else c for g, c in raw[n - 1].items()}
        )

    vocab_size = len(adjusted[0]) + (UNK_WORD not in {g[0] for g in adjusted[0]})
    probs: list[dict[tuple[str, ...], float]] = []
    backoffs: list[dict[tuple[str, ...], float]] = []  # gamma of each context, by its order
    for n in range(1, order + 1):
        d = _discounts(adjusted[n - 1])
        total: Counter = Counter()
        discount: Counter = Counter()
        for g, c in adjusted[n - 1].items():
            total[g[:-1]] += c
            discount[g[:-1]] += d[min(c, 3) - 1]
        gamma = {h: discount[h] / total[h] for h in total}
        prob = {}
        for g, c in adjusted[n - 1].items():
            h = g[:-1]
            lower = probs[n - 2][g[1:]] if n > 1 else 1.0 / vocab_size
            prob[g] = (c - d[min(c, 3) - 1]) / total[h] + gamma[h] * lower
        if n == 1:
            prob.setdefault((UNK_WORD,), gamma[()] / vocab_size)
        probs.append(prob)
        backoffs.append(gamma)

    path = Path(path)
    with open(path, "w") as f:
        f.write("\\data\\\n")
        sizes = [len(probs[0]) + 1] + [len(p) for p in probs[1:]]  # + <s> among the unigrams
        f.writelines(f"ngram {n}={size}\n" for n, size in enumerate(sizes, 1))
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            contexts = backoffs[n] if n < order else {}
            entries = sorted(probs[n - 1].items())
            if n == 1:
                entries.insert(0, ((SENTENCE_START,), 0.0))
            for g, p in entries:
                logp = f"{math.log10(p):.6f}" if p > 0 else "-99"
                line = f"{logp}\t{' '.join(g)}"
                if g in contexts:
                    line += f"\t{math.log10(contexts[g]):.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    return path


# --------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.decoding", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    lm = commands.add_parser("build-lm", help="train a Kneser-Ney n-gram LM on a text file, write ARPA")
    lm.add_argument("--text", required=True, type=Path, help="training text, one sentence a line")
    lm.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    lm.add_argument("--out", required=True, type=Path, help="ARPA file to write")
    lm.add_argument("--lexicon", type=Path, help="also write a flashlight lexicon of the LM's words here")
    lex = commands.add_parser("lexicon", help="write a flashlight lexicon of a text's or an ARPA's words")
    lex.add_argument("--text", type=Path, help="text file: its normalised words")
    lex.add_argument("--arpa", type=Path, help="ARPA file: its unigrams")
    lex.add_argument("--out", required=True, type=Path, help="lexicon file to write")
    args = parser.parse_args(argv)

    if args.command == "build-lm":
        with open(args.text) as f:
            build_arpa(f, args.out, order=args.order)
        print(f"wrote {args.out}", file=sys.stderr)
        if args.lexicon:
            write_lexicon(arpa_words(args.out), args.lexicon)
            print(f"wrote {args.lexicon}", file=sys.stderr)
    else:
        if (args.text is None) == (args.arpa is None):
            parser.error("lexicon needs exactly one of --text and --arpa")
        if args.text:
            with open(args.text) as f:
                words = [w for line in f for w in normalize(line).split()]
        else:
            words = arpa_words(args.arpa)
        write_lexicon(words, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
