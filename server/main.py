"""`asr-serve`: the streaming speech recognition gRPC server.

    asr-serve --model models/default.pt --port 50051 --metrics-port 9090

Starts listening at once, with health NOT_SERVING (and recognition calls UNAVAILABLE) while the model
loads, then SERVING. Prints `listening on HOST:PORT` (the bound port, also for --port 0) on stdout. On
SIGTERM or SIGINT: health turns NOT_SERVING, new calls get UNAVAILABLE, calls in progress get up to
--grace-s seconds to finish, then the process exits 0 (a second signal cuts the grace period short).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from asr import decoder_config
from asr.checkpoint import DEFAULT_MODEL
from asr.streaming import MAX_BATCH, StreamingConfig
from server.auth import BearerTokenInterceptor
from server.convert import ServerSettings
from server.gen.asr.v1 import asr_pb2_grpc
from server.metrics import Metrics
from server.service import SERVICE_NAME, Limits, RecognizerServicer

log = logging.getLogger("asr.server")

EXTRA_THREADS = 8  # handler threads beyond max_streams: health checks, model info, refusals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d, lim = StreamingConfig(), Limits()
    p = argparse.ArgumentParser(prog="asr-serve", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (default: the bundled model)"
    )
    p.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda, cuda:1)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 recurrent layers (CPU): ~3x faster per stream, WER within half a point here",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: a step's matrices are small, and spinning OpenMP workers "
        "starve the gRPC threads when cores are shared; raise it for big batches on a dedicated machine)",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    net.add_argument("--port", type=int, default=50051, help="gRPC port (0: a free port, printed)")
    net.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port (0: a free port; default: off)"
    )
    net.add_argument("--metrics-host", help="address of the metrics endpoint (default: --host)")
    net.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS (with --tls-key)")
    net.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    net.add_argument(
        "--auth-token",
        default=os.environ.get("ASR_AUTH_TOKEN"),
        help="require 'authorization: Bearer TOKEN' metadata (default: $ASR_AUTH_TOKEN; unset: no auth)",
    )
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-streams", type=int, default=lim.max_streams, help="concurrent recognition calls"
    )
    limits.add_argument("--max-audio-s", type=float, default=lim.max_audio_s, help="audio seconds per call")
    limits.add_argument("--idle-timeout-s", type=float, default=lim.idle_timeout_s,
                        help="longest gap between requests of a stream")  # fmt: skip
    limits.add_argument("--max-message-bytes", type=int, default=lim.max_message_bytes,
                        help="largest request message (a whole file for Recognize)")  # fmt: skip
    limits.add_argument(
        "--grace-s", type=float, default=30.0, help="shutdown grace period for calls in progress"
    )
    rec = p.add_argument_group("recognition")
    rec.add_argument("--chunk", type=int, default=d.chunk, help="output frames per model step")
    rec.add_argument("--right", type=int, default=d.right, help="look-ahead output frames per step")
    rec.add_argument("--endpoint-silence-s", type=float, default=d.endpoint_silence_s,
                     help="non-speech that ends an utterance")  # fmt: skip
    rec.add_argument("--max-utterance-s", type=float, default=d.max_utterance_s, help="longest utterance")
    rec.add_argument("--max-batch", type=int, default=MAX_BATCH, help="streams per model call")
    decoder_config.add_decoder_args(rec)
    rec.add_argument("--hotword-boost", type=float, default=1.0,
                     help="per-letter bonus of speech context phrases that give no boost")  # fmt: skip
    rec.add_argument("--max-alternatives", type=int, default=5, help="cap on alternatives per result")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = p.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if (
        args.max_streams < 1
        or args.max_audio_s <= 0
        or args.idle_timeout_s <= 0
        or args.max_message_bytes < 1
    ):
        p.error("limits must be positive")
    try:  # built here so that its errors are usage errors; settings_from takes it
        args.decoding = decoder_config.decoder_from_args(args)
    except ValueError as err:
        p.error(str(err))
    return args


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """`parse_args`' result -> the server's settings."""
    stream = replace(
        StreamingConfig(),
        chunk=args.chunk,
        right=args.right,
        endpoint_silence_s=args.endpoint_silence_s,
        max_utterance_s=args.max_utterance_s,
        decoder=args.decoding,
    )
    return ServerSettings(
        stream=stream, hotword_boost=args.hotword_boost, max_alternatives=args.max_alternatives
    )


FLUSH_S = 2.0  # at shutdown, time for finished calls to send their last responses


class Shutdown:
    """SIGTERM/SIGINT: the first asks for a graceful drain, the second for an immediate stop."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.forced = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()
        log.info(
            "%s received: %s",
            signal.Signals(signum).name,
            "stopping now" if self.forced.is_set() else "draining",
        )


def serve(args: argparse.Namespace, shutdown: Shutdown) -> int:
    from server.engine import Engine  # imports torch: after the arguments are known to be fine

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    metrics = Metrics()
    limits = Limits(args.max_streams, args.max_audio_s, args.idle_timeout_s, args.max_message_bytes)
    settings = settings_from(args)
    servicer = RecognizerServicer(settings, limits, metrics)
    interceptors = []
    if args.auth_token:
        interceptors.append(
            BearerTokenInterceptor(
                args.auth_token,
                lambda m: metrics.errors.labels(m.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc(),
            )
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.max_streams + EXTRA_THREADS, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", args.max_message_bytes),
            ("grpc.max_send_message_length", args.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    asr_pb2_grpc.add_RecognizerServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{args.host}:{args.port}"
    try:
        if args.tls_cert:
            creds = grpc.ssl_server_credentials([(args.tls_key.read_bytes(), args.tls_cert.read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except (OSError, RuntimeError) as err:
        log.error("cannot listen on %s: %s", address, err)
        return 1
    if not port:
        log.error("cannot listen on %s", address)
        return 1
    server.start()
    scheme = "TLS" if args.tls_cert else "plaintext"
    auth = ", bearer token required" if args.auth_token else ""
    print(f"listening on {args.host}:{port}", flush=True)
    log.info("listening on %s:%d (%s%s); loading %s", args.host, port, scheme, auth, args.model)
    if args.metrics_port is not None:
        mhost = args.metrics_host or args.host
        try:
            mport = metrics.serve(mhost, args.metrics_port)
        except OSError as err:
            log.error("cannot serve metrics on %s:%s: %s", mhost, args.metrics_port, err)
            server.stop(0).wait()
            return 1
        print(f"metrics on http://{mhost}:{mport}/metrics", flush=True)

    engine = None
    try:
        t0 = time.monotonic()
        try:
            engine = Engine.load(args.model, args.device, int8=args.int8, max_batch=args.max_batch)
            warm_s = engine.warm_up(settings.stream)
        except Exception as err:
            log.error("cannot load the model %s: %s", args.model, err)
            return 1
        servicer.ready(engine)
        if not shutdown.requested.is_set():
            for name in ("", SERVICE_NAME):
                health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "serving %s (%s, %d parameters) after %.1f s (warm-up %.1f s); latency %.0f ms; decoding: %s",
                engine.version, args.device, engine.num_parameters(), time.monotonic() - t0, warm_s,
                1000 * engine.algorithmic_latency_s(settings.stream), settings.stream.decoder.describe(),
            )  # fmt: skip
        while not shutdown.requested.wait(0.25):  # a timeout: a signal taken by another thread runs the
            pass  # Python handler only once the main thread wakes up
        return 0
    finally:
        health_servicer.enter_graceful_shutdown()  # every service NOT_SERVING from here on
        servicer.drain()
        deadline = time.monotonic() + args.grace_s
        if servicer.active:
            log.info("draining: %d call(s) in progress, %.0f s grace", servicer.active, args.grace_s)
        while servicer.active and time.monotonic() < deadline and not shutdown.forced.is_set():
            servicer.wait_idle(min(0.2, max(0.0, deadline - time.monotonic())))
        if servicer.active:
            log.warning("cancelling %d call(s) still in progress", servicer.active)
        # a call counts as done when its handler returns, before gRPC has sent its last messages: when none
        # is left, stop() gets a moment to flush them instead of cancelling them
        server.stop(0 if servicer.active or shutdown.forced.is_set() else FLUSH_S).wait()
        if engine is not None:
            engine.shutdown()
        metrics.stop()
        log.info("stopped")


def main(argv: list[str] | None = None) -> NoReturn:
    """asr-serve: parse the flags, serve until stopped, exit with serve's status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    shutdown = Shutdown()
    shutdown.install()
    code = serve(args, shutdown)
    # Everything is stopped and logged: leave without the interpreter's teardown. There a native thread
    # still winding down once aborted a clean stop after "stopped" ("terminate called without an active
    # exception", exit status -6; seen once, in the reliability tests of a fresh-clone CI run).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
