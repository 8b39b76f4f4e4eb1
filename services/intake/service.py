"""Intake's orchestration: validated reports in, pseudonymised events on the log, claims in
PostgreSQL. The order of steps is the durability design (docs/intake.md):

1. seal identities under the targets' data keys (created on first sight);
2. claim each (source, id) in ``intake_reports`` as 'sending' (one INSERT .. ON CONFLICT);
   a (source, id) already there is a duplicate once 'accepted', or waits while another
   request is still writing it;
3. write the claimed events to the log (idempotent producer, acks=all), bounded in time;
4. mark the claims 'accepted' (and, for erasures, destroy the data keys) and only then
   answer 202.

If the log does not confirm in time, the answer is 503 and the write goes on in the
background: the claim is marked 'accepted' if the broker confirms later (the partner's retry
is then a duplicate) or released if the write fails (the retry writes it). So an event is
never lost and never on the log twice from a re-post; only a crash between steps 3 and 4
can write it twice, with the same event id both times (consumers can drop by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from opentelemetry import propagate, trace
from prometheus_client import Counter, Histogram

from services.intake import store
from services.intake.grouping import GroupCommitter
from services.intake.models import ErasureRequest, RetractionData
from services.intake.partition import partition_for
from services.intake.validation import Prepared, ReportFacts
from services.intake.vault import new_data_key, nonces, seal_identity, unwrap_data_key, wrap_data_key
from shared.auth import Principal
from shared.events import PRODUCER_SOURCE, CloudEvent, EventType, PartnerEventType
from shared.problems import Problem
from shared.serialization import KafkaRecord, encode_data, record_of
from shared.telemetry import current_trace_headers, spans_recorded

log = logging.getLogger(__name__)

EVENTS = Counter("tnr_intake_events_total", "Partner events by outcome", ["outcome"])
PUBLISH_SECONDS = Histogram(
    "tnr_intake_publish_seconds", "From send to broker acknowledgement (acks=all) and claim update"
)
CLAIM_SECONDS = Histogram(
    "tnr_intake_claim_seconds", "Claiming reports in PostgreSQL (group commit included), per request"
)
ACK_SECONDS = Histogram(
    "tnr_intake_ack_seconds", "From the first send of a request's records to the broker's last acknowledgement"
)
SETTLE_SECONDS = Histogram(
    "tnr_intake_settle_seconds", "Marking a request's claims accepted in PostgreSQL (group commit included)"
)
# Children bound once: ``labels()`` looks the child up under a lock on every call.
_ACCEPTED, _DUPLICATE, _UNAVAILABLE = (EVENTS.labels(o) for o in ("accepted", "duplicate", "unavailable"))
LATE_WRITES = Counter(
    "tnr_intake_late_writes_total", "Writes answered 503 that finished later", ["result"]
)

# The broker or the producer refuses a record by its size: retrying cannot help.
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# Once per process: the SDK makes a new tracer (and a warning) on every get_tracer call. A
# tracer taken before the provider is installed follows it once it is (OTel's proxy).
_TRACER = trace.get_tracer("tnrwatch.kafka")
# Spans recorded at all (an exporter configured): asked per request, since the provider is
# installed at start-up, after this module is imported.
_SPANS_RECORDED = spans_recorded
_KIND = {
    PartnerEventType.INCIDENT_REPORTED: EventType.INCIDENT_REPORTED,
    PartnerEventType.INCIDENT_AMENDED: EventType.INCIDENT_AMENDED,
    PartnerEventType.INCIDENT_RETRACTED: EventType.INCIDENT_RETRACTED,
    PartnerEventType.ERASURE_REQUESTED: EventType.SUBJECT_ERASED,
}


@dataclass
class Accepted:
    accepted: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)


class DataKeyCache:
    """Unwrapped data keys, each as its AES-GCM cipher (making one costs ~3 µs: a cipher per
    key, not per identity sealed)."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: dict[str, tuple[float, AESGCM]] = {}

    def get(self, target_ref: str) -> AESGCM | None:
        item = self._items.get(target_ref)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, target_ref: str, data_key: bytes) -> AESGCM:
        cipher = AESGCM(data_key)
        self.put_cipher(target_ref, cipher)
        return cipher

    def put_cipher(self, target_ref: str, cipher: AESGCM) -> None:
        if len(self._items) >= self.max_entries:
            self._items.clear()
        self._items[target_ref] = (time.monotonic() + self.ttl, cipher)

    def pop(self, target_ref: str, default: None = None) -> None:
        self._items.pop(target_ref, default)


@dataclass
class IntakeContext:
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    incidents_topic: str
    pseudonym_key: bytes
    master_key: bytes = b""
    instance: str = "intake"
    publish_timeout: float = 5.0
    # A claim left 'sending' this long by an instance that stopped is taken over by a re-post.
    stale_claim_seconds: float = 300.0
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # (source, id) this process is writing right now: never taken over as stale here.
    in_flight: set[tuple[str, str]] = field(default_factory=set)
    # Unwrapped data keys of recently seen targets: saves a round trip per report of a target
    # seen again. An erasure in this process evicts the key; one in another process makes
    # identities sealed here meanwhile unreadable anyway (their key is destroyed).
    data_keys: DataKeyCache = field(default_factory=lambda: DataKeyCache(60.0))
    claims: GroupCommitter[store.Claim, store.ClaimResult] = field(init=False)
    settle: GroupCommitter[store.Settlement, None] = field(init=False)

    def __post_init__(self) -> None:
        # Concurrent requests' claims and settlements share statements (grouping.py).
        self.claims = GroupCommitter(lambda rows: store.claim(self.pool, rows, self.instance))
        self.settle = GroupCommitter(lambda rows: store.mark_accepted(self.pool, rows, self.instance))


def _unavailable(detail: str, retry_after: int = 5) -> Problem:
    return Problem(503, "Service Unavailable", detail, headers={"Retry-After": str(retry_after)})


def _entry(p: Prepared) -> dict[str, str]:
    if p.incident_id is None:
        return {"id": p.envelope.id, "target_ref": p.target_ref or ""}
    return {"id": p.envelope.id, "incident_id": p.incident_id}


async def _resolve_retractions(ctx: IntakeContext, prepared: list[Prepared]) -> list[Prepared]:
    """A retraction travels under its incident's target_ref, so it stays behind its reports."""
    in_batch: dict[str, str] = {}
    wanted = [p.incident_id for p in prepared if p.target_ref is None and p.incident_id is not None]
    known = await store.latest_target_refs(ctx.pool, wanted) if wanted else {}
    out: list[Prepared] = []
    unknown: list[dict[str, str]] = []
    for p in prepared:
        if p.target_ref is None and p.incident_id is not None:
            ref = in_batch.get(p.incident_id) or known.get(p.incident_id)
            if ref is None:
                unknown.append({"pointer": f"{p.position}/subject",
                                "detail": "no incident with this subject was reported"})
                continue
            p = dataclasses.replace(p, target_ref=ref)
        elif p.incident_id is not None and p.target_ref is not None:
            in_batch[p.incident_id] = p.target_ref
        out.append(p)
    if unknown:
        raise Problem(422, "Unprocessable Content", "A retraction names an unknown incident.", errors=unknown)
    return out


@dataclass
class Sealed:
    """Identities sealed for a request's claims: the ciphertexts, and the freshly made data
    keys of targets not in the cache (wrapped for the claim's statement to store)."""

    ciphertexts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    candidates: dict[str, tuple[bytes, AESGCM]] = field(default_factory=dict)  # ref -> (wrapped, cipher)


def _seal_identities(ctx: IntakeContext, prepared: list[Prepared]) -> Sealed:
    """Seal each identity under its target's cached data key, or under a new one made here:
    the claim stores it with the report when the target has none yet (one statement for both;
    see ``store.claim``), else the identity is sealed again under the stored key."""
    out = Sealed()
    ciphers: dict[str, AESGCM] = {}
    fresh = nonces(len(prepared))
    for p, nonce in zip(prepared, fresh, strict=True):
        ref = p.target_ref
        if p.identity is None or ref is None:
            continue
        cipher = ciphers.get(ref)
        if cipher is None:
            cipher = ctx.data_keys.get(ref)
            if cipher is None:
                data_key = new_data_key()
                cipher = AESGCM(data_key)
                out.candidates[ref] = (wrap_data_key(ctx.master_key, data_key, ref), cipher)
            ciphers[ref] = cipher
        out.ciphertexts[p.key] = seal_identity(cipher, p.identity, ref, nonce)
    return out


async def _keep_lost_identities(
    ctx: IntakeContext, unique: list[Prepared], sealed: Sealed, claims: list[store.Claim],
    answers: list[store.ClaimResult],
) -> None:
    """Keys that the claim stored are cached; claims whose new key lost to one stored before
    (a target not in this process's cache, or created concurrently) get their identity
    sealed again under the stored key (an erased target's is not kept)."""
    lost: dict[str, list[Prepared]] = {}
    stored: dict[str, bytes | None] = {}
    for p, c, a in zip(unique, claims, answers, strict=True):
        if c.wrapped_key is None:
            continue
        if not a.key_lost:
            ctx.data_keys.put_cipher(c.target_ref, sealed.candidates[c.target_ref][1])
        elif a.made:
            lost.setdefault(c.target_ref, []).append(p)
            if a.key_seen:
                stored[c.target_ref] = a.stored_key
    if not lost:
        return
    unseen = [ref for ref in lost if ref not in stored]
    if unseen:  # created after the claim's snapshot by another transaction: visible now
        stored.update({ref: k.wrapped_key for ref, k in (await store.target_keys(ctx.pool, {
            ref: sealed.candidates[ref][0] for ref in unseen})).items()})
    again: list[tuple[tuple[str, str], bytes]] = []
    for ref, reports in lost.items():
        wrapped = stored.get(ref)
        if wrapped is None:  # erased: the identity is not kept again
            continue
        cipher = ctx.data_keys.put(ref, unwrap_data_key(ctx.master_key, wrapped, ref))
        again += [(p.key, seal_identity(cipher, p.identity, ref)) for p in reports if p.identity is not None]
    if again:
        await store.keep_identities(ctx.pool, again, ctx.instance)


def _event_data(p: Prepared, principal: Principal, when: str) -> dict[str, Any]:
    """The JSON form of IncidentRecorded / IncidentRetracted / SubjectErased, built directly
    (the report was validated on the way in; validating it again per event would double the
    CPU cost of intake)."""
    assert p.target_ref is not None
    if isinstance(p.payload, ErasureRequest):
        return {"target_ref": p.target_ref, "received_at": when}
    assert p.incident_id is not None and p.envelope.subject is not None
    data: dict[str, Any] = {
        "incident_id": p.incident_id, "target_ref": p.target_ref, "partner": principal.partner,
        "source": p.envelope.source, "subject": p.envelope.subject, "report_id": p.envelope.id,
        "received_at": when,
    }
    if isinstance(p.payload, RetractionData):
        data["reason"] = p.payload.reason
    else:
        assert isinstance(p.payload, ReportFacts)
        data["facts"] = p.payload.facts
    return data


def _internal_event(p: Prepared, principal: Principal, received_at: datetime) -> CloudEvent:
    """The pseudonymised event for the log, as a CloudEvent (what :func:`_record` writes)."""
    assert p.target_ref is not None
    # The partner's extension attributes travel with the event (traceparent: see _record).
    return CloudEvent.model_construct(
        specversion="1.0",
        id=p.event_id,
        source=PRODUCER_SOURCE,
        type=_KIND[p.kind].value,
        subject=p.incident_id or p.target_ref,
        time=received_at,
        datacontenttype="application/json",
        dataschema=None,
        data=_event_data(p, principal, received_at.isoformat()),
        **p.envelope.extensions,
    )


_KIND_TYPE = {kind: event_type.value for kind, event_type in _KIND.items()}


def _record(p: Prepared, principal: Principal, when: str, trace_headers: dict[str, str]) -> KafkaRecord:
    """The record of :func:`_internal_event` (``to_record``'s bytes and headers), built from
    the prepared event directly: the CloudEvent in between cost ~10 µs an event.

    The partner's trace context, when it sent one, is the parent of the write's span, so a
    partner's trace continues through every service."""
    assert p.target_ref is not None
    data_json = encode_data(_event_data(p, principal, when))
    extensions = p.envelope.__pydantic_extra__
    if extensions and "traceparent" in extensions:
        partner_trace = {k: str(v) for k, v in extensions.items() if k in ("traceparent", "tracestate")}
        with _TRACER.start_as_current_span(
            "send event", kind=trace.SpanKind.PRODUCER, context=propagate.extract(partner_trace),
            attributes={"cloudevents.event_id": p.event_id},
        ):
            trace_headers = current_trace_headers()
    return record_of(
        id=p.event_id, source=PRODUCER_SOURCE, type=_KIND_TYPE[p.kind], subject=p.incident_id or p.target_ref,
        time=when, key=p.target_ref, data_json=data_json, extensions=extensions, trace_headers=trace_headers,
    )


async def _wait_for_others(
    ctx: IntakeContext, keys: list[tuple[str, str]]
) -> tuple[dict[tuple[str, str], store.Existing], set[tuple[str, str]]]:
    """Reports another request is writing: wait (bounded) for its outcome. Returns the ones
    it got accepted and the ones taken over from a writer that stopped (now ours to write)."""
    deadline = time.monotonic() + ctx.publish_timeout
    accepted: dict[tuple[str, str], store.Existing] = {}
    taken: set[tuple[str, str]] = set()
    waiting = list(keys)
    while True:
        rows = {(e.source, e.report_id): e for e in await store.existing(ctx.pool, waiting)}
        if any(k not in rows for k in waiting):
            # The other write failed and released its claim: the log is refusing writes.
            raise _unavailable("The log cannot take the write; the events were NOT accepted.")
        accepted.update({k: r for k, r in rows.items() if r.status == "accepted"})
        waiting = [k for k in waiting if k not in accepted]
        stale = [k for k in waiting if k not in ctx.in_flight]
        if stale:
            taken |= await store.take_over(ctx.pool, stale, ctx.instance, ctx.stale_claim_seconds)
            waiting = [k for k in waiting if k not in taken]
        if not waiting:
            return accepted, taken
        if time.monotonic() >= deadline:
            raise _unavailable("An earlier post of the same event is still being written to the "
                               "log; retry with the same id.", retry_after=2)
        await asyncio.sleep(0.02)


async def _outcomes(futures: list[asyncio.Future[Any]]) -> list[BaseException | None]:
    """Each record's outcome, awaited one after the other: a produce batch settles all of
    its records at once, so the task wakes once per batch, where ``gather`` scheduled a
    callback per record (~3 µs a record)."""
    out: list[BaseException | None] = []
    for future in futures:
        try:
            await future
        except Exception as exc:  # that record's failure (a cancelled request propagates)
            out.append(exc)
        else:
            out.append(None)
    return out


async def _send_each(ctx: IntakeContext, records: list[KafkaRecord]) -> list[BaseException | None]:
    """Record by record into the producer's shared per-partition batches (aiokafka's
    send_batch serialises concurrent batches of a partition and times out under load, so it
    is not used).

    With the topic's partitions known, records go straight to the producer's accumulator,
    which is what ``send`` ends in, without its per-record steps that do nothing here
    (metadata wait, serializers, partitioner, transaction check, debug log): ~5 µs a record
    of ~30. The record size check stays (too large: the same error as ``send`` raises).
    aiokafka is pinned (pyproject.toml): these private names are checked by the tests."""
    futures: list[asyncio.Future[Any]] = []
    topic = ctx.incidents_topic
    producer = ctx.producer
    # The default partitioner's choice, computed here (partition.py); unknown metadata (the
    # topic not seen yet): ``send`` waits for it and picks.
    known = producer.client.cluster.partitions_for_topic(topic)
    try:
        if known:
            partitions = list(known)
            add = producer._message_accumulator.add_message
            timeout = producer._request_timeout_ms / 1000
            limit = producer._max_request_size
            estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
            for record in records:
                if record.key is None:
                    futures.append(await producer.send(topic, record.value, headers=record.headers))
                    continue
                size = estimate(record.key, record.value, record.headers)
                if size > limit:
                    raise MessageSizeTooLargeError(
                        f"The message is {size} bytes when serialized which is larger than the "
                        "maximum request size you have configured with the max_request_size configuration")
                futures.append(await add(TopicPartition(topic, partition_for(record.key, partitions)),
                                         record.key, record.value, timeout, headers=record.headers))
        else:
            for record in records:
                futures.append(await producer.send(topic, record.value, key=record.key, headers=record.headers))
        done = await _outcomes(futures)
    except Exception as exc:  # a record refused before it was queued (size, buffer): nothing more goes out
        done = await _outcomes(futures)
        done += [exc] * (len(records) - len(done))
    return done


async def _publish(
    ctx: IntakeContext, todo: list[Prepared], principal: Principal, received_at: datetime,
    audit: store.AuditRecord | None = None,
) -> list[BaseException | None]:
    """Write to the log and settle the claims; one result per event (None when acknowledged)."""
    started = time.monotonic()
    topic = ctx.incidents_topic
    with _TRACER.start_as_current_span(
        f"send {topic}", kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                    "messaging.batch.message_count": len(todo)},
    ) if _SPANS_RECORDED() else contextlib.nullcontext():
        # This span (or, when no span is recorded, the request's): the parent of every event's hops.
        trace_headers = current_trace_headers()
        when = received_at.isoformat()
        records = [_record(p, principal, when, trace_headers) for p in todo]
        sending = time.monotonic()
        results = await _send_each(ctx, records)
        ACK_SECONDS.observe(time.monotonic() - sending)
    ok = [p for p, r in zip(todo, results, strict=True) if not isinstance(r, BaseException)]
    failed = [p.key for p, r in zip(todo, results, strict=True) if isinstance(r, BaseException)]
    outcome = results
    if failed:
        reasons = sorted({type(r).__name__ for r in results if r is not None})
        log.warning("the log refused %d of %d events: %s", len(failed), len(todo), ", ".join(reasons))
        await store.release(ctx.pool, failed, ctx.instance)
    if ok:
        settling = time.monotonic()
        settled = audit if not failed else None  # a 503 is audited by the caller
        erased = [p.target_ref for p in ok if isinstance(p.payload, ErasureRequest) and p.target_ref]
        if erased:
            for ref in erased:
                ctx.data_keys.pop(ref, None)
            async with ctx.pool.acquire() as conn, conn.transaction():
                await store.erase(conn, erased)
                await store.mark_accepted(conn, [([p.key for p in ok], settled)], ctx.instance)
        else:
            await ctx.settle.submit([([p.key for p in ok], settled)])
        SETTLE_SECONDS.observe(time.monotonic() - settling)
    PUBLISH_SECONDS.observe(time.monotonic() - started)
    return outcome


def _finish_late(task: asyncio.Task[list[BaseException | None]]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        LATE_WRITES.labels("error").inc()
        log.warning("a late write did not settle its claims: %s", type(exc).__name__)
        return
    results = task.result()
    LATE_WRITES.labels("failed" if any(results) else "accepted").inc()


async def accept(
    ctx: IntakeContext, principal: Principal, prepared: list[Prepared], audit: store.AuditRecord | None = None
) -> Accepted:
    """Accept validated events: 202 material, or a Problem (422 unknown retraction, 503).
    ``audit`` (the request's record, counts filled in here) is written with the outcome."""
    received_at = datetime.now(UTC)
    if any(p.target_ref is None for p in prepared):  # retractions: most requests have none
        prepared = await _resolve_retractions(ctx, prepared)
    result = Accepted()
    first: dict[tuple[str, str], Prepared] = {}
    repeated: list[Prepared] = []  # the same (source, id) twice in one batch
    for p in prepared:
        if p.key in first:
            repeated.append(p)
        else:
            first[p.key] = p
    unique = list(first.values())
    sealed = _seal_identities(ctx, unique)
    candidates = {ref: wrapped for ref, (wrapped, _) in sealed.candidates.items()}
    claims = [
        store.Claim(
            p.envelope.source, p.envelope.id, p.incident_id, p.target_ref or "", p.kind.value,
            principal.partner, p.event_id, ciphertext := sealed.ciphertexts.get(p.key),
            None if ciphertext is None else candidates.get(p.target_ref or ""),
        )
        for p in unique
    ]
    claiming = time.monotonic()
    answers = await ctx.claims.submit(claims)
    if candidates:
        try:
            await _keep_lost_identities(ctx, unique, sealed, claims, answers)
        except Exception:  # nothing written yet: free the claims so that a retry writes them
            made = [(c.source, c.report_id) for c, a in zip(claims, answers, strict=True) if a.made]
            with contextlib.suppress(Exception):
                await store.release(ctx.pool, made, ctx.instance)
            raise
    CLAIM_SECONDS.observe(time.monotonic() - claiming)
    claimed = {(c.source, c.report_id) for c, a in zip(claims, answers, strict=True) if a.made}
    # Accepted before: a duplicate at once. Anything else is being written by another request.
    seen = {(c.source, c.report_id): a.seen for c, a in zip(claims, answers, strict=True)
            if not a.made and a.seen is not None and a.seen.status == "accepted"}
    others = [p.key for p in unique if p.key not in claimed and p.key not in seen]
    if others:
        try:
            settled, taken = await _wait_for_others(ctx, others)
        except Problem:
            await store.release(ctx.pool, sorted(claimed), ctx.instance)
            raise
        seen.update(settled)
        claimed |= taken
    todo = [p for p in unique if p.key in claimed]
    duplicates = len(unique) - len(todo) + len(repeated)
    if audit is not None:
        audit = dataclasses.replace(audit, accepted=len(todo), duplicates=duplicates,
                                    outcome="accepted" if todo else "duplicate")
    if todo:
        keys = {p.key for p in todo}
        ctx.in_flight |= keys
        task = asyncio.create_task(_publish(ctx, todo, principal, received_at, audit))
        task.add_done_callback(lambda _: ctx.in_flight.difference_update(keys))
        try:
            done, _ = await asyncio.wait({task}, timeout=ctx.publish_timeout)  # the write goes on
            if not done:
                raise TimeoutError
            outcome = task.result()
        except TimeoutError:
            ctx.background.add(task)
            task.add_done_callback(ctx.background.discard)
            task.add_done_callback(_finish_late)
            _UNAVAILABLE.inc(len(todo))
            raise _unavailable(
                "The log did not confirm the write in time; the events were NOT accepted. Retry "
                "with the same ids: a write that completes late is then answered as a duplicate."
            ) from None
        except Exception as exc:
            log.warning("publishing failed: %s", type(exc).__name__)
            raise _unavailable("The log or the database cannot take the write; the events were "
                               "NOT accepted.") from exc
        if any(isinstance(r, _TOO_LARGE) for r in outcome):
            written = sum(1 for r in outcome if r is None)
            raise Problem(413, "Content Too Large", "An event is too large for the log; the events "
                          "were NOT accepted" + (f" ({written} of {len(todo)} were written: a retry "
                          "lists them as duplicates)." if written else "."))
        if any(outcome):
            _UNAVAILABLE.inc(len(todo))
            written = sum(1 for r in outcome if r is None)
            raise _unavailable(
                "The log refused the write; the events were NOT accepted"
                + (f" ({written} of {len(todo)} were written: a retry lists them as duplicates)."
                   if written else ".")
            )
    for p in unique:
        if p.key in claimed:
            result.accepted.append(_entry(p))
        else:
            row = seen.get(p.key)
            entry = _entry(p)
            if row is not None and row.incident_id is not None:
                entry["incident_id"] = row.incident_id
            result.duplicates.append(entry)
    result.duplicates += [_entry(p) for p in repeated]
    if not todo and audit is not None:
        await ctx.settle.submit([((), audit)])  # grouped with other requests' records
    _ACCEPTED.inc(len(result.accepted))
    _DUPLICATE.inc(len(result.duplicates))
    return result


async def stop_background(ctx: IntakeContext, within: float) -> None:
    """Let late writes settle their claims before the producer and the pool close."""
    tasks: Sequence[asyncio.Task[Any]] = list(ctx.background)
    if tasks:
        await asyncio.wait(tasks, timeout=within)
