"""WER, CER and real-time factor of a checkpoint on manifests, in full-context and streaming mode.

    python -m asr.evaluate --model models/default.pt corpus/dev-an4.jsonl ../shared/data/pocketsphinx

"full" runs whole utterances in length-sorted batches; "stream" feeds each utterance through
`AcousticModel.step` chunk by chunk, one stream at a time, exactly as a live session would.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from asr import audio, checkpoint, decoder_config, decoding, features, text
from asr.batch import full_log_probs
from asr.data import Utterance, read_manifest
from asr.model import DEFAULT_CHUNK, DEFAULT_RIGHT, AcousticModel, next_step

MODES = ("full", "stream")


@torch.no_grad()
def greedy_text(log_probs: torch.Tensor) -> str:
    return decoding.greedy(log_probs).text


def text_decoder(config: decoding.DecoderConfig | None, resources: decoding.BeamResources | None = None):
    """(T', vocab) log-probs -> text, with `config`'s decoder (greedy when None); beam search's resources
    loaded once, or `resources` already loaded for its LM and lexicon."""
    if config is None or config.method == "greedy":
        return greedy_text
    resources = resources or decoding.load_resources(config)
    return lambda log_probs: decoding.beam_search(log_probs, config, resources=resources)[0][0].text


def transcribe_full(
    model: AcousticModel, feats: list[torch.Tensor], device="cpu", decode=greedy_text
) -> list[str]:
    """Transcripts of normalised features, batched by length, full context (greedy unless `decode` says)."""
    return [decode(log_probs) for log_probs in mode_log_probs(model, feats, "full", device)]


@torch.no_grad()
def stream_log_probs(
    model: AcousticModel, feats: torch.Tensor, chunk: int = DEFAULT_CHUNK, right: int = DEFAULT_RIGHT
) -> torch.Tensor:
    """(T, n_mels) normalised features -> (T', vocab) log-probs, stepped chunk by chunk as a stream."""
    state = model.init_state(1, feats)
    S = model.config.subsample
    parts, pos = [], 0
    while (cut := next_step(feats.shape[0] - pos, chunk, right, S, final=True)) is not None:
        frames, r = cut
        log_probs, state = model.step(feats[None, pos : pos + frames], state, r)
        parts.append(log_probs[0])
        pos += frames - r * S
    return torch.cat(parts) if parts else feats.new_zeros(0, model.config.vocab)


def transcribe_stream(
    model: AcousticModel, feats: list[torch.Tensor], device="cpu", decode=greedy_text
) -> list[str]:
    return [decode(log_probs) for log_probs in mode_log_probs(model, feats, "stream", device)]


@torch.no_grad()
def mode_log_probs(
    model: AcousticModel, feats: list[torch.Tensor], mode: str, device="cpu"
) -> list[torch.Tensor]:
    """(T', vocab) float CPU log-probs of normalised features, in their order, as `score` decodes them in
    `mode` ('full': batched by length; 'stream': chunk by chunk); (0, vocab) for one too short for a frame."""
    if mode == "stream":
        return [stream_log_probs(model, f.to(device)).float().cpu() for f in feats]
    out = [torch.zeros(0, model.config.vocab)] * len(feats)
    for k, log_probs in full_log_probs(model, feats, device):
        out[k] = log_probs
    return out


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """Corpus WER and CER of normalised text (an empty reference counts its hypothesis as insertions)."""
    refs = [text.normalize(r) for r in refs]
    hyps = [text.normalize(h) for h in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not pairs:
        return 0.0, 0.0
    r, h = zip(*pairs, strict=True)
    return jiwer.wer(list(r), list(h)), jiwer.cer(list(r), list(h))


def word_errors(refs: list[str], hyps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Word errors (substitutions + deletions + insertions) and reference words of each utterance, as
    `error_rates` counts them (normalised text; utterances with an empty reference left out)."""
    errors, words = [], []
    for r, h in zip(refs, hyps, strict=True):
        r, h = text.normalize(r), text.normalize(h)
        if r:
            out = jiwer.process_words(r, h)
            errors.append(out.substitutions + out.deletions + out.insertions)
            words.append(len(r.split()))
    return np.array(errors, dtype=float), np.array(words, dtype=float)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over paired per-utterance arrays (fixed seed)."""
    from scipy.stats import bootstrap

    result = bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        n_resamples=2000,
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wer_interval(refs: list[str], hyps: list[str], confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the corpus WER, resampling utterances: what another sample of utterances like
    these could give. On the 11 pocketsphinx clips it spans about 30 points."""
    errors, words = word_errors(refs, hyps)
    if len(words) < 2 or not errors.any():
        wer = float(errors.sum() / words.sum()) if words.sum() else 0.0
        return wer, wer
    return _bootstrap((errors, words), lambda e, n, axis: e.sum(axis) / n.sum(axis), confidence)


def wer_difference_interval(
    refs: list[str], hyps_a: list[str], hyps_b: list[str], confidence: float = 0.95
) -> tuple[float, float, float]:
    """(WER of a - WER of b, low, high): the paired bootstrap interval of the difference of two systems'
    WERs on the same utterances. An interval that holds 0 does not tell the two apart on this set; one that
    leaves it out says nothing about how much either system's training varies with its seed."""
    errors_a, words = word_errors(refs, hyps_a)
    errors_b, _ = word_errors(refs, hyps_b)
    diff = float((errors_a.sum() - errors_b.sum()) / words.sum()) if words.sum() else 0.0
    if len(words) < 2 or not (errors_a - errors_b).any():
        return diff, diff, diff
    statistic = lambda a, b, n, axis: (a.sum(axis) - b.sum(axis)) / n.sum(axis)  # noqa: E731
    return diff, *_bootstrap((errors_a, errors_b, words), statistic, confidence)


def figures(utts: list[Utterance], hyps: list[str], elapsed: float, hyps_out: list | None = None) -> dict:
    """{'wer', 'wer_ci', 'cer', 'rtf', 'utterances', 'audio_s'} of hypotheses against the utterances'
    references; wer_ci: the 95% bootstrap interval of the WER (`wer_interval`)."""
    audio_s = sum(u.duration for u in utts)
    refs = [u.text for u in utts]
    wer, cer = error_rates(refs, hyps)
    if hyps_out is not None:
        hyps_out.extend(hyps)
    return {
        "wer": wer,
        "wer_ci": wer_interval(refs, hyps),
        "cer": cer,
        "rtf": elapsed / max(audio_s, 1e-9),
        "utterances": len(utts),
        "audio_s": audio_s,
    }


def compare(refs: dict[str, list[str]], results: dict, other: dict) -> dict:
    """{set: {mode: (WER here, WER there, difference, low, high)}}: the paired 95% interval of the WER
    difference (`wer_difference_interval`) between `results` and `other` (both as `main` writes them to
    --json, with each mode's "hypotheses") for every set and mode they share with the same utterances;
    `refs`: each set's references."""
    table: dict = {}
    for name, modes in results.items():
        for mode, here in modes.items():
            there = other.get(name, {}).get(mode, {}).get("hypotheses")
            if there is None or len(there) != len(refs[name]):
                continue
            diff = wer_difference_interval(refs[name], here["hypotheses"], there)
            wer_there = error_rates(refs[name], there)[0]
            table.setdefault(name, {})[mode] = (here["wer"], wer_there, *diff)
    return table


def format_comparison(table: dict, title: str = "") -> str:
    rows = [
        (name, mode, *(f"{100 * x:.1f}" for x in (a, b, d)), f"[{100 * low:+.1f}, {100 * high:+.1f}]")
        for name, modes in table.items()
        for mode, (a, b, d, low, high) in modes.items()
    ]
    if not rows:
        return "\n".join(
            [*([title] if title else []), "no set and mode in common (same utterances, hypotheses)"]
        )
    return aligned(("set", "mode", "WER %", "other", "difference", "95% CI"), rows, title)


def score(
    model: AcousticModel,
    stats,
    utts: list[Utterance],
    mode: str = "full",
    device="cpu",
    hyps_out: list | None = None,
    decode=greedy_text,
    feature_config: features.FeatureConfig = features.FeatureConfig(),
    gain_db: float = 0.0,
) -> dict:
    """{'wer', 'cer', 'rtf', 'utterances', 'audio_s'} of decoding (greedy unless `decode`) in a mode.

    Modes: 'full' or 'stream'. RTF: features, model and decoding (not file reading) on this process's threads.
    `gain_db` scales the audio first (clipped at full scale): what a quieter or louder microphone does.
    """
    model.eval()
    wavs = load_scaled(utts, gain_db)
    t0 = time.perf_counter()
    feats = [features.extract(w, feature_config, stats) for w in wavs]
    hyps = (transcribe_full if mode == "full" else transcribe_stream)(model, feats, device, decode)
    return figures(utts, hyps, time.perf_counter() - t0, hyps_out)


def load_scaled(utts: list[Utterance], gain_db: float = 0.0) -> list:
    """The utterances' audio, scaled by `gain_db` and clipped at full scale."""
    wavs = [audio.load(u.path) for u in utts]
    return [np.clip(w * 10 ** (gain_db / 20), -1.0, 1.0) for w in wavs] if gain_db else wavs


def score_pocketsphinx(utts: list[Utterance], hyps_out: list | None = None, gain_db: float = 0.0) -> dict:
    """The same figures for pocketsphinx 5.1.1 with its bundled en-us model (our peer), on the same audio."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=audio.SAMPLE_RATE, loglevel="FATAL")
    wavs = load_scaled(utts, gain_db)
    hyps = []
    t0 = time.perf_counter()
    for w in wavs:
        decoder.start_utt()
        decoder.process_raw(audio.to_pcm16(w), full_utt=True)
        decoder.end_utt()
        hyps.append(decoder.hyp().hypstr if decoder.hyp() else "")
    return figures(utts, hyps, time.perf_counter() - t0, hyps_out)


def format_table(results: dict, title: str = "") -> str:
    """results: {set: {wer, cer, rtf, ...}} or {set: {mode: {...}}} -> an aligned text table."""
    rows = []
    for name, r in results.items():
        for mode, m in r.items() if "wer" not in r else [("", r)]:
            low, high = m.get("wer_ci", (m["wer"], m["wer"]))
            ci = f"{100 * low:.1f}-{100 * high:.1f}"
            rows.append((name, mode, f"{100 * m['wer']:.1f}", ci, f"{100 * m['cer']:.1f}", f"{m['rtf']:.4f}"))
    return aligned(("set", "mode", "WER %", "WER 95% CI", "CER %", "RTF"), rows, title)


def aligned(head: tuple[str, ...], rows: list[tuple], title: str = "") -> str:
    """A text table: the title, the header, a rule, then the rows, each column padded to its widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [title] if title else []
    return "\n".join(out + [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="WER/CER/RTF of a checkpoint on manifests.")
    parser.add_argument(
        "manifests", nargs="+", help="JSONL manifests, transcripts.tsv files or their folders"
    )
    parser.add_argument(
        "--model", default=str(checkpoint.DEFAULT_MODEL), help="checkpoint (default: bundled)"
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--peer", action="store_true", help="also score pocketsphinx on the same audio")
    decoder_config.add_decoder_args(parser.add_argument_group("decoding"))
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--limit", type=int, default=0, help="utterances per manifest (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--device", default="cpu", help="torch device of the model (cpu, cuda): RTF is measured on it"
    )
    parser.add_argument(
        "--gain-db", type=float, default=0.0, help="scale the audio by this first (a quieter mic)"
    )
    parser.add_argument(
        "--against",
        default="",
        help="another run's --json: also print the paired 95%% interval of each WER difference to it",
    )
    args = parser.parse_args(argv)
    try:
        other = json.loads(Path(args.against).read_text()) if args.against else None
    except (OSError, ValueError) as err:
        parser.error(f"--against {args.against}: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        decoder = decoder_config.decoder_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    model, stats, fcfg, _ = checkpoint.load(args.model, args.device)
    decode = text_decoder(decoder)
    results, refs = {}, {}
    for m in args.manifests:
        utts = read_manifest(m)[: args.limit or None]
        name = Path(m).stem if Path(m).suffix else Path(m).name
        refs[name] = [u.text for u in utts]
        options = dict(device=args.device, decode=decode, feature_config=fcfg, gain_db=args.gain_db)
        results[name] = {}
        for mode in [*args.modes, *(["pocketsphinx"] if args.peer else [])]:
            hyps: list[str] = []  # kept in the JSON, in the manifest's order, for a later --against
            if mode == "pocketsphinx":
                figures_ = score_pocketsphinx(utts, hyps, gain_db=args.gain_db)
            else:
                figures_ = score(model, stats, utts, mode, hyps_out=hyps, **options)
            results[name][mode] = {**figures_, "hypotheses": hyps}
    gain = f"; audio gain {args.gain_db:+g} dB" if args.gain_db else ""
    print(format_table(results, f"model {args.model} on {args.device}; {decoder.describe()}{gain}"))
    if other is not None:
        title = f"\nWER here - WER of {args.against} on the same utterances (paired bootstrap)"
        print(format_comparison(compare(refs, results, other), title))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
