from pathlib import Path

import pytest

from asr.data import shared_data_dir

DATA = shared_data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "an4" / "transcripts.tsv").exists():
        pytest.fail(f"shared speech data not found at {DATA} (set ASR_SHARED_DATA)")
    return DATA


@pytest.fixture(scope="session")
def an4_clip(data_dir) -> Path:
    return data_dir / "an4" / "audio" / "an104-mrcb-b.flac"  # "start", 16 kHz
