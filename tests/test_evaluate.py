"""Scoring: corpus error rates and the bootstrap interval of the WER."""

import json

import pytest

from asr import evaluate
from asr.data import Utterance, read_manifest


def corrupt(sentence: str, k: int) -> str:
    """Every third sentence loses its first word and gets its last one wrong."""
    words = sentence.split()
    if k % 3 or len(words) < 2:
        return sentence
    return " ".join(words[1:-1] + ["xyzzy"])


@pytest.fixture(scope="module")
def an4_pairs(data_dir):
    refs = [u.text for u in read_manifest(data_dir / "an4")]
    return refs, [corrupt(r, k) for k, r in enumerate(refs)]


def test_word_errors_add_up_to_the_corpus_wer(an4_pairs):
    refs, hyps = an4_pairs
    errors, words = evaluate.word_errors(refs, hyps)
    assert len(errors) == len(refs) and errors.sum() > 0
    assert errors.sum() / words.sum() == pytest.approx(evaluate.error_rates(refs, hyps)[0])


def test_wer_interval_holds_the_wer_and_narrows_with_more_utterances(an4_pairs):
    refs, hyps = an4_pairs
    wer = evaluate.error_rates(refs, hyps)[0]
    low, high = evaluate.wer_interval(refs, hyps)
    assert low < wer < high and high - low > 0.02
    assert evaluate.wer_interval(refs, hyps) == (low, high)  # a fixed seed: the same interval every run
    low16, high16 = evaluate.wer_interval(refs * 16, hyps * 16)  # 16 times the utterances: 1/4 the width
    assert low16 < wer < high16 and (high16 - low16) < 0.4 * (high - low)


def test_wer_interval_of_perfect_or_single_transcripts_is_the_wer(an4_pairs):
    refs, hyps = an4_pairs
    assert evaluate.wer_interval(refs, refs) == (0.0, 0.0)
    wer = evaluate.error_rates(refs[:1], hyps[:1])[0]
    assert evaluate.wer_interval(refs[:1], hyps[:1]) == (wer, wer)


def test_paired_difference_interval_tells_a_worse_system_apart(an4_pairs):
    refs, hyps = an4_pairs
    worse = [corrupt(h, k + 1) for k, h in enumerate(hyps)]  # a third more utterances corrupted
    diff, low, high = evaluate.wer_difference_interval(refs, worse, hyps)
    wer = evaluate.error_rates
    assert diff == pytest.approx(wer(refs, worse)[0] - wer(refs, hyps)[0])
    assert 0 < low < diff < high  # worse on every resample of these utterances
    assert evaluate.wer_difference_interval(refs, hyps, hyps) == (0.0, 0.0, 0.0)
    # one utterance apart out of 51: the interval holds 0
    k = next(k for k, h in enumerate(hyps) if k % 3 and len(h.split()) > 1)  # one left intact so far
    one_off = hyps[:k] + [corrupt(hyps[k], 0)] + hyps[k + 1 :]
    diff, low, high = evaluate.wer_difference_interval(refs, one_off, hyps)
    assert low <= 0 < diff <= high


def test_format_table_shows_the_interval():
    results = {"an4": {"full": {"wer": 0.184, "wer_ci": (0.123, 0.25), "cer": 0.116, "rtf": 0.005}}}
    table = evaluate.format_table(results)
    assert "WER 95% CI" in table and "12.3-25.0" in table


def test_compare_pairs_two_runs_on_the_sets_and_modes_they_share(an4_pairs):
    refs, hyps = an4_pairs
    worse = [corrupt(h, k + 1) for k, h in enumerate(hyps)]
    utts = [Utterance(f"{k}.flac", 1.0, r) for k, r in enumerate(refs)]
    run = lambda h: {**evaluate.figures(utts, h, 1.0), "hypotheses": h}  # noqa: E731  (as main writes it)
    here = {"an4": {"full": run(worse), "stream": run(hyps)}}
    there = {"an4": {"full": run(hyps)}, "fsdd": {"full": {"hypotheses": []}}}
    table = evaluate.compare({"an4": refs}, here, there)
    assert list(table) == ["an4"] and list(table["an4"]) == ["full"]  # only what both runs scored
    wer_here, wer_there, diff, low, high = table["an4"]["full"]
    assert (diff, low, high) == evaluate.wer_difference_interval(refs, worse, hyps)
    assert wer_here - wer_there == pytest.approx(diff) and 0 < low < diff < high
    text = evaluate.format_comparison(table)
    assert "95% CI" in text and f"[{100 * low:+.1f}, {100 * high:+.1f}]" in text
    there["an4"]["full"]["hypotheses"] = hyps[:-1]  # another set of utterances: not compared
    assert evaluate.compare({"an4": refs}, here, there) == {}
    assert "no set and mode in common" in evaluate.format_comparison({}, "title")


def test_main_writes_hypotheses_and_compares_against_an_earlier_run(model_path, data_dir, tmp_path, capsys):
    first = tmp_path / "first.json"
    argv = ["--model", str(model_path), "--decoder", "greedy", "--modes", "full", "--limit", "5"]
    evaluate.main([*argv, "--json", str(first), str(data_dir / "an4")])
    saved = json.loads(first.read_text())["an4"]["full"]
    assert len(saved["hypotheses"]) == 5 == saved["utterances"]
    capsys.readouterr()
    evaluate.main([*argv, "--against", str(first), str(data_dir / "an4")])
    out = capsys.readouterr().out
    assert "paired bootstrap" in out and "[+0.0, +0.0]" in out  # the same model: no difference
    with pytest.raises(SystemExit):
        evaluate.main([*argv, "--against", str(tmp_path / "missing.json"), str(data_dir / "an4")])
