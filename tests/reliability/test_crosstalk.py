"""No cross-talk: streams stepped together in shared model calls get exactly what each gets alone.

Eight different real recordings are streamed one at a time (the reference), then all at once at several
paces and piece sizes, so that the scheduler stacks their states into the same forward calls in different
combinations. Every stream's results (partials and finals, text and times) must equal its solo run.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from rel_util import call, flat_results, linear16_requests, log_problems, speech_clips

from server.gen.asr.v1 import asr_pb2_grpc

STREAMS = 8
ROUNDS = (  # (pause between pieces in s, piece size in bytes): together, with shared model calls
    (0.0, 3200),
    (0.02, 3200),  # 5x real time
    (0.01, 1600),
    (0.0, 9998),
)


def stream_at(address: str, pcm: bytes, go: float, seed: int, pace: float, piece: int):
    """Stream `pcm` starting at time `go` (plus a little jitter)."""
    time.sleep(max(0.0, go - time.monotonic()) + random.Random(seed).uniform(0, 0.05))
    with grpc.insecure_channel(address) as channel:
        return call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(pcm, piece, pace_s=pace))


def test_concurrent_streams_get_exactly_their_solo_results(server, figures):
    clips = speech_clips(STREAMS)
    with grpc.insecure_channel(server.address) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        solo = []
        for _, pcm in clips:
            code, details, responses = call(stub, linear16_requests(pcm))
            assert code == grpc.StatusCode.OK, details
            solo.append(flat_results(responses))
    assert all(any(final for final, _, _ in r) for r in solo), "every clip should give a final result"
    assert len({tuple(r) for r in solo}) == STREAMS, "the clips should give different results"

    mismatches, calls = [], 0
    start = time.monotonic()
    for pace, piece in ROUNDS:
        go = time.monotonic() + 0.5
        with ThreadPoolExecutor(STREAMS) as pool:
            jobs = [
                pool.submit(stream_at, server.address, clips[i][1], go, i, pace, piece)
                for i in range(STREAMS)
            ]
            together = [j.result() for j in jobs]
        for i, (code, details, responses) in enumerate(together):
            calls += 1
            if code != grpc.StatusCode.OK:
                mismatches.append(f"pace {pace}, piece {piece}, {clips[i][0].name}: {code.name} {details}")
            elif flat_results(responses) != solo[i]:
                mismatches.append(
                    f"pace {pace}, piece {piece}, {clips[i][0].name}:\n  solo     {solo[i]}\n"
                    f"  together {flat_results(responses)}"
                )
    finals = sum(final for r in solo for final, _, _ in r)
    figures(
        f"{STREAMS} clips, {len(ROUNDS)} rounds of {STREAMS} concurrent streams ({calls} calls) in "
        f"{time.monotonic() - start:.1f} s; {sum(map(len, solo))} results per round ({finals} finals) "
        f"compared with the solo runs; mismatches {len(mismatches)}"
    )
    assert not mismatches, "\n".join(mismatches)
    assert not log_problems(server)
