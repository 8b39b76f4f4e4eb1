"""Delivery: the outbox workers (webhook, e-mail, the alerts topic) and the change hub that
feeds the SSE stream.

Each receiver has one worker that sends its outbox rows in order, one transaction per row
(per batch for Kafka): the row is marked delivered in the same transaction that holds the
receiver's lock, and each attempt is logged in ``delivery_attempts``. A failing receiver is
retried with exponential backoff on its oldest row, so a receiver that comes back after an
hour gets its whole backlog, in order, within ``backoff_max_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from prometheus_client import Counter, Gauge

from services.alerts import store
from services.alerts.receivers import KAFKA_RECEIVER, Backoff, Receiver, ReceiversConfig
from shared.events import PRODUCER_SOURCE, EventType
from shared.kafka import send_records, topics_for
from shared.runtime import Supervised
from shared.serialization import encode_data, record_of
from shared.settings import Settings
from shared.telemetry import current_trace_headers

log = logging.getLogger(__name__)

DELIVERIES = Counter("tnrwatch_alert_deliveries_total", "Delivery attempts", ["receiver", "outcome"])
BACKLOG = Gauge("tnrwatch_alert_outbox_backlog", "Undelivered notifications", ["receiver"])
BACKLOG_SECONDS = 5.0  # how often the backlog gauge is read from the outbox
_EVENT_NAMESPACE = uuid.UUID("a8f0b0d4-2f0e-4d38-9c55-1b8f0f7f2e41")
ZERO_TIME = "0001-01-01T00:00:00Z"


class DeliveryFailed(Exception):
    def __init__(self, error: str, status_code: int | None = None) -> None:
        super().__init__(error)
        self.status_code = status_code


# --- Payloads (pure) -------------------------------------------------------------------------


def alertmanager_payload(receiver: str, rows: Sequence[dict[str, Any]], external_url: str) -> dict[str, Any]:
    """Prometheus Alertmanager's webhook format, version 4."""
    alerts = []
    for row in rows:
        alert = row["alert"]
        resolved = alert["status"] == "resolved"
        labels = {"alertname": alert["rule"], "rule": alert["rule"], "severity": alert["severity"]}
        if alert.get("target_ref"):
            labels["target_ref"] = alert["target_ref"]
        if alert.get("place"):
            labels["place"] = alert["place"]
        annotations = {
            "summary": alert["summary"],
            "incident_ids": ",".join(alert["incident_ids"]),
            "alert_id": alert["alert_id"],
            "status": alert["status"],
        }
        if alert.get("deadline"):
            annotations["deadline"] = alert["deadline"]
        alerts.append(
            {
                "status": "resolved" if resolved else "firing",
                "labels": labels,
                "annotations": annotations,
                "startsAt": alert["first_seen"],
                "endsAt": alert.get("resolved_at") or ZERO_TIME if resolved else ZERO_TIME,
                "generatorURL": f"{external_url}/v1/alerts/{alert['alert_id']}",
                "fingerprint": alert["fingerprint"],
            }
        )
    first = alerts[0]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{fingerprint="{first["fingerprint"]}"}}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": first["labels"]["alertname"]},
        "commonLabels": first["labels"] if len(alerts) == 1 else {"alertname": first["labels"]["alertname"]},
        "commonAnnotations": first["annotations"] if len(alerts) == 1 else {},
        "externalURL": external_url,
        "alerts": alerts,
    }


def email_message(receiver: Receiver, row: dict[str, Any], notify_key: str, external_url: str) -> EmailMessage:
    alert = row["alert"]
    kind = row["kind"]
    msg = EmailMessage()
    msg["From"] = receiver.sender
    msg["To"] = ", ".join(receiver.to)
    msg["Subject"] = f"[tnrwatch {alert['severity'].upper()}] {alert['rule']} {kind}"
    # Deterministic id: a mail client can tell a re-sent notification from a new one.
    msg["Message-ID"] = f"<{alert['fingerprint']}.{notify_key.replace(':', '.')}@tnrwatch>"
    msg["X-Tnrwatch-Fingerprint"] = alert["fingerprint"]
    lines = [
        f"Alert {kind}: {alert['rule']} ({alert['severity']}), status {alert['status']}",
        "",
        alert["summary"],
        "",
        f"Target: {alert.get('target_ref') or '-'}   Place: {alert.get('place') or '-'}",
        f"Incidents: {', '.join(alert['incident_ids'])}",
        f"Deadline: {alert.get('deadline') or '-'}",
        f"First seen: {alert['first_seen']}   Last seen: {alert['last_seen']}",
        "",
        f"{external_url}/v1/alerts/{alert['alert_id']}",
    ]
    msg.set_content("\n".join(lines))
    return msg


# --- Senders ---------------------------------------------------------------------------------

Send = Callable[[Sequence[asyncpg.Record]], Awaitable[int | None]]


def webhook_sender(receiver: Receiver, client: httpx.AsyncClient, external_url: str) -> Send:
    async def send(rows: Sequence[asyncpg.Record]) -> int | None:
        payload = alertmanager_payload(receiver.name, [r["payload"] for r in rows], external_url)
        headers = {"Idempotency-Key": f"{rows[0]['fingerprint']}:{rows[0]['notify_key']}"}
        token = receiver.secret(receiver.bearer_token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await client.post(receiver.url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"HTTP {response.status_code}", response.status_code)
        return response.status_code

    return send


def email_sender(receiver: Receiver, backoff: Backoff, external_url: str) -> Send:
    def deliver(message: EmailMessage) -> None:
        with smtplib.SMTP(receiver.host, receiver.port, timeout=backoff.timeout_seconds) as smtp:
            if receiver.starttls:
                smtp.starttls()
            user, password = receiver.secret(receiver.username_env), receiver.secret(receiver.password_env)
            if user and password:
                smtp.login(user, password)
            smtp.send_message(message)

    async def send(rows: Sequence[asyncpg.Record]) -> int | None:
        for row in rows:
            message = email_message(receiver, row["payload"], row["notify_key"], external_url)
            try:
                await asyncio.to_thread(deliver, message)
            except (OSError, smtplib.SMTPException) as exc:
                raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        return 250

    return send


def kafka_sender(producer: AIOKafkaProducer, settings: Settings) -> Send:
    topic = topics_for(settings).alerts

    async def send(rows: Sequence[asyncpg.Record]) -> int | None:
        # The outbox holds the AlertChanged JSON the engine wrote from a validated change:
        # it becomes the record as it is (no model built and dumped again per alert).
        trace_headers = current_trace_headers()
        sent_at = datetime.now(UTC).isoformat()
        records = []
        for row in rows:
            payload = row["payload"]
            data = payload["data"]
            records.append(
                record_of(
                    id=str(uuid.uuid5(_EVENT_NAMESPACE, f"{row['fingerprint']}|{row['notify_key']}")),
                    source=PRODUCER_SOURCE,
                    type=EventType(payload["type"]).value,
                    subject=data["alert_id"],
                    time=sent_at,
                    key=row["fingerprint"],
                    data_json=encode_data(data),
                    trace_headers=trace_headers,
                )
            )
        try:
            # All of the batch in flight at once: one wait for the broker instead of one per alert.
            await send_records(producer, topic, records)
        except Exception as exc:  # the broker is down or refuses: retry the batch later
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        return None

    return send


# --- Workers ---------------------------------------------------------------------------------


# How long an idle worker sleeps when no change wakes it (changes do, through the hub).
IDLE_SECONDS = 2.0


class OutboxWorker:
    def __init__(self, pool: asyncpg.Pool, receiver: str, send: Send, backoff: Backoff, *, batch: int = 1) -> None:
        self.pool = pool
        self.receiver = receiver
        self.send = send
        self.backoff = backoff
        self.batch = batch
        self.wake = asyncio.Event()
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def run(self) -> None:
        while not self._stopping:
            # Cleared before looking, not after: a change committed while this step runs
            # wakes the next one instead of being forgotten until the timeout.
            self.wake.clear()
            wait = await self.step()
            if wait > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=wait)

    async def step(self) -> float:
        """Deliver what is due; return how long to wait before looking again."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await store.try_lock_receiver(conn, self.receiver):
                return 1.0  # another replica is sending to this receiver
            rows = await store.pending(conn, self.receiver, self.batch)
            if not rows:
                return IDLE_SECONDS
            head = rows[0]
            not_before = float((head["next_attempt_at"] - head["db_now"]).total_seconds())
            if not_before > 0:
                return min(not_before, 5.0)
            started = time.perf_counter()
            try:
                status = await self.send(rows)
            except DeliveryFailed as exc:
                elapsed = (time.perf_counter() - started) * 1000
                retry_in = self.backoff.delay(head["attempts"] + 1)
                await store.mark_failed(
                    conn, head["outbox_id"], self.receiver, exc.status_code, str(exc), elapsed, retry_in
                )
                DELIVERIES.labels(self.receiver, "failed").inc()
                log.warning(
                    "delivery to %s failed (attempt %d): %s; retry in %.1fs",
                    self.receiver,
                    head["attempts"] + 1,
                    exc,
                    retry_in,
                )
                return min(retry_in, 5.0)
            elapsed = (time.perf_counter() - started) * 1000
            await store.mark_delivered(conn, [r["outbox_id"] for r in rows], self.receiver, status, elapsed)
            DELIVERIES.labels(self.receiver, "delivered").inc(len(rows))
            # A short batch was everything due: the next change wakes us (no empty look,
            # four round trips, after every delivery).
            return 0.0 if len(rows) == self.batch else IDLE_SECONDS


# --- The change hub: LISTEN/NOTIFY fan-out for SSE and a wake-up for workers ------------------


class ChangeHub:
    def __init__(self, dsn: str, pool: asyncpg.Pool) -> None:
        self.dsn = dsn
        self.pool = pool
        self.subscribers: set[asyncio.Queue[asyncpg.Record | None]] = set()
        self.wake_targets: list[asyncio.Event] = []
        self._lock = asyncio.Lock()
        self._sent: dict[int, None] = {}  # recent change ids, insertion-ordered, for de-duplication
        self._pending: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self.connected = asyncio.Event()

    def subscribe(self) -> asyncio.Queue[asyncpg.Record | None]:
        queue: asyncio.Queue[asyncpg.Record | None] = asyncio.Queue(maxsize=10_000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[asyncpg.Record | None]) -> None:
        self.subscribers.discard(queue)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        first, _, last = payload.partition(",")
        with contextlib.suppress(ValueError):
            self._pending.put_nowait((int(first), int(last or first)))

    async def run(self) -> None:
        """Listen (reconnecting when the connection drops) and fan changes out."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.add_listener(store.NOTIFY_CHANNEL, self._on_notify)
            self.connected.set()
            while not conn.is_closed():
                try:
                    first, last = await asyncio.wait_for(self._pending.get(), timeout=5.0)
                except TimeoutError:
                    await conn.execute("SELECT 1")  # notice a dead connection
                    continue
                for event in self.wake_targets:
                    event.set()
                rows = await store.changes_between(self.pool, first, last)
                for row in rows:
                    if row["change_id"] in self._sent:
                        continue
                    self._sent[row["change_id"]] = None
                    if len(self._sent) > 50_000:
                        self._sent.pop(next(iter(self._sent)))
                    for queue in list(self.subscribers):
                        try:
                            queue.put_nowait(row)
                        except asyncio.QueueFull:  # a stalled client: end its stream; it resumes with Last-Event-ID
                            while not queue.empty():  # unsent rows are re-read on resume
                                queue.get_nowait()
                            queue.put_nowait(None)
                            self.subscribers.discard(queue)
        finally:
            self.connected.clear()
            await conn.close()


def workers_for(
    pool: asyncpg.Pool,
    receivers: ReceiversConfig,
    producer: AIOKafkaProducer,
    settings: Settings,
    client: httpx.AsyncClient,
) -> list[OutboxWorker]:
    workers = [OutboxWorker(pool, KAFKA_RECEIVER, kafka_sender(producer, settings), receivers.backoff, batch=500)]
    for receiver in receivers.receivers:
        if receiver.type == "webhook":
            send = webhook_sender(receiver, client, receivers.external_url)
        else:
            send = email_sender(receiver, receivers.backoff, receivers.external_url)
        workers.append(OutboxWorker(pool, receiver.name, send, receivers.backoff))
    return workers


async def watch_backlog(pool: asyncpg.Pool, receivers: Sequence[str], every: float = BACKLOG_SECONDS) -> None:
    """Undelivered notifications per receiver on /metrics, so that a receiver that has been
    down for an hour shows as a growing number, not only as failed attempts in the log."""
    while True:
        backlog = await store.outbox_backlog(pool)
        for receiver in receivers:
            BACKLOG.labels(receiver).set(backlog.get(receiver, 0))
        await asyncio.sleep(every)


def delivery_extra(settings: Settings, receivers: ReceiversConfig) -> Callable[[FastAPI, asyncpg.Pool], Any]:
    """Start the hub and the workers with the service; stop them before the consumer."""

    @asynccontextmanager
    async def extra(app: FastAPI, pool: asyncpg.Pool) -> AsyncIterator[None]:
        hub = ChangeHub(settings.database_url, pool)
        app.state.hub = hub
        async with httpx.AsyncClient(timeout=receivers.backoff.timeout_seconds) as client:
            workers = workers_for(pool, receivers, app.state.consumer.producer, settings, client)
            hub.wake_targets = [w.wake for w in workers]
            loops = [Supervised("alerts-hub", hub.run)]
            loops += [Supervised(f"alerts-delivery-{w.receiver}", w.run) for w in workers]
            receiver_names = [w.receiver for w in workers]
            loops.append(Supervised("alerts-backlog", lambda: watch_backlog(pool, receiver_names)))
            for loop in loops:
                loop.start()
            try:
                yield
            finally:
                for worker in workers:
                    worker.stop()
                for loop in loops:
                    await loop.stop(None, 5.0)

    return extra


def now() -> datetime:
    return datetime.now(UTC)
