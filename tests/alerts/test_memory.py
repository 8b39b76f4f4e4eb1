"""Memory of the alerts service: what each committed batch leaves is frozen out of the cyclic
GC's generations (``HeapFreezer``), so states must be freed by reference counting when the
cache evicts them, and cyclic garbage made elsewhere must still be collected eventually."""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator

import pytest

from services.alerts.engine import Upsert
from services.alerts.service import HeapFreezer
from services.alerts.store import StateCache
from tests.alerts.test_engine import World, report, snapshot


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_automatic_collections")
def test_an_evicted_state_is_freed_at_once() -> None:
    world = World()
    for n in range(3):
        facts = report([("interpol_red_notice", "2025-01-01", "carried_out"), ("assault", "2025-01-09", "pending")])
        world.apply(Upsert(snapshot(f"e{n}", facts, target_ref=f"t{n}")))
    cache = StateCache(capacity=2)
    keys = sorted(world.states)
    first = weakref.ref(world.states[keys[0]])
    for key in keys:
        cache.put(key, uuid.uuid4(), world.states.pop(key))  # the third evicts the first
    assert len(cache.entries) == 2
    assert first() is None


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic GC frees it


@pytest.mark.usefixtures("no_automatic_collections")
def test_frozen_cyclic_garbage_is_collected_once_the_frozen_heap_has_grown() -> None:
    heap = HeapFreezer(floor=10_000, interval=0.0)
    heap.enable()
    try:
        heap.after_batch()  # the first batch
        leaked = _Node()
        garbage = weakref.ref(leaked)
        del leaked
        kept = [[n] for n in range(5_000)]  # what a batch leaves: below the floor
        heap.after_batch()
        assert garbage() is not None and heap.full_collections == 0  # frozen, not collected yet
        kept += [[n] for n in range(10_000)]  # the frozen heap grows past the floor
        heap.after_batch()
        assert garbage() is None and heap.full_collections == 1
        assert len(kept) == 15_000
    finally:
        heap.disable()
        gc.unfreeze()
        gc.callbacks.remove(heap._on_collection)
