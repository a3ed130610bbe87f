"""`kill -9` during training, then resume: the step count continues from the last checkpoint.

The tiny preset trains on a small real manifest (AN4 and some FSDD) with a checkpoint every few steps; the
process is killed with SIGKILL mid-run, and the same command run again must start at the checkpoint's step
(not 0 and not past it) and finish at --max-steps, with the optimizer and data position restored.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import ROOT

from asr import checkpoint
from asr.data import read_manifest, shared_data_dir

CHECKPOINT_EVERY = 5
KILL_AFTER_STEP = 17  # kill once the metrics show this step (checkpoints: every 5 steps and at epoch ends)
EXTRA_STEPS = 8  # the resumed run goes this far past the checkpoint


def metrics_steps(path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def train_cmd(manifest, out, max_steps: int) -> list[str]:
    return [
        sys.executable, "-m", "asr.train", "--preset", "tiny", "--train", str(manifest), "--clean", "--dev",
        "--out", str(out), "--epochs", "100", "--max-steps", str(max_steps), "--batch-frames", "2000",
        "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", "1", "--warmup-steps", "5",
        "--threads", "1",
    ]  # fmt: skip


def test_sigkill_during_training_then_resume(tmp_path, figures):
    utts = read_manifest(shared_data_dir() / "an4") + read_manifest(shared_data_dir() / "fsdd")[::10]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"path": u.path, "duration": u.duration, "text": u.text}) + "\n"
                                for u in utts))  # fmt: skip
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(train_cmd(manifest, out, 10_000), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while (max(metrics_steps(metrics), default=0) < KILL_AFTER_STEP) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = max(metrics_steps(metrics))
    saved = checkpoint.read(out / "last.pt")["train_state"]
    assert 0 < saved["step"] <= killed_at, (saved, killed_at)
    lines_before = len(metrics_steps(metrics))

    target = saved["step"] + EXTRA_STEPS
    result = subprocess.run(train_cmd(manifest, out, target), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed = metrics_steps(metrics)[lines_before:]
    final = checkpoint.read(out / "last.pt")
    figures(
        f"killed at step {killed_at} (SIGKILL); last checkpoint at step {saved['step']} "
        f"(epoch {saved['epoch']}, batch {saved['batch']}); resumed run logged steps"
        f" {resumed[0]}..{resumed[-1]}"
        f" and saved step {final['train_state']['step']}; lost {killed_at - saved['step']} steps"
    )
    assert resumed == list(range(saved["step"] + 1, target + 1))
    assert final["train_state"]["step"] == target
    assert f"done: step {target}" in result.stdout
    assert "optimizer" in final and final["optimizer"]["state"], "the optimizer state is saved and restored"
