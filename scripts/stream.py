"""`asr-stream`: stream audio to asr-serve and show the transcript as it is recognised.

    asr-stream recording.flac                      # real time; partials live on one line in a terminal
    asr-stream --rate 0 --json a.wav b.flac        # as fast as possible; every response as a JSON line
    arecord -q -f S16_LE -r 16000 -t raw | asr-stream --encoding linear16 --sample-rate 16000 -
    asr-stream --mic                               # the default microphone; Ctrl-C ends the stream

Audio. Files in any format asr reads (WAV, FLAC, OGG, MP3; headerless LINEAR16 or MULAW with --encoding and
--sample-rate) are decoded here with `asr.audio` and sent as LINEAR16 at 16 kHz in pieces of --chunk-ms,
paced at --rate times real time (--rate 0: as fast as the server takes them). Standard input (`-`) is
decoded as it arrives (`asr.audio_stream`: raw and WAV bytes at once, FLAC/OGG at the end) and sent the
same way, so a live pipe streams live. --mic records 16 kHz mono from the default input device (needs the
optional `sounddevice` package and the PortAudio library). Decoding here means every input reaches the
server in the one encoding it streams with the least delay, and a bad file fails before any call is made.

Output. Each final result on its own line. Interim results (--interim; on by default when stdout is a
terminal) update one line in place on a terminal (the part likely to change is dimmed) and are printed as
`partial: TEXT` lines otherwise. --words adds a line per word (start, end, confidence) under each final.
--json prints every response as one JSON line instead (protobuf's JSON mapping). With several inputs, each
is a call of its own, announced by a `==> NAME <==` line.

Ctrl-C stops sending: the server returns the finals of the audio sent so far; a second Ctrl-C cancels.

Exit status: 0; 1 when local input fails (unreadable audio, no microphone); 2 for bad usage; when a call
fails, the gRPC status code's number (3 INVALID_ARGUMENT, 14 UNAVAILABLE, 16 UNAUTHENTICATED, ...) with
`CODE: message` on stderr; 130 when cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from scripts import client
from server.gen.asr.v1 import asr_pb2 as pb

# asr.audio (and so torch) is imported where audio is decoded: --help and --mic start without it

SAMPLE_RATE = 16000  # what we send (LINEAR16)
STDIN_READ = 8192  # bytes read from stdin at a time (at most)
CLEAR_LINE = "\r\x1b[K"  # back to the start of the line, erase it
DIM, RESET = "\x1b[2m", "\x1b[0m"

PROG = "asr-stream"


class InputError(Exception):
    """Local input that cannot be streamed (exit status 1)."""


# --------------------------------------------------------------------------------------------- sources


def pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> LINEAR16 bytes, as `asr.audio.to_pcm16` (that one imports torch at start)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def rechunk(blocks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Sample blocks of any sizes -> blocks of exactly `size` samples (the last may be shorter)."""
    buf = np.zeros(0, np.float32)
    for block in blocks:
        buf = np.concatenate([buf, block]) if buf.size else block
        while buf.size >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf.size:
        yield buf


class Source:
    """Audio to stream: `blocks()` yields mono float32 at 16 kHz; `live` sources are not paced."""

    live = False

    def __init__(self, name: str):
        self.name = name

    def open(self) -> None:
        """Check the input before the call (raises InputError)."""

    def blocks(self, stop: threading.Event) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileSource(Source):
    def __init__(self, path: str, encoding: str, sample_rate: int | None, channels: int):
        super().__init__(path)
        self.args = (encoding, sample_rate, channels)
        self.samples: np.ndarray | None = None

    def open(self) -> None:
        from asr import audio

        try:
            self.samples = audio.load(self.name, *self.args)
        except audio.AudioError as err:
            raise InputError(str(err)) from None

    def blocks(self, stop: threading.Event) -> Iterator[np.ndarray]:
        yield self.samples


class StdinSource(Source):
    def __init__(self, encoding: str, sample_rate: int | None, channels: int, stream=None):
        super().__init__("-")
        self.args = (encoding, sample_rate, channels)
        self.stream = stream

    def open(self) -> None:
        from asr.audio import AudioError
        from asr.audio_stream import StreamDecoder

        try:
            self.decoder = StreamDecoder(*self.args)
        except AudioError as err:
            raise InputError(f"stdin: {err}") from None
        if self.stream is None:
            self.stream = sys.stdin.buffer

    def blocks(self, stop: threading.Event) -> Iterator[np.ndarray]:
        from asr.audio import AudioError

        read = getattr(self.stream, "read1", self.stream.read)
        total = 0
        try:
            while not stop.is_set():
                data = read(STDIN_READ)
                if not data:
                    break
                samples = self.decoder.feed(data)
                total += samples.size
                if samples.size:
                    yield samples
            if not stop.is_set():
                samples = self.decoder.finish()
                total += samples.size
                if samples.size:
                    yield samples
        except AudioError as err:
            raise InputError(f"stdin: {err}") from None
        if not total and not stop.is_set():
            raise InputError("stdin: no audio")


class MicSource(Source):
    """The default input device at 16 kHz mono, through sounddevice (PortAudio)."""

    live = True

    def __init__(self, chunk: int, device: str | None = None):
        super().__init__("microphone")
        self.chunk = chunk
        self.device = int(device) if device and device.isdigit() else device
        self.queue: queue.Queue = queue.Queue()
        self.stream = None

    def open(self) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as err:  # OSError: the package is there but PortAudio is not
            raise InputError(
                f"--mic needs the optional sounddevice package and the PortAudio library ({err}); "
                "install them (pip install sounddevice; apt-get install libportaudio2) or stream a file"
            ) from None
        try:
            sd.check_input_settings(self.device, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
            self.stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                blocksize=self.chunk,
                device=self.device,
                channels=1,
                dtype="float32",
                callback=lambda data, frames, t, status: self.queue.put(data[:, 0].copy()),
            )
            self.stream.start()
        except Exception as err:  # sounddevice.PortAudioError, ValueError: no (such) input device
            raise InputError(f"no usable microphone: {err}") from None

    def blocks(self, stop: threading.Event) -> Iterator[np.ndarray]:
        while not stop.is_set():
            try:
                yield self.queue.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None


# --------------------------------------------------------------------------------------------- requests


class Requests:
    """The request stream of one call: the config, then paced LINEAR16 pieces until the source ends or
    `stop` is set. Runs on a gRPC thread; a failure of the source is kept in `error`."""

    def __init__(self, config: pb.StreamingRecognitionConfig, source: Source, chunk: int, rate: float):
        self.config, self.source, self.chunk, self.rate = config, source, chunk, rate
        self.stop = threading.Event()
        self.error: InputError | None = None

    def __iter__(self) -> Iterator[pb.StreamingRecognizeRequest]:
        yield pb.StreamingRecognizeRequest(streaming_config=self.config)
        start = time.monotonic()
        sent = 0
        try:
            for piece in rechunk(self.source.blocks(self.stop), self.chunk):
                sent += piece.size
                if self.rate > 0 and not self.source.live:  # as a live source would: once it is complete
                    delay = start + sent / SAMPLE_RATE / self.rate - time.monotonic()
                    if delay > 0 and self.stop.wait(delay):
                        return
                if self.stop.is_set():
                    return
                yield pb.StreamingRecognizeRequest(audio_content=pcm16(piece))
        except InputError as err:
            self.error = err
        except Exception as err:  # never let a surprise cancel the call silently
            self.error = InputError(f"{self.source.name}: {type(err).__name__}: {err}")


def streaming_config(args: argparse.Namespace) -> pb.StreamingRecognitionConfig:
    config = pb.RecognitionConfig(
        encoding=pb.RecognitionConfig.LINEAR16,
        sample_rate_hertz=SAMPLE_RATE,
        enable_word_time_offsets=args.words,
        enable_word_confidence=args.words,
        language_code=args.language,
    )
    if args.phrase:
        config.speech_contexts.add(phrases=args.phrase, boost=args.boost)
    return pb.StreamingRecognitionConfig(
        config=config, interim_results=args.interim, single_utterance=args.single_utterance
    )


# --------------------------------------------------------------------------------------------- display


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


class Display:
    """Responses -> text on `out`: finals on their own lines; partials in place on a terminal, as
    `partial: TEXT` lines otherwise; or every response as a JSON line."""

    def __init__(self, out: TextIO, tty: bool, words: bool = False, as_json: bool = False):
        self.out, self.tty, self.words, self.as_json = out, tty, words, as_json
        self.showing = False  # a partial is on the current terminal line

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def response(self, response: pb.StreamingRecognizeResponse) -> None:
        if self.as_json:
            self.write(json.dumps(MessageToDict(response)) + "\n")
            return
        for result in response.results:
            if not result.alternatives:
                continue
            if result.is_final:
                self.final(result.alternatives[0])
            else:
                self.partial(result.alternatives[0].transcript, result.stability)

    def partial(self, text: str, stability: float) -> None:
        if not self.tty:
            self.write(f"partial: {text}\n")
            return
        unstable = len(text) - round(stability * len(text))  # the tail likely to change
        width = max(10, shutil.get_terminal_size().columns - 1)
        if len(text) > width:  # one line only, or \r cannot take us back: show the end
            text = "…" + text[len(text) - width + 1 :]
            unstable = min(unstable, len(text))
        cut = len(text) - unstable
        self.write(f"{CLEAR_LINE}{text[:cut]}{DIM}{text[cut:]}{RESET}" if unstable else CLEAR_LINE + text)
        self.showing = True

    def final(self, alternative: pb.SpeechRecognitionAlternative) -> None:
        lines = [alternative.transcript]
        if self.words:
            for w in alternative.words:
                start, end = _seconds(w.start_time), _seconds(w.end_time)
                lines.append(f"  {start:7.2f} {end:7.2f}  {w.confidence:.2f}  {w.word}")
        self.write((CLEAR_LINE if self.showing else "") + "\n".join(lines) + "\n")
        self.showing = False

    def header(self, name: str) -> None:
        if not self.as_json:
            self.write(f"==> {name} <==\n")

    def close(self) -> None:
        """End of a call: keep a partial that no final replaced on its line."""
        if self.showing:
            self.write("\n")
            self.showing = False


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Exit status: 0; 1 local input failed; 2 usage; else the failed call's gRPC status number.",
    )
    p.add_argument("inputs", nargs="*", metavar="AUDIO", help="audio files; '-' reads standard input")
    p.add_argument("--mic", action="store_true", help="stream the microphone (needs sounddevice)")
    p.add_argument("--mic-device", metavar="ID", help="input device index or name (default: the system's)")
    fmt = p.add_argument_group("input format (headerless audio)")
    fmt.add_argument(
        "--encoding",
        default="auto",
        type=str.upper,
        choices=("AUTO", "LINEAR16", "MULAW", "WAV", "FLAC", "OGG"),
        help="how the input is encoded (default: a container read from its header)",
    )
    fmt.add_argument("--sample-rate", type=int, help="Hz of headerless LINEAR16/MULAW input")
    fmt.add_argument("--channels", type=int, default=1, help="interleaved channels of headerless input")
    send = p.add_argument_group("sending")
    send.add_argument("--rate", type=float, default=1.0, help="times real time (default 1; 0: no pacing)")
    send.add_argument("--chunk-ms", type=int, default=100, help="audio per message in ms (default 100)")
    rec = p.add_argument_group("recognition")
    rec.add_argument(
        "--interim",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask for interim results (default: when stdout is a terminal, or with --json)",
    )
    rec.add_argument("--single-utterance", action="store_true", help="stop after the first utterance")
    rec.add_argument(
        "--phrase", action="append", default=[], metavar="TEXT", help="a phrase to favour (repeatable)"
    )
    rec.add_argument(
        "--boost", type=float, default=0.0, help="per-letter bonus of the phrases, 0-20 (0: server default)"
    )
    rec.add_argument("--words", action="store_true", help="word timings and confidences")
    rec.add_argument("--language", default="", help="BCP-47 language code (the model knows en-US)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="every response as a JSON line")
    out.add_argument("--timeout", type=float, help="deadline of each call in seconds (default: none)")
    client.add_connection_args(p)
    args = p.parse_args(argv)
    if not args.inputs and not args.mic:
        p.error("give audio files, '-' for standard input, or --mic")
    if args.mic and args.inputs:
        p.error("--mic streams the microphone alone; give no files with it")
    if args.inputs.count("-") > 1:
        p.error("standard input ('-') can be read only once")
    if args.rate < 0 or args.chunk_ms < 1 or args.channels < 1:
        p.error("--rate must be at least 0, --chunk-ms and --channels at least 1")
    if args.interim is None:
        args.interim = args.json or sys.stdout.isatty()
    return args


def sources(args: argparse.Namespace, chunk: int, stdin=None) -> list[Source]:
    if args.mic:
        return [MicSource(chunk, args.mic_device)]
    fmt = (args.encoding, args.sample_rate, args.channels)
    return [
        StdinSource(*fmt, stream=stdin) if name == "-" else FileSource(name, *fmt) for name in args.inputs
    ]


def stream_one(
    recognizer, args: argparse.Namespace, source: Source, display: Display, on_interrupt: Callable
) -> int:
    """One call: stream `source`, show the responses; returns the exit status."""
    requests = Requests(streaming_config(args), source, SAMPLE_RATE * args.chunk_ms // 1000, args.rate)
    call = recognizer.StreamingRecognize(
        iter(requests), metadata=client.call_metadata(args), timeout=args.timeout
    )
    on_interrupt(requests.stop, call)
    try:
        for response in call:
            display.response(response)
            if response.speech_event_type == pb.StreamingRecognizeResponse.END_OF_SINGLE_UTTERANCE:
                requests.stop.set()  # the server ignores further audio: stop sending it
    except grpc.RpcError as err:
        display.close()
        if err.code() is grpc.StatusCode.CANCELLED and requests.stop.is_set():
            print(f"{PROG}: cancelled", file=sys.stderr)
            return 130
        if requests.error is not None:  # the call ended because our input failed
            print(f"{PROG}: {requests.error}", file=sys.stderr)
            return 1
        print(f"{PROG}: {client.describe(err)}", file=sys.stderr)
        return client.exit_status(err)
    finally:
        on_interrupt(None, None)
        source.close()
    display.close()
    if requests.error is not None:
        print(f"{PROG}: {requests.error}", file=sys.stderr)
        return 1
    return 0


class Interrupts:
    """SIGINT: the first stops sending (the server returns the finals of what it got), the second cancels."""

    def __init__(self) -> None:
        self.stop: threading.Event | None = None
        self.call = None
        self.previous = None

    def watch(self, stop: threading.Event | None, call) -> None:
        """The call a SIGINT acts on (None: between calls, SIGINT raises KeyboardInterrupt)."""
        self.stop, self.call = stop, call

    def _handle(self, signum, frame) -> None:
        if self.stop is None:
            raise KeyboardInterrupt
        if self.stop.is_set():
            self.call.cancel()
        else:
            print(f"\n{PROG}: stopping; Ctrl-C again cancels", file=sys.stderr)
            self.stop.set()

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def main(argv: list[str] | None = None, stdin=None) -> int:
    args = parse_args(argv)
    try:
        return run(args, stdin)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace, stdin=None) -> int:
    chunk = SAMPLE_RATE * args.chunk_ms // 1000
    display = Display(sys.stdout, sys.stdout.isatty(), args.words, args.json)
    try:
        channel = client.open_channel(args)
    except OSError as err:
        print(f"{PROG}: cannot read {args.ca_cert}: {err.strerror}", file=sys.stderr)
        return 1
    with channel, Interrupts() as interrupts:
        if args.wait:
            try:
                client.wait_serving(channel, args.wait)
            except TimeoutError as err:
                print(f"{PROG}: {args.server}: {err}", file=sys.stderr)
                return grpc.StatusCode.UNAVAILABLE.value[0]
        recognizer = client.stub(channel)
        todo = sources(args, chunk, stdin)
        for source in todo:
            try:
                source.open()
            except InputError as err:
                print(f"{PROG}: {err}", file=sys.stderr)
                return 1
            if len(todo) > 1:
                display.header(source.name)
            status = stream_one(recognizer, args, source, display, interrupts.watch)
            if status:
                return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
