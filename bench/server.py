"""A real `asr-serve` process on an ephemeral loopback port (load benchmark, reliability suite)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "asr.v1.Recognizer"
START_TIMEOUT_S = 120.0  # importing torch and loading the model on a busy machine


class Server:
    """`python -m server.main --port 0 ...` in a subprocess; its log (stderr) goes to `log_path`.

    `nice` > 0 runs it under `nice -n` (the process itself, not a shell, so `pid` is the server's).
    """

    def __init__(self, model: str | Path, log_path: str | Path, *args: str, nice: int = 0, env=None):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "server.main", "--model", str(model), "--port", "0", *args]
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self.port = int(self._expect(r"listening on [^:]+:(\d+)"))
            self.metrics_port = (
                int(self._expect(r"metrics on http://[^:]+:(\d+)/")) if "--metrics-port" in args else None
            )
        except BaseException:
            self.kill()
            raise
        self.address = f"127.0.0.1:{self.port}"

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)

    def _expect(self, pattern: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}") from None
                continue
            if m := re.search(pattern, line):
                return m.group(1)
        raise TimeoutError(f"server printed no line matching {pattern!r}:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, channel: grpc.Channel | None = None, timeout: float = START_TIMEOUT_S,
                     metadata=None) -> None:  # fmt: skip
        """Wait until health says SERVING (the model is loaded and warmed up); over `channel` when given
        (one with TLS or a token), else over a plain loopback channel of its own."""
        if channel is None:
            with grpc.insecure_channel(self.address) as own:
                return self.wait_serving(own, timeout, metadata)
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                request = health_pb2.HealthCheckRequest(service=SERVICE)
                if (
                    stub.Check(request, timeout=5, metadata=metadata).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise TimeoutError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def serving(self) -> bool:
        """Health check: SERVING now."""
        try:
            with grpc.insecure_channel(self.address) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
                )
            return status.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a graceful exit (SIGKILL after `timeout`); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
