"""Helpers for tests/test_server.py: a real server process on an ephemeral port, requests, certificates."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import torch

from asr import checkpoint
from asr.features import FeatureStats
from asr.model import PRESETS, AcousticModel
from bench.server import ROOT, SERVICE, Server  # noqa: F401  (ROOT, SERVICE: for the tests)
from server.gen.asr.v1 import asr_pb2 as pb
from server.gen.asr.v1 import asr_pb2_grpc


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random 'tiny' checkpoint: transcripts are gibberish, but the same for server and library."""
    torch.manual_seed(seed)
    checkpoint.save(path, AcousticModel(PRESETS["tiny"]), FeatureStats.identity())
    return path


class ServerProcess(Server):
    """The benchmark's server process (bench.server), under nice so the test runner stays responsive.

    Greedy decoding unless `args` choose a decoder: the tests compare its transcripts with the library's
    `Recognizer`, which decodes greedily by default (asr-serve's own default is the bundled LM)."""

    def __init__(self, model: Path, log_path: Path, *args: str, env: dict | None = None):
        if not {"--decoder", "--lm", "--lexicon"} & set(args):
            args = ("--decoder", "greedy", *args)
        super().__init__(model, log_path, *args, nice=10, env=env)


# ---- requests ------------------------------------------------------------------------------------------


def recognition_config(
    encoding: str = "ENCODING_UNSPECIFIED", rate: int = 0, **kwargs
) -> pb.RecognitionConfig:
    value = pb.RecognitionConfig.AudioEncoding.Value(encoding)
    return pb.RecognitionConfig(encoding=value, sample_rate_hertz=rate, **kwargs)


def config_request(config: pb.RecognitionConfig, interim: bool = False, single: bool = False):
    return pb.StreamingRecognizeRequest(
        streaming_config=pb.StreamingRecognitionConfig(
            config=config, interim_results=interim, single_utterance=single
        )
    )


def audio_request(data: bytes) -> pb.StreamingRecognizeRequest:
    return pb.StreamingRecognizeRequest(audio_content=data)


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def stream_requests(config: pb.RecognitionConfig, data: bytes, piece: int = 3200, interim: bool = False,
                    pace_s: float = 0.0, sent: threading.Event | None = None) -> Iterator:  # fmt: skip
    """The config, then the audio in pieces of `piece` bytes, `pace_s` apart; sets `sent` after the last."""
    yield config_request(config, interim)
    for chunk in pieces(data, piece):
        if pace_s:
            time.sleep(pace_s)
        yield audio_request(chunk)
    if sent is not None:
        sent.set()


def finals(responses: Iterable[pb.StreamingRecognizeResponse]) -> list[str]:
    return [r.alternatives[0].transcript for resp in responses for r in resp.results if r.is_final]


def stub(channel: grpc.Channel) -> asr_pb2_grpc.RecognizerStub:
    return asr_pb2_grpc.RecognizerStub(channel)


class HeldStream:
    """A stream kept open (sending a little silence now and then) until `close()`; its outcome is kept."""

    def __init__(self, recognizer: asr_pb2_grpc.RecognizerStub, keepalive_s: float = 0.3):
        self._stop = threading.Event()
        self._keepalive_s = keepalive_s
        self.started = threading.Event()  # the first response (or the end) arrived
        self.error: grpc.RpcError | None = None
        self.responses: list = []
        self._call = recognizer.StreamingRecognize(self._requests())
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _requests(self):
        yield config_request(recognition_config("LINEAR16", 16000), interim=True)
        while not self._stop.is_set():
            yield audio_request(bytes(3200))
            self._stop.wait(self._keepalive_s)

    def _consume(self) -> None:
        try:
            for response in self._call:
                self.responses.append(response)
                self.started.set()
        except grpc.RpcError as err:
            self.error = err
        self.started.set()

    def cancel(self) -> None:
        """Cancel the call from the client side."""
        self._call.cancel()
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


def then_silence(requests: Iterable, until: threading.Event, most_s: float = 30.0) -> Iterator:
    """The requests, then nothing (the stream stays open) until `until` is set."""
    yield from requests
    until.wait(most_s)


# ---- TLS -----------------------------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (openssl CLI): (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
