"""Tests of the waveform augmentations (asr.augment) and the corpus builder (scripts/build_corpus.py)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal

from asr import audio, augment
from asr.data import Utterance, read_manifest
from asr.text import encode, normalize

SR = augment.SAMPLE_RATE
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def load_builder():
    """scripts/build_corpus.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "scripts" / "build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def tone(freq: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def vowel(f0: float = 125.0, formant: float = 1000.0, seconds: float = 1.0) -> np.ndarray:
    """A harmonic series at f0 through one resonance at `formant`: a crude sustained vowel."""
    t = np.arange(int(seconds * SR)) / SR
    source = sum(np.sin(2 * np.pi * f0 * k * t) for k in range(1, int(7000 / f0)))
    b, a = scipy.signal.iirpeak(formant, 5, fs=SR)
    out = scipy.signal.lfilter(b, a, source)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / SR)[np.argmax(spectrum)])


def band_share_db(samples: np.ndarray, low: float, high: float) -> float:
    """Energy between low and high Hz relative to the total, in dB."""
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / SR)
    return float(10 * np.log10(power[(freqs >= low) & (freqs < high)].sum() / power.sum()))


@pytest.fixture(scope="module")
def speech(an4_clip) -> np.ndarray:
    return audio.load(an4_clip)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_and_pitch_by_the_factor(factor):
    out = augment.speed(tone(500), factor)
    assert out.size == pytest.approx(SR / factor, abs=2)
    assert peak_hz(out) == pytest.approx(500 * factor, abs=3)


@pytest.mark.parametrize("snr_db", [5.0, 12.5, 30.0])
@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_add_noise_hits_the_requested_snr(speech, snr_db, color):
    out = augment.add_noise(speech, np.random.default_rng(0), snr_db, color)
    noise = out.astype(np.float64) - speech
    measured = 10 * np.log10(np.sum(speech.astype(np.float64) ** 2) / np.sum(noise**2))
    assert measured == pytest.approx(snr_db, abs=1.0)


def test_noise_colours_have_their_spectral_slope():
    """Power per octave: white rises 3 dB an octave, pink is flat, brown falls 3 dB an octave."""
    rng = np.random.default_rng(1)
    for color, slope_db in {"white": 3.0, "pink": 0.0, "brown": -3.0}.items():
        noise = augment.colored_noise(4 * SR, rng, color)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-3)
        three_octaves = band_share_db(noise, 2000, 4000) - band_share_db(noise, 250, 500)
        assert three_octaves == pytest.approx(3 * slope_db, abs=1.5), color
    with pytest.raises(ValueError, match="colour"):
        augment.colored_noise(100, rng, "purple")


def test_room_impulse_response_decays_60_db_in_rt60():
    rt60 = 0.5
    rir = augment.room_impulse_response(np.random.default_rng(2), rt60, drr_db=0.0)
    tail = rir[1:].astype(np.float64)  # all but the direct path
    energy = np.cumsum(tail[::-1] ** 2)[::-1]  # Schroeder backward integration
    decay_db = 10 * np.log10(energy / energy[0])
    t20 = np.argmax(decay_db < -25) - np.argmax(decay_db < -5)  # -5 to -25 dB, extrapolated x3
    assert 3 * t20 / SR == pytest.approx(rt60, rel=0.15)
    assert rir[0] == 1.0 and np.sum(tail**2) == pytest.approx(1.0, rel=0.1)  # DRR 0 dB


def test_reverb_keeps_length_and_level_and_smears(speech):
    rir = augment.room_impulse_response(np.random.default_rng(3), 0.6, drr_db=0.0)
    out = augment.reverb(speech, rir)
    assert out.shape == speech.shape
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(speech**2)), rel=0.05)
    correlation = np.corrcoef(out, speech)[0, 1]
    assert 0.2 < correlation < 0.95


@pytest.mark.parametrize("mu_law", [False, True])
@pytest.mark.parametrize("band", [augment.PHONE_BAND_HZ, None])
def test_telephone_removes_energy_outside_the_band(speech, mu_law, band):
    assert band_share_db(speech, 4000, 8000) > -30  # the clip has high-band energy to remove
    out = augment.telephone(speech, mu_law=mu_law, band=band)
    assert out.shape == speech.shape
    assert band_share_db(out, 4000, 8000) < band_share_db(speech, 4000, 8000) - 20
    assert band_share_db(out, 4500, 8000) < -45  # past the resamplers' transition band: nothing
    if band is not None:
        assert band_share_db(out, 0, 150) < band_share_db(speech, 0, 150) - 10
    assert band_share_db(out, 500, 3000) > -3  # the speech band survives


def test_gain_scales_and_clips():
    x = tone(300, amplitude=0.1)
    assert np.abs(augment.gain(x, -20)).max() == pytest.approx(0.01, rel=1e-3)
    loud = augment.gain(x, 30)
    assert np.abs(loud).max() == 1.0 and loud.dtype == np.float32


@pytest.mark.parametrize("semitones", [-3.0, 4.0])
def test_pitch_shift_moves_frequencies_and_keeps_duration(semitones):
    out = augment.pitch_shift(tone(400), semitones)
    assert out.size == SR
    assert peak_hz(out[2000:-2000]) == pytest.approx(400 * 2 ** (semitones / 12), rel=0.02)


def test_pitch_shift_keeps_the_loudness_contour_of_speech(speech):
    """Syllables and bursts stay where they were: with librosa's default 128 ms phase vocoder the 10 ms
    loudness contour of this clip correlated 0.88 with the original's (shifted speech was hard to recognise);
    with 32 ms frames, 0.98."""

    def contour(x: np.ndarray) -> np.ndarray:
        frames = x[: x.size // 160 * 160].astype(np.float64).reshape(-1, 160)
        return np.log(np.mean(frames**2, axis=1) + 1e-8)

    before, after = contour(speech), contour(augment.pitch_shift(speech, 1.65))
    assert np.corrcoef(before, after)[0, 1] > 0.95


@pytest.mark.parametrize("alpha", [0.85, 1.15])
def test_formant_shift_moves_the_formant_but_not_the_pitch(alpha):
    x = vowel(f0=125, formant=1000)
    out = augment.formant_shift(x, alpha)
    assert out.shape == x.shape
    assert abs(peak_hz(out) - 1000 * alpha) <= 125 + 1  # the strongest harmonic follows the formant
    spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(out.size - 4000)))
    freqs = np.fft.rfftfreq(out.size - 4000, 1 / SR)
    peaks, _ = scipy.signal.find_peaks(spectrum, height=spectrum.max() / 10)
    assert np.all(np.abs(freqs[peaks] / 125 - np.round(freqs[peaks] / 125)) < 0.05)  # still harmonics of f0


@pytest.mark.parametrize(("semitones", "formants"), [(5.0, 1.15), (-3.0, 0.92)])
def test_new_voice_moves_pitch_and_formants_each_as_asked(semitones, formants):
    x = vowel(f0=125, formant=1000)
    out = augment.new_voice(x, semitones, formants)
    f0 = 125 * 2 ** (semitones / 12)
    assert out.shape == x.shape
    assert abs(peak_hz(out) - 1000 * formants) <= f0 + 1  # the strongest harmonic follows the formant
    spectrum = np.abs(np.fft.rfft(out[2000:-2000] * np.hanning(out.size - 4000)))
    freqs = np.fft.rfftfreq(out.size - 4000, 1 / SR)
    peaks, _ = scipy.signal.find_peaks(spectrum, height=spectrum.max() / 10)
    assert np.all(np.abs(freqs[peaks] / f0 - np.round(freqs[peaks] / f0)) < 0.05)  # harmonics of the new f0
    assert not np.all(np.abs(freqs[peaks] / 125 - np.round(freqs[peaks] / 125)) < 0.05)  # not of the old


def test_make_data_augments_with_its_own_kinds():
    builder = load_builder()
    assert set(builder.CORPUS_KINDS) < set(augment.KINDS)  # `voice` is build_uqm's alone
    real = [Utterance(f"/fsdd/{i}.flac", 1.0, "one", "george") for i in range(20)]
    jobs = builder.augmentation_jobs(1, [], real, Path("corpus"), 0.0)
    assert len(jobs) == 20 * builder.FSDD_AUG_COPIES
    assert {j.kind for j in jobs} <= set(builder.CORPUS_KINDS)


@pytest.mark.parametrize("kind", list(augment.KINDS))
def test_random_augment_is_finite_float32_and_deterministic(speech, kind):
    first, params = augment.random_augment(kind, speech, np.random.default_rng(7))
    again, params_again = augment.random_augment(kind, speech, np.random.default_rng(7))
    assert first.dtype == np.float32 and first.ndim == 1 and np.all(np.isfinite(first))
    assert np.abs(first).max() <= 1.0
    assert np.array_equal(first, again) and params == params_again
    assert not np.array_equal(first, speech)
    if kind not in ("speed", "pause"):
        assert first.shape == speech.shape


def test_pauses_are_inserted_between_words_and_keep_the_speech(data_dir):
    x = audio.load(data_dir / "an4" / "audio" / "cen5-fash-b.flac")  # "p i t t s b u r g h", spelled
    gaps = augment.word_gaps(x)
    assert gaps[0] == 0 and gaps[-1] == x.size and len(gaps) == 5  # 4 stretches of sound, 3 gaps inside
    pos = gaps[1]
    out = augment.insert_pauses(x, [pos], [1.0], None)
    assert out.size == x.size + augment.SAMPLE_RATE
    assert np.all(out[pos : pos + augment.SAMPLE_RATE] == 0)  # digital silence where asked
    assert np.allclose(out[:pos], x[:pos], atol=1e-4) and np.allclose(out[pos + 16000 :], x[pos:], atol=1e-4)
    noisy = augment.insert_pauses(x, [0, x.size], [0.5, 0.5], -60.0)
    rms = np.sqrt(np.mean(noisy[:8000].astype(np.float64) ** 2))
    assert noisy.size == x.size + 16000 and 10 ** (-63 / 20) < rms < 10 ** (-57 / 20)


def test_bad_arguments_are_clear_errors(speech):
    with pytest.raises(ValueError, match="unknown augmentation 'echo'"):
        augment.random_augment("echo", speech, np.random.default_rng())
    with pytest.raises(ValueError, match="1-D"):
        augment.gain(np.zeros((2, 100), np.float32), 3)
    with pytest.raises(ValueError, match="speed factor"):
        augment.speed(speech, 3.0)


def test_prompts_are_normalised_and_encodable(data_dir):
    builder = load_builder()
    sentences = builder.load_sentences(data_dir / "text" / "ljspeech-sentences.txt")
    assert len(sentences) > 10_000
    rng = np.random.default_rng(0)
    for kind, prompt in builder.PROMPTS.items():
        for _ in range(50):
            say, text = prompt(rng, sentences)
            assert say and text == normalize(text), (kind, say, text)
            encode(text)
    assert builder.prepare_sentence("mr smith told the fbi") == (
        "mister smith told the F.B.I.",
        "mister smith told the f b i",
    )
    assert builder.prepare_sentence("he lived on elm st") is None


def test_joins_put_several_clips_of_one_speaker_in_one_utterance(data_dir):
    builder = load_builder()
    fsdd, _ = builder.fsdd_sets(data_dir)
    jobs = builder.join_jobs(builder.SEED, fsdd[:200], [], 60.0)
    assert jobs and jobs == builder.join_jobs(builder.SEED, fsdd[:200], [], 60.0)  # reproducible
    by_path = {u.path: u for u in fsdd}
    job = jobs[0]
    sources = [by_path[p] for p in job.sources]
    assert 2 <= len(sources) <= 4 and len({u.speaker for u in sources}) == 1
    assert job.text == " ".join(u.text for u in sources) and len(job.gaps) == len(sources) - 1
    samples = builder.join_audio(job)
    expected = sum(audio.load(p).size for p in job.sources) + sum(int(g * SR) for g in job.gaps)
    assert samples.size == expected


def test_dev_synth_says_no_sentence_a_training_voice_says(data_dir):
    builder = load_builder()
    sentences = builder.load_sentences(data_dir / "text" / "ljspeech-sentences.txt")
    voice = builder.find_voice(builder.DEFAULT_DEV_VOICE)
    stream = builder.random_jobs(builder.SEED, 5, [voice], sentences, "dev-synth")
    plain = [next(stream) for _ in range(60)]
    sentence_texts = {text for _, text in sentences}
    said = [j.text for j in plain if j.text in sentence_texts]
    short = [j.text for j in plain if j.text not in sentence_texts]
    assert len(said) >= 5 and short  # the stream mixes sentences with digits, numbers, commands
    heard = set(said[::2]) | set(short)  # as if a training voice had said these
    jobs = builder.dev_synth_jobs(builder.SEED, voice, sentences, heard, 60)
    assert len(jobs) == 60 and jobs == builder.dev_synth_jobs(builder.SEED, voice, sentences, heard, 60)
    texts = [j.text for j in jobs]
    assert not set(said[::2]) & set(texts)  # no trained sentence is tested
    assert set(said[1::2]) <= set(texts) and set(short) <= set(texts)  # the rest stay, short prompts too
    by_path = {j.path: j for j in plain}
    assert all(by_path[j.path] == j for j in jobs if j.path in by_path)  # a file's name still says its prompt
    assert builder.dev_synth_jobs(builder.SEED, voice, sentences, set(), 60) == plain


def test_digit_sweep_covers_every_digit_for_every_voice():
    builder = load_builder()
    voices = [v for v in builder.all_voices() if v.engine in ("espeak-ng", "piper")]
    jobs = builder.digit_sweep_jobs(builder.SEED, voices)
    for voice in voices:
        spoken = {j.text for j in jobs if j.voice == voice}
        assert spoken == set(builder.DIGITS)
    espeak = {j.speaker for j in jobs if j.voice.engine == "espeak-ng"}
    assert len(espeak) == len(builder.ESPEAK_ACCENTS) * len(builder.ESPEAK_VARIANTS)
    assert len({j.path for j in jobs}) == len(jobs)


def test_kokoro_voices_blend_within_their_accent():
    builder = load_builder()
    voices = [v for v in builder.all_voices() if v.engine == "kokoro"]
    assert len(voices) == 28
    for voice in voices:
        variants = builder.speakers_of(voice)
        assert variants[0] == "" and len(set(variants)) == 1 + builder.KOKORO_PARTNERS
        assert all(v[0] == voice.name[0] and v != voice.name for v in variants[1:])  # American or British
    jobs = builder.digit_sweep_jobs(builder.SEED, voices)
    assert len(jobs) == 28 * 10 * (1 + builder.KOKORO_PARTNERS)  # every digit once per variant
    assert len({j.speaker for j in jobs}) == 28 * (1 + builder.KOKORO_PARTNERS)


def test_kokoro_mixes_are_fixed_new_voices_and_opt_in():
    builder = load_builder()
    mixes = builder.kokoro_mixes()
    assert mixes == builder.kokoro_mixes() and len(mixes) == builder.KOKORO_MIXES  # a name is one voice
    assert len(set(mixes.values())) == len(mixes)
    for parts in mixes.values():
        names, weights = zip(*parts, strict=True)
        assert len(set(names)) == builder.KOKORO_MIX_PARTS and set(names) <= set(builder.KOKORO_VOICES)
        assert sum(weights) == pytest.approx(1, abs=0.002) and list(weights) == sorted(weights, reverse=True)
    leads = {parts[0][0][:2] for parts in mixes.values()}
    assert leads == {"af", "am", "bf", "bm"}  # both accents and both sexes lead some mixes
    assert any(len({n[1] for n, _ in parts}) == 2 for parts in mixes.values())  # mixes across sex
    # `make data` (no --engines) leaves them out, so its corpus and recipe stay as they were
    assert "kokoro-mix" not in builder.available_engines()
    voices = [v for v in builder.all_voices() if v.engine == "kokoro-mix"]
    jobs = builder.digit_sweep_jobs(builder.SEED, voices)
    assert len(jobs) == builder.KOKORO_MIXES * 10  # every digit once per mix
    assert len({j.speaker for j in jobs}) == builder.KOKORO_MIXES


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed")
def test_small_build_makes_valid_manifests_and_resumes(tmp_path, data_dir):
    builder = load_builder()
    out = tmp_path / "corpus"
    argv = ["--out", str(out), "--small", "--workers", "1", "--engines", "espeak-ng"]
    argv += ["--dev-voice", "espeak-ng:en-us-nyc", "--hours", "0.01", "--data", str(data_dir)]
    assert builder.main(argv) == 0
    manifests = {p.stem: read_manifest(p) for p in out.glob("*.jsonl")}
    names = "train-clean train train-synthetic dev-fsdd dev-an4 dev-pocketsphinx dev-synth".split()
    assert set(manifests) == set(names) | ({"dev-asterisk"} if builder.asterisk_installed() else set())
    if builder.asterisk_installed():  # real sentences, never trained on
        assert len(manifests["dev-asterisk"]) == builder.SMALL_DEV_ASTERISK
        assert not {u.speaker for u in manifests["train"]} & {builder.ASTERISK_SPEAKER}
    train, clean = manifests["train"], manifests["train-clean"]
    real = [u for u in train if u.speaker in builder.FSDD_TRAIN_SPEAKERS]  # FSDD, its copies and joins
    assert real and manifests["train-synthetic"] == [u for u in train if u not in real]
    assert {u.path for u in clean} < {u.path for u in train}
    assert any("/aug/" in u.path for u in train)
    joins = [u for u in train if "/aug/join/" in u.path]
    assert joins and all(len(u.text.split()) >= 2 for u in joins)  # several utterances of one speaker
    for u in train + manifests["dev-synth"]:
        samples = audio.load(u.path)
        assert samples.size / SR == pytest.approx(u.duration, abs=0.01)
        assert u.text == normalize(u.text) and encode(u.text)
        assert u.duration <= builder.MAX_SECONDS
    fsdd_train = {u.speaker for u in train if u.path.startswith(str(data_dir))}
    assert fsdd_train and fsdd_train <= set(builder.FSDD_TRAIN_SPEAKERS)
    assert {u.speaker for u in manifests["dev-fsdd"]} == set(builder.FSDD_DEV_SPEAKERS)
    held_out = {u.speaker.split("+")[0] for u in manifests["dev-synth"]}
    assert held_out == {"espeak-ng-en-us-nyc"}
    assert not any(u.speaker.startswith("espeak-ng-en-us-nyc") for u in train)
    lines = (out / "train.jsonl").read_text().splitlines()
    assert not json.loads(lines[-1])["path"].startswith("/")  # corpus files are relative: the folder moves
    first = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    assert builder.main(argv) == 0  # a second run reuses every file and writes the same manifests
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == stamps
    with pytest.raises(SystemExit, match="other voices, prompts or seed"):  # files would get wrong texts
        builder.main([*argv, "--seed", "99"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine", ["flite", "festival", "piper", "mbrola", "pico", "rhvoice", "kokoro", "kokoro-mix"]
)
def test_each_synthesiser_speaks(tmp_path, engine):
    builder = load_builder()
    if engine in builder.PACKAGE_AVAILABLE and not builder.PACKAGE_AVAILABLE[engine]():
        pytest.skip(f"{engine}'s packages (the corpus extra) are not installed")
    if engine not in builder.PACKAGE_AVAILABLE and not shutil.which(builder.ENGINE_BINARIES[engine]):
        pytest.skip(f"{engine} is not installed")
    if engine in builder.KOKORO_ENGINES:
        assets = ROOT / "corpus" / builder.KOKORO_ASSETS
        if not (assets / "voices-en.npz").exists():  # tests download nothing: `make data` fetches the styles
            pytest.skip(f"no Kokoro voice styles in {assets} (make data puts them there)")
        builder.kokoro_assets(assets)
    voice = next(v for v in builder.all_voices() if v.engine == engine)
    job = builder.make_job(np.random.default_rng(0), "x.flac", voice, "seven", "seven")
    result = builder.run_job(job, tmp_path)
    assert result.error == "" and result.utterance is not None
    samples = audio.load(tmp_path / "x.flac")
    assert 0.5 <= samples.size / SR <= 3 and np.abs(samples).max() > 0.2
    again = builder.synthesize(job)
    assert np.allclose(again, samples, atol=1 / 16384)  # reproducible from the job's seed


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("RHVoice-test"), reason="RHVoice is not installed")
def test_rhvoice_is_opt_in_and_follows_rate_and_pitch():
    builder = load_builder()
    assert "rhvoice" not in builder.available_engines()  # `make data` leaves it out: its corpus stays
    assert builder.available_engines(["rhvoice"]) == ["rhvoice"]
    voice = next(v for v in builder.all_voices() if v.engine == "rhvoice" and v.name == "bdl")
    say = "the quick brown fox jumps over the lazy dog"
    job = builder.make_job(np.random.default_rng(0), "x.flac", voice, say, say)

    def spoken(rate: float, pitch: float) -> tuple[float, float]:
        """Seconds of speech (within 40 dB of the loudest) and median f0 in Hz."""
        samples = builder.synthesize(dataclasses.replace(job, rate=rate, pitch=pitch))
        speech = librosa.effects.split(samples, top_db=40)
        f0 = librosa.yin(samples, fmin=50, fmax=400, sr=SR, frame_length=1024)
        return float(np.sum(speech[:, 1] - speech[:, 0])) / SR, float(np.median(f0))

    slow, low = spoken(0.8, -4.0)
    fast, high = spoken(1.25, 4.0)
    assert slow / fast == pytest.approx(1.25 / 0.8, rel=0.2)  # speaking time scales with 1 / rate
    assert high / low == pytest.approx(2 ** (8 / 12), rel=0.15)  # 8 semitones apart


def test_asterisk_prompts_keep_only_texts_that_say_how_they_are_read(tmp_path):
    builder = load_builder()
    listing = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(listing, "wt", encoding="utf-8") as f:
        f.write("; Core Asterisk Sounds in English\n\n")
        f.write("agent-pass: Please enter your password followed by the pound key.\n")
        f.write("vm-forward: Press 1 to enter an extension, press 2 to use the directory.\n")
        f.write("digits/7: seven\n")
        f.write("vm-mismatch: The passwords you entered and re-entered did not match.\n")
        for unread in (
            "beep: [this is a simple beep tone]",  # a description, not words
            "dir-multi2: ... for ...",  # a fragment
            "demo-echotest: dial 500 now",  # "five hundred" or "five oh oh"?
            "confbridge-binaural-on: 3D audio enabled",
            "demo-abouttotry: an IAX call",  # a word or three letters?
            "letters/at: at [@]",
        ):
            f.write(unread + "\n")
    assert builder.asterisk_prompts(listing) == {
        "agent-pass": "please enter your password followed by the pound key",
        "vm-forward": "press one to enter an extension press two to use the directory",
        "digits/7": "seven",
        "vm-mismatch": "the passwords you entered and re entered did not match",
    }
    sounds = tmp_path / "sounds"
    (sounds / "digits").mkdir(parents=True)
    (sounds / "digits" / "7.g722").write_bytes(b"")
    jobs = builder.asterisk_jobs(builder.asterisk_prompts(listing), sounds)
    assert [(j.path, j.text, j.speaker) for j in jobs] == [
        ("asterisk/digits_7.flac", "seven", "asterisk-allison")
    ]


@pytest.mark.skipif(
    not load_builder().asterisk_installed(),
    reason="asterisk-core-sounds-en(-g722) or ffmpeg is not installed (make system-deps)",
)
def test_asterisk_dev_recordings_are_decoded_as_they_are(tmp_path):
    builder = load_builder()
    prompts = builder.asterisk_prompts(builder.ASTERISK_TEXT)
    jobs = builder.asterisk_jobs(prompts, builder.ASTERISK_SOUNDS)
    assert len(jobs) > 400 and {j.speaker for j in jobs} == {builder.ASTERISK_SPEAKER}
    job = next(j for j in jobs if j.path == "asterisk/vm-password.flac")
    assert job.text == "password"
    result = builder.run_job(job, tmp_path)
    assert result.error == "" and result.utterance.text == "password"
    samples = audio.load(tmp_path / job.path)
    assert samples.size / SR == pytest.approx(result.utterance.duration, abs=0.01)
    # her own level and silences: no trimming, padding or peak normalisation (a dev set, not training data)
    assert np.allclose(samples, builder.read_g722(job.source), atol=1 / 16384)
    assert np.abs(samples).max() > 0.05
