"""Thousands of short streams: the server's memory stays flat and every stream's slot is freed.

Most streams are valid short utterances; some are cut off by the client and some fail with a bad request, so
the error and cancellation paths are exercised as often as the normal one.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from rel_util import (
    call,
    finals,
    linear16_requests,
    log_problems,
    metric,
    rss_mb,
    speech_clips,
    still_serves,
    wait_for,
)
from server_helpers import audio_request, config_request, recognition_config

from server.gen.asr.v1 import asr_pb2_grpc

STREAMS = 2000  # measured
WARM_UP = 300  # run first, so that allocator pools and caches have grown before RSS is measured
WORKERS = 16
CHANNELS = 8
MAX_GROWTH_MB = 50.0


def short_stream(channel: grpc.Channel, clips: list[bytes], i: int) -> grpc.StatusCode:
    rng = random.Random(i)
    clip = clips[i % len(clips)]
    stub = asr_pb2_grpc.RecognizerStub(channel)
    kind = i % 10
    if kind == 0:  # a bad request
        requests = [config_request(recognition_config("LINEAR16", 16000)), audio_request(b"\x01")]
        return call(stub, requests)[0]
    if kind == 1:  # cancelled by the client after some audio
        responses = stub.StreamingRecognize(linear16_requests(clip, pace_s=0.005), timeout=30)
        timer = threading.Timer(rng.uniform(0.0, 0.1), responses.cancel)
        timer.start()
        try:
            for _ in responses:
                pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        timer.join()
        return code
    start = rng.randrange(0, max(1, len(clip) - 16000)) & ~1  # up to 0.5 s of speech from a random place
    return call(stub, linear16_requests(clip[start : start + rng.randint(1, 8000) * 2]))[0]


def run_streams(address: str, clips: list[bytes], first: int, count: int) -> dict:
    channels = [grpc.insecure_channel(address) for _ in range(CHANNELS)]
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            codes = list(
                pool.map(
                    lambda i: short_stream(channels[i % CHANNELS], clips, i), range(first, first + count)
                )
            )
    finally:
        for c in channels:
            c.close()
    out: dict = {}
    for c in codes:
        out[c.name] = out.get(c.name, 0) + 1
    return out


def test_thousands_of_short_streams_leave_memory_flat(server, figures):
    clips = [pcm for _, pcm in speech_clips(8)]
    with grpc.insecure_channel(server.address) as channel:
        want = finals(call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(clips[0]))[2])
    run_streams(server.address, clips, 10**6, WARM_UP)
    assert wait_for(lambda: metric(server, "asr_active_streams") == 0)
    before = rss_mb(server)
    start = time.monotonic()
    codes = run_streams(server.address, clips, 0, STREAMS)
    wall = time.monotonic() - start
    assert wait_for(lambda: metric(server, "asr_active_streams") == 0)
    after = rss_mb(server)
    still_serves(server, clips[0], want)
    figures(
        f"{STREAMS} short streams ({WORKERS} at once, after {WARM_UP} warm-up streams) in {wall:.1f} s "
        f"({STREAMS / wall:.0f}/s); codes {codes}; server RSS {before:.1f} -> {after:.1f} MB "
        f"({after - before:+.1f} MB, bound {MAX_GROWTH_MB:g})"
    )
    assert set(codes) <= {"OK", "INVALID_ARGUMENT", "CANCELLED"}, codes
    assert codes.get("INVALID_ARGUMENT", 0) == STREAMS // 10
    assert after - before < MAX_GROWTH_MB
    assert not log_problems(server), log_problems(server)[:10]
