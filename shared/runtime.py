"""Running a service: background loops that restart after failures, and the uvicorn server."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

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


def serve(
    app: FastAPI | None, *, default_port: int, host: str | None = None, workers: int = 1,
    app_factory: str | None = None,
) -> None:
    """Serve with uvicorn; SIGTERM/SIGINT finish in-flight requests, then run shutdown.

    ``workers`` > 1: that many processes share the port (uvicorn's supervisor binds it once and
    restarts a worker that dies); each builds its app by calling ``app_factory``
    ("module:function"), since an app object cannot be handed to another process."""
    port = int(os.environ.get("TNR_PORT", default_port))
    target: FastAPI | str | None = app
    if workers > 1:
        if app_factory is None:
            raise ValueError("several workers need an app factory")
        target = app_factory
    if target is None:
        raise ValueError("nothing to serve")
    uvicorn.run(
        target,
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=host or os.environ.get("TNR_HOST", "127.0.0.1"),
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=20,
        access_log=False,
        # libuv's loop and the C HTTP parser: measured +30 % requests per CPU-second for
        # intake's single posts over asyncio + h11 (docs/intake.md).
        loop="uvloop",
        http="httptools",
    )
