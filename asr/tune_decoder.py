"""Grid search of beam search's LM weight and word score on a tuning set, the acoustic model run once.

    python -m asr.tune_decoder tuning.jsonl --lm-weights 0.5 1 2 --word-scores -1 0 1

Each utterance's log-probs are computed once per mode (full context, or stepped as a stream exactly as
`asr.evaluate` does), then every (LM weight, word score) pair decodes them all with the same LM and lexicon;
the table gives each pair's WER and CER, best first. Tune on audio the model was not trained on and that is
not a dev set (`make eval`'s sets are our test sets); the README says what a search on the Asterisk prompts,
before they became a dev set, found for the bundled weights.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from asr import checkpoint, decoder_config, decoding, features
from asr.data import Utterance, read_manifest
from asr.decoder_config import DecoderConfig
from asr.evaluate import MODES, aligned, error_rates, load_scaled, mode_log_probs, text_decoder
from asr.model import AcousticModel


def log_probs_of(
    model: AcousticModel, stats, utts: list[Utterance], mode: str, fcfg: features.FeatureConfig, device="cpu"
) -> list[torch.Tensor]:
    """(T', vocab) CPU log-probs of each utterance in the manifest's order, in `mode` ('full' or 'stream')."""
    model.eval()
    feats = [features.extract(w, fcfg, stats) for w in load_scaled(utts)]
    return mode_log_probs(model, feats, mode, device)


def sweep(
    log_probs: list[torch.Tensor],
    refs: list[str],
    base: decoding.DecoderConfig,
    lm_weights: list[float],
    word_scores: list[float],
    progress: bool = True,
) -> list[dict]:
    """[{'lm_weight', 'word_score', 'wer', 'cer'}] of beam search (`base` with each pair) over the log-probs,
    sorted by WER then CER. The LM, lexicon and trie are loaded once for all pairs."""
    resources = decoding.load_resources(base)
    rows = []
    grid = list(itertools.product(lm_weights, word_scores))
    for weight, word_score in tqdm(grid, desc="decoder grid", unit="pair", disable=not progress):
        decode = text_decoder(replace(base, lm_weight=weight, word_score=word_score), resources)
        hyps = [decode(lp) for lp in log_probs]
        wer, cer = error_rates(refs, hyps)
        rows.append({"lm_weight": weight, "word_score": word_score, "wer": wer, "cer": cer})
    return sorted(rows, key=lambda r: (r["wer"], r["cer"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Grid search of the LM weight and word score on a tuning set."
    )
    parser.add_argument(
        "manifests", nargs="+", help="JSONL manifests, transcripts.tsv files or their folders"
    )
    parser.add_argument(
        "--model", default=str(checkpoint.DEFAULT_MODEL), help="checkpoint (default: bundled)"
    )
    parser.add_argument("--modes", nargs="+", default=["full"], choices=MODES)
    parser.add_argument("--lm-weights", nargs="+", type=float, default=[0.25, 0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--word-scores", nargs="+", type=float, default=[-1.0, 0.0, 1.0])
    decoder_config.add_decoder_args(parser.add_argument_group("decoding (LM, lexicon, beam size)"))
    parser.add_argument("--limit", type=int, default=0, help="utterances per manifest (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", default="", help="also write the grid here")
    args = parser.parse_args(argv)
    if (args.lm_weight, args.word_score) != (DecoderConfig.lm_weight, DecoderConfig.word_score):
        parser.error("the grid sets the LM weight and word score: give --lm-weights and --word-scores")
    if min(args.lm_weights) <= 0:
        parser.error("--lm-weights must be positive")
    if args.decoder != "beam":
        parser.error("the grid is over beam search's LM weight: --decoder greedy has none")
    try:
        base = decoder_config.decoder_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    if not base.lm_path:
        parser.error("the grid needs an LM (not --lm none)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, stats, fcfg, _ = checkpoint.load(args.model)
    utts = [u for m in args.manifests for u in read_manifest(m)[: args.limit or None]]
    refs = [u.text for u in utts]
    results = {}
    for mode in args.modes:
        rows = sweep(
            log_probs_of(model, stats, utts, mode, fcfg), refs, base, args.lm_weights, args.word_scores
        )
        results[mode] = rows
        title = (
            f"\n{mode}: {len(utts)} utterances, model {args.model}, beam {base.beam_size}, LM {base.lm_path}"
        )
        table = [
            (f"{r['lm_weight']:g}", f"{r['word_score']:g}", f"{100 * r['wer']:.1f}", f"{100 * r['cer']:.1f}")
            for r in rows
        ]
        print(aligned(("LM weight", "word score", "WER %", "CER %"), table, title))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
