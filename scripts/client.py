"""What the clients (asr-stream, asr-transcribe) share: the channel (TLS, bearer token), health, errors.

The connection options match the server's: `--tls-cert/--tls-key` there, `--tls` (system roots) or
`--ca-cert PEM` here; `--auth-token`/$ASR_AUTH_TOKEN there, `--token`/$ASR_AUTH_TOKEN here (sent as
`authorization: Bearer <token>`).
"""

from __future__ import annotations

import argparse
import os
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.gen.asr.v1 import asr_pb2 as pb
from server.gen.asr.v1 import asr_pb2_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
SERVICE = pb.DESCRIPTOR.services_by_name["Recognizer"].full_name  # "asr.v1.Recognizer"
MAX_MESSAGE_BYTES = 64 << 20  # largest response we accept (gRPC's default of 4 MiB is tight for long files)


def add_connection_args(parser: argparse.ArgumentParser, server_default: str | None = DEFAULT_SERVER) -> None:
    g = parser.add_argument_group("server connection")
    g.add_argument(
        "--server",
        default=server_default,
        metavar="HOST:PORT",
        help=f"address of asr-serve (default: {server_default})"
        if server_default
        else "use asr-serve at this address (default: transcribe here)",
    )
    g.add_argument(
        "--tls", action="store_true", help="connect with TLS, trusting the system's root certificates"
    )
    g.add_argument(
        "--ca-cert", metavar="PEM", help="connect with TLS, trusting this CA or self-signed certificate"
    )
    g.add_argument("--tls-server-name", metavar="NAME", help="expect this name in the server's certificate")
    g.add_argument(
        "--token",
        default=os.environ.get("ASR_AUTH_TOKEN"),
        help="bearer token for a server started with --auth-token (default: $ASR_AUTH_TOKEN)",
    )
    g.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for the server's health to be SERVING (it loads its model)",
    )


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `args.server`: plaintext, or TLS with --tls / --ca-cert."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if args.tls or args.ca_cert:
        root = None
        if args.ca_cert:
            with open(args.ca_cert, "rb") as f:
                root = f.read()
        return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(root_certificates=root), options)
    return grpc.insecure_channel(args.server, options)


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {args.token}"),) if args.token else ()


def stub(channel: grpc.Channel) -> asr_pb2_grpc.RecognizerStub:
    return asr_pb2_grpc.RecognizerStub(channel)


def describe(err: grpc.RpcError) -> str:
    """`CODE: message` of a failed call."""
    return f"{err.code().name}: {err.details()}"


def exit_status(err: grpc.RpcError) -> int:
    """The status code's number (3 INVALID_ARGUMENT, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...)."""
    return err.code().value[0]


def wait_serving(channel: grpc.Channel, timeout_s: float) -> None:
    """Return once the server's health check says SERVING; TimeoutError after `timeout_s`."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            status = health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=max(0.1, min(5.0, left))
            )
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
        except grpc.RpcError as err:
            last = describe(err)
        if time.monotonic() + 0.2 > deadline:
            raise TimeoutError(f"the server is not SERVING after {timeout_s:g} s ({last})")
        time.sleep(0.2)
