"""Smoke tests of the benchmark code (`make bench`): FLOP counts, latency bookkeeping, a tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from asr import checkpoint
from asr.features import FeatureStats
from asr.model import PRESETS, AcousticModel
from bench import flops, loadgen, run


def test_flops_of_the_default_preset():
    cfg = PRESETS["default"]
    full = flops.flops_per_audio_second(cfg)
    out_fps = 100 / cfg.subsample
    conv = 2 * 80 * 256 * 5 * 100 + 2 * 256 * 256 * 6 * out_fps
    first, other = 2 * 4 * 256 * (256 + 256), 2 * 4 * 256 * (512 + 256)  # per frame and direction
    assert full["conv"] == pytest.approx(conv)
    assert full["rnn"] == pytest.approx(2 * (first + 2 * other) * out_fps)
    assert full["head"] == pytest.approx(2 * 512 * cfg.vocab * out_fps)
    lc = flops.flops_per_audio_second(cfg, chunk=8, right=4)  # look-ahead: 1.5x the frames
    # every layer's both directions see it again, but the last layer's forward direction
    assert lc["rnn"] == pytest.approx((1.5 * 2 * (first + other) + other + 1.5 * other) * out_fps)
    assert lc["conv"] == pytest.approx(1.5 * full["conv"]) and lc["head"] == full["head"]
    trained = flops.flops_per_audio_second(cfg, chunk=8, right=4, stepped=False)  # forward_chunked
    assert trained["conv"] == full["conv"] and trained["rnn"] == lc["rnn"]
    assert flops.matmul_gflops(1, n=256, min_time_s=0.05) > 0.1


def test_partial_latency_is_timed_from_the_piece_that_completed_the_audio():
    log = loadgen.StreamLog(sent=[10.0 + 0.1 * k for k in range(10)], lag=[0.0] * 10)
    # a partial ending at 0.24 s needs audio up to 0.24 + 0.135 = 0.375 s: piece 3 (0.3-0.4 s), sent at 10.3
    log.results = [(10.32, False, 0.24), (11.5, True, 0.9)]
    log.half_close, log.ended = 11.0, 11.2
    out = loadgen.summarise([log], lookahead_s=0.135, wall_s=1.0)
    assert out["partials"] == 1 and out["partial_p50_ms"] == pytest.approx(20.0)
    assert out["final_p50_ms"] == pytest.approx(500.0)
    assert out["realtime"] and out["codes"] == {"OK": 1}


@pytest.mark.slow
def test_quick_bench_run(tmp_path):
    model = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    checkpoint.save(model, AcousticModel(PRESETS["tiny"]), FeatureStats.identity())
    out = tmp_path / "bench.json"
    run.main(["--quick", "--model", str(model), "--sections", "recognition", "server", "floor",
              "--files", "3", "--levels", "1", "2", "--json", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["recognition"]["stream_1thread"]["rtf"] > 0
    assert results["recognition"]["stream_1thread_lm"]["rtf"] > 0  # asr-serve's default decoding
    assert results["recognition"]["pocketsphinx"]["rtf"] > 0
    assert [row["streams"] for row in results["server"]["levels"]] == [1, 2]
    assert all(row["codes"] == {"OK": row["streams"]} for row in results["server"]["levels"])
    assert results["server"]["server_exit_code"] == 0
    assert results["floor"]["matmul_gflops_1thread"] > 0
    assert set(results["targets"]) == {"concurrent real-time streams", "one stream vs pocketsphinx",
                                       "batch transcription"}  # fmt: skip
