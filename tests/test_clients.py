"""The clients: asr-stream (scripts/stream.py) against a real server, asr-transcribe (scripts/transcribe.py)
locally and through the server, subtitles, and `make demo` (scripts/demo.sh).

As in tests/test_server.py a random 'tiny' model stands in for the bundled one: its transcripts are
gibberish, but the clients must print exactly what the library gives on the same model and audio.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
from server_helpers import ROOT, ServerProcess, self_signed_cert

from asr import audio, batch, checkpoint, features, text
from asr.decoding import DecoderConfig
from asr.evaluate import text_decoder, transcribe_full
from asr.streaming import Recognizer, StreamingConfig, Word
from scripts import stream, transcribe
from server.gen.asr.v1 import asr_pb2 as pb

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLE = ROOT / "samples" / "goforward.flac"


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    proc = ServerProcess(model_path, tmp_path_factory.mktemp("log") / "server.log")
    try:
        import grpc

        with grpc.insecure_channel(proc.address) as channel:
            proc.wait_serving(channel)
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def clips(data_dir) -> list[Path]:
    """Four pocketsphinx clips (1-6 s) with their references."""
    folder = data_dir / "pocketsphinx" / "audio"
    names = ["goforward", "cards_001", "sense_and_sensibility_01_austen_64kb-0880", "cards_002"]
    return [folder / f"{n}.flac" for n in names]


@pytest.fixture(scope="module")
def references(data_dir) -> dict[str, str]:
    items = batch.read_list(data_dir / "pocketsphinx")
    return {Path(i.path).name: i.reference for i in items}


def library_finals(
    recognizer: Recognizer, path: Path, config: StreamingConfig = StreamingConfig()
) -> list[str]:
    return [r.text for r in recognizer.recognize(audio.load(path), config)]


def run(main, argv, capsys, **kwargs) -> tuple[int, str, str]:
    code = main([str(a) for a in argv], **kwargs)
    out, err = capsys.readouterr()
    return code, out, err


# ---- asr-stream --------------------------------------------------------------------------------------------


def test_stream_prints_the_library_finals(server, recognizer, clips, capsys):
    clip = clips[2]  # 3 s, one sentence
    code, out, err = run(stream.main, ["--server", server.address, "--rate", "0", clip], capsys)
    assert code == 0, err
    want = library_finals(recognizer, clip)
    assert want and out.splitlines() == want  # not a terminal, no interim results asked for: finals only

    start = time.monotonic()
    argv = ["--server", server.address, "--rate", "5", "--chunk-ms", "50", "--json", "--words", clip]
    code, out, err = run(stream.main, argv, capsys)
    assert code == 0, err
    assert time.monotonic() - start >= sf.info(clip).duration / 5 - 0.05, "paced at 5x real time"
    responses = [json.loads(line) for line in out.splitlines()]
    results = [r for resp in responses for r in resp.get("results", [])]
    partials = [r for r in results if not r.get("isFinal")]
    finals = [r for r in results if r.get("isFinal")]
    assert partials, "--json asks for interim results"
    assert [r["alternatives"][0]["transcript"] for r in finals] == want
    words = [w for r in finals for w in r["alternatives"][0]["words"]]
    assert [w["word"] for w in words] == " ".join(want).split()
    assert all(0 <= float(w["startTime"].rstrip("s")) <= float(w["endTime"].rstrip("s")) for w in words)


def test_stream_stdin_and_plain_partials(server, recognizer, clips, capsys):
    clip = clips[0]
    samples, rate = sf.read(clip, dtype="int16")
    wav = io.BytesIO()
    sf.write(wav, samples, rate, subtype="PCM_16", format="WAV")
    argv = ["--server", server.address, "--rate", "0", "--interim", "-"]
    code, out, err = run(stream.main, argv, capsys, stdin=io.BytesIO(wav.getvalue()))
    assert code == 0, err
    lines = out.splitlines()
    assert [line for line in lines if not line.startswith("partial: ")] == library_finals(recognizer, clip)
    assert any(line.startswith("partial: ") for line in lines)


def test_stream_errors_exit_with_the_status(server, clips, capsys):
    clip = clips[0]
    code, _, err = run(
        stream.main, ["--server", server.address, "--phrase", "go", "--boost", "50", clip], capsys
    )
    assert code == 3 and "INVALID_ARGUMENT" in err and "boost must be between 0 and 20" in err
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    code, _, err = run(stream.main, ["--server", closed, "--rate", "0", clip], capsys)
    assert code == 14 and "UNAVAILABLE" in err
    code, _, err = run(stream.main, ["--server", server.address, "/no/such/file.flac"], capsys)
    assert code == 1 and "/no/such/file.flac" in err
    code, _, err = run(stream.main, ["--server", server.address, "-"], capsys, stdin=io.BytesIO(b"not audio"))
    assert code == 1 and "stdin: cannot decode audio" in err


def test_tls_and_bearer_token(model_path, recognizer, clips, tmp_path, capsys):
    cert, key = self_signed_cert(tmp_path)
    proc = ServerProcess(model_path, tmp_path / "server.log", "--tls-cert", cert, "--tls-key", key,
                         "--auth-token", "s3cret")  # fmt: skip
    try:
        secure = ["--server", f"localhost:{proc.port}", "--ca-cert", cert, "--wait", "60"]
        code, out, err = run(stream.main, [*secure, "--token", "s3cret", "--rate", "0", clips[0]], capsys)
        assert code == 0, err
        assert out.splitlines() == library_finals(recognizer, clips[0])
        code, _, err = run(stream.main, [*secure, "--token", "wrong", clips[0]], capsys)
        assert code == 16 and "UNAUTHENTICATED" in err
        code, out, err = run(transcribe.main, [*secure, "--token", "s3cret", clips[0]], capsys)
        assert code == 0 and json.loads(out)["text"] == " ".join(library_finals(recognizer, clips[0])), err
        code, _, err = run(transcribe.main, [*secure, clips[0]], capsys)  # no token: the server is unusable
        assert code == 16 and "UNAUTHENTICATED" in err
    finally:
        assert proc.stop() == 0, proc.log()


def test_stream_mic_fails_clearly_without_a_device(server, capsys):
    try:
        import sounddevice

        if any(d["max_input_channels"] > 0 for d in sounddevice.query_devices()):
            pytest.skip("this machine has a microphone")
    except (ImportError, OSError):
        pass
    code, _, err = run(stream.main, ["--server", server.address, "--mic"], capsys)
    assert code == 1 and ("sounddevice" in err or "microphone" in err), err


def test_terminal_display_updates_one_line():
    out = io.StringIO()
    display = stream.Display(out, tty=True)
    display.partial("go forw", 0.5)
    display.partial("go forward", 0.3)
    alternative = pb.SpeechRecognitionAlternative(transcript="go forward ten meters")
    display.final(alternative)
    display.close()
    written = out.getvalue()
    assert written.count(stream.CLEAR_LINE) == 3 and stream.DIM in written
    assert written.endswith(stream.CLEAR_LINE + "go forward ten meters\n")
    assert written.count("\n") == 1


# ---- asr-transcribe ----------------------------------------------------------------------------------------


def corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not a flac file")
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_transcribe_a_folder_locally(model_path, clips, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, clip in enumerate(clips[:3]):
        (folder / ("sub" if i else "") / clip.name).symlink_to(clip)
    corrupt(folder / "sub" / "broken.flac")
    (folder / "notes.txt").write_text("not audio: ignored")
    argv = [folder, "--model", model_path, "-o", tmp_path / "out.jsonl", "--srt", tmp_path / "srt"]
    code, out, err = run(transcribe.main, [*argv, "--vtt", tmp_path / "vtt", "-q"], capsys)
    assert code == 0, err
    assert out == ""
    assert re.search(r"skipped \S+broken\.flac: cannot decode audio", err), err
    assert "transcribed 3 of 4 files (1 skipped)" in err
    lines = read_lines(tmp_path / "out.jsonl")
    paths = sorted([str(folder / clips[0].name)] + [str(folder / "sub" / c.name) for c in clips[1:3]])
    assert [line["path"] for line in lines] == paths

    model, stats, _, _ = checkpoint.load(model_path)  # the library's full-context transcripts, same model,
    feats = [features.extract(audio.load(p), stats=stats) for p in paths]  # and the bundled LM by default
    want = transcribe_full(model, feats, decode=text_decoder(DecoderConfig.bundled()))
    assert [line["text"] for line in lines] == want
    assert want != transcribe_full(model, feats)  # a random model's gibberish: greedy spells no words
    for line, path in zip(lines, paths, strict=True):
        assert " ".join(w["word"] for w in line["words"]) == line["text"]
        assert line["duration"] == pytest.approx(sf.info(path).duration, abs=1e-3)
        assert all(0 <= w["start"] < w["end"] <= line["duration"] + 0.05 for w in line["words"])
        assert 0 <= line["confidence"] <= 1
    srt = (tmp_path / "srt" / "sub" / clips[1].with_suffix(".srt").name).read_text()
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt), srt
    assert (tmp_path / "vtt" / clips[0].with_suffix(".vtt").name).read_text().startswith("WEBVTT\n\n")
    assert not (tmp_path / "srt" / "sub" / "broken.srt").exists()


def test_transcribe_a_manifest_prints_the_wer_and_matches_the_server(
    server, model_path, clips, references, tmp_path, capsys
):
    manifest = tmp_path / "list.jsonl"
    rows = [{"path": str(c), "text": references[c.name]} for c in clips]
    rows.insert(2, {"path": str(corrupt(tmp_path / "broken.flac")), "text": "never heard"})
    rows.append({"path": "missing.wav", "text": "not there"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    local = tmp_path / "local.jsonl"
    argv = ["--manifest", manifest, "--model", model_path, "--mode", "stream", "-o", local, "--jobs", "2",
            "--decoder", "greedy"]  # greedy as the server fixture (ServerProcess)  # fmt: skip
    code, _, err = run(transcribe.main, argv, capsys)
    assert code == 0, err
    assert "broken.flac" in err and "missing.wav" in err and "transcribed 4 of 6 files" in err
    lines = read_lines(local)
    assert [line["path"] for line in lines] == [str(c) for c in clips]
    assert [line["reference"] for line in lines] == [references[c.name] for c in clips]

    wer, cer = map(float, re.search(r"WER ([\d.]+)% CER ([\d.]+)%", err).groups())
    refs = [text.normalize(line["reference"]) for line in lines]
    hyps = [text.normalize(line["text"]) for line in lines]
    assert wer == pytest.approx(100 * jiwer.wer(refs, hyps), abs=0.006)
    assert cer == pytest.approx(100 * jiwer.cer(refs, hyps), abs=0.006)

    remote = tmp_path / "remote.jsonl"
    argv = ["--manifest", manifest, "--server", server.address, "-o", remote, "--jobs", "3"]
    code, _, err = run(transcribe.main, argv, capsys)
    assert code == 0, err
    assert "broken.flac: INVALID_ARGUMENT" in err and "missing.wav" in err
    assert read_lines(remote) == lines  # stream mode computes what the server's Recognize returns


def test_transcribe_a_tsv_manifest_in_full_context(model_path, clips, references, tmp_path, capsys):
    tsv = tmp_path / "transcripts.tsv"
    rows = [f"{c}\t{references[c.name]}" for c in clips[:2]] + [f"{corrupt(tmp_path / 'bad.wav')}\tbad"]
    tsv.write_text("path\ttext\n" + "\n".join(rows) + "\n")
    code, out, err = run(transcribe.main, ["--manifest", tmp_path, "--model", model_path], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == [str(c) for c in clips[:2]]
    wer = float(re.search(r"WER ([\d.]+)%", err).group(1))
    want = jiwer.wer([text.normalize(line["reference"]) for line in lines], [line["text"] for line in lines])
    assert wer == pytest.approx(100 * want, abs=0.006)


def test_transcribe_exit_status(model_path, tmp_path, capsys):
    bad = corrupt(tmp_path / "a.flac")
    code, out, err = run(transcribe.main, [bad, "--model", model_path], capsys)
    assert code == 1 and out == "" and "skipped" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(transcribe.main, [tmp_path / "empty", "--model", model_path], capsys)
    assert code == 2 and "no audio files" in err


def test_subtitle_cues():
    words = [Word("go", 0.0, 0.3, 0.9), Word("forward", 0.3, 0.9, 0.9), Word("ten", 2.0, 2.3, 0.9)]
    cues = batch.cues(words)
    assert [(c.start, c.end, c.text) for c in cues] == [(0.0, 0.9, "go forward"), (2.0, 2.3, "ten")]
    assert batch.srt(cues).startswith("1\n00:00:00,000 --> 00:00:00,900\ngo forward\n\n2\n")
    long = [Word(f"word{i}", i * 0.2, i * 0.2 + 0.1, 1.0) for i in range(20)]
    assert all(len(line) <= batch.LINE_CHARS for c in batch.cues(long) for line in c.text.split("\n"))
    assert batch._timestamp(3723.4567, ".") == "01:02:03.457"


# ---- make demo ---------------------------------------------------------------------------------------------


def demo(model: Path, serve_args: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "MODEL": str(model), "STREAM_ARGS": "--rate 0", "SERVE_ARGS": serve_args}
    return subprocess.run(
        ["nice", "-n", "10", "bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_demo(
    result: subprocess.CompletedProcess, recognizer: Recognizer, config: StreamingConfig = StreamingConfig()
) -> None:
    """Asserts the demo printed the library's finals for `config` and stopped its server."""
    assert result.returncode == 0, result.stderr
    address = re.search(r"asr-serve on (\S+):(\d+)", result.stdout)
    lines = [line for line in result.stdout.splitlines()[1:] if not line.startswith(("partial: ", "  "))]
    assert lines == library_finals(recognizer, SAMPLE, config)
    assert any(line.startswith("partial: ") for line in result.stdout.splitlines())
    with pytest.raises(OSError):  # the server is gone
        socket.create_connection((address.group(1), int(address.group(2))), timeout=2).close()


def test_demo_streams_the_sample_and_stops_the_server(model_path, recognizer):
    check_demo(demo(model_path, "--decoder greedy"), recognizer)  # a random model: the LM would only slow it


# ---- the bundled model -------------------------------------------------------------------------------------


@pytest.mark.skipif(not checkpoint.DEFAULT_MODEL.exists(), reason="no bundled model (models/default.pt)")
def test_bundled_model_demo_and_local_transcription(clips, tmp_path, capsys):
    bundled = DecoderConfig.bundled()  # the default decoding of asr-serve and asr-transcribe
    check_demo(
        demo(checkpoint.DEFAULT_MODEL),
        Recognizer.load(checkpoint.DEFAULT_MODEL),
        StreamingConfig(decoder=bundled),
    )
    code, out, err = run(transcribe.main, [*clips], capsys)  # --model defaults to the bundled one
    assert code == 0, err
    model, stats, _, _ = checkpoint.load(checkpoint.DEFAULT_MODEL)
    feats = [features.extract(audio.load(c), stats=stats) for c in clips]
    want = transcribe_full(model, feats, decode=text_decoder(bundled))
    assert [json.loads(line)["text"] for line in out.splitlines()] == want
