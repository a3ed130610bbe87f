"""Clients that go away mid-stream: cancelled calls, closed channels and killed client processes.

Every stream's slot and session must be freed (asr_active_streams back to 0), and the server keeps serving.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from conftest import IDLE_S, ROOT
from rel_util import (
    LINEAR16,
    call,
    finals,
    linear16_requests,
    log_problems,
    metric,
    speech_clips,
    still_serves,
    wait_for,
)
from server_helpers import audio_request, config_request

from server.gen.asr.v1 import asr_pb2_grpc

CANCELLED_STREAMS = 200  # cancelled by the client at a random moment
CLOSED_CHANNELS = 50  # the client closes its whole channel mid-stream
KILLED_PROCESSES = 4  # client processes killed with SIGKILL mid-stream ...
STREAMS_PER_PROCESS = 10  # ... each with this many streams open

CLIENT = """
import sys, time, grpc
from server.gen.asr.v1 import asr_pb2 as pb, asr_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = asr_pb2_grpc.RecognizerStub(channel)
def requests():
    yield pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.RecognitionConfig.LINEAR16, sample_rate_hertz=16000),
        interim_results=True))
    while True:
        yield pb.StreamingRecognizeRequest(audio_content=bytes(3200))
        time.sleep(0.1)
calls = [stub.StreamingRecognize(requests()) for _ in range(int(sys.argv[2]))]
print("open", flush=True)
time.sleep(600)
"""


def cancelled_stream(address: str, clip: bytes, seed: int) -> str:
    """A stream cancelled after a random number of requests (0: before the config goes out)."""
    rng = random.Random(seed)
    stop_after = rng.randint(0, 40)
    gate = threading.Event()

    def requests():
        yield config_request(LINEAR16, interim=True)
        for i, start in enumerate(range(0, len(clip), 3200)):
            if i == stop_after:
                gate.set()
                time.sleep(30)  # stay open until cancelled
            yield audio_request(clip[start : start + 3200])
            time.sleep(rng.uniform(0, 0.02))
        gate.set()

    with grpc.insecure_channel(address) as channel:
        responses = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(requests(), timeout=60)
        reader = threading.Thread(target=lambda: [None for _ in responses_or_nothing(responses)], daemon=True)
        reader.start()
        if stop_after:
            gate.wait(30)
        time.sleep(rng.uniform(0, 0.2))
        responses.cancel()
        reader.join(10)
    return "cancelled"


def responses_or_nothing(responses):
    try:
        yield from responses
    except grpc.RpcError:
        return


def closed_channel(address: str, clip: bytes, seed: int) -> str:
    """The whole channel is closed mid-stream (connection gone without a cancel of the call)."""
    rng = random.Random(seed)
    channel = grpc.insecure_channel(address)
    responses = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(
        linear16_requests(clip, pace_s=0.01), timeout=60
    )
    reader = threading.Thread(target=lambda: [None for _ in responses_or_nothing(responses)], daemon=True)
    reader.start()
    time.sleep(rng.uniform(0.05, 0.5))
    channel.close()
    reader.join(10)
    return "closed"


def test_clients_that_disconnect_free_their_streams(server, figures):
    clip = speech_clips(1)[0][1]
    with grpc.insecure_channel(server.address) as channel:
        want = finals(call(asr_pb2_grpc.RecognizerStub(channel), linear16_requests(clip))[2])
    streams_before = metric(server, "asr_streams_total")
    start = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        jobs = [pool.submit(cancelled_stream, server.address, clip, i) for i in range(CANCELLED_STREAMS)]
        jobs += [pool.submit(closed_channel, server.address, clip, i) for i in range(CLOSED_CHANNELS)]
        outcomes = [j.result() for j in jobs]

    procs = [
        subprocess.Popen([sys.executable, "-c", CLIENT, server.address, str(STREAMS_PER_PROCESS)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(KILLED_PROCESSES)
    ]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "open"
        assert wait_for(
            lambda: metric(server, "asr_active_streams") >= KILLED_PROCESSES * STREAMS_PER_PROCESS
        )
        time.sleep(0.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
    freed = wait_for(lambda: metric(server, "asr_active_streams") == 0, timeout=IDLE_S + 15)
    active = metric(server, "asr_active_streams")
    wall = time.monotonic() - start
    streams = metric(server, "asr_streams_total") - streams_before
    still_serves(server, clip, want)
    figures(
        f"{outcomes.count('cancelled')} cancelled streams, {outcomes.count('closed')} closed channels, "
        f"{KILLED_PROCESSES * STREAMS_PER_PROCESS} streams of {KILLED_PROCESSES} SIGKILLed client processes; "
        f"{streams:.0f} calls seen by the server in {wall:.1f} s; active streams after: {active:.0f}"
    )
    assert freed, f"{active} streams still active after every client went away"
    assert not log_problems(server), log_problems(server)[:10]
