import librosa
import numpy as np
import pytest
import torch

from asr import audio, features
from asr.data import read_manifest
from asr.features import FeatureConfig, FeatureExtractor, FeatureStats


@pytest.fixture(scope="module")
def speech(data_dir):
    # a 16 kHz an4 clip and an 8 kHz FSDD clip (resampled), joined: real speech of two kinds
    a = audio.load(data_dir / "an4" / "audio" / "an104-mrcb-b.flac")
    b = audio.load(data_dir / "fsdd" / "audio" / "7_theo_3.flac")
    return np.concatenate([a, b])


def stream(samples, sizes, stats=None):
    ex = FeatureExtractor(stats=stats)
    out, i = [], 0
    for n in sizes:
        out.append(ex.accept(samples[i : i + n]))
        i += n
        if i >= len(samples):
            break
    out.append(ex.finish())
    return torch.cat(out)


@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_offline_for_random_chunks(speech, seed):
    offline = features.extract(speech)
    assert offline.shape == (FeatureConfig().num_frames(len(speech)), 80)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 16001, size=len(speech))  # 1 sample to 1 s
    if seed == 0:
        sizes[:2000] = 1  # many one-sample pieces, to cross frame boundaries sample by sample
    streamed = stream(speech, sizes)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() < 1e-5


def test_streaming_equals_offline_with_normalisation(speech):
    stats = FeatureStats(torch.linspace(-10, -2, 80), torch.linspace(1, 3, 80))
    offline = features.extract(speech, stats=stats)
    np.testing.assert_allclose(offline, (features.extract(speech) - stats.mean) / stats.std, atol=1e-5)
    assert (stream(speech, [160] * 1000, stats) - offline).abs().max().item() < 1e-5


def test_matches_librosa_reference(speech):
    cfg = FeatureConfig()
    ref = librosa.feature.melspectrogram(
        y=speech,
        sr=16000,
        n_fft=400,
        win_length=400,
        hop_length=160,
        center=False,
        n_mels=80,
        htk=True,
        norm=None,
        power=2.0,
    )
    ref = np.log(ref + cfg.log_floor).T
    ours = features.extract(speech).numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3


def test_framing_constants():
    cfg = FeatureConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.n_mels, cfg.frame_rate) == (400, 160, 80, 100.0)
    assert [cfg.num_frames(n) for n in (0, 399, 400, 559, 560)] == [0, 0, 1, 1, 2]
    assert features.extract(np.zeros(399, np.float32)).shape == (0, 80)


def test_accept_after_finish_is_an_error():
    ex = FeatureExtractor()
    ex.finish()
    with pytest.raises(RuntimeError):
        ex.accept(np.zeros(10, np.float32))


def test_stats_over_a_manifest(data_dir):
    entries = read_manifest(data_dir / "an4")[:5]
    stats = features.manifest_stats(entries)
    feats = torch.cat([features.extract(audio.load(e.path), stats=stats) for e in entries])
    assert feats.mean(0).abs().max() < 1e-3
    assert (feats.std(0) - 1).abs().max() < 1e-2
    assert FeatureStats.from_dict(stats.to_dict()).mean.tolist() == stats.mean.tolist()
