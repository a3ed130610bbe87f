"""Waveform augmentation: mono float32 numpy at 16 kHz in, the same out.

Every function is pure: parameters are explicit and randomness comes only from the numpy `Generator` passed
in, so a fixed seed gives the same output. `random_augment(kind, samples, rng)` draws the parameters of one
named augmentation (`KINDS`) from their ranges and applies it; the build script stores each result as a
separate file. Outputs are finite float32 within [-1, 1]; only `speed` and `pause` change the length.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from fractions import Fraction

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000  # Hz: the rate every function here assumes
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1/f**exponent
SPEED_FACTORS = (0.9, 0.95, 1.05, 1.1)  # speed perturbation factors (Ko et al. 2015 use 0.9 and 1.1)
SNR_RANGE_DB = (5.0, 30.0)  # signal-to-noise ratios drawn for additive noise
RT60_RANGE_S = (0.15, 0.8)  # reverberation times drawn for synthetic rooms
DRR_RANGE_DB = (-3.0, 10.0)  # direct-to-reverberant energy ratios drawn for synthetic rooms
RIR_MAX_S = 1.0  # longest impulse response generated, whatever the RT60
RIR_PREDELAY_S = (0.002, 0.012)  # gap between the direct path and the first reflections
PHONE_RATE = 8000  # Hz: narrowband telephone sample rate
PHONE_BAND_HZ = (300.0, 3400.0)  # telephone pass band
PHONE_BAND_PASS_SHARE = 0.7  # share of telephone augmentations band-passed; the rest are plain 8 kHz
PHONE_FILTER_ORDER = 4  # Butterworth order of the telephone band-pass (doubled by the band-pass design)
GAIN_RANGE_DB = (-24.0, 6.0)  # gains drawn; above 0 dB loud samples may clip
PITCH_RANGE_SEMITONES = (1.0, 4.0)  # magnitude of pitch shifts drawn, either direction
# STFT of the pitch shifter's phase vocoder (32 ms, hop 8 ms). librosa's default (2048, 128 ms) smears
# speech: the bundled model's greedy CER on real speech went from 31.5% to 49.1% at +1.65 semitones with
# it, and to 32.4% with 512 (session 20).
PITCH_N_FFT = 512
FORMANT_RANGE = (0.86, 1.16)  # vocal-tract-length warp factors drawn (> 1: shorter tract, higher formants)
FORMANT_MIN_WARP = 0.03  # warps closer to 1 than this are redrawn: they would change nothing audible
FORMANT_N_FFT = 512  # STFT size of the formant shifter (32 ms)
FORMANT_HOP = 128  # STFT hop of the formant shifter (8 ms)
FORMANT_LIFTER = 30  # cepstral coefficients kept for the spectral envelope (below the pitch quefrency)
VOICE_UP_SEMITONES = (3.0, 8.0)  # `voice`: pitch raised by this much (a man's voice towards a woman's) ...
VOICE_UP_FORMANTS = (1.06, 1.18)  # ... with the formants raised by this factor in all (a shorter tract)
VOICE_DOWN_SEMITONES = (2.0, 5.0)  # or pitch lowered by this much ...
VOICE_DOWN_FORMANTS = (0.88, 0.96)  # ... with the formants lowered by this factor
PAUSE_RANGE_S = (0.3, 2.0)  # length of each silence inserted by `pause`
PAUSE_MAX = 3  # most pauses inserted into one utterance
PAUSE_TOP_DB = 30  # audio this far below the peak counts as a gap between words
PAUSE_DIGITAL_SHARE = 0.5  # share of pauses that are digital silence; the rest a faint noise floor
PAUSE_FLOOR_RANGE_DB = (-75.0, -50.0)  # level of that noise floor, dB below full scale
PEAK_LIMIT = 0.99  # outputs louder than this are scaled down so that 16-bit files do not clip


def _finish(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 numpy, scaled down (never up) to PEAK_LIMIT."""
    if isinstance(samples, torch.Tensor):
        samples = samples.numpy()
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples * np.float32(PEAK_LIMIT / peak) if peak > PEAK_LIMIT else samples


def _check(samples: np.ndarray) -> torch.Tensor:
    """Mono float32 numpy -> torch tensor; a clear error for anything else."""
    if not isinstance(samples, np.ndarray) or samples.ndim != 1:
        raise ValueError(f"expected mono samples as a 1-D numpy array, got {type(samples).__name__}")
    return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))


def speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster: duration / factor, pitch and formants * factor (resampling)."""
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor must be within 0.5 and 2, got {factor}")
    ratio = Fraction(factor).limit_denominator(100)
    out = AF.resample(_check(samples), ratio.numerator, ratio.denominator)
    return _finish(out)


def colored_noise(num_samples: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """Gaussian noise with a 1/f**exponent power spectrum ("white", "pink", "brown"), unit RMS."""
    if color not in NOISE_EXPONENTS:
        raise ValueError(f"unknown noise colour {color!r}: expected one of {', '.join(NOISE_EXPONENTS)}")
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples)
    freqs[0] = freqs[1] if num_samples > 1 else 1.0  # no infinite gain at DC
    noise = np.fft.irfft(spectrum / freqs ** (NOISE_EXPONENTS[color] / 2), n=num_samples)
    noise -= noise.mean()
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def add_noise(
    samples: np.ndarray, rng: np.random.Generator, snr_db: float, color: str = "white"
) -> np.ndarray:
    """Add coloured noise at `snr_db` (signal and noise power over the whole clip)."""
    x = _check(samples)
    noise = torch.from_numpy(colored_noise(x.numel(), rng, color))
    out = AF.add_noise(x[None], noise[None], torch.tensor([float(snr_db)]))[0]
    return _finish(out)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, drr_db: float = 3.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A synthetic room: a unit direct path, then exponentially decaying Gaussian reflections.

    The tail's energy decays by 60 dB in `rt60` seconds and is scaled to `drr_db` below the direct path.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    predelay = int(rng.uniform(*RIR_PREDELAY_S) * sample_rate)
    length = int(min(rt60 * 1.2, RIR_MAX_S) * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-3 * np.log(10) * t / rt60)  # amplitude: -60 dB at rt60
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    rir = np.zeros(predelay + length, dtype=np.float64)
    rir[0] = 1.0
    rir[predelay:] += tail
    return rir.astype(np.float32)


def reverb(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room impulse response; same length and RMS as the input (the tail is cut)."""
    x = _check(samples).numpy()
    wet = scipy.signal.fftconvolve(x, rir)[: x.size]
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(wet**2))
    return _finish(wet * (rms_in / rms_out) if rms_out > 0 else wet)


def g711_mu_law(samples: np.ndarray) -> np.ndarray:
    """Round trip through the G.711 mu-law codec (libsndfile's, 8 bits a sample), as on a phone line."""
    buf = io.BytesIO()
    sf.write(buf, samples, PHONE_RATE, format="RAW", subtype="ULAW")
    buf.seek(0)
    return sf.read(buf, samplerate=PHONE_RATE, channels=1, format="RAW", subtype="ULAW", dtype="float32")[0]


def telephone(
    samples: np.ndarray, mu_law: bool = True, band: tuple[float, float] | None = PHONE_BAND_HZ
) -> np.ndarray:
    """Narrowband telephone channel: down to 8 kHz, band-pass, optional G.711 mu-law, back to 16 kHz.

    `band=None` skips the band-pass: plain 8 kHz audio, as in recordings made at that rate.
    """
    x = AF.resample(_check(samples), SAMPLE_RATE, PHONE_RATE).numpy()
    if band is not None:
        sos = scipy.signal.butter(PHONE_FILTER_ORDER, band, btype="bandpass", fs=PHONE_RATE, output="sos")
        x = scipy.signal.sosfilt(sos, x)
    x = np.clip(x, -1.0, 1.0).astype(np.float32)
    if mu_law:
        x = g711_mu_law(x)
    out = AF.resample(torch.from_numpy(x), PHONE_RATE, SAMPLE_RATE)
    return _finish(out[: samples.size])


def gain(samples: np.ndarray, db: float) -> np.ndarray:
    """Scale by `db` decibels; samples beyond full scale clip, as a real converter would."""
    x = _check(samples).numpy()
    return np.clip(x * np.float32(10 ** (db / 20)), -1.0, 1.0).astype(np.float32)


def pitch_shift(samples: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch and formants by `semitones`, duration kept (librosa: phase-vocoder stretch + soxr)."""
    x = _check(samples).numpy()
    shifted = librosa.effects.pitch_shift(
        x, sr=SAMPLE_RATE, n_steps=float(semitones), n_fft=PITCH_N_FFT, hop_length=PITCH_N_FFT // 4
    )
    return _finish(shifted)


def _log_envelope(log_mag: np.ndarray) -> np.ndarray:
    """(freq, frames) log magnitude -> its smooth spectral envelope, by cepstral liftering."""
    cepstrum = np.fft.irfft(log_mag, axis=0)
    cepstrum[FORMANT_LIFTER:-FORMANT_LIFTER] = 0.0
    return np.fft.rfft(cepstrum, axis=0).real[: log_mag.shape[0]]


def formant_shift(samples: np.ndarray, alpha: float) -> np.ndarray:
    """Vocal-tract-length perturbation: the spectral envelope is warped f -> alpha * f, pitch kept.

    Each STFT frame is divided by its cepstral envelope and multiplied by the envelope read at f / alpha,
    so formants move by `alpha` while the harmonics (the pitch) stay where they are.
    """
    if not 0.5 <= alpha <= 2.0:
        raise ValueError(f"formant warp factor must be within 0.5 and 2, got {alpha}")
    x = _check(samples).numpy()
    stft = librosa.stft(x, n_fft=FORMANT_N_FFT, hop_length=FORMANT_HOP)
    log_env = _log_envelope(np.log(np.abs(stft) + 1e-7))
    bins = np.arange(log_env.shape[0])
    warped = np.stack([np.interp(bins / alpha, bins, frame) for frame in log_env.T], axis=1)
    out = librosa.istft(stft * np.exp(warped - log_env), hop_length=FORMANT_HOP, length=x.size)
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(out**2))
    return _finish(out * (rms_in / rms_out) if rms_out > 0 else out)


def new_voice(samples: np.ndarray, semitones: float, formants: float) -> np.ndarray:
    """Another talker saying the same: pitch moved by `semitones`, formants by the factor `formants` in all.

    `pitch_shift` moves the formants with the pitch (by 2 ** (semitones / 12)); `formant_shift` then sets
    them where asked, since a higher voice does not come with a proportionally shorter vocal tract (a woman's
    pitch is about an octave above a man's, her formants about 15% higher)."""
    shifted = pitch_shift(samples, semitones) if semitones else _check(samples).numpy()
    alpha = formants / 2 ** (semitones / 12)
    return formant_shift(shifted, alpha) if abs(alpha - 1.0) > 1e-3 else _finish(shifted)


def insert_pauses(
    samples: np.ndarray, at: list[int], seconds: list[float], floor_db: float | None
) -> np.ndarray:
    """Insert silences of `seconds` at sample positions `at`: digital zeros, or white noise `floor_db`
    below full scale. Speech is untouched; it teaches the model that long pauses emit nothing."""
    x = _check(samples).numpy()
    rng = np.random.default_rng(len(x))  # the noise floor's samples only; its level is a parameter
    parts, last = [], 0
    for pos, sec in sorted(zip(at, seconds, strict=True)):
        n = int(sec * SAMPLE_RATE)
        gap = np.zeros(n) if floor_db is None else rng.standard_normal(n) * 10 ** (floor_db / 20)
        parts += [x[last:pos], gap]
        last = pos
    parts.append(x[last:])
    return _finish(np.concatenate(parts))


def word_gaps(samples: np.ndarray, top_db: float = PAUSE_TOP_DB) -> list[int]:
    """Sample positions in the middle of the quiet stretches between sounds, plus both ends."""
    spans = librosa.effects.split(samples, top_db=top_db)
    inner = [int((a_end + b_start) // 2) for (_, a_end), (b_start, _) in itertools.pairwise(spans)]
    return [0, *inner, len(samples)]


def _random_speed(samples, rng):
    factor = float(rng.choice(SPEED_FACTORS))
    return speed(samples, factor), {"factor": factor}


def _random_noise(samples, rng):
    snr, color = float(rng.uniform(*SNR_RANGE_DB)), str(rng.choice(list(NOISE_EXPONENTS)))
    return add_noise(samples, rng, snr, color), {"snr_db": round(snr, 1), "color": color}


def _random_reverb(samples, rng):
    rt60, drr = float(rng.uniform(*RT60_RANGE_S)), float(rng.uniform(*DRR_RANGE_DB))
    return reverb(samples, room_impulse_response(rng, rt60, drr)), {
        "rt60": round(rt60, 2),
        "drr_db": round(drr, 1),
    }


def _random_telephone(samples, rng):
    mu_law, band_pass = bool(rng.random() < 0.5), bool(rng.random() < PHONE_BAND_PASS_SHARE)
    out = telephone(samples, mu_law=mu_law, band=PHONE_BAND_HZ if band_pass else None)
    return out, {"mu_law": mu_law, "band_pass": band_pass}


def _random_gain(samples, rng):
    db = float(rng.uniform(*GAIN_RANGE_DB))
    return gain(samples, db), {"db": round(db, 1)}


def _random_pitch(samples, rng):
    semitones = float(rng.uniform(*PITCH_RANGE_SEMITONES) * rng.choice([-1, 1]))
    return pitch_shift(samples, semitones), {"semitones": round(semitones, 2)}


def _random_formant(samples, rng):
    alpha = 1.0
    while abs(alpha - 1.0) < FORMANT_MIN_WARP:
        alpha = float(rng.uniform(*FORMANT_RANGE))
    return formant_shift(samples, alpha), {"alpha": round(alpha, 3)}


def _random_voice(samples, rng):
    if rng.random() < 0.5:
        semitones, formants = rng.uniform(*VOICE_UP_SEMITONES), rng.uniform(*VOICE_UP_FORMANTS)
    else:
        semitones, formants = -rng.uniform(*VOICE_DOWN_SEMITONES), rng.uniform(*VOICE_DOWN_FORMANTS)
    out = new_voice(samples, float(semitones), float(formants))
    return out, {"semitones": round(float(semitones), 2), "formants": round(float(formants), 3)}


def random_pause_floor(rng: np.random.Generator) -> float | None:
    """What fills a pause: None (digital silence) or a noise-floor level in dB, drawn."""
    if rng.random() < PAUSE_DIGITAL_SHARE:
        return None
    return round(float(rng.uniform(*PAUSE_FLOOR_RANGE_DB)), 1)


def _random_pause(samples, rng):
    gaps = word_gaps(samples)
    k = int(rng.integers(1, min(PAUSE_MAX, len(gaps)) + 1))
    at = sorted(int(g) for g in rng.choice(gaps, size=k, replace=False))
    seconds = [round(float(s), 2) for s in rng.uniform(*PAUSE_RANGE_S, size=k)]
    floor_db = random_pause_floor(rng)
    return insert_pauses(samples, at, seconds, floor_db), {"at": at, "seconds": seconds, "floor_db": floor_db}


def _random_mix(samples, rng):
    """A far-field or phone call: maybe reverb, then noise, maybe the telephone band, a random level."""
    params: dict = {}
    if rng.random() < 0.6:
        samples, params["reverb"] = _random_reverb(samples, rng)
    samples, params["noise"] = _random_noise(samples, rng)
    if rng.random() < 0.3:
        samples, params["telephone"] = _random_telephone(samples, rng)
    samples, params["gain"] = _random_gain(samples, rng)
    return samples, params


KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict]]] = {
    "speed": _random_speed,
    "noise": _random_noise,
    "reverb": _random_reverb,
    "telephone": _random_telephone,
    "gain": _random_gain,
    "pitch": _random_pitch,
    "formant": _random_formant,
    "voice": _random_voice,
    "mix": _random_mix,
    "pause": _random_pause,
}  # augmentation name -> (samples, rng) -> (augmented samples, the parameters drawn)


def random_augment(kind: str, samples: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Apply augmentation `kind` with parameters drawn from `rng`; returns (samples, parameters)."""
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r}: expected one of {', '.join(KINDS)}")
    return KINDS[kind](samples, rng)
