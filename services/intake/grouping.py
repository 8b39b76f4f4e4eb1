"""Group commit: concurrent requests' rows go to PostgreSQL together, one statement for all.

While one statement is in flight, the rows of requests that arrive meanwhile wait and then go
together in the next one. Under load this turns one round trip per request into one per
group (what the Kafka producer's linger does for the log); alone, a request waits for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class GroupCommitter(Generic[In, Out]):
    def __init__(self, run: Callable[[list[In]], Awaitable[Sequence[Out]]], max_rows: int = 5000) -> None:
        self._run = run
        self._max_rows = max_rows
        self._waiting: list[tuple[list[In], asyncio.Future[list[Out]]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, rows: list[In]) -> list[Out]:
        """The results for ``rows``, in order; the statement's exception if it failed."""
        if not rows:
            return []
        future: asyncio.Future[list[Out]] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            group: list[tuple[list[In], asyncio.Future[list[Out]]]] = []
            size = 0
            while self._waiting and (not group or size + len(self._waiting[0][0]) <= self._max_rows):
                rows, future = self._waiting.pop(0)
                group.append((rows, future))
                size += len(rows)
            flat = [row for rows, _ in group for row in rows]
            try:
                results = list(await self._run(flat))
            except Exception as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for rows, future in group:
                if not future.done():  # a cancelled request no longer waits for its answer
                    future.set_result(results[start:start + len(rows)])
                start += len(rows)
