"""Partner contract §1 against the real broker and database: the three modes, every status
code, idempotency, audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import httpx

from shared.auth import revoke_key
from shared.serialization import from_record
from shared.settings import Settings
from tests.harness import in_process, wait_for
from tests.infra import Infra
from tests.intake.conftest import (
    BATCH,
    OTHER_SOURCE,
    SOURCE,
    STRUCTURED,
    Keys,
    auth,
    body,
    log_records,
    make_keys,
    make_settings,
    report,
    samples,
)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["title"]
    return doc


def pointers(doc: dict[str, Any]) -> list[str]:
    return [e["pointer"] for e in doc.get("errors", [])]


async def records_for(settings: Settings, report_ids: set[str]) -> list[Any]:
    out = []
    for record in await log_records(settings):
        event = from_record(record.value, record.headers)
        if isinstance(event.data, dict) and event.data.get("report_id") in report_ids:
            out.append((record, event))
    return out


# --- the three modes ---------------------------------------------------------------------------


async def test_every_sample_is_accepted_in_structured_mode(intake: httpx.AsyncClient, keys: Keys) -> None:
    for event in samples():
        r = await intake.post("/v1/events", content=body(event), headers=auth(keys.partner))
        assert r.status_code == 202, r.text
        assert r.json()["accepted"][0]["id"] == event["id"]


async def test_structured_report_reaches_the_log_pseudonymised_with_its_extensions(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    event = report("struct-1", target={"identity": {"name": "Person Omicron", "birth_date": "1970-02-02"},
                                       "group": "uyghur", "nationality": "CN", "status_abroad": "refugee"})
    event["partnerref"] = "case-77"  # a CloudEvents extension attribute
    event["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await intake.post("/v1/events", content=body(event), headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    accepted = r.json()["accepted"]
    assert accepted == [{"id": "struct-1", "incident_id": accepted[0]["incident_id"]}]
    assert r.json()["duplicates"] == []

    [(record, internal)] = await records_for(intake_settings, {"struct-1"})
    assert internal.type == "org.tnrwatch.incident.reported.v1"
    assert internal.data["incident_id"] == accepted[0]["incident_id"]
    assert internal.data["target_ref"].startswith("tr_")
    assert record.key == internal.data["target_ref"].encode()
    assert internal.data["facts"]["target"] == {"group": "uyghur", "nationality": "CN", "status_abroad": "refugee"}
    assert internal.extensions["partnerref"] == "case-77"
    headers = dict(record.headers)
    # The partner's trace continues: same trace id, a new span of intake's.
    assert headers["traceparent"].split(b"-")[1] == b"0af7651916cd43dd8448eb211c80319c"
    assert b"Omicron" not in record.value and b"1970-02-02" not in record.value


async def test_binary_mode_takes_attributes_from_ce_headers(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    data = report("x")["data"]
    headers = {
        **auth(keys.partner, "application/json"),
        "ce-specversion": "1.0", "ce-id": "bin-1", "ce-source": SOURCE,
        "ce-type": "org.tnrwatch.incident.reported.v1", "ce-subject": "REF%20bin-1",
        "ce-partnerref": "binary%2Fcase",
    }
    r = await intake.post("/v1/events", content=body(data), headers=headers)
    assert r.status_code == 202, r.text
    [(_, internal)] = await records_for(intake_settings, {"bin-1"})
    assert internal.data["subject"] == "REF bin-1"  # percent-decoded, as the binding says
    assert internal.extensions["partnerref"] == "binary/case"

    missing = {k: v for k, v in headers.items() if k != "ce-type"}
    doc = problem(await intake.post("/v1/events", content=body(data), headers=missing), 422)
    assert "/headers/ce-type" in pointers(doc)


async def test_batch_is_accepted_whole_with_duplicates_listed(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    first = report("batch-0")
    r = await intake.post("/v1/events", content=body(first), headers=auth(keys.partner))
    assert r.status_code == 202
    events = [first] + [report(f"batch-{i}") for i in range(1, 50)] + [report("batch-7")]
    r = await intake.post("/v1/events", content=body(events), headers=auth(keys.partner, BATCH))
    assert r.status_code == 202, r.text
    result = r.json()
    assert sorted(a["id"] for a in result["accepted"]) == sorted(f"batch-{i}" for i in range(1, 50))
    assert sorted(d["id"] for d in result["duplicates"]) == ["batch-0", "batch-7"]
    found = await records_for(intake_settings, {f"batch-{i}" for i in range(50)})
    assert sorted(e.data["report_id"] for _, e in found) == sorted(f"batch-{i}" for i in range(50))


async def test_batch_is_all_or_nothing_and_names_every_bad_field(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    good = report("aon-0")
    typo = report("aon-1")
    typo["data"]["acts"][0]["satus"] = "carried_out"  # a typo must not silently drop a field
    future = report("aon-2", occurred_on=(date.today() + timedelta(days=3)).isoformat())
    r = await intake.post("/v1/events", content=body([good, typo, future]), headers=auth(keys.partner, BATCH))
    doc = problem(r, 422)
    assert "/1/data/acts/0/satus" in pointers(doc)
    assert "/2/data/occurred_on" in pointers(doc)
    assert await records_for(intake_settings, {"aon-0", "aon-1", "aon-2"}) == []
    # Nothing was claimed either: the good event is accepted (not a duplicate) when re-sent.
    r = await intake.post("/v1/events", content=body(good), headers=auth(keys.partner))
    assert r.json()["accepted"][0]["id"] == "aon-0"


async def test_batch_over_500_events_is_refused(intake: httpx.AsyncClient, keys: Keys) -> None:
    events = [report(f"big-{i}") for i in range(501)]
    doc = problem(await intake.post("/v1/events", content=body(events), headers=auth(keys.partner, BATCH)), 422)
    assert "500" in doc["title"] + doc["detail"]


# --- idempotency -------------------------------------------------------------------------------


async def test_repost_is_a_duplicate_and_nothing_is_emitted_again(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    event = report("dup-1")
    first = await intake.post("/v1/events", content=body(event), headers=auth(keys.partner))
    again = await intake.post("/v1/events", content=body(event), headers=auth(keys.partner))
    assert first.status_code == again.status_code == 202
    assert again.json() == {"accepted": [], "duplicates": first.json()["accepted"]}
    assert len(await records_for(intake_settings, {"dup-1"})) == 1


async def test_concurrent_reposts_of_one_event_write_it_once(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    event = report("race-1")
    answers = await asyncio.gather(*[
        intake.post("/v1/events", content=body(event), headers=auth(keys.partner)) for _ in range(12)
    ])
    assert [a.status_code for a in answers] == [202] * 12, [a.text for a in answers]
    assert sum(len(a.json()["accepted"]) for a in answers) == 1
    assert sum(len(a.json()["duplicates"]) for a in answers) == 11
    assert len(await records_for(intake_settings, {"race-1"})) == 1


# --- refusals ---------------------------------------------------------------------------------


async def test_malformed_json_is_400(intake: httpx.AsyncClient, keys: Keys) -> None:
    problem(await intake.post("/v1/events", content=b'{"id": ', headers=auth(keys.partner)), 400)
    problem(await intake.post("/v1/events", content=b"\xff\xfe", headers=auth(keys.partner)), 400)


async def test_missing_bad_and_revoked_keys_are_401(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    event = body(report("auth-1"))
    problem(await intake.post("/v1/events", content=event, headers={"content-type": STRUCTURED}), 401)
    problem(await intake.post("/v1/events", content=event, headers=auth("tnr_nope_nope")), 401)
    problem(await intake.post("/v1/events", content=event, headers=auth(keys.partner + "x")), 401)

    key = await make_keys(intake_settings)  # fresh keys, so the others stay valid
    assert (await intake.post("/v1/events", content=event, headers=auth(key.partner))).status_code == 202
    conn = await asyncpg.connect(intake_settings.database_url)
    try:
        assert await revoke_key(conn, key.partner.split("_")[1])
    finally:
        await conn.close()

    async def refused() -> bool:
        r = await intake.post("/v1/events", content=body(report("auth-2")), headers=auth(key.partner))
        return r.status_code == 401

    # Authenticated keys are cached for auth_cache_seconds (5 s): revocation holds within it.
    await wait_for(refused, timeout=15, interval=0.5, what="the revoked key to be refused")


async def test_source_not_owned_and_missing_scope_are_403(intake: httpx.AsyncClient, keys: Keys) -> None:
    doc = problem(await intake.post("/v1/events", content=body(report("own-1", source=OTHER_SOURCE)),
                                    headers=auth(keys.partner)), 403)
    assert "/source" in pointers(doc)
    problem(await intake.post("/v1/events", content=body(report("own-2")), headers=auth(keys.reader)), 403)
    erasure = {"specversion": "1.0", "id": "er-x", "source": SOURCE,
               "type": "org.tnrwatch.subject.erasure-requested.v1", "data": {"target_ref": "tr_x"}}
    doc = problem(await intake.post("/v1/events", content=body(erasure), headers=auth(keys.partner)), 403)
    assert "admin" in json.dumps(doc)


async def test_bodies_over_the_limits_are_413_before_being_read(intake: httpx.AsyncClient, keys: Keys) -> None:
    event = report("big-1")
    event["data"]["narrative"] = {"text": "x" * (1024 * 1024), "lang": "en"}
    problem(await intake.post("/v1/events", content=body(event), headers=auth(keys.partner)), 413)

    sent = 0

    async def endless() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        nonlocal sent
        yield b'{"specversion": "1.0", "data": "'
        for _ in range(64 * 1024):
            sent += 1
            yield b"y" * 1024
        yield b'"}'

    problem(await intake.post("/v1/events", content=endless(), headers=auth(keys.partner)), 413)
    assert sent < 64 * 1024  # refused before the whole body was read

    batch = [report(f"bigb-{i}") for i in range(9)]
    for e in batch:
        e["data"]["narrative"] = {"text": "z" * (1000 * 1000), "lang": "en"}
    problem(await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH)), 413)


async def test_unsupported_content_type_is_415(intake: httpx.AsyncClient, keys: Keys) -> None:
    for content_type in ("text/plain", None, "application/xml"):
        r = await intake.post("/v1/events", content=body(report("ct-1")), headers=auth(keys.partner, content_type))
        problem(r, 415)


async def test_schema_violations_are_422_with_the_field_named(intake: httpx.AsyncClient, keys: Keys) -> None:
    cases: list[tuple[dict[str, Any], str]] = []
    e = report("v-1")
    e["data"]["location"]["country"] = "XX"
    cases.append((e, "/data/location/country"))
    e = report("v-2")
    e["data"]["acts"][0]["type"] = "red_notice"
    cases.append((e, "/data/acts/0/type"))
    e = report("v-3")
    e["data"]["target"]["group"] = "uighur"
    cases.append((e, "/data/target/group"))
    e = report("v-4")
    e["data"]["sources"][0]["reliability"] = "G"
    cases.append((e, "/data/sources/0/reliability"))
    e = report("v-5")
    e["data"]["acts"][1]["on"] = (date.today() + timedelta(days=1)).isoformat()
    cases.append((e, "/data/acts"))
    e = report("v-6")
    e["data"]["outcome"] = "vanished"
    cases.append((e, "/data/outcome"))
    e = report("v-7", date_precision="month", occurred_on="2024")
    cases.append((e, "/data"))
    e = report("v-8")
    e["data"]["target"]["identity"]["nickname"] = "x"
    cases.append((e, "/data/target/identity/nickname"))
    e = report("v-9")
    e["specversion"] = "0.3"
    cases.append((e, "/specversion"))
    e = report("v-10")
    e["type"] = "org.tnrwatch.incident.deleted.v1"
    cases.append((e, "/type"))
    e = report("v-11")
    del e["subject"]
    cases.append((e, "/subject"))
    e = report("v-12")
    e["Bad-Extension"] = "x"
    cases.append((e, "/Bad-Extension"))
    e = report("v-13")
    e["data"]["sources"][0]["credibility"] = 7
    cases.append((e, "/data/sources/0/credibility"))
    for event, pointer in cases:
        doc = problem(await intake.post("/v1/events", content=body(event), headers=auth(keys.partner)), 422)
        assert pointer in pointers(doc), (pointer, doc)
        assert "Person Alpha" not in json.dumps(doc)


async def test_date_precision_is_honoured(intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings) -> None:
    r = await intake.post("/v1/events", content=body(report("prec-1", date_precision="month", occurred_on="2023-05")),
                          headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    r = await intake.post("/v1/events", content=body(report("prec-2", date_precision="year", occurred_on="2023-05-17")),
                          headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    found = {e.data["report_id"]: e.data["facts"]["occurred_on"]
             for _, e in await records_for(intake_settings, {"prec-1", "prec-2"})}
    assert found == {"prec-1": "2023-05-01", "prec-2": "2023-01-01"}


async def test_retraction_needs_a_reported_incident(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    retraction = {"specversion": "1.0", "id": "ret-1", "source": SOURCE, "subject": "REF-never",
                  "type": "org.tnrwatch.incident.retracted.v1", "data": {"reason": "duplicate report"}}
    doc = problem(await intake.post("/v1/events", content=body(retraction), headers=auth(keys.partner)), 422)
    assert "/subject" in pointers(doc)
    batch = [report("ret-9"), {**retraction, "id": "ret-8"}]
    doc = problem(await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH)), 422)
    assert pointers(doc) == ["/1/subject"]
    assert await records_for(intake_settings, {"ret-9"}) == []  # all or nothing
    reported = report("ret-0", subject="REF-ret")
    retraction.update(id="ret-2", subject="REF-ret")
    r = await intake.post("/v1/events", content=body([reported, retraction]), headers=auth(keys.partner, BATCH))
    assert r.status_code == 202, r.text
    written = await records_for(intake_settings, {"ret-0", "ret-2"})
    found = {e.data["report_id"]: (record.key, e) for record, e in written}
    assert found["ret-2"][1].type == "org.tnrwatch.incident.retracted.v1"
    assert found["ret-2"][0] == found["ret-0"][0]  # same partition key: stays behind the report


async def test_rate_limit_is_429_with_retry_after(infra: Infra) -> None:
    from services.intake.main import create_app

    settings = await make_settings(infra, rate_limit_per_minute=3)
    keys = await make_keys(settings)
    async with in_process(create_app(settings)) as client:
        answers = [await client.post("/v1/events", content=body(report(f"rl-{i}")), headers=auth(keys.partner))
                   for i in range(4)]
        assert [a.status_code for a in answers[:3]] == [202, 202, 202]
        problem(answers[3], 429)
        assert int(answers[3].headers["retry-after"]) >= 1
        # Another partner has its own budget.
        r = await client.post("/v1/events", content=body(report("rl-o", source=OTHER_SOURCE)), headers=auth(keys.other))
        assert r.status_code == 202


async def test_every_request_leaves_an_audit_record_without_personal_data(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    await intake.post("/v1/events", content=body(report("audit-1")), headers=auth(keys.partner))
    await intake.post("/v1/events", content=body(report("audit-1")), headers=auth(keys.partner))
    await intake.post("/v1/events", content=body(report("audit-2", source=OTHER_SOURCE)), headers=auth(keys.partner))
    await intake.post("/v1/events", content=body(report("audit-3")), headers=auth("tnr_abc_wrong"))
    conn = await asyncpg.connect(intake_settings.database_url)
    try:
        rows = await conn.fetch("SELECT * FROM intake_audit WHERE 'audit-1' = ANY(report_ids) "
                                "OR 'audit-2' = ANY(report_ids) OR key_id = 'abc' ORDER BY audit_id")
        everything = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM intake_audit")], default=str)
    finally:
        await conn.close()
    assert [(r["status"], r["outcome"]) for r in rows] == [
        (202, "accepted"), (202, "duplicate"), (403, "refused"), (401, "refused"),
    ]
    assert rows[0]["partner"] == "sample-ngo" and rows[0]["key_id"] == keys.partner.split("_")[1]
    assert "Person Alpha" not in everything and "1985-05-05" not in everything


async def test_an_amendment_keeps_the_incident_id(
    intake: httpx.AsyncClient, keys: Keys, intake_settings: Settings
) -> None:
    first = report("am-0", subject="REF-am")
    r = await intake.post("/v1/events", content=body(first), headers=auth(keys.partner))
    incident_id = r.json()["accepted"][0]["incident_id"]
    amended = report("am-1", subject="REF-am", outcome="released")
    amended["type"] = "org.tnrwatch.incident.amended.v1"
    r = await intake.post("/v1/events", content=body(amended), headers=auth(keys.partner))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == [{"id": "am-1", "incident_id": incident_id}]
    [(_, internal)] = await records_for(intake_settings, {"am-1"})
    assert internal.type == "org.tnrwatch.incident.amended.v1"
    assert internal.data["facts"]["outcome"] == "released"


async def test_one_event_over_1_mib_in_a_small_enough_batch_is_413(intake: httpx.AsyncClient, keys: Keys) -> None:
    big = report("bigone-1")
    big["data"]["narrative"] = {"text": "w" * (1100 * 1000), "lang": "en"}
    batch = [report("bigone-0"), big]
    doc = problem(await intake.post("/v1/events", content=body(batch), headers=auth(keys.partner, BATCH)), 413)
    assert pointers(doc) == ["/1"]
