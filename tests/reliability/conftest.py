"""The reliability suite: real server processes under fuzzed input, disconnects, thousands of streams,
concurrent streams, SIGTERM, and a training run killed with SIGKILL.

It takes minutes, so it only runs when asked: `ASR_RELIABILITY=1 pytest tests/reliability` (`make
test-reliability`); in the normal test run its tests are skipped. Each test records its figures with the
`figures` fixture; they are printed at the end of the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` (the server launcher) lives at the repository root
    sys.path.insert(0, str(ROOT))

from asr import checkpoint  # noqa: E402
from asr.features import FeatureStats  # noqa: E402
from asr.model import PRESETS, AcousticModel  # noqa: E402
from bench.server import Server  # noqa: E402

ENABLED = os.environ.get("ASR_RELIABILITY", "") not in ("", "0")
HERE = Path(__file__).resolve().parent
_FIGURES: list[tuple[str, str]] = []  # (test, line)


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: the reliability suite (runs with ASR_RELIABILITY=1)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="reliability suite: set ASR_RELIABILITY=1 (make test-reliability)")
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            if not ENABLED:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("reliability figures")
        for test, line in _FIGURES:
            terminalreporter.write_line(f"{test}: {line}")


@pytest.fixture
def figures(request):
    """figures("streams 2000, ...") records a line for the summary (and prints it)."""

    def record(line: str) -> None:
        _FIGURES.append((request.node.name, line))
        print(f"\n[{request.node.name}] {line}", flush=True)

    return record


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """$ASR_RELIABILITY_MODEL, else the bundled model, else the training run's checkpoint, else a random model
    of the default preset."""
    if os.environ.get("ASR_RELIABILITY_MODEL"):
        return Path(os.environ["ASR_RELIABILITY_MODEL"])
    for path in (checkpoint.DEFAULT_MODEL, ROOT / "runs" / "default" / "last.pt"):
        if path.exists():
            return path
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random-default.pt"
    checkpoint.save(path, AcousticModel(PRESETS["default"]), FeatureStats.identity())
    return path


MAX_STREAMS = 64
MAX_MESSAGE = 1 << 20
MAX_AUDIO_S = 30.0
IDLE_S = 5.0


@pytest.fixture(scope="session")
def server(model_path, tmp_path_factory):
    """One server for the suite (the shutdown test starts its own), with small limits and metrics."""
    proc = Server(
        model_path,
        tmp_path_factory.mktemp("log") / "server.log",
        "--metrics-port", "0",
        "--decoder", "greedy",  # the server's mechanics are under test here, not the LM
        "--max-streams", str(MAX_STREAMS),
        "--max-message-bytes", str(MAX_MESSAGE),
        "--max-audio-s", str(MAX_AUDIO_S),
        "--idle-timeout-s", str(IDLE_S),
    )  # fmt: skip
    try:
        proc.wait_serving()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()[-5000:]
