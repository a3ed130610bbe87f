"""The decoder grid search: one acoustic pass, each (LM weight, word score) pair decoded as evaluate does."""

import json

import pytest

from asr import checkpoint, evaluate, tune_decoder
from asr.data import read_manifest
from asr.decoder_config import DecoderConfig


@pytest.fixture(scope="module")
def an4_head(data_dir):
    return read_manifest(data_dir / "an4")[:8]


@pytest.fixture(scope="module")
def bundled():
    return checkpoint.load(checkpoint.DEFAULT_MODEL)


@pytest.mark.parametrize("mode", ["full", "stream"])
def test_sweep_scores_each_pair_as_evaluate_does(an4_head, bundled, mode, one_thread):
    model, stats, fcfg, _ = bundled
    refs = [u.text for u in an4_head]
    base = DecoderConfig.bundled()
    log_probs = tune_decoder.log_probs_of(model, stats, an4_head, mode, fcfg)
    rows = tune_decoder.sweep(log_probs, refs, base, [0.5, 2.0], [0.0, 10.0], progress=False)
    assert len(rows) == 4 and [r["wer"] for r in rows] == sorted(r["wer"] for r in rows)
    # a bonus of 10 nats per word: words are inserted wherever a letter might be, at either weight
    assert all(r["wer"] > 0.5 for r in rows if r["word_score"] == 10.0)
    assert rows[-1]["word_score"] == 10.0
    # every pair scores exactly what make eval's decoding with that pair scores on the same utterances
    for row in rows:
        config = DecoderConfig.bundled(lm_weight=row["lm_weight"], word_score=row["word_score"])
        decode = evaluate.text_decoder(config)
        expected = evaluate.score(model, stats, an4_head, mode, decode=decode, feature_config=fcfg)
        assert row["wer"] == pytest.approx(expected["wer"]) and row["cer"] == pytest.approx(expected["cer"])
    default = next(r for r in rows if (r["lm_weight"], r["word_score"]) == (0.5, 0.0))
    assert default["wer"] < 0.5


def test_main_writes_the_grid_and_refuses_what_it_cannot_search(data_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "grid.json"
    args = [str(data_dir / "an4"), "--limit", "3", "--lm-weights", "0.5", "1", "--word-scores", "0"]
    tune_decoder.main([*args, "--json", str(out)])
    grid = json.loads(out.read_text())
    assert list(grid) == ["full"] and len(grid["full"]) == 2
    assert "LM weight" in capsys.readouterr().out
    refusals = {
        "--decoder greedy": "greedy has none",
        "--lm none": "needs an LM",
        "--lm-weight 1": "give --lm-weights",
        "--lm-weights 0": "must be positive",
    }
    for flags, why in refusals.items():
        with pytest.raises(SystemExit):
            tune_decoder.main([*args, *flags.split()])
        assert why in capsys.readouterr().err
