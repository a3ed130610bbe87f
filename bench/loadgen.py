"""Load generator: N concurrent StreamingRecognize streams of real audio at real-time pace (own process).

    python -m bench.loadgen --address 127.0.0.1:50051 --streams 40 --seconds 10 [--server-pid PID]

Every stream has its own connection, sends LINEAR16 16 kHz audio (real speech from ../shared/data, each
stream from a different place) in 100 ms pieces, piece k at the moment its audio would exist live
(start + (k + 1) * 100 ms; starts spread over the first second), asks for interim results, half-closes
after the last piece and reads until the call ends. Prints one JSON object (see `summarise`) on stdout.

Latencies, from the timestamps of each stream:

- partial latency: a partial result with `result_end_time` E needed the audio up to E plus the model's
  look-ahead (right context and the rest of one analysis window: algorithmic latency - chunk - hop). Its
  latency is the time from sending the piece that completed that audio to receiving the partial. This is
  the time from sending a chunk to receiving the partial that covers it minus the algorithmic latency
  (GetModelInfo): the part the server adds (queueing, compute, transport), which load changes.
- final latency: from the half-close after the last piece to the last final result (or the end of the call).
- send lag: how late each piece's write completed against its live schedule (client or flow control).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from asr import audio
from asr.data import read_manifest, shared_data_dir
from asr.model import DEFAULT_CHUNK
from server.gen.asr.v1 import asr_pb2 as pb
from server.gen.asr.v1 import asr_pb2_grpc

RATE = 16000  # Hz of the LINEAR16 audio sent
PIECE_S = 0.1  # audio per request message
HOP_S = 0.01  # feature hop (asr.features)
REALTIME_FINAL_S = 1.0  # a stream is served in real time if its final result comes within this after the end
REALTIME_LAG_S = 0.25  # ... and no piece's write was held up longer than this
CLIENT_BOUND_CPU = 0.8  # cores: above this the load generator's one event loop may be what falls behind
STREAM_SETS = ("pocketsphinx", "an4")  # 16 kHz speech, read in this order


def speech_pcm(limit_s: float = 0.0) -> bytes:
    """Real speech from the shared data, concatenated, as LINEAR16 at 16 kHz."""
    parts, total = [], 0.0
    for name in STREAM_SETS:
        for utt in read_manifest(shared_data_dir() / name):
            x = audio.load(utt.path)
            parts.append(x)
            total += x.size / RATE
            if limit_s and total >= limit_s:
                break
        if limit_s and total >= limit_s:
            break
    x = np.concatenate(parts)
    return audio.to_pcm16(x)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class StreamLog:
    """What one stream sent and received, with time.monotonic() stamps."""

    sent: list[float] = field(default_factory=list)  # when piece k's write started
    lag: list[float] = field(default_factory=list)  # write completion - schedule, per piece
    results: list[tuple[float, bool, float]] = field(default_factory=list)  # (received, is_final, end_s)
    half_close: float | None = None
    ended: float | None = None
    code: str = "OK"
    details: str = ""


async def run_stream(address: str, pcm: bytes, start_at: float, timeout: float) -> StreamLog:
    log = StreamLog()
    piece = int(PIECE_S * RATE) * 2
    config = pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=pb.RecognitionConfig.LINEAR16, sample_rate_hertz=RATE),
            interim_results=True,
        )
    )
    # a channel of its own: one connection per stream, as separate clients would have
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        await channel.channel_ready()
        call = asr_pb2_grpc.RecognizerStub(channel).StreamingRecognize(timeout=timeout)

        async def read() -> None:
            async for response in call:
                now = time.monotonic()
                for r in response.results:
                    log.results.append((now, r.is_final, r.result_end_time.ToTimedelta().total_seconds()))

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            await call.write(config)
            for k in range(0, len(pcm) // piece):
                due = start_at + (k + 1) * PIECE_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                log.sent.append(time.monotonic())
                await call.write(pb.StreamingRecognizeRequest(audio_content=pcm[k * piece : (k + 1) * piece]))
                log.lag.append(time.monotonic() - due)
                if reader.done():  # the call failed early
                    break
            if not reader.done():
                await call.done_writing()
            log.half_close = time.monotonic()
            await reader
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            pass
        except Exception as err:  # report, never hang the whole run
            log.code, log.details = "CLIENT_ERROR", repr(err)
        log.ended = time.monotonic()
        if log.code == "OK":
            try:
                code = await call.code()
                log.code, log.details = code.name, (await call.details()) or ""
            except Exception as err:
                log.code, log.details = "CLIENT_ERROR", repr(err)
        if not reader.done():
            reader.cancel()
    return log


def summarise(logs: list[StreamLog], lookahead_s: float, wall_s: float) -> dict:
    """Per-level figures of the streams' logs (latencies in ms)."""
    partial, final, lag, codes = [], [], [], {}
    realtime_streams = 0
    for log in logs:
        codes[log.code] = codes.get(log.code, 0) + 1
        lag += log.lag
        n = len(log.sent)
        for received, is_final, end_s in log.results:
            if is_final or (log.half_close is not None and received > log.half_close):
                continue
            k = math.ceil((end_s + lookahead_s) / PIECE_S - 1e-6) - 1  # piece that completed the audio
            if 0 <= k < n:
                partial.append(received - log.sent[k])
        stream_final = None
        if log.code == "OK" and log.half_close is not None:
            after = [t for t, is_final, _ in log.results if is_final and t >= log.half_close]
            stream_final = (max(after) if after else log.ended) - log.half_close
            final.append(stream_final)
        if (
            stream_final is not None
            and stream_final <= REALTIME_FINAL_S
            and (max(log.lag) if log.lag else 0.0) <= REALTIME_LAG_S
        ):
            realtime_streams += 1
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {
        "streams": len(logs),
        "codes": codes,
        "realtime_streams": realtime_streams,
        "realtime": realtime_streams == len(logs),
        "partials": len(partial),
        "partial_p50_ms": ms(percentile(partial, 50)),
        "partial_p95_ms": ms(percentile(partial, 95)),
        "partial_max_ms": ms(max(partial) if partial else None),
        "final_p50_ms": ms(percentile(final, 50)),
        "final_p95_ms": ms(percentile(final, 95)),
        "final_max_ms": ms(max(final) if final else None),
        "send_lag_p95_ms": ms(percentile(lag, 95)),
        "send_lag_max_ms": ms(max(lag) if lag else None),
        "audio_s": sum(len(log.sent) for log in logs) * PIECE_S,
        "wall_s": round(wall_s, 2),
    }


async def model_info(address: str) -> pb.ModelInfo:
    async with grpc.aio.insecure_channel(address) as channel:
        return await asr_pb2_grpc.RecognizerStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)


def lookahead_from(info: pb.ModelInfo, chunk: int) -> tuple[float, float]:
    """(algorithmic latency, look-ahead beyond a result's end) in seconds, from GetModelInfo."""
    algorithmic = info.algorithmic_latency.ToTimedelta().total_seconds()
    frame_s = int(info.model_config["subsample"]) * HOP_S
    return algorithmic, algorithmic - chunk * frame_s - HOP_S


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(args) -> dict:
    from bench.procstat import cpu_seconds, rss_bytes

    pcm = speech_pcm()
    info = await model_info(args.address)
    algorithmic, lookahead = lookahead_from(info, args.chunk)
    rng = random.Random(args.seed)
    n_bytes = int(args.seconds * RATE) * 2
    streams = []
    for i in range(args.streams):  # each stream from its own place in the speech, wrapping around
        start = (rng.randrange(len(pcm) // 2) * 2) if i else 0
        streams.append((pcm + pcm)[start : start + n_bytes])
    t0 = time.monotonic() + args.setup_s
    starts = [t0 + rng.uniform(0, args.ramp_s) for _ in streams]
    mark: dict[str, float] = {}

    async def start_mark() -> None:  # CPU is measured from the first stream's start, after the connections
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        mark.update(t=time.monotonic(), client=cpu_self())
        mark["server"] = cpu_seconds(args.server_pid) if args.server_pid else 0.0

    timeout = args.seconds + args.ramp_s + 60
    logs, _ = await asyncio.gather(
        asyncio.gather(
            *(run_stream(args.address, s, at, timeout) for s, at in zip(streams, starts, strict=True))
        ),
        start_mark(),
    )
    wall = time.monotonic() - mark["t"]
    out = summarise(list(logs), lookahead, wall)
    out["algorithmic_latency_ms"] = round(1000 * algorithmic, 1)
    out["lookahead_ms"] = round(1000 * lookahead, 1)
    out["client_cpu"] = round((cpu_self() - mark["client"]) / wall, 3)  # cores
    out["client_bound"] = out["client_cpu"] > CLIENT_BOUND_CPU
    if args.server_pid:
        out["server_cpu"] = round((cpu_seconds(args.server_pid) - mark["server"]) / wall, 3)
        out["server_rss_mb"] = round(rss_bytes(args.server_pid) / 2**20, 1)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="host:port of the server")
    p.add_argument("--streams", type=int, default=10, help="concurrent streams")
    p.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    p.add_argument("--ramp-s", type=float, default=1.0, help="stream starts are spread over this")
    p.add_argument("--setup-s", type=float, default=2.0, help="time to open the connections before the start")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="the server's --chunk")
    p.add_argument("--server-pid", type=int, default=0, help="measure this process's CPU over the run")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    json.dump(asyncio.run(run(args)), sys.stdout)
    print()


if __name__ == "__main__":
    main()
