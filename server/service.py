"""The Recognizer servicer: per-call sessions over the shared engine, limits, status codes, metrics, logs.

Each StreamingRecognize call holds one handler thread (gRPC's pool) and one reader thread of its own. The
reader pulls requests off the wire into a small bounded queue (so a client that sends faster than we
recognise is slowed down by flow control); the handler takes them with the idle timeout, decodes audio
incrementally (`asr.audio_stream`), hands samples to the engine's batch scheduler and yields results.
Whatever way a call ends (completion, error, client cancellation, deadline), `Call.close` runs once: the
session leaves the scheduler, the stream slot is freed, metrics and one log line are written.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from asr import audio
from asr.audio import AudioError
from asr.audio_stream import StreamDecoder
from asr.text import TOKENS
from server import convert
from server.convert import BadRequest, CallOptions, ServerSettings
from server.engine import Engine
from server.gen.asr.v1 import asr_pb2 as pb
from server.gen.asr.v1 import asr_pb2_grpc
from server.metrics import Metrics

log = logging.getLogger("asr.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recognizer"].full_name  # "asr.v1.Recognizer"
END = object()  # the client half-closed the request stream
CLOSED_POLL_S = 0.1  # how often a handler waiting for requests checks whether its call was cancelled
QUEUE_MESSAGES = 32  # requests read ahead of recognition, per stream


@dataclass(frozen=True)
class Limits:
    max_streams: int = 16  # concurrent recognition calls (streaming and unary); more: RESOURCE_EXHAUSTED
    max_audio_s: float = 300.0  # audio per call; more: OUT_OF_RANGE
    idle_timeout_s: float = 10.0  # longest wait for the next request of a stream; longer: DEADLINE_EXCEEDED
    max_message_bytes: int = 10 << 20  # largest request message; larger: RESOURCE_EXHAUSTED (gRPC's check)

    @property
    def max_buffered_bytes(self) -> int:
        """Largest FLAC/OGG stream we buffer: max_audio_s of 48 kHz stereo 16-bit, uncompressed."""
        return int(self.max_audio_s * 48000 * 2 * 2)


class Failure(Exception):
    """Ends a call with `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Call:
    """Book-keeping of one recognition call; `close` runs once however the call ends."""

    def __init__(self, servicer: RecognizerServicer, method: str, context: grpc.ServicerContext):
        self.servicer, self.method, self.context = servicer, method, context
        self.id = f"{method[0].lower()}{next(servicer._ids)}"
        self.peer = context.peer()
        self.start = time.monotonic()
        self.code = grpc.StatusCode.OK
        self.message = ""
        self.audio_s = 0.0  # audio received (at 16 kHz after decoding)
        self.busy_s = 0.0  # time spent decoding audio and recognising
        self.results = 0  # results sent
        self.session = None
        self.closed = threading.Event()
        self._lock = threading.Lock()

    def fail(self, code: grpc.StatusCode, message: str) -> None:
        if self.code is grpc.StatusCode.OK:
            self.code, self.message = code, message

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        if self.code is grpc.StatusCode.OK and not self.context.is_active():
            self.code = grpc.StatusCode.CANCELLED  # the client cancelled or its deadline passed
            self.message = "cancelled by the client or its deadline passed"
        self.servicer._release(self)


class RecognizerServicer(asr_pb2_grpc.RecognizerServicer):
    def __init__(self, settings: ServerSettings, limits: Limits, metrics: Metrics):
        self.settings = settings
        self.limits = limits
        self.metrics = metrics
        self.engine: Engine | None = None  # set once the model has loaded
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._active = 0
        self._draining = False

    # ---- lifecycle -----------------------------------------------------------------------------------
    def ready(self, engine: Engine) -> None:
        self.engine = engine

    def drain(self) -> None:
        """Refuse new calls (UNAVAILABLE); calls in progress go on."""
        with self._lock:
            self._draining = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in progress; False if some still are after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    @property
    def active(self) -> int:
        return self._active

    def _open(self, method: str, context: grpc.ServicerContext) -> Call:
        """Admit a call (or end it with UNAVAILABLE / RESOURCE_EXHAUSTED)."""
        call = Call(self, method, context)
        with self._lock:
            if self.engine is None:
                failure = Failure(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
            elif self._draining:
                failure = Failure(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            elif self._active >= self.limits.max_streams:
                failure = Failure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is at its limit of {self.limits.max_streams} concurrent streams",
                )
            else:
                failure = None
                self._active += 1
                self.metrics.active_streams.inc()
        if failure is not None:
            self._count(method, failure.code)
            log.info(
                "%s %s peer=%s refused: %s: %s",
                call.id,
                method,
                call.peer,
                failure.code.name,
                failure.message,
            )
            context.abort(failure.code, failure.message)
        if not context.add_callback(call.close):  # the call already ended (the client cancelled)
            call.close()
            context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
        return call

    def _release(self, call: Call) -> None:
        if call.session is not None and self.engine is not None:
            self.engine.close(call.session)
        with self._lock:
            self._active -= 1
            self.metrics.active_streams.dec()
            self._lock.notify_all()
        self._count(call.method, call.code)
        self.metrics.audio_seconds.labels(call.method).inc(call.audio_s)
        rtf = call.busy_s / call.audio_s if call.audio_s > 0 else 0.0
        if call.audio_s > 0:
            self.metrics.rtf.labels(call.method).observe(rtf)
        status = call.code.name + (f" ({call.message})" if call.message else "")
        log.info(
            "%s %s peer=%s audio=%.2fs wall=%.2fs rtf=%.3f results=%d status=%s",
            call.id, call.method, call.peer, call.audio_s, time.monotonic() - call.start, rtf, call.results,
            status,
        )  # fmt: skip

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.metrics.streams.labels(method, code.name).inc()
        if code is not grpc.StatusCode.OK:
            self.metrics.errors.labels(method, code.name).inc()

    def _run(self, call: Call, body: Iterator):
        """Run a handler body; turn Failure, AudioError and surprises into the call's status."""
        try:
            yield from body
        except Failure as f:
            call.fail(f.code, f.message)
        except AudioError as err:
            call.fail(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except BadRequest as err:
            call.fail(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception:
            if call.context.is_active():
                log.exception("%s failed", call.id)
                call.fail(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            if call.session is not None:  # again here: only this thread submits audio for the session
                self.engine.close(call.session)
            if call.code is not grpc.StatusCode.OK and call.context.is_active():
                call.close()
                call.context.abort(call.code, call.message)
            call.close()

    # ---- StreamingRecognize --------------------------------------------------------------------------
    def StreamingRecognize(self, request_iterator, context):
        call = self._open("StreamingRecognize", context)
        context.send_initial_metadata((("x-asr-stream-id", call.id),))
        yield from self._run(call, self._stream(call, request_iterator))

    def _reader(self, call: Call, requests, q: queue.Queue) -> None:
        """Requests off the wire into `q`, then END (half-close) or the exception that ended them."""
        try:
            for request in requests:
                if not self._put(call, q, request):
                    return
            item = END
        except Exception as err:  # grpc.RpcError when the call was cancelled or its deadline passed
            item = err
        self._put(call, q, item)

    @staticmethod
    def _put(call: Call, q: queue.Queue, item) -> bool:
        """Put, waiting while the queue is full; False once the call is over."""
        while not call.closed.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _next(self, call: Call, q: queue.Queue):
        """The next request; waits in short steps so a cancelled call frees its thread at once."""
        deadline = time.monotonic() + self.limits.idle_timeout_s
        while True:
            if call.closed.is_set():  # cancelled: the reader may never get to queue the error
                raise Failure(grpc.StatusCode.CANCELLED, "the call was cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no request for {self.limits.idle_timeout_s:g} s: the stream was idle too long",
                )
            try:
                item = q.get(timeout=min(CLOSED_POLL_S, left))
                break
            except queue.Empty:
                continue
        if isinstance(item, BaseException):
            raise Failure(grpc.StatusCode.CANCELLED, "the request stream failed or was cancelled")
        return item

    def _stream(self, call: Call, requests) -> Iterator[pb.StreamingRecognizeResponse]:
        engine = self.engine
        q: queue.Queue = queue.Queue(QUEUE_MESSAGES)
        threading.Thread(
            target=self._reader, args=(call, requests, q), name=f"read-{call.id}", daemon=True
        ).start()

        first = self._next(call, q)
        if first is END:
            raise BadRequest("the stream ended before its first message (streaming_config)")
        if first.WhichOneof("streaming_request") != "streaming_config":
            raise BadRequest("the first message must carry streaming_config, not audio_content")
        sc = first.streaming_config
        options, config = convert.session_config(
            sc.config, self.settings, sc.interim_results, sc.single_utterance
        )
        decoder = StreamDecoder(options.encoding, options.sample_rate, options.channels)
        call.session = engine.session(config)
        tracker = LatencyTracker(engine.sample_rate)

        while True:
            request = self._next(call, q)
            if request is END:
                break
            kind = request.WhichOneof("streaming_request")
            if kind == "streaming_config":
                raise BadRequest("streaming_config may only be sent in the first message")
            if kind is None:
                continue
            t0 = time.perf_counter()
            samples = decoder.feed(request.audio_content)
            self._check_length(call, decoder, samples)
            tracker.arrived(samples.size)
            results = engine.accept(call.session, samples) if samples.size else []
            call.busy_s += time.perf_counter() - t0
            yield from self._respond(call, options, results, tracker)
            if call.session.done:
                return

        t0 = time.perf_counter()
        samples = decoder.finish()
        self._check_length(call, decoder, samples)
        tracker.arrived(samples.size)
        results = engine.accept(call.session, samples) if samples.size else []
        more = engine.finish(call.session)
        call.busy_s += time.perf_counter() - t0
        yield from self._respond(call, options, results + more, tracker)

    def _check_length(self, call: Call, decoder: StreamDecoder, samples: np.ndarray) -> None:
        call.audio_s += samples.size / audio.SAMPLE_RATE
        limit = self.limits.max_audio_s
        if call.audio_s > limit or decoder.buffered_bytes > self.limits.max_buffered_bytes:
            raise Failure(
                grpc.StatusCode.OUT_OF_RANGE, f"the stream exceeds the maximum of {limit:g} s of audio"
            )

    def _respond(self, call: Call, options: CallOptions, results, tracker: LatencyTracker):
        """Results of one step -> one response (and END_OF_SINGLE_UTTERANCE before the final result)."""
        if not results:
            return
        now = time.monotonic()
        for r in results:
            (self.metrics.final_latency if r.is_final else self.metrics.partial_latency).observe(
                tracker.latency(r.end_s, now)
            )
        call.results += len(results)
        if call.session.config.single_utterance and call.session.done:
            yield pb.StreamingRecognizeResponse(
                speech_event_type=pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE
            )
        yield pb.StreamingRecognizeResponse(results=[convert.streaming_result(r, options) for r in results])

    # ---- Recognize -----------------------------------------------------------------------------------
    def Recognize(self, request, context):
        call = self._open("Recognize", context)
        responses = list(self._run(call, self._recognize(call, request)))
        return responses[0] if responses else pb.RecognizeResponse()  # none: the client has gone

    def _recognize(self, call: Call, request) -> Iterator[pb.RecognizeResponse]:
        engine = self.engine
        options, config = convert.session_config(request.config, self.settings)
        t0 = time.perf_counter()
        samples = audio.decode(request.audio.content, options.encoding, options.sample_rate, options.channels)
        call.audio_s = samples.size / audio.SAMPLE_RATE
        if call.audio_s > self.limits.max_audio_s:
            raise Failure(
                grpc.StatusCode.OUT_OF_RANGE,
                f"the audio is {call.audio_s:.1f} s long, over the maximum of {self.limits.max_audio_s:g} s",
            )
        call.session = engine.session(config)
        results = engine.accept(call.session, samples)
        more = engine.finish(call.session)
        call.busy_s = time.perf_counter() - t0
        finals = [r for r in results + more if r.is_final]
        call.results = len(finals)
        response = pb.RecognizeResponse(results=[convert.recognition_result(r, options) for r in finals])
        response.audio_duration.CopyFrom(convert.duration(call.audio_s))
        yield response

    # ---- GetModelInfo --------------------------------------------------------------------------------
    def GetModelInfo(self, request, context):
        engine = self.engine
        if engine is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")
        info = pb.ModelInfo(
            sample_rate_hertz=engine.sample_rate,
            tokens=list(TOKENS),
            model_version=engine.version,
            num_parameters=engine.num_parameters(),
            model_config=engine.model_config(),
            supported_encodings=list(convert.ENCODINGS),
            max_concurrent_streams=self.limits.max_streams,
            max_message_bytes=self.limits.max_message_bytes,
            language_code="en-US",
        )
        info.algorithmic_latency.CopyFrom(
            convert.duration(engine.algorithmic_latency_s(self.settings.stream))
        )
        info.max_stream_audio.CopyFrom(convert.duration(self.limits.max_audio_s))
        return info


class LatencyTracker:
    """When each stretch of a stream's audio arrived, to time results from the audio they cover."""

    KEEP_S = 60.0  # arrivals kept: results never end further back than this

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.samples = 0
        self._ends: list[float] = []  # stream position (s) after each piece of audio
        self._times: list[float] = []  # when that piece arrived (time.monotonic)

    def arrived(self, n: int) -> None:
        if not n:
            return
        self.samples += n
        self._ends.append(self.samples / self.sample_rate)
        self._times.append(time.monotonic())
        if len(self._ends) > 64 and self._ends[0] < self._ends[-1] - self.KEEP_S:
            cut = bisect.bisect_left(self._ends, self._ends[-1] - self.KEEP_S)
            del self._ends[:cut], self._times[:cut]

    def latency(self, end_s: float, now: float) -> float:
        """Seconds since the audio up to `end_s` had all arrived (since the last piece, past the end)."""
        if not self._ends:
            return 0.0
        i = min(bisect.bisect_left(self._ends, end_s - 1e-6), len(self._ends) - 1)
        return now - self._times[i]
