"""CPU time and resident memory of a process, from psutil when installed, else /proc (Linux)."""

from __future__ import annotations

import os

try:  # optional
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used (all its threads)."""
    if psutil is not None:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def rss_bytes(pid: int) -> int:
    """Resident set size in bytes."""
    if psutil is not None:
        return psutil.Process(pid).memory_info().rss
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE
