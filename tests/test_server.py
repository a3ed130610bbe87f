"""The gRPC service against real server processes on ephemeral ports, plus incremental audio decoding.

A random 'tiny' model stands in for the bundled one: its transcripts are gibberish, but the server must give
exactly what the library gives on the same model and audio.
"""

from __future__ import annotations

import io
import random
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from server_helpers import (
    SERVICE,
    HeldStream,
    ServerProcess,
    audio_request,
    config_request,
    finals,
    recognition_config,
    self_signed_cert,
    stream_requests,
    stub,
    then_silence,
)

from asr import audio
from asr.audio import AudioError
from asr.audio_stream import StreamDecoder, StreamResampler
from asr.streaming import Recognizer, StreamingConfig
from server import protogen
from server.gen.asr.v1 import asr_pb2 as pb

MAX_STREAMS = 3
IDLE_S = 2.0
MAX_AUDIO_S = 20.0
MAX_MESSAGE = 1_500_000


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    proc = ServerProcess(
        model_path,
        tmp_path_factory.mktemp("log") / "server.log",
        "--metrics-port", "0",
        "--max-streams", str(MAX_STREAMS),
        "--idle-timeout-s", str(IDLE_S),
        "--max-audio-s", str(MAX_AUDIO_S),
        "--max-message-bytes", str(MAX_MESSAGE),
    )  # fmt: skip
    channel = grpc.insecure_channel(proc.address)
    try:
        proc.wait_serving(channel)
        proc.channel = channel
        yield proc
    finally:
        channel.close()
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def ps_clip(data_dir) -> Path:
    return data_dir / "pocketsphinx" / "audio" / "sense_and_sensibility_01_austen_64kb-0880.flac"  # 3 s


def pcm16(path: Path) -> tuple[bytes, int]:
    samples, rate = sf.read(path, dtype="int16")
    return samples.tobytes(), rate


def library_finals(recognizer: Recognizer, samples: np.ndarray) -> list[str]:
    return [r.text for r in recognizer.recognize(samples, StreamingConfig())]


def metric(server: ServerProcess, name: str) -> float:
    """Sum of all samples of a metric (every label set) on the /metrics page."""
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# ---- the contract ------------------------------------------------------------------------------------------


GENERATED_VERSION = re.compile(rb"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", re.M)


def test_stubs_are_generated_from_the_proto(tmp_path):
    """server/gen is what `make proto` writes now: regenerate and compare. Only the grpcio-tools version
    stamped in the gRPC stub may differ (a patch release of 1.85 changes it), as long as the installed grpcio
    is at least the stamped one, which the stub checks when it is imported."""
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in protogen.generate(tmp_path)}
    gen = protogen.ROOT / protogen.PACKAGE
    committed = {
        p.relative_to(protogen.ROOT): p.read_bytes()
        for p in gen.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(committed) == sorted(fresh), "server/gen has other files than protoc writes: run make proto"
    stale = [
        str(p)
        for p in fresh
        if GENERATED_VERSION.sub(b"", fresh[p]) != GENERATED_VERSION.sub(b"", committed[p])
    ]
    assert not stale, f"stale generated stubs {stale}: run make proto"
    stamps = [m.group(1).decode() for stub in committed.values() for m in GENERATED_VERSION.finditer(stub)]
    assert stamps, "the gRPC stub no longer stamps its grpcio-tools version: drop the exception above"
    version = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert all(version(s) <= version(grpc.__version__) for s in stamps), (stamps, grpc.__version__)


# ---- incremental audio decoding ----------------------------------------------------------------------------


def feed_randomly(decoder: StreamDecoder, data: bytes, seed: int = 0, most: int = 3000) -> np.ndarray:
    rng, out, pos = random.Random(seed), [], 0
    while pos < len(data):
        n = rng.randint(1, most)
        out.append(decoder.feed(data[pos : pos + n]))
        pos += n
    out.append(decoder.finish())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100])
def test_raw_pieces_decode_like_the_whole(rate):
    data = (np.random.default_rng(rate).standard_normal(rate // 2) * 3000).astype("<i2").tobytes()
    whole = audio.decode(data, "LINEAR16", rate)
    got = feed_randomly(StreamDecoder("LINEAR16", rate), data)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < 1e-4


def test_stereo_mulaw_and_wav_pieces_decode_like_the_whole():
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((4000, 2)) * 3000).astype("<i2").tobytes()
    got = feed_randomly(StreamDecoder("LINEAR16", 8000, 2), stereo)
    assert np.allclose(got, audio.decode(stereo, "LINEAR16", 8000, 2), atol=1e-4)
    mulaw = rng.integers(0, 256, 5001, dtype=np.uint8).tobytes()
    assert np.array_equal(
        feed_randomly(StreamDecoder("MULAW", 16000), mulaw), audio.decode(mulaw, "MULAW", 16000)
    )
    for subtype in ("PCM_16", "PCM_24", "FLOAT", "ULAW"):
        buf = io.BytesIO()
        sf.write(buf, rng.uniform(-0.5, 0.5, (6000, 2)), 24000, subtype=subtype, format="WAV")
        wav = buf.getvalue()
        decoder = StreamDecoder("AUTO")
        early = decoder.feed(wav[: len(wav) // 2])
        assert decoder.streaming and early.size > 0, "WAV data comes out before the end of the stream"
        got = np.concatenate([early, feed_randomly(decoder, wav[len(wav) // 2 :])])
        assert np.allclose(got, audio.decode(wav), atol=1e-4), subtype


def test_flac_is_decoded_at_the_end(an4_clip):
    data = an4_clip.read_bytes()
    decoder = StreamDecoder("FLAC")
    assert decoder.feed(data[:1000]).size == 0 and not decoder.streaming
    assert np.array_equal(feed_randomly(decoder, data[1000:]), audio.decode(data))


def test_stream_resampler_equals_offline():
    x = np.random.default_rng(2).standard_normal(30001).astype(np.float32)
    r = StreamResampler(44100)
    got = np.concatenate([r.feed(x[i : i + 777]) for i in range(0, x.size, 777)] + [r.finish()])
    want = audio.resample(x, 44100)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    "args, data, message",
    [
        (("FLAC",), b"not a flac file at all", "does not start with a FLAC header"),
        (("LINEAR16", 16000), b"\x01\x02\x03", "do not make a whole frame"),
        (("AUTO",), b"garbage garbage garbage", "cannot decode audio"),
        (("LINEAR16", 4000), b"", "unsupported sample rate 4000 Hz"),
        (("MULAW",), b"", "needs a sample rate"),
    ],
)
def test_stream_decoder_errors(args, data, message):
    with pytest.raises(AudioError, match=message):
        decoder = StreamDecoder(*args)
        decoder.feed(data)
        decoder.finish()


# ---- recognition -------------------------------------------------------------------------------------------


def test_streamed_flac_gives_the_library_transcript(server, recognizer, an4_clip):
    responses = list(stub(server.channel).StreamingRecognize(
        stream_requests(recognition_config("FLAC"), an4_clip.read_bytes(), piece=1000)))  # fmt: skip
    assert finals(responses) == library_finals(recognizer, audio.load(an4_clip))
    assert finals(responses) != []


def test_streamed_linear16_gives_interim_results_before_the_audio_ends(server, recognizer, ps_clip):
    data, rate = pcm16(ps_clip)
    sent = threading.Event()
    first_interim = None
    responses = []
    config = recognition_config("LINEAR16", rate)  # 100 ms pieces every 20 ms (5x real time), split samples:
    requests = stream_requests(config, data, piece=3201, interim=True, pace_s=0.02, sent=sent)
    for response in stub(server.channel).StreamingRecognize(requests):
        responses.append(response)
        if first_interim is None and any(not r.is_final for r in response.results):
            first_interim = not sent.is_set()
    assert first_interim, "an interim result arrived before the last audio was sent"
    interims = [r for resp in responses for r in resp.results if not r.is_final]
    assert all(0.0 <= r.stability <= 1.0 and r.alternatives[0].transcript for r in interims)
    ends = [r.result_end_time.ToTimedelta().total_seconds() for r in interims]
    assert ends == sorted(ends) and ends[-1] <= len(data) / 2 / rate + 0.1
    assert finals(responses) == library_finals(recognizer, audio.load(ps_clip))
    assert metric(server, "asr_partial_latency_seconds_count") > 0


def test_single_utterance_ends_with_the_event(server, recognizer, an4_clip):
    requests = iter(
        [config_request(recognition_config("FLAC"), single=True), audio_request(an4_clip.read_bytes())]
    )
    responses = list(stub(server.channel).StreamingRecognize(requests))
    events = [r.speech_event_type for r in responses]
    assert pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE in events
    assert events.index(pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE) < len(responses) - 1
    assert finals(responses) == library_finals(recognizer, audio.load(an4_clip))[:1]


def test_recognize_model_info_and_reflection(server, recognizer, ps_clip):
    recognizer_stub = stub(server.channel)
    config = recognition_config(enable_word_time_offsets=True, enable_word_confidence=True)
    response = recognizer_stub.Recognize(
        pb.RecognizeRequest(config=config, audio=pb.RecognitionAudio(content=ps_clip.read_bytes())),
        timeout=30,
    )
    texts = [r.alternatives[0].transcript for r in response.results]
    assert texts == library_finals(recognizer, audio.load(ps_clip))
    duration = response.audio_duration.ToTimedelta().total_seconds()
    assert abs(duration - sf.info(ps_clip).duration) < 0.01
    words = [w for r in response.results for w in r.alternatives[0].words]
    assert [w.word for w in words] == " ".join(texts).split()
    assert all(0 <= w.start_time.ToTimedelta().total_seconds() <= duration + 0.1 for w in words)
    assert all(0 <= w.confidence <= 1 for w in words)

    info = recognizer_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.sample_rate_hertz == 16000 and info.tokens[0] == "<blank>" and len(info.tokens) == 29
    latency = info.algorithmic_latency.ToTimedelta().total_seconds()
    assert latency == pytest.approx(recognizer.algorithmic_latency_s(StreamingConfig()), abs=1e-6)
    assert info.num_parameters == recognizer.model.num_parameters()
    assert info.model_version.startswith("tiny.pt@") and info.max_concurrent_streams == MAX_STREAMS

    services = ProtoReflectionDescriptorDatabase(server.channel).get_services()
    assert SERVICE in services and "grpc.health.v1.Health" in services


def test_speech_contexts_and_alternatives(server, recognizer, an4_clip):
    samples = audio.load(an4_clip)[:8000]
    data = (samples * 32767).astype("<i2").tobytes()
    config = recognition_config("LINEAR16", 16000, max_alternatives=3)
    config.speech_contexts.add(phrases=["start"], boost=1.0)
    response = stub(server.channel).Recognize(
        pb.RecognizeRequest(config=config, audio=pb.RecognitionAudio(content=data)), timeout=60
    )
    want = recognizer.recognize(
        audio.decode(data, "LINEAR16", 16000), StreamingConfig(max_alternatives=3, hotwords=(("start", 1.0),))
    )
    got = [[a.transcript for a in r.alternatives] for r in response.results]
    assert got == [[text for text, _ in r.alternatives] for r in want]
    assert 1 < len(got[0]) <= 3


# ---- bad input, limits, cancellation ---------------------------------------------------------------------

LINEAR16 = recognition_config("LINEAR16", 16000)
BAD_STREAMS = {
    "audio before config": ([audio_request(b"\0\0")], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    "second config": (
        [config_request(LINEAR16), config_request(LINEAR16)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "only be sent in the first",
    ),  # fmt: skip
    "no messages": ([], grpc.StatusCode.INVALID_ARGUMENT, "ended before its first message"),
    "no sample rate": (
        [config_request(recognition_config("LINEAR16"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs a sample rate",
    ),  # fmt: skip
    "bad sample rate": (
        [config_request(recognition_config("MULAW", 96000))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "unsupported sample rate 96000",
    ),  # fmt: skip
    "bad language": (
        [config_request(recognition_config(language_code="fr-FR"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "not supported",
    ),  # fmt: skip
    "undecodable flac": (
        [config_request(recognition_config("FLAC")), audio_request(b"RIFF" + bytes(100))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not start with a FLAC header",
    ),  # fmt: skip
    "split sample at the end": (
        [config_request(LINEAR16), audio_request(bytes(3201))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "whole frame",
    ),  # fmt: skip
    "too much audio": (
        [config_request(recognition_config("LINEAR16", 8000))]
        + [audio_request(bytes(32000))] * int(MAX_AUDIO_S / 2 + 2),
        grpc.StatusCode.OUT_OF_RANGE,
        "maximum of 20 s",
    ),  # fmt: skip
    "message too large": (
        [config_request(LINEAR16), audio_request(bytes(MAX_MESSAGE + 2))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", BAD_STREAMS)
def test_bad_input_gets_its_code_and_the_server_keeps_serving(server, case, an4_clip):
    requests, code, message = BAD_STREAMS[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub(server.channel).StreamingRecognize(iter(requests), timeout=30))
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details()
    ok = list(stub(server.channel).StreamingRecognize(
        stream_requests(recognition_config(), an4_clip.read_bytes(), piece=5000), timeout=30))  # fmt: skip
    assert finals(ok)


def test_bad_recognize_requests(server):
    recognizer_stub = stub(server.channel)
    for request, code in [
        (
            pb.RecognizeRequest(audio=pb.RecognitionAudio(content=b"nonsense bytes")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (pb.RecognizeRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.RecognizeRequest(config=recognition_config(max_alternatives=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.RecognizeRequest(config=LINEAR16, audio=pb.RecognitionAudio(content=bytes(16000 * 2 * 21))),
            grpc.StatusCode.OUT_OF_RANGE,
        ),  # fmt: skip
    ]:
        with pytest.raises(grpc.RpcError) as err:
            recognizer_stub.Recognize(request, timeout=30)
        assert err.value.code() == code, err.value.details()
    assert metric(server, 'asr_errors_total{code="INVALID_ARGUMENT",method="Recognize"}') >= 3


def test_idle_stream_times_out(server):
    start, done = time.monotonic(), threading.Event()
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub(server.channel).StreamingRecognize(
                    then_silence([config_request(LINEAR16)], done), timeout=30
                )
            )
    finally:
        done.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
    assert "idle" in err.value.details()
    assert IDLE_S <= time.monotonic() - start < IDLE_S + 10


def test_concurrency_limit_cancellation_and_deadlines_free_the_streams(server, an4_clip):
    recognizer_stub = stub(server.channel)
    held = [HeldStream(recognizer_stub) for _ in range(MAX_STREAMS)]
    try:
        assert wait_for(lambda: metric(server, "asr_active_streams") == MAX_STREAMS)
        with pytest.raises(grpc.RpcError) as err:
            list(recognizer_stub.StreamingRecognize(stream_requests(LINEAR16, bytes(3200)), timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 3 concurrent streams" in err.value.details()
        held[0].cancel()  # client cancellation frees its slot
        assert wait_for(lambda: metric(server, "asr_active_streams") == MAX_STREAMS - 1)
    finally:
        for h in held:
            h.close()
    assert wait_for(lambda: metric(server, "asr_active_streams") == 0)
    done = threading.Event()
    try:
        with pytest.raises(grpc.RpcError) as err:  # a client deadline ends the stream and frees it too
            list(
                recognizer_stub.StreamingRecognize(
                    then_silence([config_request(LINEAR16)], done), timeout=0.5
                )
            )
    finally:
        done.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle" not in err.value.details()
    assert wait_for(lambda: metric(server, "asr_active_streams") == 0)
    assert "status=CANCELLED" in server.log()
    ok = list(
        recognizer_stub.StreamingRecognize(stream_requests(recognition_config(), an4_clip.read_bytes()))
    )
    assert finals(ok)


# ---- security and shutdown ---------------------------------------------------------------------------------


def test_tls_and_bearer_token(model_path, tmp_path, an4_clip):
    cert, key = self_signed_cert(tmp_path)
    proc = ServerProcess(model_path, tmp_path / "server.log", "--tls-cert", str(cert), "--tls-key", str(key),
                         env={"ASR_AUTH_TOKEN": "s3cret"})  # fmt: skip
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    channel = grpc.secure_channel(f"localhost:{proc.port}", creds)
    try:
        proc.wait_serving(channel)  # health checks need no token
        recognizer_stub = stub(channel)
        requests = pb.RecognizeRequest(audio=pb.RecognitionAudio(content=an4_clip.read_bytes()))
        good = recognizer_stub.Recognize(requests, metadata=[("authorization", "Bearer s3cret")], timeout=30)
        assert good.results
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
            with pytest.raises(grpc.RpcError) as err:
                recognizer_stub.Recognize(requests, metadata=metadata, timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(
                    recognizer_stub.StreamingRecognize(
                        stream_requests(LINEAR16, bytes(320)), metadata=metadata
                    )
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as plain:  # no TLS: no connection
            with pytest.raises(grpc.RpcError) as err:
                stub(plain).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        assert proc.stop() == 0, proc.log()


def test_sigterm_drains_in_flight_streams_and_exits_0(model_path, tmp_path, recognizer, ps_clip):
    proc = ServerProcess(model_path, tmp_path / "server.log", "--grace-s", "20", "--metrics-port", "0")
    channel = grpc.insecure_channel(proc.address)
    try:
        proc.wait_serving(channel)
        data, rate = pcm16(ps_clip)
        go = threading.Event()

        def requests():
            yield config_request(recognition_config("LINEAR16", rate))
            half = len(data) // 2 // 2 * 2
            yield audio_request(data[:half])
            go.wait(30)  # the rest only after SIGTERM: the stream is in flight while the server drains
            yield audio_request(data[half:])

        call = stub(channel).StreamingRecognize(requests(), timeout=60)
        assert wait_for(lambda: metric(proc, "asr_active_streams") == 1)
        proc.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(channel)

        def not_serving():
            status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status
            return status == health_pb2.HealthCheckResponse.NOT_SERVING

        assert wait_for(not_serving)
        with pytest.raises(grpc.RpcError) as err:  # no new streams while draining
            list(stub(channel).StreamingRecognize(stream_requests(LINEAR16, bytes(320)), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        go.set()
        assert finals(call) == library_finals(recognizer, audio.load(ps_clip))
        assert proc.proc.wait(30) == 0
    finally:
        channel.close()
        proc.stop()
