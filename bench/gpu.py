"""Training and transcription speed on a GPU beside the CPU of the same machine (`scripts/gpu_check.sh`).

    python -m bench.gpu MANIFEST [--steps 40] [--json out.json]

MANIFEST: utterances to train on and transcribe (a slice of the training corpus). Training: the default preset
from random weights, with the recipe's augmentation, at several batch sizes: audio seconds per second after
a warm-up. Transcription: the bundled model, greedy, full context and streaming, as real-time factor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from asr import checkpoint, evaluate, train
from asr.data import read_manifest, write_manifest

BATCHES = ((12000, 32), (48000, 128), (96000, 256))  # (batch_frames, max_batch): ours on the CPU, then larger


def copies(manifest: str, n: int, folder: Path) -> str:
    """A manifest of `n` copies of each utterance (links under new names, so none is deduplicated away)."""
    utts = read_manifest(manifest)
    rows = []
    for k in range(n):
        for i, u in enumerate(utts):
            link = folder / f"{k}_{i}{Path(u.path).suffix}"
            link.symlink_to(u.path)
            rows.append(replace(u, path=str(link)))
    write_manifest(folder / "copies.jsonl", rows)
    return str(folder / "copies.jsonl")


def train_speed(manifest: str, device: str, batch_frames: int, max_batch: int, steps: int) -> float:
    """Audio seconds per second over the training steps after the first 10 (warm-up, cuDNN autotuning)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as out:
        cfg = train.TrainConfig(
            train=(manifest,), clean=(), dev=(), out=out, epochs=1000, clean_epochs=0, max_steps=steps,
            batch_frames=batch_frames, max_batch=max_batch, warmup_steps=10, log_every=1,
            checkpoint_every=10**9, device=device,
        )  # fmt: skip
        train.train(cfg)
        rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl") if '"loss"' in line]
    first, last = rows[10], rows[-1]
    return (last["audio_s"] - first["audio_s"]) / (last["time"] - first["time"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    parser.add_argument("--copies", type=int, default=6, help="train on this many copies of the manifest")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict = {"threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as folder:
        training = copies(args.manifest, args.copies, Path(folder))
        for device in devices:
            for bf, mb in BATCHES if device == "cuda" else BATCHES[:1]:
                t0 = time.time()
                speed = train_speed(training, device, bf, mb, args.steps)
                results[f"train {device} {bf}/{mb}"] = speed
                took = time.time() - t0
                print(f"train {device} batch {bf} frames / {mb} utts: {speed:.0f} audio-s/s ({took:.0f} s)")
    utts = read_manifest(args.manifest)
    for device in devices:
        model, stats, fcfg, _ = checkpoint.load(device=device)
        for mode in ("full", "stream"):
            score = evaluate.score(model, stats, utts, mode, device, feature_config=fcfg)
            results[f"rtf {device} {mode}"] = score["rtf"]
            print(f"transcribe {device} {mode}: RTF {score['rtf']:.4f}, WER {100 * score['wer']:.1f}%")
    for key in [k for k in results if k.startswith(("train cuda", "rtf cuda"))]:
        base = "train cpu 12000/32" if key.startswith("train") else key.replace("cuda", "cpu")
        ratio = results[base] / results[key] if key.startswith("rtf") else results[key] / results[base]
        print(f"{key}: {ratio:.1f}x the CPU")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
