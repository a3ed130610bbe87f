"""Shared helpers of the reliability suite."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf
from server_helpers import audio_request, config_request, recognition_config

from asr.data import read_manifest, shared_data_dir
from bench.procstat import rss_bytes
from bench.server import Server
from server.gen.asr.v1 import asr_pb2_grpc

LINEAR16 = recognition_config("LINEAR16", 16000)
PIECE = 3200  # bytes: 100 ms of LINEAR16 at 16 kHz


def speech_clips(n: int) -> list[tuple[Path, bytes]]:
    """n real 16 kHz recordings (pocketsphinx, then an4) as (path, LINEAR16 bytes)."""
    data = shared_data_dir()
    utts = read_manifest(data / "pocketsphinx") + read_manifest(data / "an4")
    out = []
    for u in utts[:n]:
        samples, rate = sf.read(u.path, dtype="int16")
        assert rate == 16000, u.path
        out.append((Path(u.path), samples.astype("<i2").tobytes()))
    return out


def linear16_requests(pcm: bytes, piece: int = PIECE, interim: bool = True, pace_s: float = 0.0):
    yield config_request(LINEAR16, interim)
    for i in range(0, len(pcm), piece):
        if pace_s:
            time.sleep(pace_s)
        yield audio_request(pcm[i : i + piece])


def call(stub: asr_pb2_grpc.RecognizerStub, requests: Iterable, timeout: float = 60.0):
    """Run a StreamingRecognize call: (status code, details, responses)."""
    responses = []
    try:
        for r in stub.StreamingRecognize(iter(requests), timeout=timeout):
            responses.append(r)
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as err:
        return err.code(), err.details() or "", responses


def flat_results(responses) -> list[tuple[bool, str, float]]:
    """Every result of a stream in order: (is_final, transcript, result_end_time seconds)."""
    return [
        (r.is_final, r.alternatives[0].transcript if r.alternatives else "",
         round(r.result_end_time.ToTimedelta().total_seconds(), 3))
        for resp in responses
        for r in resp.results
    ]  # fmt: skip


def finals(responses) -> list[str]:
    return [text for is_final, text, _ in flat_results(responses) if is_final]


def metric(server: Server, name: str) -> float:
    """Sum over label sets of a Prometheus metric of the server."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def wait_for(predicate, timeout: float = 20.0, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def rss_mb(server: Server) -> float:
    return rss_bytes(server.pid) / 2**20


def log_problems(server: Server) -> list[str]:
    """Lines of the server log that show a bug: our handler's INTERNAL errors and our own ERROR lines.

    (grpc's own 'Exception deserializing message!' tracebacks for undecodable protobuf are expected in the
    fuzz test; they are logged by grpc._common, not asr.)
    """
    return [
        line
        for line in server.log().splitlines()
        if "status=INTERNAL" in line or " ERROR asr." in line or "CRITICAL" in line
    ]


def still_serves(server: Server, clip: bytes, want: list[str]) -> None:
    """Health SERVING and a fresh stream gets `want`."""
    assert server.alive(), server.log()[-3000:]
    assert server.serving()
    with grpc.insecure_channel(server.address) as channel:
        code, details, responses = call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(clip))
    assert code == grpc.StatusCode.OK, details
    assert finals(responses) == want


def noise(rng: np.random.Generator, seconds: float) -> bytes:
    return (rng.standard_normal(int(16000 * seconds)) * 2000).astype("<i2").tobytes()
