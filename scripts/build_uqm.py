"""Real speech of whole sentences from Debian's `uqm-voice` (`make data-uqm`): a training corpus of actors.

    .venv/bin/python scripts/build_uqm.py --out corpus-uqm

`uqm-voice` (non-free) is the voice pack of the 3DO release of Star Control II (Toys for Bob, 1992): the
game's dialogue read by about 25 actors, mono 11 kHz Ogg Vorbis, 2,218 clips. `uqm-content` holds the text
of every clip and the voice pack a timing file that gives, for each clip, how long each of its subtitle lines
lasts but the last. A clip is cut at those line ends (each cut moved to the quietest 10 ms within
`SNAP_S` of it) into pieces of at most `MAX_SECONDS`, each with the text of its lines. Clips whose timings
overrun the audio are kept whole when they are short enough, else left out; so are lines whose text does
not say how it is read (digits, fractions, symbols, the Orz's starred words) and the voices made inhuman
by effects (`LEFT_OUT_VOICES`), and the pieces whose audio says more than their text (`MISMATCHED`).
Both packages are CC BY-NC-SA 2.5: non-commercial use, share alike.

The .debs are fetched with `apt-get download` (needs Debian's non-free section, which `make system-deps`
adds) into OUT/.debs, unless they are there already; nothing else is downloaded. Output under --out:

    train.jsonl     every kept piece, speaker "uqm-<voice>"
    summary.json    hours and pieces per voice, what was left out and why
    train-augmented.jsonl   with --copies N: N augmented copies of each piece (aug/KIND/), one of
                    `COPY_KINDS` each: the same real articulation as another talker, at another pace, or in
                    another room and channel; the copies are reproducible (seeded by --seed and the piece)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asr import audio
from asr.data import Utterance, read_manifest, write_manifest
from asr.text import normalize
from scripts.build_corpus import (
    AugJob,
    Corpus,
    Runner,
    augmentation_of,
    check_recipe,
    check_transcript,
    hours_by,
    portable,
    run_list,
    write_flac,
)

PACKAGES = ("uqm-voice", "uqm-content")
VOICE_ZIP = "usr/share/games/uqm/content/addons/uqm-0.8.0-voice.uqm"
CONTENT_ZIP = "usr/share/games/uqm/content/packages/uqm-0.8.0-content.uqm"
RESOURCE_MAP = "3dovoice/3dovoice.rmp"  # comm.RACE.dialogue = CONVERSATION:text:ogg folder:timings
SAMPLE_RATE = audio.SAMPLE_RATE
MAX_SECONDS = 15.0  # longest piece (training leaves out utterances over 16 s)
MIN_SECONDS = 0.4  # shorter pieces are left out
COPY_KINDS = ("voice", "speed", "mix")  # augmentations of the copies (asr.augment.KINDS), drawn evenly
SEED = 5678  # base seed of the copies' augmentations
SNAP_S = 0.3  # a cut moves to the quietest 10 ms within this many seconds of the subtitle timing
# Voices whose effects leave little of a human voice: the probe, the Dnyarri, the Mycon, and the Ilwrath,
# Umgah and Ur-Quan (on a sample of 150 pieces the bundled model's CER was 92-123% on these three, 61-71% on
# every other voice); and the Orz, whose text marks untranslatable words (*frumple*) said as noises.
LEFT_OUT_VOICES = frozenset({"orz", "probe", "talkingpet", "mycon", "ilwrath", "umgah", "urquan"})
UNREAD = re.compile(r"[0-9*/%<>+]")  # text that does not say how it is read
# Pieces whose audio says more than their text: the starbase commander's replies to a mineral delivery go on
# past what the text says, and a few lines are noises ("sob", "sniff") or clipped. Found in session 19 by
# decoding every piece greedily with the weights trained on this corpus (runs/v37-uqm): these 18 are the
# pieces whose output has more character errors than the text has characters (CER over 100%).
MISMATCHED = frozenset(
    {f"starbase-{n:03d}-00" for n in (8, 10, 13, 24, 28, 29, 30, 35, 36, 37, 41, 42, 43, 44)}
    | {"spathi-056-09", "zoqfotpik-011-00", "zoqfotpik-227-00", "zoqfotpik-231-00"}
)


@dataclass(frozen=True)
class Clip:
    voice: str  # the race whose actor speaks
    name: str  # the ogg file in the voice pack's folder of that race
    lines: tuple[str, ...]  # subtitle lines as written
    timings: tuple[float, ...]  # seconds of each line but the last (may be empty)


def fetch_debs(folder: Path) -> dict[str, Path]:
    """The two .debs in `folder`, downloaded with apt-get when missing."""
    folder.mkdir(parents=True, exist_ok=True)
    found = {p: sorted(folder.glob(f"{p}_*.deb")) for p in PACKAGES}
    missing = [p for p, debs in found.items() if not debs]
    if missing:
        print(f"apt-get download {' '.join(missing)} into {folder}", file=sys.stderr)
        result = subprocess.run(["apt-get", "download", *missing], cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(
                f"apt-get download {' '.join(missing)} failed: {result.stderr.strip()[-400:]}\n"
                "They are in Debian's non-free section: run `make system-deps` (it adds non-free) first."
            )
        found = {p: sorted(folder.glob(f"{p}_*.deb")) for p in PACKAGES}
    return {p: debs[-1] for p, debs in found.items()}


def extract(deb: Path, member: str, into: Path) -> Path:
    """One file out of a .deb (dpkg-deb -x), returned as a path under `into`."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    path = into / member
    if not path.exists():
        raise SystemExit(f"{deb} has no {member}")
    return path


def parse_dialogue(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """A conversation file (`#(KEY) file.ogg` then the lines said, blank line between) -> key ->
    (ogg name, lines). Keys without an ogg are left out."""
    out, key, ogg, lines = {}, None, None, []
    for raw in text.splitlines() + ["#("]:
        line = raw.rstrip()
        if line.startswith("#("):
            if key and ogg:
                out[key] = (ogg, tuple(x for x in lines if x.strip()))
            head, *rest = line.split(maxsplit=1)
            key, ogg, lines = head[2:].rstrip(")"), (rest[0].strip() if rest else None), []
        elif key:
            lines.append(line.strip())
    return out


def parse_timings(text: str) -> dict[str, tuple[float, ...]]:
    """A timing file (`#(KEY) ms,ms,...`: the length of each subtitle line but the last) -> key -> seconds."""
    out = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head.startswith("#("):
            out[head[2:].rstrip(")")] = tuple(int(v) / 1000 for v in rest.split(",") if v.strip())
    return out


def clips_of(voice_zip: zipfile.ZipFile, content_zip: zipfile.ZipFile) -> list[Clip]:
    """Every voiced clip with its text, from the voice pack's resource map."""

    def read(path: str) -> str:
        for z, prefix in ((voice_zip, "addons/"), (content_zip, "")):
            name = path.removeprefix(prefix)
            if name in z.NameToInfo:
                return z.read(name).decode("latin-1")
        raise SystemExit(f"no {path} in the uqm packages")

    clips = []
    for line in voice_zip.read(RESOURCE_MAP).decode().splitlines():
        name, _, value = line.partition("=")
        if not name.strip().endswith(".dialogue"):
            continue
        _, text_path, ogg_dir, timing_path = value.strip().split(":")
        voice = Path(ogg_dir).name  # the race's folder: "yehatrebels" for comm.yehat.rebel
        timings = parse_timings(read(timing_path))
        for key, (ogg, lines) in parse_dialogue(read(text_path)).items():
            clips.append(Clip(voice, ogg_dir.removeprefix("addons/") + ogg, lines, timings.get(key, ())))
    return clips


def cut_points(samples: np.ndarray, timings: tuple[float, ...]) -> list[int] | None:
    """Sample offsets of the line ends, each moved to the quietest 10 ms near it; None when they overrun."""
    ends = np.cumsum(timings) if timings else np.zeros(0)
    if ends.size and ends[-1] >= samples.size / SAMPLE_RATE:
        return None
    hop, reach = SAMPLE_RATE // 100, round(SNAP_S * SAMPLE_RATE)
    cuts = []
    for t in ends:
        at = round(t * SAMPLE_RATE)
        lo, hi = max(at - reach, 0), min(at + reach, samples.size)
        frames = samples[lo : lo + (hi - lo) // hop * hop].reshape(-1, hop)
        cuts.append(lo + int(np.argmin((frames**2).sum(axis=1))) * hop + hop // 2 if len(frames) else at)
    return cuts


def pieces(clip: Clip, samples: np.ndarray) -> tuple[list[tuple[int, int, str]], Counter]:
    """(start, end, transcript) of the pieces a clip is cut into, and why any part of it was left out:
    consecutive lines are joined while the piece stays under MAX_SECONDS; a line not read as written
    ends the piece before it and is dropped."""
    left_out: Counter = Counter()
    cuts = cut_points(samples, clip.timings)
    if cuts is None or len(cuts) != len(clip.lines) - 1:
        if samples.size / SAMPLE_RATE > MAX_SECONDS:
            return [], Counter(timings=1)
        cuts = []  # whole clip as one piece
        lines = (" ".join(clip.lines),)
    else:
        lines = clip.lines
    bounds = [0, *cuts, samples.size]
    out, start, text = [], None, []

    def close(end: int) -> None:
        if start is None:
            return
        said = normalize(" ".join(text))
        if not said or (end - start) / SAMPLE_RATE < MIN_SECONDS:
            left_out["short or empty"] += 1
        elif (end - start) / SAMPLE_RATE > MAX_SECONDS:
            left_out["longer than the maximum"] += 1
        else:
            out.append((start, end, check_transcript(said)))

    for i, line in enumerate(lines):
        a, b = bounds[i], bounds[i + 1]
        if UNREAD.search(line):
            close(a)
            start, text = None, []
            left_out["unread text"] += 1
            continue
        if start is not None and (b - start) / SAMPLE_RATE > MAX_SECONDS:
            close(a)
            start, text = None, []
        if start is None:
            start = a
        text.append(line)
    close(samples.size)
    return out, left_out


def build(out: Path, debs: dict[str, Path]) -> dict:
    utterances: list[Utterance] = []
    left_out: Counter = Counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asr-uqm-") as tmp:
        voice_zip = zipfile.ZipFile(extract(debs["uqm-voice"], VOICE_ZIP, Path(tmp) / "voice"))
        content_zip = zipfile.ZipFile(extract(debs["uqm-content"], CONTENT_ZIP, Path(tmp) / "content"))
        clips, seen = clips_of(voice_zip, content_zip), set()
        for clip in tqdm(clips, desc="uqm clips", unit="clip"):
            if clip.voice in LEFT_OUT_VOICES:
                left_out["voice left out"] += 1
                continue
            if clip.name not in voice_zip.NameToInfo:
                left_out["no audio"] += 1
                continue
            if clip.name in seen:  # two keys of one conversation name the same recording
                left_out["audio of an earlier key"] += 1
                continue
            seen.add(clip.name)
            samples = audio.decode(voice_zip.read(clip.name))
            kept, why = pieces(clip, samples)
            left_out.update(why)
            for i, (a, b, text) in enumerate(kept):
                stem = f"{Path(clip.name).stem}-{i:02d}"
                if stem in MISMATCHED:
                    left_out["audio says more than the text"] += 1
                    continue
                rel = f"uqm/{stem}.flac"
                if not (out / rel).exists():
                    write_flac(out / rel, samples[a:b])
                utterances.append(Utterance(rel, round((b - a) / SAMPLE_RATE, 3), text, f"uqm-{clip.voice}"))
    write_manifest(out / "train.jsonl", utterances)
    by_speaker = hours_by(utterances, lambda u: u.speaker.removeprefix("uqm-"))
    by_voice = {voice: hours for voice, (_, hours) in by_speaker.items()}
    info = {
        "pieces": len(utterances),
        "hours": round(sum(by_voice.values()), 3),
        "words": sum(len(u.text.split()) for u in utterances),
        "hours_by_voice": {v: round(hours, 3) for v, hours in by_voice.items()},
        "left_out": dict(left_out),
    }
    (out / "summary.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def copy_jobs(utterances: list[Utterance], copies: int, seed: int = SEED) -> list[AugJob]:
    """`copies` augmented copies of each piece, aug/KIND/STEM-K.flac, the kind and its parameters drawn from
    the seed and the piece's name (not its place in the list: leaving a piece out changes no other)."""
    jobs = []
    for u in utterances:
        stem = Path(u.path).stem
        for k in range(copies):
            rng = np.random.default_rng([seed, zlib.crc32(stem.encode()), k])
            kind = COPY_KINDS[int(rng.integers(len(COPY_KINDS)))]
            path = f"aug/{kind}/{stem}-{k}.flac"
            jobs.append(AugJob(path, u.path, kind, u.text, u.speaker, int(rng.integers(2**31))))
    return jobs


def build_copies(out: Path, copies: int, workers: int, seed: int = SEED) -> dict:
    """Write train-augmented.jsonl: `copies` augmented copies of every piece of train.jsonl. Kept files are
    reused, so an interrupted build resumes; aug/recipe.json stops a build with another seed or other kinds
    from reusing them."""
    (out / "aug").mkdir(parents=True, exist_ok=True)
    check_recipe(out / "aug", {"seed": seed, "kinds": COPY_KINDS})
    jobs = copy_jobs(read_manifest(out / "train.jsonl"), copies, seed)
    corpus = Corpus(out)
    with Runner(out, workers) as runner:
        done = run_list(runner, corpus, jobs, "uqm copies")
    if corpus.errors:
        raise SystemExit(f"{len(corpus.errors)} copies failed, the first: {corpus.errors[0]}")
    write_manifest(out / "train-augmented.jsonl", [portable(u, out) for u in done])
    by_kind = {kind: hours for kind, (_, hours) in hours_by(done, augmentation_of).items()}
    return {
        "copies": len(done),
        "hours": round(sum(by_kind.values()), 3),
        "hours_by_kind": {kind: round(hours, 3) for kind, hours in by_kind.items()},
        "skipped": corpus.skipped,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("corpus-uqm"), help="corpus folder (default: corpus-uqm)")
    p.add_argument("--debs", type=Path, help="folder of the uqm-voice and uqm-content .debs (OUT/.debs)")
    p.add_argument("--copies", type=int, default=0, help="augmented copies of each piece (default 0: none)")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the copies (default {SEED})")
    p.add_argument("--workers", type=int, default=2, help="processes making the copies (default 2)")
    args = p.parse_args(argv)
    if args.copies < 0 or args.workers < 1:
        p.error("--copies must be at least 0 and --workers at least 1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = build(out, fetch_debs(args.debs or out / ".debs"))
    if args.copies:
        info["augmented"] = build_copies(out, args.copies, args.workers, args.seed)
        (out / "summary.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
