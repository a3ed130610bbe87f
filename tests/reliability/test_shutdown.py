"""SIGTERM while streams are active: each stream finishes or gets UNAVAILABLE, new calls get UNAVAILABLE,
and the server exits 0 (within the grace period plus a little)."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest
from rel_util import call, finals, linear16_requests, speech_clips

from bench.server import Server
from server.gen.asr.v1 import asr_pb2_grpc

STREAMS = 12
C = grpc.StatusCode


def run_streams(address: str, clips, pace_s: float, repeat: int = 1):
    """STREAMS concurrent real-time streams, each on its own channel; returns (threads, outcomes dict)."""
    outcomes: dict[int, tuple] = {}

    def one(i: int) -> None:
        pcm = clips[i % len(clips)][1] * repeat
        with grpc.insecure_channel(address) as channel:
            outcomes[i] = call(
                asr_pb2_grpc.RecognizerStub(channel), linear16_requests(pcm, pace_s=pace_s), 120
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    return threads, outcomes


@pytest.mark.parametrize(
    "grace_s, repeat, expect",
    [(30.0, 1, {C.OK}), (1.0, 4, {C.UNAVAILABLE})],
    ids=["streams finish within the grace period", "grace period runs out"],
)
def test_sigterm_with_active_streams(model_path, tmp_path, figures, grace_s, repeat, expect):
    clips = speech_clips(4)
    server = Server(model_path, tmp_path / "server.log", "--grace-s", str(grace_s), "--max-streams", "32")
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.address) as channel:
            want = [
                finals(call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(pcm))[2])
                for _, pcm in clips
            ]
        threads, outcomes = run_streams(server.address, clips, pace_s=0.1, repeat=repeat)  # real time
        time.sleep(1.5)
        sigterm = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with grpc.insecure_channel(server.address) as channel:  # a new call while draining
            late = call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(clips[0][1]), 10)
        serving_during_drain = server.serving()
        code = server.wait(grace_s + 30)
        exit_s = time.monotonic() - sigterm
        for t in threads:
            t.join(30)
    finally:
        server.kill()
    codes = [outcomes[i][0] for i in range(STREAMS)]
    figures(
        f"grace {grace_s:g} s, {STREAMS} real-time streams of {repeat}x a clip, SIGTERM after 1.5 s: "
        f"{ {c.name: codes.count(c) for c in set(codes)} }; new call during drain: {late[0].name}; "
        f"exit code {code} {exit_s:.1f} s after SIGTERM"
        + "".join(f"; {c.name}: {d!r}" for c, d in {(o[0], o[1]) for o in outcomes.values() if o[0] != C.OK})
    )
    assert code == 0, server.log()[-3000:]
    assert late[0] == C.UNAVAILABLE, late
    assert not serving_during_drain
    assert set(codes) <= expect | {C.UNAVAILABLE}, [(c.name, outcomes[i][1]) for i, c in enumerate(codes)]
    for i, (c, _, responses) in outcomes.items():
        if c == C.OK:  # a stream that finished got its whole transcript
            assert finals(responses) == want[i % len(clips)] * 1
    assert exit_s < grace_s + 5, f"exit {exit_s:.1f} s after SIGTERM, grace {grace_s:g} s"
