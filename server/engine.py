"""The loaded model and its batch scheduler: everything the servicer needs from `asr.streaming`.

One `Engine` per process. Sessions are per call; their audio goes through the shared `BatchScheduler`, which
steps all sessions that have audio waiting in one model call. Handler threads block on the futures it
returns.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from asr.streaming import BatchScheduler, Recognizer, Result, Session, StreamingConfig

PIECE_S = 1.0  # longest piece of audio the scheduler gets for one session and round


def file_version(path: Path) -> str:
    """`name@sha256[:12]` of a checkpoint file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}@{digest.hexdigest()[:12]}"


class Engine:
    def __init__(self, recognizer: Recognizer, scheduler: BatchScheduler, model_path: Path):
        self.recognizer = recognizer
        self.scheduler = scheduler
        self.model_path = Path(model_path)
        self.version = file_version(self.model_path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", int8: bool = False, **scheduler_options) -> Engine:
        recognizer = Recognizer.load(path, device=device, int8=int8)
        return cls(recognizer, BatchScheduler(recognizer, **scheduler_options), Path(path))

    def warm_up(self, config: StreamingConfig) -> float:
        """Run a second of silence through a session (first calls pay for lazy initialisation); returns s."""
        start = time.perf_counter()
        session = self.session(config)
        try:
            self.accept(session, np.zeros(self.sample_rate, np.float32))
            self.finish(session)
        finally:
            self.close(session)
        return time.perf_counter() - start

    @property
    def sample_rate(self) -> int:
        return self.recognizer.sample_rate

    def session(self, config: StreamingConfig) -> Session:
        return self.recognizer.session(config)

    def accept(self, session: Session, samples: np.ndarray) -> list[Result]:
        """Feed samples through the scheduler and wait for the results they produce.

        Long audio goes in pieces of PIECE_S, all queued at once: the scheduler steps one piece per session
        and round, so a whole file sent in one message does not hold up the other streams.
        """
        n = int(PIECE_S * self.sample_rate)
        futures = [self.scheduler.submit(session, samples[i : i + n]) for i in range(0, len(samples), n)]
        return [r for f in futures for r in f.result()]

    def finish(self, session: Session) -> list[Result]:
        """End of the session's audio: wait for its last results."""
        return self.scheduler.finish(session).result()

    def close(self, session: Session) -> None:
        """Forget the session (end, failure or cancellation); idempotent."""
        self.scheduler.close(session)

    def shutdown(self) -> None:
        self.scheduler.shutdown()

    def algorithmic_latency_s(self, config: StreamingConfig) -> float:
        return self.recognizer.algorithmic_latency_s(config)

    def num_parameters(self) -> int:
        return self.recognizer.model.num_parameters()

    def model_config(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self.recognizer.model.config).items()}
