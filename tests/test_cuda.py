"""The GPU paths: the bundled model on CUDA gives what it gives on the CPU, wherever a device can be chosen.

Skipped without CUDA (this project's CI has none): `torch.cuda.is_available()` decides. Training with AMP on
CUDA is tested in test_train.py.
"""

import grpc
import pytest
import torch
from server_helpers import ServerProcess, finals, recognition_config, stream_requests, stub

from asr import audio, checkpoint, evaluate, features
from asr.batch import BatchTranscriber
from asr.decoding import DecoderConfig
from asr.streaming import Recognizer, StreamingConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not checkpoint.DEFAULT_MODEL.exists(), reason="no bundled model"),
]


@pytest.fixture(scope="module")
def clips(held_out_digits):
    return [audio.load(u.path) for u in held_out_digits]


def same_texts(a: list[str], b: list[str], slack: int = 1) -> bool:
    """Equal but for at most `slack` clips: GPU kernels round differently (TF32), near-ties flip."""
    return sum(x != y for x, y in zip(a, b, strict=True)) <= slack


def test_model_log_probs_match_the_cpu(clips):
    cpu, stats, fcfg, _ = checkpoint.load()
    gpu, _, _, _ = checkpoint.load(device="cuda")
    for samples in clips[:8]:
        feats = features.extract(samples, fcfg, stats)
        with torch.inference_mode():
            want, _ = cpu(feats[None], torch.tensor([len(feats)]))
            got, _ = gpu(feats[None].cuda(), torch.tensor([len(feats)], device="cuda"))
        assert got.device.type == "cuda"
        assert (got.cpu() - want).abs().max() < 0.05
        assert (got.argmax(-1).cpu() == want.argmax(-1)).float().mean() > 0.98
        # streaming, chunk by chunk with carried state
        stream_cpu = evaluate.stream_log_probs(cpu, feats)
        stream_gpu = evaluate.stream_log_probs(gpu, feats.cuda())
        assert (stream_gpu.float().cpu() - stream_cpu).abs().max() < 0.05


@pytest.mark.parametrize("mode", ["full", "stream"])
@pytest.mark.parametrize("decoder", [DecoderConfig(method="greedy"), DecoderConfig()], ids=["greedy", "lm"])
def test_batch_transcriber_on_cuda_matches_the_cpu(held_out_digits, clips, mode, decoder):
    texts = {}
    for device in ("cpu", "cuda"):
        transcriber = BatchTranscriber.load(device=device, mode=mode, decoder=decoder)
        assert transcriber.recognizer.device.type == device
        texts[device] = [t.text for t in transcriber.transcribe([transcriber.prepare(c) for c in clips])]
    assert same_texts(texts["cuda"], texts["cpu"]), list(zip(texts["cpu"], texts["cuda"], strict=True))
    wer, _ = evaluate.error_rates([u.text for u in held_out_digits], texts["cuda"])
    assert wer < 0.25  # the CPU measures 5-12.5% on these clips


def test_live_sessions_on_cuda(held_out_digits, clips):
    cpu, gpu = Recognizer.load(), Recognizer.load(device="cuda")
    texts = [[" ".join(r.text for r in rec.recognize(c)) for c in clips] for rec in (cpu, gpu)]
    assert same_texts(texts[1], texts[0]), list(zip(*texts, strict=True))
    assert sum(t == u.text for t, u in zip(texts[1], held_out_digits, strict=True)) >= 32


def test_evaluate_cli_on_cuda(data_dir, capsys):
    evaluate.main([str(data_dir / "an4"), "--device", "cuda", "--limit", "10", "--decoder", "greedy"])
    out = capsys.readouterr().out
    assert "on cuda" in out and "an4" in out


def test_server_on_cuda_streams_like_the_library(an4_clip, tmp_path):
    proc = ServerProcess(checkpoint.DEFAULT_MODEL, tmp_path / "server.log", "--device", "cuda")
    channel = grpc.insecure_channel(proc.address)
    try:
        proc.wait_serving(channel)
        assert "cuda" in proc.log()
        responses = list(stub(channel).StreamingRecognize(
            stream_requests(recognition_config("FLAC"), an4_clip.read_bytes(), piece=1000)))  # fmt: skip
    finally:
        channel.close()
        assert proc.stop() == 0, proc.log()
    want = [r.text for r in Recognizer.load().recognize(audio.load(an4_clip), StreamingConfig())]
    assert finals(responses) == want and want
