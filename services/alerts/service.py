"""Alerts' service layer: one batch of classified incidents and retractions in, one database
transaction out (rule state, alerts, their history, the outbox, and the consumer offsets)."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import orjson
from prometheus_client import Counter
from pydantic import BaseModel

from services.alerts import store
from services.alerts.engine import (
    Cause,
    Change,
    Engine,
    Evaluation,
    IncidentSnapshot,
    KeyState,
    Removal,
    Upsert,
)
from services.alerts.lifecycle import AlertChange, AlertRecord, on_evaluation
from services.alerts.receivers import KAFKA_RECEIVER, ReceiversConfig
from services.alerts.store import IncidentFiling, Outgoing, Silence
from shared.consumer import Consumed
from shared.events import CloudEvent, IncidentClassified, IncidentRetracted
from shared.serialization import event_data

log = logging.getLogger(__name__)

ALERT_CHANGES = Counter("tnrwatch_alert_changes_total", "Alert changes", ["rule", "kind"])
_ALERT_NAMESPACE = uuid.UUID("0b7f6c52-3a0e-4c71-9d3c-6f4f0e2a9b15")


def alert_id_for(fingerprint: str) -> str:
    """Stable: the same situation has the same alert id, even after a rebuild."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, fingerprint))


def decode(event: CloudEvent) -> BaseModel:
    return event_data(event)


def outgoing_for(
    change: AlertChange,
    receivers: ReceiversConfig,
    silenced: bool,
    event_json: dict[str, Any] | None = None,
    api_json: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """Every change is published on the alerts topic; receivers hear of it only when it is
    worth notifying (raised, resolved, severity up, deadline new or moved) and not silenced."""
    record = change.record
    event = event_json if event_json is not None else record.event_json()
    out = [Outgoing(KAFKA_RECEIVER, f"rev:{record.revision}", {"type": change.kind.event_type.value, "data": event})]
    if change.notify_key is not None and not silenced:
        alert = api_json if api_json is not None else record.to_api(event)
        out.extend(
            Outgoing(r.name, change.notify_key, {"kind": change.kind.value, "alert": alert})
            for r in receivers.receivers
            if r.wants(record.rule, record.severity)
        )
    return out


def recorded(
    change: AlertChange, receivers: ReceiversConfig, silences: Sequence[Silence], now: datetime, *, count: bool = True
) -> store.Recorded:
    r = change.record
    silenced = any(s.mutes(r.rule, r.target_ref, r.place, now) for s in silences)
    if count:  # a staged batch counts its changes once committed
        ALERT_CHANGES.labels(r.rule, change.kind.value).inc()
    event = r.event_json()  # once per change: the alert row, its history and the outbox share it
    api = r.to_api(event)
    return store.Recorded(change, silenced, outgoing_for(change, receivers, silenced, event, api), event, api)


async def commit_changes(
    conn: asyncpg.Connection, changes: Sequence[AlertChange], receivers: ReceiversConfig, now: datetime
) -> list[int]:
    """Record the changes (alerts, history, outbox) and announce them once committed."""
    if not changes:
        return []
    silences = await store.active_silences(conn)
    change_ids = await store.record_changes(conn, [recorded(c, receivers, silences, now) for c in changes])
    await store.announce(conn, change_ids)
    return change_ids


@dataclass
class BatchFold:
    """A batch's incidents and retractions folded into key states (pure: the states, filings
    and watermark are given; the sequential and the staged path share it)."""

    engine: Engine
    states: dict[str, KeyState]
    filings: dict[str, IncidentFiling]
    watermark: date | None
    touched_states: set[str] = field(default_factory=set)
    touched_filings: set[str] = field(default_factory=set)
    evaluations: list[Evaluation] = field(default_factory=list)

    def _fold(self, key: str, change: Change) -> None:
        self.states[key], found = self.engine.fold(key, self.states.get(key, KeyState()), change, self.watermark)
        self.touched_states.add(key)
        self.evaluations.extend(found)

    def add(self, value: IncidentClassified | IncidentRetracted, snap: IncidentSnapshot | None) -> None:
        filings = self.filings
        if snap is not None:
            filing = filings.get(snap.incident_id)
            if filing is not None and (filing.retracted or filing.received_at > snap.received_at):
                return  # retracted, or an older version than the one we hold
            cause = Cause.AMENDED if filing is not None else Cause.REPORTED
            latest = snap.latest_date
            self.watermark = latest if self.watermark is None else max(self.watermark, latest)
            keys = self.engine.keys_for(snap)
            for key in filing.keys if filing else []:
                if key not in keys:  # the amendment moved the incident (e.g. another city)
                    self._fold(key, Removal(snap.incident_id, Cause.AMENDED))
            for key in keys:
                self._fold(key, Upsert(snap, cause))
            filings[snap.incident_id] = IncidentFiling(keys, snap.received_at)
            self.touched_filings.add(snap.incident_id)
        else:
            assert isinstance(value, IncidentRetracted)
            filing = filings.get(value.incident_id)
            for key in filing.keys if filing and not filing.retracted else []:
                self._fold(key, Removal(value.incident_id, Cause.RETRACTED))
            filings[value.incident_id] = IncidentFiling([], value.received_at, retracted=True)
            self.touched_filings.add(value.incident_id)


def alert_changes(
    evaluations: Sequence[Evaluation], alerts: dict[str, AlertRecord], now: datetime
) -> list[AlertChange]:
    """What the rules' verdicts do to the alerts (``alerts`` is updated as they change)."""
    changes = []
    for ev in evaluations:
        change = on_evaluation(alerts.get(ev.fingerprint), ev, new_alert_id=alert_id_for(ev.fingerprint), now=now)
        if change is None:
            continue
        alerts[ev.fingerprint] = change.record
        changes.append(change)
    return changes


def _items(batch: Sequence[Consumed[BaseModel]]) -> list[IncidentClassified | IncidentRetracted]:
    return [i.value for i in batch if isinstance(i.value, IncidentClassified | IncidentRetracted)]


def _incident_id(value: IncidentClassified | IncidentRetracted) -> str:
    return value.incident.incident_id if isinstance(value, IncidentClassified) else value.incident_id


class HeapFreezer:
    """After each committed batch, what it left in memory (the cached states, mostly) leaves
    the cyclic GC's generations (``gc.freeze``): gen-0 collections no longer scan the
    ~100,000 new long-lived objects of every batch (10-15 % of the service's CPU). Safe
    because key states hold no reference cycles (a test holds it): an evicted state is freed
    by reference counting, frozen or not.

    Cyclic garbage made elsewhere in the process (API requests, delivery, exceptions) would
    stay frozen, so a full collection runs once the objects frozen since the last one
    outnumber those it left (and ``floor``), at most every ``interval`` seconds: memory stays
    within about twice what is live plus a minute's leaked garbage (none measured per batch).
    Objects are counted from the GC's gen-0 counter (tracked allocations less deallocations),
    read at each freeze and before each automatic collection: counting the frozen objects
    walks them all (0.47 s with the benchmark's seeded state in the process).

    Between freezes the young generation holds little but the batch in flight (~200,000
    objects on the realistic mix, all alive: gen-0 collections at the usual 100,000 found
    nothing to free, 14 per 10,000 events, 0.66-0.9 CPU-s), so ``enable`` raises the gen-0
    threshold above a batch's worth. Off unless the service's ``main`` turns it on (and the
    benchmark, which runs the handler as the service does)."""

    def __init__(self, *, floor: int = 1_000_000, interval: float = 60.0) -> None:
        self.enabled = False
        self.floor = floor  # objects frozen before a full collection is worth its pause
        self.interval = interval
        self.grown = 0  # tracked objects frozen (or collected young) since the last full collection
        self.collect_above = floor
        self._thresholds: tuple[int, int, int] | None = None
        self.full_collections = 0
        self.last_full: float | None = None  # monotonic time of the last (or the first batch)
        gc.callbacks.append(self._on_collection)

    def enable(self, young: int = 1_000_000) -> None:
        self.enabled = True
        self._thresholds = gc.get_threshold()
        gc.set_threshold(young, *self._thresholds[1:])

    def disable(self) -> None:
        self.enabled = False
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and self.last_full is not None:
            self.grown += gc.get_count()[0]  # those that survive move on, to be frozen later

    def after_batch(self) -> None:
        if not self.enabled:
            return
        self.grown += gc.get_count()[0]
        gc.freeze()
        now = time.monotonic()
        if self.last_full is None:
            self.last_full = now
        elif self.grown > self.collect_above and now - self.last_full >= self.interval:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.full_collections += 1
            self.grown = 0
            self.last_full = time.monotonic()
            self.collect_above = max(gc.get_freeze_count(), self.floor)


HEAP = HeapFreezer()

_YIELD_EVERY = 32  # items folded between yields, so the previous batch's statements go on


class AlertsHandler:
    """The consumer's handler: it gets the connection inside the offsets' transaction.

    Two ways in: called with a connection (one batch, sequential: load with locks, fold,
    write), or staged (``stage`` then ``StagedBatch.apply``): the consumer folds batch N+1
    while batch N's writes and commit run. Batch N's results (states, filings, alerts, the
    watermark) are handed to N+1 through ``overlay`` before N commits; N+1 records the version
    of every state and the revision of every alert it built on, and checks them under lock
    before writing. A mismatch (another replica, a monitor's ack, a batch that rolled back)
    makes that batch fold again under lock, as the sequential path does, and the batch staged
    meanwhile is staged again."""

    def __init__(self, engine: Engine, receivers: ReceiversConfig, state_cache: int = 150_000) -> None:
        self.engine = engine
        self.receivers = receivers
        self.states = store.StateCache(state_cache)
        # What staged batches not yet known to be committed wrote, by generation.
        self.overlay_states: dict[str, tuple[int, uuid.UUID | None, KeyState]] = {}
        self.overlay_filings: dict[str, tuple[int, IncidentFiling]] = {}
        self.overlay_alerts: dict[str, tuple[int, AlertRecord]] = {}
        self.overlay_watermark: tuple[int, date] | None = None
        self.generation = 0
        self.epoch = 0  # bumped when the overlay is dropped: batches staged on it are stale
        self.fell_back = 0  # staged batches that had to fold again under lock

    async def __call__(self, conn: asyncpg.Connection, batch: Sequence[Consumed[BaseModel]]) -> None:
        now = datetime.now(UTC)
        items = _items(batch)
        if not items:
            return
        filings = await store.load_filings(conn, [_incident_id(v) for v in items])
        snapshots = {
            id(v): IncidentSnapshot.from_recorded(v.incident) for v in items if isinstance(v, IncidentClassified)
        }
        wanted: set[str] = {k for f in filings.values() for k in f.keys}
        for snap in snapshots.values():
            wanted.update(self.engine.keys_for(snap))
        states = await store.load_states(conn, sorted(wanted), self.states)
        fold = BatchFold(self.engine, states, filings, await store.load_watermark(conn))
        for value in items:
            fold.add(value, snapshots.get(id(value)))
        await store.save_states(conn, {k: states[k] for k in fold.touched_states}, self.states)
        await store.save_filings(conn, {i: filings[i] for i in fold.touched_filings})
        if fold.watermark is not None:
            await store.save_watermark(conn, fold.watermark)
        if fold.evaluations:
            alerts = await store.load_alerts(conn, {e.fingerprint for e in fold.evaluations})
            changes = alert_changes(fold.evaluations, alerts, now)
            for change in changes:
                log.info("alert %s %s (%s)", change.kind.value, change.record.alert_id, change.record.rule)
            await commit_changes(conn, changes, self.receivers, now)

    async def restore(self, pool: asyncpg.Pool, chunk: int = 500) -> int:
        """Fill the state cache from the table at start-up, most recently written states first
        in line, so batches find them decoded (with their rows) instead of reading and
        decoding each key cold: about a sixth of the handler's CPU on the realistic mix.
        Runs beside the consumer, a chunk at a time (~25 ms of decoding between yields, so
        batches and the alert stream are not held up); safe at any moment, since a cached
        state is used only while the table holds its version. Returns the states restored."""
        keys = await store.newest_state_keys(pool, self.states.capacity)
        restored = 0
        for start in range(0, len(keys), chunk):
            for key, version, raw in await store.committed_states(pool, keys[start : start + chunk]):
                if key in self.states.entries or key in self.overlay_states:
                    continue  # a batch got there first, with a version at least as new
                state = KeyState.from_json(orjson.loads(raw))
                self.engine.prepare(state)
                restored += self.states.put_if_absent(key, version, state)
            HEAP.after_batch()  # what it decoded leaves the collector's generations
            await asyncio.sleep(0)
        log.info("restored %d rule states into the cache (capacity %d)", restored, self.states.capacity)
        return restored

    # --- staged -------------------------------------------------------------------------------

    def discard(self) -> None:
        """A commit failed or the consumer restarts: forget what uncommitted batches wrote."""
        self.epoch += 1
        self.overlay_states.clear()
        self.overlay_filings.clear()
        self.overlay_alerts.clear()
        self.overlay_watermark = None

    async def stage(self, pool: asyncpg.Pool, batch: Sequence[Consumed[BaseModel]]) -> StagedBatch:
        """Read (without locks) and fold a batch on top of the batches staged before it."""
        epoch = self.epoch
        self.generation += 1
        staged = StagedBatch(self, batch, epoch, self.generation, datetime.now(UTC))
        items = _items(batch)
        if not items:
            return staged
        snapshots = {
            id(v): IncidentSnapshot.from_recorded(v.incident) for v in items if isinstance(v, IncidentClassified)
        }
        async with pool.acquire() as conn:
            # Batches staged before this one (maybe not committed yet) win over the table.
            ids = [_incident_id(v) for v in items]
            filings = {i: self.overlay_filings[i][1] for i in ids if i in self.overlay_filings}
            filings.update(await store.load_filings(conn, [i for i in ids if i not in filings]))
            wanted: set[str] = {k for f in filings.values() for k in f.keys}
            for snap in snapshots.values():
                wanted.update(self.engine.keys_for(snap))
            versions: dict[str, uuid.UUID | None] = {}
            states: dict[str, KeyState] = {}
            for key in wanted:
                entry = self.overlay_states.get(key)
                if entry is not None:
                    versions[key], states[key] = entry[1], entry[2]
            missing = [k for k in wanted if k not in states]
            for key, (version, state) in (await store.read_states(conn, missing, self.states)).items():
                versions[key], states[key] = version, state
            for key in missing:
                versions.setdefault(key, None)
            watermark = (
                self.overlay_watermark[1]
                if self.overlay_watermark is not None
                else await store.load_watermark(conn, lock=False)
            )
            fold = BatchFold(self.engine, states, filings, watermark)
            for n, value in enumerate(items, start=1):
                fold.add(value, snapshots.get(id(value)))
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            alerts: dict[str, AlertRecord] = {}
            silences: list[Silence] = []
            if fold.evaluations:
                fingerprints = {e.fingerprint for e in fold.evaluations}
                alerts = {f: self.overlay_alerts[f][1] for f in fingerprints if f in self.overlay_alerts}
                alerts.update(await store.read_alerts(conn, [f for f in fingerprints if f not in alerts]))
                staged.alert_revisions = {f: alerts[f].revision if f in alerts else None for f in fingerprints}
                silences = await store.active_silences(conn)
        staged.changes = alert_changes(fold.evaluations, alerts, staged.now)
        await asyncio.sleep(0)
        touched = {k: states[k] for k in fold.touched_states}
        staged.state_versions = {k: versions[k] for k in touched}
        staged.state_writes = store.encode_states(touched)
        await asyncio.sleep(0)
        staged.filings = {i: filings[i] for i in fold.touched_filings}
        staged.watermark = fold.watermark
        staged.encoded = store.encode_changes(
            [recorded(c, self.receivers, silences, staged.now, count=False) for c in staged.changes]
        )
        if self.epoch != epoch:
            return staged  # the overlay was dropped meanwhile: this batch is staged again
        # Hand this batch's results to the next one (synchronous: no stale entry gets in
        # after a discard).
        gen = staged.generation
        written = dict(zip(staged.state_writes.keys, staged.state_writes.versions, strict=True))
        for key, state in touched.items():
            self.overlay_states[key] = (gen, written.get(key), state)
        for incident_id, filing in staged.filings.items():
            self.overlay_filings[incident_id] = (gen, filing)
        for change in staged.changes:
            self.overlay_alerts[change.record.fingerprint] = (gen, change.record)
        if fold.watermark is not None:
            self.overlay_watermark = (gen, fold.watermark)
        return staged

    def _committed(self, staged: StagedBatch) -> None:
        gen = staged.generation
        for key in list(self.overlay_states):
            entry = self.overlay_states[key]
            if entry[0] == gen:
                del self.overlay_states[key]
                if entry[1] is not None:
                    self.states.put(key, entry[1], entry[2])
        for incident_id in [i for i, (g, _) in self.overlay_filings.items() if g == gen]:
            del self.overlay_filings[incident_id]
        for fp in [f for f, (g, _) in self.overlay_alerts.items() if g == gen]:
            del self.overlay_alerts[fp]
        if self.overlay_watermark is not None and self.overlay_watermark[0] == gen:
            self.overlay_watermark = None


@dataclass
class StagedBatch:
    """One batch folded ahead of its transaction: what to write and what it was built on."""

    handler: AlertsHandler
    batch: Sequence[Consumed[BaseModel]]
    epoch: int
    generation: int
    now: datetime
    state_versions: dict[str, uuid.UUID | None] = field(default_factory=dict)
    state_writes: store.StateWrites = field(default_factory=lambda: store.StateWrites([], [], [], []))
    filings: dict[str, IncidentFiling] = field(default_factory=dict)
    watermark: date | None = None
    alert_revisions: dict[str, int | None] = field(default_factory=dict)
    changes: list[AlertChange] = field(default_factory=list)
    encoded: store.EncodedChanges | None = None
    fell_back: bool = False

    @property
    def current(self) -> bool:
        return self.epoch == self.handler.epoch

    async def apply(self, conn: asyncpg.Connection) -> None:
        handler = self.handler
        if not self.state_versions and not self.filings:
            return
        # Check that what this batch built on is what it read, under locks: the watermark's
        # (it serialises replicas, as in the sequential path, and every state write), the
        # alerts' (monitors ack them without it), and the states' versions checked by the
        # statement that writes them.
        await store.load_watermark(conn)
        stale = not self.current
        if not stale and self.alert_revisions:
            revisions = await store.lock_alert_revisions(conn, list(self.alert_revisions))
            stale = any(revisions.get(f) != r for f, r in self.alert_revisions.items())
        if not stale:
            stale = bool(await store.write_states_if_current(conn, self.state_writes, self.state_versions))
        if stale:
            handler.discard()
            handler.fell_back += 1
            self.fell_back = True
            log.info("staged batch built on stale state; folding it again under lock")
            await handler(conn, self.batch)
            return
        await store.save_filings(conn, self.filings)
        if self.watermark is not None:
            await store.save_watermark(conn, self.watermark)
        if self.encoded is not None:
            await store.announce(conn, await store.write_changes(conn, self.encoded))

    def committed(self) -> None:
        if not self.fell_back:  # else the sequential path counted and cached its own results
            self.handler._committed(self)
            for change in self.changes:
                ALERT_CHANGES.labels(change.record.rule, change.kind.value).inc()
                log.info("alert %s %s (%s)", change.kind.value, change.record.alert_id, change.record.rule)
        HEAP.after_batch()
