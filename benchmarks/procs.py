"""CPU of the processes a benchmark shares the machine with, from /proc: the kernel's
schedstat (time run on a CPU, time waited for one) and the local stack's broker and
PostgreSQL (deploy/local). Shared by the benchmarks that account for every process's CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from tests.harness import ROOT


def schedstat(pids: Sequence[int]) -> tuple[float, float]:
    """Seconds the processes' threads have run on a CPU, and waited, runnable, for one (the
    kernel's schedstat): a long wait means the machine, not the service, was the bottleneck."""
    ran = waited = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process or thread that ended meanwhile
            for task in Path(f"/proc/{pid}/task").iterdir():
                fields = (task / "schedstat").read_text().split()
                ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def local_servers() -> dict[str, list[int]]:
    """The broker's and PostgreSQL's processes when they are the local stack's (deploy/local),
    so their CPU is counted too; empty under testcontainers."""
    run = ROOT / ".run"
    servers: dict[str, list[int]] = {}
    with contextlib.suppress(OSError, ValueError):
        servers["kafka"] = [int((run / "kafka" / "kafka.pid").read_text().split()[0])]
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((run / "pg" / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        servers["postgres"] = [postmaster, *children]
    return servers
