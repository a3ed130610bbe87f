from pathlib import Path

import pytest
import torch
from server_helpers import make_tiny_model

from asr.data import read_manifest, shared_data_dir
from asr.streaming import Recognizer

DATA = shared_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "an4" / "transcripts.tsv").exists():
        pytest.fail(f"shared speech data not found at {DATA} (set ASR_SHARED_DATA)")
    return DATA


@pytest.fixture(scope="session")
def an4_clip(data_dir) -> Path:
    return data_dir / "an4" / "audio" / "an104-mrcb-b.flac"  # "start", 16 kHz


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on a machine whose cores are busy, spinning OpenMP workers slow small steps 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A random 'tiny' checkpoint for servers and clients: gibberish, but the same for server and library."""
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def recognizer(model_path) -> Recognizer:
    return Recognizer.load(model_path)


@pytest.fixture(scope="module")
def held_out_digits(data_dir):
    """Forty FSDD clips of the held-out speakers (theo, yweweler): each speaks every digit twice."""
    utts = read_manifest(data_dir / "fsdd")
    return [u for u in utts if u.speaker in ("theo", "yweweler") and u.path.endswith(("_7.flac", "_42.flac"))]
