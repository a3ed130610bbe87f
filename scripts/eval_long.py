"""Long-audio WER: whole recognition sessions (endpointing, state resets) on audio with long non-speech.

    python scripts/eval_long.py --model models/default.pt

`make eval` scores utterances as they are cut in the dev sets, with at most a second of silence around them.
A live stream or a long file is different: seconds of background between utterances, several utterances in
one stream. Three sets from `../shared/data` show how the bundled model copes with that:

- "fsdd joined": held-out FSDD speakers (theo, yweweler), 5 clips per file joined by 1.5 s of faint noise
  (the reference is the 5 digits);
- "an4 padded": each an4 clip with 1.5 s of faint noise before and after it;
- "an4 plain": the an4 clips as they are, through a session (compare `make eval`'s streaming column, which
  decodes the whole clip without endpointing).

Each file goes through `Recognizer.session` exactly as the server runs it (by default with its decoding: beam
search with the bundled LM; `--decoder greedy` for the argmax path), with `reset_at_endpoint` off and on; the
hypothesis is the file's final results joined.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from asr import audio, checkpoint, decoder_config
from asr.data import read_manifest, shared_data_dir
from asr.evaluate import error_rates
from asr.streaming import Recognizer, StreamingConfig

GAP_S = 1.5  # non-speech between and around the clips
NOISE = 1e-3  # its level: white noise at -60 dBFS, a quiet room
JOIN = 5  # FSDD clips per joined file
DEV_SPEAKERS = ("theo", "yweweler")


def noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(int(seconds * audio.SAMPLE_RATE)) * NOISE).astype(np.float32)


def long_sets(limit: int = 0) -> dict[str, list[tuple[np.ndarray, str]]]:
    """Set name -> [(samples, reference)], built from ../shared/data with fixed seeds."""
    data, rng = shared_data_dir(), np.random.default_rng(0)
    fsdd = [u for u in read_manifest(data / "fsdd") if u.speaker in DEV_SPEAKERS]
    random.Random(0).shuffle(fsdd)
    fsdd = fsdd[: (limit or 20) * JOIN]
    joined = []
    for i in range(0, len(fsdd), JOIN):
        group = fsdd[i : i + JOIN]
        parts = [p for u in group for p in (noise(GAP_S, rng), audio.load(u.path))] + [noise(GAP_S, rng)]
        joined.append((np.concatenate(parts), " ".join(u.text for u in group)))
    an4 = read_manifest(data / "an4")[: limit or None]
    clips = [(audio.load(u.path), u.text) for u in an4]
    padded = [(np.concatenate([noise(GAP_S, rng), x, noise(GAP_S, rng)]), t) for x, t in clips]
    return {"fsdd joined": joined, "an4 padded": padded, "an4 plain": clips}


def transcribe(rec: Recognizer, samples: np.ndarray, config: StreamingConfig) -> tuple[str, int]:
    """The finals of one session over the whole file, joined, and how many there were."""
    finals = [r.text for r in rec.recognize(samples, config)]
    return " ".join(finals), len(finals)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(checkpoint.DEFAULT_MODEL))
    p.add_argument("--limit", type=int, default=0, help="files per set (0: 20 joined files, all of an4)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    decoder_config.add_decoder_args(p.add_argument_group("decoding"))
    args = p.parse_args(argv)
    try:
        decoder = decoder_config.decoder_from_args(args)
    except ValueError as err:
        p.error(str(err))
    torch.set_num_threads(args.threads)
    rec = Recognizer.load(args.model)
    print(f"model {args.model}; decoder {decoder.describe()}")
    header = f"{'set':12s} {'files':>5s}  {'resets':6s} {'WER %':>6s} {'CER %':>6s} {'finals/file':>11s}"
    print(header + "  first file")
    for name, items in long_sets(args.limit).items():
        refs = [t for _, t in items]
        for reset in (False, True):
            outs = [
                transcribe(rec, x, StreamingConfig(reset_at_endpoint=reset, decoder=decoder))
                for x, _ in items
            ]
            wer, cer = error_rates(refs, [h for h, _ in outs])
            finals = sum(n for _, n in outs) / len(outs)
            print(
                f"{name:12s} {len(items):5d}  {'on' if reset else 'off':6s} {100 * wer:6.1f} {100 * cer:6.1f}"
                f" {finals:11.1f}  {outs[0][0]!r} (ref {refs[0]!r})",
                flush=True,
            )


if __name__ == "__main__":
    main()
