"""The wiring shared by services that fold Kafka topics into PostgreSQL (alerts, projections):
pool and migrations, topics, a producer for dead letters, the supervised consumer, readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI

from shared.consumer import Decode, Handler, PgOffsetConsumer, StagedHandler
from shared.db import create_pool, prepare_database
from shared.kafka import ensure_topics, make_producer, topics_for
from shared.runtime import Supervised
from shared.settings import Settings
from shared.telemetry import setup_tracing
from shared.topics import Topics
from shared.web import ReadinessCheck, create_service_app, pool_check

Extra = Callable[[FastAPI, asyncpg.Pool], AbstractAsyncContextManager[None]]


@dataclass
class ConsumerService:
    component: str  # also the consumer group and the service name
    title: str
    migrations: Path
    topics: Callable[[Topics], Sequence[str]]
    decode: Decode[Any]
    handle: Handler[Any]
    routers: Sequence[APIRouter] = ()
    # Started after the consumer, stopped before it (e.g. delivery workers).
    extras: Sequence[Extra] = field(default_factory=list)
    on_ready: Callable[[FastAPI], Awaitable[None]] | None = None
    # Optional: the same handler in two steps, so batch N+1 is prepared while N commits.
    staged: StagedHandler[Any] | None = None
    # Options for the Kafka consumer (aiokafka's names), e.g. fetch batching for a service
    # that can wait.
    consumer_options: Mapping[str, Any] = field(default_factory=dict)


def create_consumer_app(spec: ConsumerService, settings: Settings, **app_kwargs: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        setup_tracing(spec.component)
        pool = await create_pool(settings.database_url)
        await prepare_database(pool, spec.component, spec.migrations)
        await ensure_topics(settings)
        producer = make_producer(settings.model_copy(update={"service_name": spec.component}))
        await producer.start()
        topics = topics_for(settings)
        consumer: PgOffsetConsumer[Any] = PgOffsetConsumer(
            settings=settings, pool=pool, producer=producer, group_id=spec.component,
            topics=spec.topics(topics), dead_letter_topic=topics.dead_letter(spec.component),
            decode=spec.decode, handle=spec.handle, staged=spec.staged,
            consumer_options=spec.consumer_options,
        )
        supervised = Supervised(f"{spec.component}-consumer", consumer.run)
        app.state.pool, app.state.consumer, app.state.settings = pool, consumer, settings
        supervised.start()
        try:
            async with _nested(app, pool, spec.extras):
                yield
        finally:
            await supervised.stop(consumer.stop)
            await producer.stop()
            await pool.close()

    def readiness(app: FastAPI) -> list[ReadinessCheck]:
        async def consuming() -> str | None:
            consumer = getattr(app.state, "consumer", None)
            return None if consumer is not None and consumer.ready else "not yet consuming"

        return [pool_check(lambda: getattr(app.state, "pool", None)), consuming]

    app = create_service_app(
        title=spec.title, version="1", lifespan=lifespan, readiness=readiness, **app_kwargs
    )
    for router in spec.routers:
        app.include_router(router)
    return app


@asynccontextmanager
async def _nested(app: FastAPI, pool: asyncpg.Pool, extras: Sequence[Extra]) -> AsyncIterator[None]:
    if not extras:
        yield
        return
    async with extras[0](app, pool), _nested(app, pool, extras[1:]):
        yield
