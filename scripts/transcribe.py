"""`asr-transcribe`: transcribe many audio files, fast, locally or through asr-serve.

    asr-transcribe recordings/ -o transcripts.jsonl             # every audio file under recordings/
    asr-transcribe --manifest ../shared/data/an4 --srt subs/    # references known: WER/CER at the end
    asr-transcribe --server 127.0.0.1:50051 --jobs 8 a.wav b.flac

Local mode (the default) loads the model (--model; the bundled one by default) on --device (CUDA when there
is a GPU) and transcribes in full context, files batched by length (`asr.batch`), decoding with beam
search and the bundled word LM and lexicon (`--decoder greedy`: the argmax path, open vocabulary; `--lm`,
`--lexicon`: others).
`--mode stream` computes what a live stream gets instead (latency-controlled chunks, endpointing): exactly
what the server's Recognize returns with its default settings. Server mode (--server) sends each file as it
is to Recognize, --jobs calls in flight.

Inputs: audio files, folders (searched recursively for audio extensions), and --manifest files (JSONL with
`path` and `text`, or a `transcripts.tsv` or a folder holding one, as in ../shared/data).

Output: one JSON line per transcribed file, in input order, to --output or stdout:
{"path", "text", "words": [{"word", "start", "end", "confidence"}], "confidence", "duration"} (seconds;
confidences 0-1; a manifest's transcript is added as "reference"). --srt DIR / --vtt DIR also write
subtitles per file (DIR/<name under its folder>.srt). A file that cannot be read or transcribed is reported
on stderr (`skipped PATH: reason`) and left out; the run goes on. A summary goes to stderr at the end, with
WER and CER (`asr.evaluate.error_rates`) over the transcribed files that have a reference.

Exit status: 0 when at least one file was transcribed; 1 when every file failed or the model cannot be
loaded; 2 for bad usage or nothing to transcribe; with --server, the gRPC status number when the server
cannot be used at all (14 UNAVAILABLE, 16 UNAUTHENTICATED, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from asr import decoder_config
from scripts import client
from server.gen.asr.v1 import asr_pb2 as pb

# the asr library (and so torch) is imported once the arguments are known to be fine

PROG = "asr-transcribe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from asr.batch import MODES

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("inputs", nargs="*", metavar="PATH", help="audio files and folders")
    p.add_argument(
        "--manifest",
        action="append",
        default=[],
        metavar="FILE",
        help="JSONL or transcripts.tsv (repeatable)",
    )
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE", help="JSON lines here (default: stdout)")
    out.add_argument("--srt", metavar="DIR", help="write SubRip subtitles of every file under DIR")
    out.add_argument("--vtt", metavar="DIR", help="write WebVTT subtitles of every file under DIR")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    local = p.add_argument_group("local mode")
    local.add_argument("--model", help="checkpoint (default: the bundled models/default.pt)")
    local.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    local.add_argument("--mode", choices=MODES, help="full context (default) or as a stream")
    local.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    decoder_config.add_decoder_args(local)
    p.add_argument(
        "--jobs", type=int, default=4, help="threads reading files (local) or calls in flight (server)"
    )
    client.add_connection_args(p, server_default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="deadline of each Recognize call, s")
    args = p.parse_args(argv)
    if not args.inputs and not args.manifest:
        p.error("give audio files, folders or --manifest")
    decoding_flags = args.decoder != "beam" or args.lm or args.lexicon
    if args.server and (args.model or args.device or args.mode or decoding_flags):
        p.error("--model, --device, --mode and the decoding flags are for local mode; the server has its own")
    try:
        args.decoder_config = decoder_config.decoder_from_args(args)
    except ValueError as err:
        p.error(str(err))
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def subtitle_path(directory: str, name: str, suffix: str) -> Path:
    """DIR/<name with suffix>, with no way out of DIR."""
    parts = [part for part in Path(name).parts if part not in ("..", ".", "/")]
    return Path(directory, *parts).with_suffix(suffix)


class Run:
    """Writes outcomes as they come and keeps the figures of the summary."""

    def __init__(self, args: argparse.Namespace, out, bar):
        self.args, self.out, self.bar = args, out, bar
        self.ok = self.failed = 0
        self.audio_s = 0.0
        self.refs: list[str] = []
        self.hyps: list[str] = []

    def report(self, message: str) -> None:
        self.bar.write(f"{PROG}: {message}", file=sys.stderr)

    def outcome(self, item, outcome) -> None:
        from asr import batch

        if not isinstance(outcome, batch.Transcript):
            self.failed += 1
            message = str(outcome) or type(outcome).__name__
            self.report(f"skipped {message if message.startswith(item.path) else f'{item.path}: {message}'}")
            return
        self.ok += 1
        self.audio_s += outcome.duration
        line = outcome.to_dict(item.path)
        if item.reference is not None:
            line["reference"] = item.reference
            self.refs.append(item.reference)
            self.hyps.append(outcome.text)
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()
        for directory, suffix, fmt in (
            (self.args.srt, ".srt", batch.srt),
            (self.args.vtt, ".vtt", batch.vtt),
        ):
            if directory:
                path = subtitle_path(directory, item.name, suffix)
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(fmt(batch.cues(outcome.words)), encoding="utf-8")
                except OSError as err:
                    self.report(f"cannot write {path}: {err.strerror}")

    def summary(self, elapsed: float) -> None:
        from asr.evaluate import error_rates

        total = self.ok + self.failed
        speed = f", {self.audio_s / elapsed:.1f}x real time" if elapsed > 0 and self.audio_s else ""
        failed = f" ({self.failed} skipped)" if self.failed else ""
        print(
            f"{PROG}: transcribed {self.ok} of {total} files{failed}: {self.audio_s:.1f} s of audio in "
            f"{elapsed:.1f} s{speed}",
            file=sys.stderr,
        )
        if any(r.strip() for r in self.refs):
            wer, cer = error_rates(self.refs, self.hyps)
            print(
                f"{PROG}: WER {100 * wer:.2f}% CER {100 * cer:.2f}% "
                f"over {len(self.refs)} files with references",
                file=sys.stderr,
            )


def transcript_of(response: pb.RecognizeResponse):
    """A Recognize response -> the file's Transcript (its utterances' finals joined)."""
    from asr.batch import Transcript
    from asr.streaming import Word

    def s(d) -> float:
        return d.ToNanoseconds() / 1e9

    alternatives = [r.alternatives[0] for r in response.results if r.alternatives]
    words = [
        Word(w.word, s(w.start_time), s(w.end_time), w.confidence) for a in alternatives for w in a.words
    ]
    text = " ".join(a.transcript for a in alternatives if a.transcript)
    return Transcript(text, words, s(response.audio_duration))


def run_server(args: argparse.Namespace, items, run: Run) -> int | None:
    """Recognize calls, --jobs in flight, outcomes in order; a status number if the server is unusable."""
    try:
        channel = client.open_channel(args)
    except OSError as err:
        print(f"{PROG}: cannot read {args.ca_cert}: {err.strerror}", file=sys.stderr)
        return 1
    metadata = client.call_metadata(args)
    config = pb.RecognitionConfig(enable_word_time_offsets=True, enable_word_confidence=True)
    with channel:
        recognizer = client.stub(channel)
        try:
            if args.wait:
                client.wait_serving(channel, args.wait)
            recognizer.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=30)
        except TimeoutError as err:
            print(f"{PROG}: {args.server}: {err}", file=sys.stderr)
            return grpc.StatusCode.UNAVAILABLE.value[0]
        except grpc.RpcError as err:
            print(f"{PROG}: {args.server}: {client.describe(err)}", file=sys.stderr)
            return client.exit_status(err)

        def recognize(item):
            try:
                with open(item.path, "rb") as f:
                    data = f.read()
            except OSError as err:
                return OSError(f"cannot read {item.path}: {err.strerror}")
            request = pb.RecognizeRequest(config=config, audio=pb.RecognitionAudio(content=data))
            try:
                return transcript_of(recognizer.Recognize(request, metadata=metadata, timeout=args.timeout))
            except grpc.RpcError as err:
                return RuntimeError(client.describe(err))

        with ThreadPoolExecutor(args.jobs, thread_name_prefix="recognize") as pool:
            futures = [pool.submit(recognize, item) for item in items]
            for future in futures:
                future.add_done_callback(lambda _: run.bar.update())
            for item, future in zip(items, futures, strict=True):
                run.outcome(item, future.result())
    return None


def run_local(args: argparse.Namespace, items, run: Run) -> int | None:
    import torch

    from asr import batch, checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        transcriber = batch.BatchTranscriber.load(
            args.model or checkpoint.DEFAULT_MODEL, device, args.mode or "full", args.decoder_config
        )
    except (checkpoint.CheckpointError, RuntimeError) as err:
        print(f"{PROG}: cannot load the model: {err}", file=sys.stderr)
        return 1
    for item, outcome in batch.transcribe_items(transcriber, items, args.jobs):
        run.outcome(item, outcome)
        run.bar.update()
    return None


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from asr import batch

    args = parse_args(argv)
    items = batch.find_audio(args.inputs)
    for manifest in args.manifest:
        try:
            items += batch.read_list(manifest)
        except ValueError as err:  # ManifestError
            print(f"{PROG}: {err}", file=sys.stderr)
            return 2
    if not items:
        print(f"{PROG}: no audio files found in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    try:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    except OSError as err:
        print(f"{PROG}: cannot write {args.output}: {err.strerror}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        with tqdm(
            total=len(items), unit="file", disable=True if args.quiet else None, file=sys.stderr
        ) as bar:
            run = Run(args, out, bar)
            status = (run_server if args.server else run_local)(args, items, run)
    finally:
        if out is not sys.stdout:
            out.close()
    if status is not None:
        return status
    run.summary(time.perf_counter() - start)
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
