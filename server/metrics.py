"""Prometheus metrics of the recognition service, in their own registry (one per server)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # seconds
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)  # processing s / audio s


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_streams = Gauge("asr_active_streams", "Recognition calls in progress", registry=r)
        self.streams = Counter("asr_streams", "Recognition calls finished", ["method", "code"], registry=r)
        self.errors = Counter(
            "asr_errors", "Calls that ended with an error status", ["method", "code"], registry=r
        )
        self.audio_seconds = Counter(
            "asr_audio_seconds", "Audio received, in seconds", ["method"], registry=r
        )
        self.rtf = Histogram(
            "asr_real_time_factor",
            "Processing time over audio duration, per call",
            ["method"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.partial_latency = Histogram(
            "asr_partial_latency_seconds",
            "From the arrival of the audio an interim result covers to sending it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "asr_final_latency_seconds",
            "From the arrival of the audio a final result covers (or of the end of the stream) to sending it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._http = None

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP on host:port (0: a free port); returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            threading.Thread(target=http.shutdown, daemon=True).start()
