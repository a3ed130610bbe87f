"""`make bench`: speed of every stage against a peer measured in the same run, and against the compute floor.

    python -m bench.run                      # everything (about 10 minutes on 2 cores)
    python -m bench.run --quick              # a smoke run with tiny sizes
    python -m bench.run --sections features recognition --files 100

Sections (each prints a table; all figures go to --json, default runs/bench.json):

- features: log-mel throughput (audio seconds per second, one thread) of `asr.features.extract` against
  `librosa.feature.melspectrogram` (same window, hop, mel scale and log) and
  `torchaudio.compliance.kaldi.fbank`, on the same real audio, one utterance per call;
- recognition: RTF of one stream in streaming mode on ONE thread (`Session.accept` over 100 ms pieces), of
  batched full-context transcription (`asr.evaluate.score`, features + model + greedy decoding, all threads),
  and of pocketsphinx (our peer) on the same audio; WER of each on it for context;
- server: `asr-serve` under a load generator in its own process (`bench.loadgen`): N concurrent real-time
  streams for N in a rising series until the server stops keeping up;
- training: forward/backward/optimizer steps of the training loop on real-length batches (full context and
  latency-controlled), on the CPU and on CUDA when available;
- floor: model FLOPs per audio second against the measured matrix-multiply rate, and how far each measured
  speed is from that floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr import checkpoint, evaluate, features
from asr.data import Utterance, read_manifest, shared_data_dir
from asr.decoding import DecoderConfig
from asr.features import FeatureConfig
from asr.model import DEFAULT_CHUNK, DEFAULT_RIGHT, PRESETS, AcousticModel, quantize_int8
from asr.streaming import Recognizer, StreamingConfig
from bench import flops as flopcount
from bench.server import Server

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("features", "recognition", "server", "training", "floor")
LEVELS = (
    1,
    5,
    10,
    20,
    40,
    60,
    80,
    100,
    120,
    150,
    200,
    250,
    300,
    400,
    500,
    600,
    800,
    1000,
)  # concurrent streams, rising
PIECE_S = 0.1  # audio per streaming piece
TARGET_STREAMS = 100  # concurrent real-time streams, p95 partial latency under PARTIAL_P95_MS
PARTIAL_P95_MS = 100.0
TARGET_VS_PEER = 10.0  # one stream at least this many times faster than pocketsphinx
TARGET_BATCH_X = 100.0  # batch transcription at least this many times faster than real time


# ---- inputs -------------------------------------------------------------------------------------------


def default_model() -> Path:
    """The bundled model, else the training run's last checkpoint (same architecture)."""
    for path in (checkpoint.DEFAULT_MODEL, ROOT / "runs" / "default" / "last.pt"):
        if path.exists():
            return path
    raise SystemExit("no model: train one (make train) or pass --model")


def utterances(files: int, seed: int = 0) -> list[Utterance]:
    """Real speech from ../shared/data: all of pocketsphinx and an4 (16 kHz), then FSDD digits (8 kHz)
    up to `files` utterances (a fixed random sample)."""
    data = shared_data_dir()
    utts = read_manifest(data / "pocketsphinx") + read_manifest(data / "an4")
    fsdd = read_manifest(data / "fsdd")
    random.Random(seed).shuffle(fsdd)
    return (utts + fsdd)[:files]


def load_audio(utts: list[Utterance]) -> list[np.ndarray]:
    from asr import audio

    return [audio.load(u.path) for u in utts]


@contextlib.contextmanager
def threads(n: int):
    """torch and the BLAS/OpenMP pools of numpy and friends limited to `n` threads."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def timed(fn, items, min_time_s: float) -> float:
    """Seconds per pass of fn over items, repeating passes until min_time_s has gone by (one at least)."""
    passes, start = 0, time.perf_counter()
    while True:
        for x in items:
            fn(x)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s:
            return elapsed / passes


# ---- features -----------------------------------------------------------------------------------------


def bench_features(wavs: list[np.ndarray], min_time_s: float) -> dict:
    import librosa
    import torchaudio

    cfg = FeatureConfig()
    audio_s = sum(w.size for w in wavs) / cfg.sample_rate

    def ours(x):
        return features.extract(x, cfg)

    piece = int(PIECE_S * cfg.sample_rate)

    def ours_streaming(x):  # as a live session computes them: 100 ms at a time
        ex = features.FeatureExtractor(cfg)
        return [ex.accept(x[i : i + piece]) for i in range(0, x.size, piece)] + [ex.finish()]

    def rosa(x):
        mel = librosa.feature.melspectrogram(
            y=x, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            center=False, power=2.0, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=True, norm=None,
        )  # fmt: skip
        return np.log(mel + cfg.log_floor).T

    def kaldi(x):
        return torchaudio.compliance.kaldi.fbank(
            torch.from_numpy(x)[None] * 32768, num_mel_bins=cfg.n_mels, frame_length=cfg.win_length / 16,
            frame_shift=cfg.hop_length / 16, sample_frequency=cfg.sample_rate, dither=0.0, snip_edges=True,
            window_type="hanning", preemphasis_coefficient=0.0, remove_dc_offset=False,
            round_to_power_of_two=False, low_freq=cfg.f_min, high_freq=cfg.f_max,
        )  # fmt: skip

    out = {"audio_s": round(audio_s, 1), "utterances": len(wavs), "threads": 1}
    with threads(1):
        t0 = time.perf_counter()
        rosa(wavs[0])  # librosa's first call initialises (and may compile) lazily: not timed
        out["librosa_first_call_s"] = round(time.perf_counter() - t0, 2)
        for fn in (ours, kaldi):
            fn(wavs[0])
        a, b = ours(wavs[0]).numpy(), rosa(wavs[0])
        out["max_abs_diff_vs_librosa"] = float(np.abs(a - b).max())  # same features, another implementation
        for name, fn in (
            ("asr", ours),
            ("asr_streaming", ours_streaming),
            ("librosa", rosa),
            ("kaldi_fbank", kaldi),
        ):
            out[name] = round(audio_s / timed(fn, wavs, min_time_s), 1)  # audio seconds per second
    out["asr_vs_librosa"] = round(out["asr"] / out["librosa"], 2)
    out["asr_vs_kaldi_fbank"] = round(out["asr"] / out["kaldi_fbank"], 2)
    return out


# ---- recognition --------------------------------------------------------------------------------------


def stream_rtf(
    recognizer: Recognizer,
    wavs: list[np.ndarray],
    hyps: list[str],
    config: StreamingConfig = StreamingConfig(),
) -> float:
    """RTF of streaming each recording through its own session in 100 ms pieces (results collected)."""
    n = int(PIECE_S * recognizer.sample_rate)
    audio_s = sum(w.size for w in wavs) / recognizer.sample_rate
    start = time.perf_counter()
    for w in wavs:
        session = recognizer.session(config)
        results = []
        for i in range(0, w.size, n):
            results += session.accept(w[i : i + n])
        results += session.finish()
        hyps.append(" ".join(r.text for r in results if r.is_final))
    return (time.perf_counter() - start) / audio_s


def bench_recognition(model_path: Path, utts: list[Utterance], wavs: list[np.ndarray]) -> dict:
    model, stats, feature_config, _ = checkpoint.load(model_path)
    model.eval()
    recognizer = Recognizer(model, stats, feature_config)
    refs = [u.text for u in utts]
    audio_s = sum(w.size for w in wavs) / 16000
    out = {"audio_s": round(audio_s, 1), "utterances": len(utts)}

    def one_stream(rec: Recognizer, config: StreamingConfig = StreamingConfig()) -> dict:
        stream_rtf(rec, wavs[:3], [], config)  # warm up (and load the LM, if any)
        hyps: list[str] = []
        rtf = stream_rtf(rec, wavs, hyps, config)
        return {"rtf": rtf, "wer": evaluate.error_rates(refs, hyps)[0]}

    with threads(1):
        out["stream_1thread"] = one_stream(recognizer)
        int8 = Recognizer(quantize_int8(model), stats, feature_config)  # asr-serve --int8
        out["stream_1thread_int8"] = one_stream(int8)
        lm = StreamingConfig(decoder=DecoderConfig.bundled())  # asr-serve's default decoding
        out["stream_1thread_lm"] = one_stream(recognizer, lm)
    for n_threads in sorted({1, torch.get_num_threads()}):
        with threads(n_threads):
            evaluate.score(model, stats, utts[:20], "full")  # warm up
            r = evaluate.score(model, stats, utts, "full")
            out[f"batch_full_{n_threads}thread"] = {"rtf": r["rtf"], "wer": r["wer"]}
    ps = evaluate.score_pocketsphinx(utts)
    out["pocketsphinx"] = {"rtf": ps["rtf"], "wer": ps["wer"]}
    out["stream_vs_pocketsphinx"] = ps["rtf"] / out["stream_1thread"]["rtf"]
    out["stream_int8_vs_pocketsphinx"] = ps["rtf"] / out["stream_1thread_int8"]["rtf"]
    out["stream_lm_vs_pocketsphinx"] = ps["rtf"] / out["stream_1thread_lm"]["rtf"]
    best_batch = min(v["rtf"] for k, v in out.items() if k.startswith("batch_full"))
    out["batch_x_realtime"] = 1 / best_batch
    return out


# ---- server under load --------------------------------------------------------------------------------


def run_loadgen(address: str, streams: int, seconds: float, server_pid: int) -> dict:
    cmd = [
        sys.executable, "-m", "bench.loadgen", "--address", address, "--streams", str(streams),
        "--seconds", str(seconds), "--server-pid", str(server_pid), "--setup-s", str(2 + streams / 50),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    if proc.returncode:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_server(model_path: Path, levels: list[int], seconds: float, log_dir: Path) -> dict:
    rows = []
    server = Server(  # greedy, as the one-stream rows: the model's cost, not the LM's
        model_path,
        log_dir / "bench-server.log",
        "--decoder",
        "greedy",
        "--max-streams",
        str(max(levels) + 16),
    )
    try:
        server.wait_serving()
        print(f"server pid {server.pid} on {server.address}; {seconds:g} s of audio per stream", flush=True)
        print(format_load_header(), flush=True)
        for n in levels:
            row = run_loadgen(server.address, n, seconds, server.pid)
            row["good"] = bool(
                row["realtime"]
                and row["partial_p95_ms"] is not None
                and row["partial_p95_ms"] < PARTIAL_P95_MS
            )
            rows.append(row)
            print(format_load_row(row), flush=True)
            if not row["realtime"]:
                break
            time.sleep(1.0)
    finally:
        code = server.stop()
    good = [r["streams"] for r in rows if r["good"]]
    best = 0
    for r in rows:  # the largest N below which every level was good
        if not r["good"]:
            break
        best = r["streams"]
    return {
        "levels": rows,
        "max_good_streams": best,
        "max_good_streams_any": max(good) if good else 0,
        "max_realtime_streams": max((r["streams"] for r in rows if r["realtime"]), default=0),
        "stream_audio_s": seconds,
        "server_exit_code": code,
        "note": "partial latency excludes the algorithmic latency (chunk + look-ahead + window)",
    }


LOAD_COLUMNS = (
    ("streams", "N", 5),
    ("codes", "status", 14),
    ("realtime", "real-time", 9),
    ("partial_p50_ms", "partial p50", 11),
    ("partial_p95_ms", "partial p95", 11),
    ("final_p50_ms", "final p50", 9),
    ("final_p95_ms", "final p95", 9),
    ("send_lag_p95_ms", "lag p95", 7),
    ("server_cpu", "srv CPU", 7),
    ("client_cpu", "cli CPU", 7),
    ("server_rss_mb", "srv MB", 7),
)


def format_load_header() -> str:
    head = "  ".join(title.rjust(w) for _, title, w in LOAD_COLUMNS)
    return head + "\n" + "  ".join("-" * w for *_, w in LOAD_COLUMNS) + "   (ms; CPU in cores)"


def format_load_row(row: dict) -> str:
    cells = []
    for key, _, w in LOAD_COLUMNS:
        v = row.get(key)
        if key == "codes":
            v = ",".join(f"{k}:{n}" for k, n in v.items())
        elif isinstance(v, bool):
            v = "yes" if v else "NO"
        elif v is None:
            v = "-"
        cells.append(str(v).rjust(w))
    return "  ".join(cells) + ("  (load generator CPU-bound)" if row.get("client_bound") else "")


# ---- training -----------------------------------------------------------------------------------------


def training_utterances(count: int, seed: int = 0) -> list[Utterance]:
    """Real-length training utterances: a sample of corpus/train.jsonl when built, else the shared data."""
    train = ROOT / "corpus" / "train.jsonl"
    if train.exists():
        utts = read_manifest(train)
    else:
        data = shared_data_dir()
        utts = (
            read_manifest(data / "pocketsphinx") + read_manifest(data / "an4") + read_manifest(data / "fsdd")
        )
    random.Random(seed).shuffle(utts)
    return utts[:count]


def bench_training(preset: str, utts: list[Utterance], steps: int, device: str) -> dict:
    """Audio seconds per second of training steps (forward, CTC, backward, clip, AdamW) as in asr.train."""
    from asr import train as tr

    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "sample.jsonl"
        rows = [json.dumps({"path": u.path, "duration": u.duration, "text": u.text}) for u in utts]
        manifest.write_text("\n".join(rows) + "\n")
        cfg = tr.TrainConfig(train=(str(manifest),), clean=(), dev=(), preset=preset, device=device)
        corpus = tr.load_corpus(cfg.train, cfg.max_seconds, "bench", quiet=True)
    stats = tr.compute_stats(corpus, 500, 0)
    batches = tr.make_batches(corpus, cfg, epoch=1, world=1)  # shuffled length buckets, as after epoch 0
    model = AcousticModel(PRESETS[preset]).to(dev)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ctc = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
    amp = dev.type == "cuda"
    out = {
        "device": device,
        "preset": preset,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "batch_frames": cfg.batch_frames,
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    for mode, chunk in (("full", None), ("latency_controlled", DEFAULT_CHUNK)):
        audio_s, elapsed, utt_count = 0.0, 0.0, 0
        for i in range(steps + 1):  # the first step warms up and is not timed
            batch = batches[i % len(batches)]
            x, lengths, targets, target_lengths, _ = tr.collate(corpus, batch, stats, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                log_probs, out_len = model(x, lengths, chunk, DEFAULT_RIGHT)
            loss = ctc(log_probs.float().transpose(0, 1), targets, out_len, target_lengths) / len(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                elapsed += time.perf_counter() - t0
                audio_s += lengths.sum().item() / 100
                utt_count += len(batch)
        out[mode] = {"audio_s_per_s": audio_s / elapsed, "steps": steps, "mean_batch": utt_count / steps,
                     "batch_audio_s": audio_s / steps}  # fmt: skip
    return out


# ---- floor --------------------------------------------------------------------------------------------


def bench_floor(model_path: Path, preset: str, results: dict) -> dict:
    model_config, _ = checkpoint_config(model_path)
    full = flopcount.flops_per_audio_second(model_config)
    lc = flopcount.flops_per_audio_second(model_config, DEFAULT_CHUNK, DEFAULT_RIGHT)
    all_threads = torch.get_num_threads()
    mm1 = flopcount.matmul_gflops(1)
    mm_all = flopcount.matmul_gflops(all_threads)
    out = {
        "model_gflop_per_audio_s_full": full["total"] / 1e9,
        "model_gflop_per_audio_s_streaming": lc["total"] / 1e9,
        "flops_breakdown_full": full,
        "matmul_gflops_1thread": mm1,
        f"matmul_gflops_{all_threads}threads": mm_all,
        "floor_stream_rtf_1thread": lc["total"] / 1e9 / mm1,
        "floor_batch_rtf_all_threads": full["total"] / 1e9 / mm_all,
        "floor_server_streams_1thread": mm1 / (lc["total"] / 1e9),  # the server steps the model on 1 thread
    }
    rec = results.get("recognition")
    if rec:
        out["stream_x_from_floor"] = rec["stream_1thread"]["rtf"] / out["floor_stream_rtf_1thread"]
        best = min(v["rtf"] for k, v in rec.items() if k.startswith("batch_full"))
        out["batch_x_from_floor"] = best / out["floor_batch_rtf_all_threads"]
    srv = results.get("server")
    if srv and srv["max_good_streams"]:
        out["server_x_from_floor"] = out["floor_server_streams_1thread"] / srv["max_good_streams"]
    tr = results.get("training")
    if tr:
        train_cfg = PRESETS[preset]
        for mode, chunk in (("full", None), ("latency_controlled", DEFAULT_CHUNK)):
            # training: forward + backward (about twice the forward's FLOPs) = 3x the forward
            forward = flopcount.flops_per_audio_second(train_cfg, chunk, DEFAULT_RIGHT, stepped=False)
            f = 3 * forward["total"] / 1e9
            floor = mm_all / f  # audio seconds per second
            out[f"floor_training_{mode}_audio_s_per_s"] = floor
            cpu = tr.get("cpu", {}).get(mode)
            if cpu:
                out[f"training_{mode}_x_from_floor"] = floor / cpu["audio_s_per_s"]
    return out


def checkpoint_config(path: Path):
    payload = checkpoint.read(path)
    from asr.model import ModelConfig

    return ModelConfig(**payload["model_config"]), payload.get("train_state")


# ---- report -------------------------------------------------------------------------------------------


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10**-(digits) or x == 0 else f"{x:.2g}"
    return str(x)


def table(rows: list[tuple], head: tuple) -> str:
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report(results: dict) -> str:
    out = []
    if f := results.get("features"):
        out.append(
            f"\nFEATURES  (80-bin log-mel, 25/10 ms, {f['audio_s']} s of audio in {f['utterances']} files, "
            f"1 thread; librosa's first call took {f['librosa_first_call_s']} s, not timed)"
        )
        names = {
            "asr": "asr.features.extract",
            "asr_streaming": "asr FeatureExtractor, 100 ms pieces",
            "librosa": "librosa melspectrogram + log",
            "kaldi_fbank": "torchaudio kaldi.fbank",
        }
        rows = [(title, f"{f[key]:.0f}", f"{f['asr'] / f[key]:.2f}") for key, title in names.items()]
        out.append(table(rows, ("extractor", "audio s / s", "asr.features.extract is x faster")))
        out.append(f"max |asr - librosa| log-mel difference: {f['max_abs_diff_vs_librosa']:.2g}")
    if r := results.get("recognition"):
        out.append(
            f"\nRECOGNITION  ({r['audio_s']} s of audio in {r['utterances']} files; greedy unless it says)"
        )
        rows = [("asr streaming, 1 stream, 1 thread (100 ms pieces)", r["stream_1thread"])]
        if "stream_1thread_int8" in r:
            rows.append(("asr streaming, int8 LSTMs (asr-serve --int8)", r["stream_1thread_int8"]))
        if "stream_1thread_lm" in r:
            rows.append(("asr streaming, beam + bundled LM (asr-serve's default)", r["stream_1thread_lm"]))
        rows += [(f"asr batch full-context, {k.split('_')[-1].replace('thread', ' thread(s)')}", v)
                 for k, v in r.items() if k.startswith("batch_full")]  # fmt: skip
        rows.append(("pocketsphinx 5.1.1 (1 thread)", r["pocketsphinx"]))
        out.append(table([(name, f"{v['rtf']:.4f}", f"{1 / v['rtf']:.0f}x", f"{100 * v['wer']:.1f}")
                          for name, v in rows], ("system", "RTF", "x real time", "WER %")))  # fmt: skip
        out.append(f"one stream vs pocketsphinx: {r['stream_vs_pocketsphinx']:.1f}x faster")
    if s := results.get("server"):
        out.append(
            f"\nSERVER UNDER LOAD  ({s['stream_audio_s']:g} s per stream, LINEAR16 16 kHz in 100 ms pieces "
            f"at real-time pace, one connection per stream; {s['note']})"
        )
        out.append(format_load_header())
        out += [format_load_row(row) for row in s["levels"]]
        out.append(f"largest N real-time with p95 partial latency < {PARTIAL_P95_MS:.0f} ms: "
                   f"{s['max_good_streams']}")  # fmt: skip
    if t := results.get("training"):
        rows = []
        for dev, v in t.items():
            for mode in ("full", "latency_controlled"):
                name = dev if dev == "cpu" else v.get("gpu", dev)
                speed, size = v[mode]["audio_s_per_s"], v[mode]["batch_audio_s"]
                rows.append((name, v["preset"], mode, f"{speed:.0f}", f"{size:.0f}"))
        out.append("\nTRAINING  (forward + CTC + backward + AdamW on real-length batches)")
        out.append(table(rows, ("device", "preset", "mode", "audio s / s", "audio s / batch")))
    if fl := results.get("floor"):
        out.append("\nCOMPUTE FLOOR  (dense FLOPs from the model config vs measured float32 torch.mm)")
        mm = {k: v for k, v in fl.items() if k.startswith("matmul_gflops")}
        out.append(f"model: {fl['model_gflop_per_audio_s_full']:.3f} GFLOP per audio second full context, "
                   f"{fl['model_gflop_per_audio_s_streaming']:.3f} streaming (chunk {DEFAULT_CHUNK} + right "
                   f"{DEFAULT_RIGHT}); matmul: " + ", ".join(f"{v:.0f} GFLOP/s at {k.split('_')[-1]}"
                                                             for k, v in mm.items()))  # fmt: skip
        rows = [("stream RTF, 1 thread", fl["floor_stream_rtf_1thread"], fl.get("stream_x_from_floor")),
                ("batch RTF, all threads", fl["floor_batch_rtf_all_threads"], fl.get("batch_x_from_floor")),
                ("server streams (model on 1 thread)", fl["floor_server_streams_1thread"],
                 fl.get("server_x_from_floor"))]  # fmt: skip
        for mode in ("full", "latency_controlled"):
            if f"floor_training_{mode}_audio_s_per_s" in fl:
                rows.append((f"training {mode} audio s/s", fl[f"floor_training_{mode}_audio_s_per_s"],
                             fl.get(f"training_{mode}_x_from_floor")))  # fmt: skip
        cells = [
            (a, fmt(b, 4) if b < 1 else fmt(b, 0), "-" if c is None else f"{c:.1f}x") for a, b, c in rows
        ]
        out.append(table(cells, ("figure", "floor", "measured is this far from it")))
    if tg := results.get("targets"):
        out.append("\nTARGETS")
        cells = [(k, v["target"], v["measured"], "met" if v["met"] else "GAP") for k, v in tg.items()]
        out.append(table(cells, ("target", "wanted", "measured", "")))
    return "\n".join(out)


def targets(results: dict) -> dict:
    out = {}
    if s := results.get("server"):
        out["concurrent real-time streams"] = {
            "target": f">= {TARGET_STREAMS} (p95 partial < {PARTIAL_P95_MS:.0f} ms)",
            "measured": s["max_good_streams"],
            "met": s["max_good_streams"] >= TARGET_STREAMS,
        }
    if r := results.get("recognition"):
        out["one stream vs pocketsphinx"] = {
            "target": f">= {TARGET_VS_PEER:.0f}x faster",
            "measured": f"{r['stream_vs_pocketsphinx']:.1f}x float, "
            f"{r.get('stream_int8_vs_pocketsphinx', 0):.1f}x int8",
            "met": max(r["stream_vs_pocketsphinx"], r.get("stream_int8_vs_pocketsphinx", 0))
            >= TARGET_VS_PEER,
        }
        out["batch transcription"] = {
            "target": f">= {TARGET_BATCH_X:.0f}x real time",
            "measured": f"{r['batch_x_realtime']:.0f}x",
            "met": r["batch_x_realtime"] >= TARGET_BATCH_X,
        }
    return out


# ---- main ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=Path, help="checkpoint (default: models/default.pt, else runs/default/last.pt)"
    )
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes everywhere")
    p.add_argument(
        "--files", type=int, default=300, help="utterances for the feature and recognition figures"
    )
    p.add_argument("--min-time-s", type=float, default=3.0, help="shortest timing of each feature extractor")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent streams to try")
    p.add_argument("--stream-seconds", type=float, default=10.0, help="audio per stream under load")
    p.add_argument("--train-preset", default="default", choices=sorted(PRESETS), help="model preset trained")
    p.add_argument("--train-utterances", type=int, default=600, help="training utterances sampled")
    p.add_argument("--train-steps", type=int, default=4, help="timed steps per mode and device")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "bench.json", help="where the figures go")
    args = p.parse_args(argv)
    if args.quick:
        args.files = min(args.files, 12)
        args.min_time_s = min(args.min_time_s, 0.2)
        args.levels = args.levels[:2] if args.levels != list(LEVELS) else [1, 4]
        args.stream_seconds = min(args.stream_seconds, 2.0)
        args.train_utterances = min(args.train_utterances, 40)
        args.train_steps = 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_path = args.model or default_model()
    results: dict = {
        "meta": {
            "model": str(model_path),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "quick": args.quick,
        }
    }
    print(f"model {model_path}; {os.cpu_count()} CPUs, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; CUDA: {results['meta']['cuda']}", flush=True)  # fmt: skip

    def section(name: str, fn, *a):
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        results[name] = fn(*a)
        results[name]["section_s"] = round(time.perf_counter() - t0, 1)

    if {"features", "recognition"} & set(args.sections):
        utts = utterances(args.files)
        wavs = load_audio(utts)
    if "features" in args.sections:
        section("features", bench_features, wavs, args.min_time_s)
    if "recognition" in args.sections:
        section("recognition", bench_recognition, model_path, utts, wavs)
    if "server" in args.sections:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        section("server", bench_server, model_path, args.levels, args.stream_seconds, args.json.parent)
    if "training" in args.sections:
        train_utts = training_utterances(args.train_utterances)
        print("[training] ...", flush=True)
        t0 = time.perf_counter()
        results["training"] = {"cpu": bench_training(args.train_preset, train_utts, args.train_steps, "cpu")}
        if torch.cuda.is_available():
            results["training"]["cuda"] = bench_training(
                args.train_preset, train_utts, args.train_steps, "cuda"
            )
        results["training"]["cpu"]["section_s"] = round(time.perf_counter() - t0, 1)
    if "floor" in args.sections:
        section("floor", bench_floor, model_path, args.train_preset, results)
    results["targets"] = targets(results)
    print(report(results), flush=True)
    if args.quick:
        print("(--quick: a smoke run with tiny sizes; its figures are not measurements of the targets)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nfigures written to {args.json}")
    return results


if __name__ == "__main__":
    main()
