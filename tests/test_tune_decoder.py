"""The decoder grid search: one acoustic pass, each (LM weight, word score) pair decoded as evaluate does."""

import json

import pytest

from asr import checkpoint, evaluate, tune_decoder
from asr.data import read_manifest
from asr.decoder_config import DecoderConfig


@pytest.fixture(scope="module")
def an4_head(data_dir):
    return read_manifest(data_dir / "an4")[:8]


def test_sweep_agrees_with_evaluate_and_ranks_every_pair(an4_head, one_thread):
    model, stats, fcfg, _ = checkpoint.load(checkpoint.DEFAULT_MODEL)
    refs = [u.text for u in an4_head]
    base = DecoderConfig.bundled()
    log_probs = tune_decoder.log_probs_of(model, stats, an4_head, "full", fcfg)
    rows = tune_decoder.sweep(log_probs, refs, base, [0.5, 2.0], [0.0, 10.0], progress=False)
    assert {(r["lm_weight"], r["word_score"]) for r in rows} == {
        (0.5, 0.0),
        (0.5, 10.0),
        (2.0, 0.0),
        (2.0, 10.0),
    }
    assert [r["wer"] for r in rows] == sorted(r["wer"] for r in rows)
    # a bonus of 10 nats per word: words are inserted wherever a letter might be, at either weight
    assert all(r["wer"] > 0.5 for r in rows if r["word_score"] == 10.0)
    assert rows[-1]["word_score"] == 10.0
    # the default pair scores exactly what make eval's decoding scores on the same utterances
    decode = evaluate.text_decoder(base)
    expected = evaluate.score(model, stats, an4_head, "full", decode=decode, feature_config=fcfg)
    default = next(r for r in rows if (r["lm_weight"], r["word_score"]) == (0.5, 0.0))
    assert default["wer"] == pytest.approx(expected["wer"]) and default["wer"] < 0.5


def test_main_writes_the_grid_and_refuses_greedy(data_dir, tmp_path, capsys, one_thread):
    out = tmp_path / "grid.json"
    args = [str(data_dir / "an4"), "--limit", "3", "--lm-weights", "0.5", "1", "--word-scores", "0"]
    tune_decoder.main([*args, "--json", str(out)])
    grid = json.loads(out.read_text())
    assert list(grid) == ["full"] and len(grid["full"]) == 2
    assert "LM weight" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tune_decoder.main([*args, "--decoder", "greedy"])
    with pytest.raises(SystemExit):
        tune_decoder.main([*args, "--lm-weights", "0"])
