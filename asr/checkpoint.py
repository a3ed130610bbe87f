"""Checkpoints: one file holding weights, model/feature/token config and normalisation statistics.

Written atomically (temporary file + rename), so an interruption never leaves a half-written checkpoint.
Loaded with `weights_only=True`: a checkpoint holds only tensors and plain Python values.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from asr.features import FeatureConfig, FeatureStats
from asr.model import AcousticModel, ModelConfig
from asr.model import widen as widen_model
from asr.text import TOKENS

FORMAT = "asr-checkpoint"  # marks our files among other torch pickles
VERSION = 1  # bumped when the layout changes incompatibly
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.pt"  # the bundled model


class CheckpointError(ValueError):
    """A file that is not a readable asr checkpoint."""


def save(
    path: str | os.PathLike,
    model: AcousticModel,
    stats: FeatureStats,
    feature_config: FeatureConfig = FeatureConfig(),
    **extra: Any,
) -> None:
    """Write atomically. `extra` (optimizer state, training position, metrics) is stored alongside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": asdict(model.config),
        "feature_config": asdict(feature_config),
        "tokens": list(TOKENS),
        "stats": stats.to_dict(),
        "model": state,
        **extra,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, checked to be ours and compatible."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as err:  # torch raises many kinds for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asr checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')}, expected {VERSION}")
    if payload.get("tokens") != list(TOKENS):
        raise CheckpointError(f"{path}: token set differs from this version of asr")
    return payload


def load(
    path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu"
) -> tuple[AcousticModel, FeatureStats, FeatureConfig, dict]:
    """Model (in eval mode), normalisation stats, feature config and the raw dict."""
    payload = read(path)
    try:
        model = AcousticModel(ModelConfig(**payload["model_config"]))
        model.load_state_dict(payload["model"])
        stats = FeatureStats.from_dict(payload["stats"])
        fcfg = FeatureConfig(**payload["feature_config"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: inconsistent checkpoint: {err}") from None
    return model.to(device).eval(), stats, fcfg, payload


def export(src: str | os.PathLike, dst: str | os.PathLike = DEFAULT_MODEL) -> Path:
    """Copy a training checkpoint without its optimizer and training state: the file to ship and serve."""
    model, stats, fcfg, payload = load(src)
    keep = {k: payload[k] for k in ("dev", "train_config", "train_state") if k in payload}
    save(dst, model, stats, fcfg, **keep)
    return Path(dst)


def average(srcs: list[str | os.PathLike], dst: str | os.PathLike) -> Path:
    """Average the weights of checkpoints of one model (say, runs continued from the same weights on other
    data or seeds) into a file to serve. They must agree on everything but the weights: model and feature
    config and normalisation statistics."""
    if not srcs:
        raise CheckpointError("nothing to average")
    loaded = [load(src) for src in srcs]
    model, stats, fcfg, first = loaded[0]
    for src, (*_, payload) in zip(srcs[1:], loaded[1:], strict=True):
        for key in ("model_config", "feature_config", "stats"):
            if payload[key] != first[key]:
                raise CheckpointError(f"{src}: its {key.replace('_', ' ')} differs from {srcs[0]}'s")
    states = [m.state_dict() for m, *_ in loaded]
    model.load_state_dict(
        {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype) for k, v in states[0].items()}
    )
    save(dst, model, stats, fcfg, averaged=[str(src) for src in srcs])
    return Path(dst)


def widen(src: str | os.PathLike, dst: str | os.PathLike, hidden: int, seed: int = 0) -> Path:
    """A checkpoint of the same function with more recurrent units (`asr.model.widen`), to train on with
    `--init`: a larger model that starts where a trained one stands."""
    model, stats, fcfg, _ = load(src)
    try:
        wide = widen_model(model, hidden, torch.Generator().manual_seed(seed))
    except ValueError as err:
        raise CheckpointError(f"{src}: {err}") from None
    save(dst, wide, stats, fcfg, widened_from=str(src))
    return Path(dst)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        description="asr checkpoints: export one for serving, average several, or widen one."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="strip optimizer state: runs/x/best.pt -> models/default.pt")
    exp.add_argument("src")
    exp.add_argument("dst", nargs="?", default=str(DEFAULT_MODEL))
    avg = sub.add_parser("average", help="average the weights of checkpoints: OUT IN IN [IN ...]")
    avg.add_argument("dst")
    avg.add_argument("srcs", nargs="+")
    wid = sub.add_parser("widen", help="the same function with more recurrent units: SRC DST --hidden N")
    wid.add_argument("src")
    wid.add_argument("dst")
    wid.add_argument("--hidden", type=int, required=True, help="units per direction and layer")
    wid.add_argument("--seed", type=int, default=0, help="seeds the new units' incoming weights")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            out = export(args.src, args.dst)
        elif args.command == "average":
            out = average(args.srcs, args.dst)
        else:
            out = widen(args.src, args.dst, args.hidden, args.seed)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
