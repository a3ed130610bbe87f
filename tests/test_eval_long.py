"""scripts/eval_long.py: the long-audio sets are built as documented and scored through whole sessions."""

from __future__ import annotations

import numpy as np
import pytest

from asr import audio, decoder_config
from scripts import eval_long


@pytest.fixture(scope="module")
def sets(data_dir):
    return eval_long.long_sets(limit=2)


def test_long_sets_are_built_as_documented(sets):
    assert set(sets) == {"fsdd joined", "an4 padded", "an4 plain"}
    gap = int(eval_long.GAP_S * audio.SAMPLE_RATE)
    for (joined, ref), (padded, _), (plain, _) in zip(
        sets["fsdd joined"], sets["an4 padded"], sets["an4 plain"], strict=True
    ):
        assert len(ref.split()) == eval_long.JOIN and set(ref.split()) <= set(
            "zero one two three four five six seven eight nine".split()
        )
        assert len(joined) > (eval_long.JOIN + 1) * gap
        assert len(padded) == len(plain) + 2 * gap
        assert np.abs(padded[: gap // 2]).max() < 10 * eval_long.NOISE  # faint noise, not speech
        assert np.array_equal(padded[gap : gap + len(plain)], plain)
    assert eval_long.long_sets(limit=2)["fsdd joined"][0][1] == sets["fsdd joined"][0][1]  # fixed seeds


def test_eval_long_prints_both_reset_settings(capsys):
    eval_long.main(["--limit", "1"])
    lines = capsys.readouterr().out.splitlines()
    default = decoder_config.DecoderConfig.bundled()  # the server's default decoding
    assert lines[0].endswith(f"decoder {default.describe()}")
    assert f"LM {decoder_config.BUNDLED_LM}" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 6
    assert [r[3] for r in rows] == ["off", "on"] * 3
