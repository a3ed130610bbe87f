from dataclasses import replace

import pytest
import torch

from asr import checkpoint
from asr.checkpoint import CheckpointError
from asr.features import FeatureStats
from asr.model import PRESETS, AcousticModel


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = AcousticModel(PRESETS["tiny"])
    stats = FeatureStats(torch.randn(80), torch.rand(80) + 0.5)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 50, 80), torch.tensor([50]))[0].sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, model, stats, optimizer=opt.state_dict(), train_state={"step": 1})
    return path, model, stats


def test_roundtrip_and_export(saved, tmp_path):
    path, model, stats = saved
    loaded, loaded_stats, _, payload = checkpoint.load(path)
    assert payload["train_state"] == {"step": 1} and "optimizer" in payload
    x = torch.randn(1, 60, 80)
    assert torch.equal(loaded(x, torch.tensor([60]))[0], model.eval()(x, torch.tensor([60]))[0])
    assert torch.equal(loaded_stats.mean, stats.mean)
    out = checkpoint.export(path, tmp_path / "export.pt")
    exported = checkpoint.read(out)
    assert "optimizer" not in exported and exported["model"].keys() == payload["model"].keys()
    assert out.stat().st_size < path.stat().st_size
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_rejects_corrupt_foreign_and_missing_files(saved, tmp_path):
    path, _, _ = saved
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an asr checkpoint"):
        checkpoint.load(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "asr-checkpoint", "obj": FeatureStats.identity()}, evil)  # a pickled class
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):  # weights_only refuses objects
        checkpoint.load(evil)


def test_average_of_checkpoints(saved, tmp_path):
    path, model, stats = saved
    torch.manual_seed(1)
    other = AcousticModel(PRESETS["tiny"])
    checkpoint.save(tmp_path / "other.pt", other, stats)
    out = tmp_path / "avg.pt"
    checkpoint.main(["average", str(out), str(path), str(tmp_path / "other.pt")])
    averaged, averaged_stats, _, payload = checkpoint.load(out)
    mine, theirs = model.state_dict(), other.state_dict()
    for key, value in averaged.state_dict().items():
        assert torch.allclose(value, (mine[key] + theirs[key]) / 2, atol=1e-6), key
    assert torch.equal(averaged_stats.std, stats.std) and "optimizer" not in payload
    assert payload["averaged"] == [str(path), str(tmp_path / "other.pt")]
    checkpoint.save(tmp_path / "restated.pt", other, FeatureStats(stats.mean + 1, stats.std))
    with pytest.raises(CheckpointError, match="stats differs"):  # other normalisation: not one model
        checkpoint.average([path, tmp_path / "restated.pt"], tmp_path / "bad.pt")
    checkpoint.save(tmp_path / "small.pt", AcousticModel(replace(PRESETS["tiny"], hidden=32)), stats)
    with pytest.raises(CheckpointError, match="model config differs"):
        checkpoint.average([path, tmp_path / "small.pt"], tmp_path / "bad.pt")


def test_widen_writes_a_larger_model_of_the_same_function(saved, tmp_path):
    path, model, stats = saved
    out = tmp_path / "wide.pt"
    checkpoint.main(["widen", str(path), str(out), "--hidden", "96"])
    wide, wide_stats, _, payload = checkpoint.load(out)
    assert wide.config.hidden == 96 and payload["widened_from"] == str(path)
    assert torch.equal(wide_stats.mean, stats.mean) and "optimizer" not in payload
    x, lengths = torch.randn(2, 90, 80), torch.tensor([90, 61])
    with torch.no_grad():
        assert torch.allclose(wide(x, lengths)[0], model.eval()(x, lengths)[0], atol=1e-4)
    with pytest.raises(SystemExit, match="only widen"):
        checkpoint.main(["widen", str(path), str(tmp_path / "bad.pt"), "--hidden", "32"])
