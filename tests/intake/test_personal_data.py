"""Personal data: pseudonyms link partners, identities are sealed, erasure shreds them, and no
identity field appears in clear on the log, in logs, in answers, metrics or tables."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.serialization import from_record
from shared.settings import Settings
from tests.intake.conftest import BATCH, OTHER_SOURCE, Keys, auth, body, log_records, report

NAME = "Zhang Person-Sigma"
NAME_ZH = "张西格玛"
BIRTH = "1982-11-23"
ERASE = "org.tnrwatch.subject.erasure-requested.v1"


def with_identity(event_id: str, identity: dict[str, Any], source: str = "urn:partner:sample-ngo") -> dict[str, Any]:
    event = report(event_id, source=source)
    event["data"]["target"]["identity"] = identity
    return event


def erasure(event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": "urn:tnrwatch:ops", "type": ERASE, "data": data}


async def target_of(settings: Settings, report_id: str) -> str:
    for record in await log_records(settings):
        event = from_record(record.value, record.headers)
        if isinstance(event.data, dict) and event.data.get("report_id") == report_id:
            return str(event.data["target_ref"])
    raise AssertionError(f"{report_id} is not on the log")


async def table_dump(settings: Settings) -> str:
    conn = await asyncpg.connect(settings.database_url)
    try:
        out = []
        for table in ("intake_reports", "intake_target_keys", "intake_audit"):
            out += [str(dict(r)) for r in await conn.fetch(f"SELECT * FROM {table}")]
        return "\n".join(out)
    finally:
        await conn.close()


async def test_two_partners_reporting_one_person_share_a_target_ref(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    a = with_identity("pd-a", {"name": "Li Wei Person", "birth_date": "1990-04-04"})
    b = with_identity("pd-b", {"name": "  PERSON,  li   wei ", "birth_date": "1990-04-04"}, source=OTHER_SOURCE)
    c = with_identity("pd-c", {"name": "Li Wei Person", "birth_date": "1990-04-05"})
    assert (await intake.post("/v1/events", content=body(a), headers=auth(keys.partner))).status_code == 202
    assert (await intake.post("/v1/events", content=body(b), headers=auth(keys.other))).status_code == 202
    assert (await intake.post("/v1/events", content=body(c), headers=auth(keys.partner))).status_code == 202
    ref_a = await target_of(intake_settings, "pd-a")
    assert ref_a == await target_of(intake_settings, "pd-b")
    assert ref_a != await target_of(intake_settings, "pd-c")  # another birth date: another person


async def test_concurrent_first_reports_of_new_targets_keep_every_identity_readable(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    """New targets' data keys are created for concurrent requests together (group commit);
    two partners reporting one new person at the same moment share its one key, so every
    identity sealed under it opens."""
    shared = {"name": "Concurrent Person-Omega", "birth_date": "1977-07-07"}
    posts = [(f"cc-{n}", {"name": f"Concurrent Person {n}", "birth_date": "1980-01-01"}, keys.partner,
              "urn:partner:sample-ngo") for n in range(12)]
    posts += [("cc-shared-a", shared, keys.partner, "urn:partner:sample-ngo"),
              ("cc-shared-b", {**shared, "name": "PERSON-OMEGA, concurrent"}, keys.other, OTHER_SOURCE)]
    answers = await asyncio.gather(*(
        intake.post("/v1/events", content=body(with_identity(i, identity, source)), headers=auth(key))
        for i, identity, key, source in posts
    ))
    assert [r.status_code for r in answers] == [202] * len(posts), [r.text for r in answers]
    for report_id, identity, _, _ in posts[:12]:
        ref = await target_of(intake_settings, report_id)
        r = await intake.get(f"/v1/targets/{ref}/identity", headers=auth(keys.admin, None))
        assert r.status_code == 200, r.text
        assert r.json()["identities"] == [{**identity, "name_zh": None}]
    ref = await target_of(intake_settings, "cc-shared-a")
    assert ref == await target_of(intake_settings, "cc-shared-b")
    r = await intake.get(f"/v1/targets/{ref}/identity", headers=auth(keys.admin, None))
    assert r.status_code == 200, r.text
    assert sorted(i["name"] for i in r.json()["identities"]) == sorted([shared["name"], "PERSON-OMEGA, concurrent"])


async def test_a_person_known_to_another_intake_keeps_one_key_and_every_identity_readable(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    """A second intake (another worker, or this one restarted: its data key cache is empty)
    reports a person the first one gave a key: the report's identity is sealed under that
    stored key, not a new one, so the admin reads both reports' identities."""
    from services.intake.main import create_app
    from tests.harness import in_process

    first = {"name": "Person Known-Elsewhere", "birth_date": "1971-03-03"}
    r = await intake.post("/v1/events", content=body(with_identity("ke-1", first)), headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    second = {**first, "name": "KNOWN-ELSEWHERE person"}  # the same person, written differently
    async with in_process(create_app(intake_settings)) as other:
        r = await other.post("/v1/events", content=body(with_identity("ke-2", second)), headers=auth(keys.partner))
        assert r.status_code == 202, r.text
        ref = await target_of(intake_settings, "ke-1")
        assert ref == await target_of(intake_settings, "ke-2")
        for reader in (intake, other):
            r = await reader.get(f"/v1/targets/{ref}/identity", headers=auth(keys.admin, None))
            assert r.status_code == 200, r.text
            assert sorted(i["name"] for i in r.json()["identities"]) == sorted([first["name"], second["name"]])


async def test_admin_reads_the_sealed_identity_until_erasure_then_never_again(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    identity = {"name": NAME, "name_zh": NAME_ZH, "birth_date": BIRTH}
    r = await intake.post("/v1/events", content=body(with_identity("er-1", identity)), headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    incident_id = r.json()["accepted"][0]["incident_id"]
    ref = await target_of(intake_settings, "er-1")
    assert NAME not in await table_dump(intake_settings)  # sealed, not in clear

    path = f"/v1/targets/{ref}/identity"
    assert (await intake.get(path, headers=auth(keys.partner, None))).status_code == 403
    r = await intake.get(path, headers=auth(keys.admin, None))
    assert r.status_code == 200, r.text
    assert r.json() == {"target_ref": ref, "identities": [identity]}

    # Erasure by identity fields (the same person, written differently).
    request = erasure("er-req-1", {"name": "person-sigma ZHANG", "birth_date": BIRTH})
    r = await intake.post("/v1/events", content=body(request), headers=auth(keys.admin))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == [{"id": "er-req-1", "target_ref": ref}]

    gone = await intake.get(path, headers=auth(keys.admin, None))
    assert gone.status_code == 410
    assert NAME not in gone.text
    erased = [from_record(rec.value, rec.headers) for rec in await log_records(intake_settings)]
    assert [e.data for e in erased if e.type == "org.tnrwatch.subject.erased.v1" and e.data["target_ref"] == ref]
    conn = await asyncpg.connect(intake_settings.database_url)
    try:
        row = await conn.fetchrow("SELECT wrapped_key, erased_at FROM intake_target_keys WHERE target_ref = $1", ref)
        sealed = await conn.fetchval(
            "SELECT count(*) FROM intake_reports WHERE target_ref = $1 AND identity_ciphertext IS NOT NULL", ref)
        kept = await conn.fetchval("SELECT count(*) FROM intake_reports WHERE incident_id = $1", incident_id)
    finally:
        await conn.close()
    assert row["wrapped_key"] is None and row["erased_at"] is not None
    assert sealed == 0
    assert kept == 1  # the report itself stays: statistics remain correct

    # The same person reported again after erasure: accepted, identity not kept again.
    r = await intake.post("/v1/events", content=body(with_identity("er-2", identity)), headers=auth(keys.partner))
    assert r.status_code == 202
    assert await target_of(intake_settings, "er-2") == ref
    assert (await intake.get(path, headers=auth(keys.admin, None))).status_code == 410


async def test_erasure_by_target_ref_and_its_refusals(intake: httpx.AsyncClient, keys: Keys,
                                                        intake_settings: Settings) -> None:
    event = with_identity("er-3", {"name": "Person Tau", "birth_date": "1975-01-01"})
    assert (await intake.post("/v1/events", content=body(event), headers=auth(keys.partner))).status_code == 202
    ref = await target_of(intake_settings, "er-3")
    request = body(erasure("er-req-3", {"target_ref": ref}))
    r = await intake.post("/v1/events", content=request, headers=auth(keys.admin))
    assert r.status_code == 202, r.text
    assert (await intake.get(f"/v1/targets/{ref}/identity", headers=auth(keys.admin, None))).status_code == 410

    for data in ({}, {"target_ref": ref, "name": "x"}, {"birth_date": "1975-01-01"}, {"nickname": "x"}):
        r = await intake.post("/v1/events", content=body(erasure("er-bad", data)), headers=auth(keys.admin))
        assert r.status_code == 422, (data, r.text)


async def test_no_identity_field_leaks_to_the_log_logs_traces_answers_metrics_or_tables(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)  # intake installed the SDK at start-up
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    identity = {"name": "Person Upsilon Leakcheck", "name_zh": "泄漏检查", "birth_date": "1966-06-16"}
    needles = ["Upsilon", "Leakcheck", "泄漏检查", "1966-06-16"]
    answers: list[httpx.Response] = []
    answers.append(await intake.post("/v1/events", content=body(with_identity("leak-1", identity)),
                                     headers=auth(keys.partner)))
    batch = [with_identity(f"leak-b{i}", identity) for i in range(3)]
    answers.append(await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH)))
    # Refused reports carrying the identity: the errors must not echo it.
    bad = with_identity("leak-2", {**identity, "birth_date": "2999-01-01"})
    bad["data"]["location"]["country"] = "ZZ"
    answers.append(await intake.post("/v1/events", content=body(bad), headers=auth(keys.partner)))
    wrong = with_identity("leak-3", {"name": 12345, "name_zh": identity["name_zh"], "birth_date": "1966-06-16x"})
    answers.append(await intake.post("/v1/events", content=body(wrong), headers=auth(keys.partner)))
    answers.append(await intake.post("/v1/events", content=body(with_identity("leak-4", identity, OTHER_SOURCE)),
                                     headers=auth(keys.partner)))
    answers.append(await intake.post("/v1/events", content=body(erasure("leak-e", {"name": identity["name"]})),
                                     headers=auth(keys.partner)))
    assert [a.status_code for a in answers] == [202, 202, 422, 422, 403, 403]
    answers.append(await intake.get("/metrics"))

    records = await log_records(intake_settings)
    assert len(records) >= 4
    log_bytes = b"".join(
        (r.key or b"") + r.value + b"".join(k.encode() + v for k, v in r.headers) for r in records
    )
    texts = {
        "the log": log_bytes.decode("utf-8", errors="replace"),
        "the service logs": caplog.text + json.dumps([r.getMessage() for r in caplog.records]),
        "the answers": "".join(a.text for a in answers),
        "the tables": await table_dump(intake_settings),
        "the traces": json.dumps([
            {"name": span.name, "attributes": dict(span.attributes or {}),
             "events": [(e.name, dict(e.attributes or {})) for e in span.events]}
            for span in spans.get_finished_spans()
        ], default=str),
    }
    assert spans.get_finished_spans()
    spans.shutdown()  # the processor stays on the session's provider; it keeps nothing more
    for where, text in texts.items():
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {where}"
    assert "leak-1" in texts["the log"]  # the scan did see the reports
