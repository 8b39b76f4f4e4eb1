"""Running a service: background loops that restart after failures, and the uvicorn server."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class Supervised:
    """Runs a loop in the background; restarts it with backoff when it fails."""

    def __init__(self, name: str, make_loop: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.make_loop = make_loop
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        self.last_error: str | None = None
        self._stopping = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                await self.make_loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed; restarting in %.1fs", self.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def stop(self, graceful: Callable[[], None] | None = None, grace_seconds: float = 15.0) -> None:
        """Ask the loop to finish its batch (``graceful``), then wait; cancel if it hangs."""
        self._stopping = True
        if graceful is not None:
            graceful()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_seconds)
        except (TimeoutError, asyncio.CancelledError):
            self.task.cancel()
        except Exception:
            log.exception("%s ended with an error", self.name)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiokafka logs every reconnect attempt at ERROR; keep it to warnings of substance
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def collect_less(young: int = 50_000) -> None:
    """For a service, once its app is built: what start-up made (FastAPI, pydantic's schemas,
    aiokafka, the app) lives as long as the process, so it is frozen out of the cyclic
    collector, and the youngest generation is collected only past ``young`` net new
    containers, not 700. At the default thresholds each batch's short-lived events set off
    collections, and the occasional full one walked every start-up object again (3 Dec 2026):
    19 % of the projections service's CPU at 200 reports/s; in intake, eight concurrent
    batches of 100 crossed a threshold of 7,000 every few requests, and each collection
    walked all of their live events (3,788 / 3,968 -> 6,048 / 4,717 events per CPU-second).
    Our services make few reference cycles, so the garbage they leave waits a little longer,
    not for ever. (The alerts service, which holds millions of long-lived state objects,
    freezes after each batch instead: services.alerts.service.HeapFreezer.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 20, 20)


_UVICORN_OPTIONS: dict[str, Any] = {
    "log_level": "warning",
    "timeout_graceful_shutdown": 20,
    "access_log": False,
    # libuv's loop and the C HTTP parser: measured +30 % requests per CPU-second for
    # intake's single posts over asyncio + h11 (docs/intake.md).
    "loop": "uvloop",
    "http": "httptools",
}


def serve(
    app: FastAPI | None, *, default_port: int, host: str | None = None, workers: int = 1,
    app_factory: str | None = None,
) -> None:
    """Serve with uvicorn; SIGTERM/SIGINT finish in-flight requests, then run shutdown.

    ``workers`` > 1: that many processes, each with its own listening socket on the port
    (SO_REUSEPORT: the kernel spreads connections over them; one shared socket let the first
    worker to wake accept every connection); each builds its app by calling ``app_factory``
    ("module:function"), since an app object cannot be handed to another process."""
    port = int(os.environ.get("TNR_PORT", default_port))
    bind = host or os.environ.get("TNR_HOST", "127.0.0.1")
    if workers > 1:
        if app_factory is None:
            raise ValueError("several workers need an app factory")
        _supervise(app_factory, bind, port, workers)
        return
    if app is None:
        raise ValueError("nothing to serve")
    uvicorn.run(app, host=bind, port=port, **_UVICORN_OPTIONS)


def _die_with_parent() -> None:
    """A worker gets SIGTERM when its supervisor dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker(app_factory: str, host: str, port: int) -> None:
    _die_with_parent()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    config = uvicorn.Config(app_factory, factory=True, host=host, port=port, **_UVICORN_OPTIONS)
    uvicorn.Server(config).run(sockets=[sock])


def _supervise(app_factory: str, host: str, port: int, workers: int) -> None:
    """Start the workers, restart one that dies (after a second), pass SIGTERM/SIGINT on."""
    context = multiprocessing.get_context("spawn")

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(app_factory, host, port), name="worker")
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for index, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                log.warning("worker %s exited with %s; starting another", process.pid, process.exitcode)
                time.sleep(1.0)
                processes[index] = start()
        time.sleep(0.2)
    for process in processes:
        process.join(timeout=float(_UVICORN_OPTIONS["timeout_graceful_shutdown"]) + 10)
