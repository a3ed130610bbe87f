"""Manifests: one format for every data set.

A manifest is JSONL, one utterance per line: {"path": ..., "duration": seconds, "text": ..., "speaker": ...}
(speaker optional). Relative paths are relative to the manifest's folder. The `transcripts.tsv` layout of
`../shared/data/*` (header row with `path` and `text`, optional `speaker`, `split`) reads into the same
entries, so every tool takes either.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from asr import audio


@dataclass(frozen=True)
class Utterance:
    path: str  # absolute path of the audio file
    duration: float  # seconds
    text: str  # reference transcript ("" when unknown)
    speaker: str = ""  # speaker id, when known


class ManifestError(ValueError):
    """A manifest that cannot be read, with file and line in the message."""


def _resolve(base: Path, path: str) -> str:
    return str(Path(path) if os.path.isabs(path) else (base / path).resolve())


def read_jsonl(path: str | os.PathLike) -> list[Utterance]:
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(
                    Utterance(
                        path=_resolve(path.parent, row["path"]),
                        duration=float(
                            row.get("duration") or audio.duration(_resolve(path.parent, row["path"]))
                        ),
                        text=row.get("text", ""),
                        speaker=row.get("speaker", ""),
                    )
                )
            except (ValueError, KeyError, TypeError) as err:
                raise ManifestError(f"{path}:{lineno}: bad manifest line: {err}") from None
    return out


def read_tsv(path: str | os.PathLike) -> list[Utterance]:
    """A `transcripts.tsv` (or a folder holding one); durations are read from the audio headers."""
    path = Path(path)
    if path.is_dir():
        path = path / "transcripts.tsv"
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ManifestError(f"{path}: expected a header row with a 'path' column")
        for lineno, row in enumerate(reader, 2):
            if not row.get("path"):
                raise ManifestError(f"{path}:{lineno}: empty path")
            full = _resolve(path.parent, row["path"])
            dur = float(row["duration"]) if row.get("duration") else audio.duration(full)
            out.append(Utterance(full, dur, row.get("text") or "", row.get("speaker") or ""))
    return out


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest, a `transcripts.tsv`, or a folder holding a `transcripts.tsv`."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest")
    if path.is_dir() or path.suffix == ".tsv":
        return read_tsv(path)
    return read_jsonl(path)


def write_manifest(path: str | os.PathLike, utterances: Iterable[Utterance]) -> None:
    """Write JSONL atomically (temp file + rename), paths kept as given."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(asdict(u), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def shared_data_dir() -> Path:
    """The shared speech data: $ASR_SHARED_DATA, else the nearest `shared/data` beside the repository or
    one of its parent folders (`../shared/data` for a checkout next to `shared/`)."""
    env = os.environ.get("ASR_SHARED_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    for folder in repo.parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return repo.parent / "shared" / "data"
