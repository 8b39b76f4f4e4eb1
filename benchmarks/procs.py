"""CPU of the processes a benchmark shares the machine with, from /proc: the kernel's
schedstat (time run on a CPU, time waited for one) and the local stack's broker and
PostgreSQL (deploy/local). Shared by the benchmarks that account for every process's CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.harness import ROOT


def schedstat(pids: Sequence[int]) -> tuple[float, float]:
    """Seconds the processes' threads have run on a CPU, and waited, runnable, for one (the
    kernel's schedstat): a long wait means the machine, not the service, was the bottleneck."""
    ran = waited = 0
    for pid in pids:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
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


def _threads(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    return []


def _pids() -> list[int]:
    return [os.getpid(), *(pid for pids in local_servers().values() for pid in pids)]


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for tid in _threads(pid):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this process (and what it starts), the local broker and PostgreSQL on ``cpus``
    only (every thread; PostgreSQL's new backends inherit the postmaster's), as a machine
    with that many cores would. Afterwards every thread of theirs, old or new, gets back the
    CPUs its process had (new backends: all the machine's). ``None``: no change."""
    if not cpus:
        yield
        return
    before = {pid: os.sched_getaffinity(pid) for pid in _pids()}
    try:
        for pid in before:
            _set_affinity(pid, cpus)
        yield
    finally:
        everywhere = set(range(os.cpu_count() or 1))
        for pid in _pids():
            _set_affinity(pid, before.get(pid, everywhere))
