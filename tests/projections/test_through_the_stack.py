"""The sample reports through intake and the classifier into the read models, seen only
through the public HTTP APIs: what a partner posts is what the dashboard counts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.settings import Settings
from tests.conftest import Stack, start_stack
from tests.harness import ROOT, issue_key, wait_for

SAMPLES = [json.loads(line) for line in (ROOT / "tests" / "data" / "incidents.jsonl").read_text().splitlines() if line]
STRUCTURED = {"content-type": "application/cloudevents+json"}


@pytest.fixture
async def own_stack(fresh_settings: Settings) -> AsyncIterator[Stack]:
    async for value in start_stack(fresh_settings):
        yield value


async def test_sample_reports_amendment_and_retraction_reach_the_statistics(own_stack: Stack) -> None:
    stack = own_stack
    key = await issue_key(
        stack.settings,
        partner="sample-ngo",
        sources=["urn:partner:sample-ngo"],
        scopes=["events:write", "incidents:read"],
    )
    public = await issue_key(stack.settings, partner="newsroom", sources=[], scopes=[])
    auth, public_auth = {"authorization": f"Bearer {key}"}, {"authorization": f"Bearer {public}"}
    ids: dict[str, str] = {}
    for sample in SAMPLES:
        r = await stack.intake.post("/v1/events", json=sample["event"], headers={**auth, **STRUCTURED})
        assert r.status_code == 202, r.text
        ids[sample["event"]["id"]] = r.json()["accepted"][0]["incident_id"]

    async def all_classified() -> list[dict[str, Any]] | None:
        r = await stack.projections.get("/v1/incidents", params={"limit": 100}, headers=auth)
        items = r.json()["incidents"] if r.status_code == 200 else []
        done = [i for i in items if i["classification"]]
        return items if len(done) == len(SAMPLES) else None

    incidents = await wait_for(all_classified, timeout=90, what="every sample classified in the read model")
    assert {i["incident_id"] for i in incidents} == set(ids.values())
    assert all("Person" not in json.dumps(i) for i in incidents)  # identities never leave intake

    by_ir = (await stack.projections.get("/v1/stats", params={"by": "ir_category"}, headers=auth)).json()
    expected = Counter(ir for i in incidents for ir in (i["classification"]["ir_categories"] or [None]))
    assert {c["ir_category"]: c["incidents"] for c in by_ir["cells"]} == dict(expected)
    by_country = (await stack.projections.get("/v1/stats", params={"by": "country"}, headers=auth)).json()
    assert by_country["total_incidents"] == len(SAMPLES)
    assert {c["country"]: c["incidents"] for c in by_country["cells"]} == Counter(
        s["event"]["data"]["location"]["country"] for s in SAMPLES
    )
    hidden = (await stack.projections.get("/v1/stats", params={"by": "country"}, headers=public_auth)).json()
    assert all(c["incidents"] is None for c in hidden["cells"])  # one incident per country: all too small

    # The partner corrects report 01 (now in Kazakhstan) and withdraws report 12.
    first = SAMPLES[0]["event"]
    amended = {
        **first,
        "id": "sample-01-amended",
        "type": "org.tnrwatch.incident.amended.v1",
        "data": {**first["data"], "location": {"country": "KZ", "city": "Almaty"}},
    }
    twelfth = SAMPLES[11]["event"]
    retracted = {
        "specversion": "1.0",
        "id": "sample-12-retracted",
        "source": twelfth["source"],
        "type": "org.tnrwatch.incident.retracted.v1",
        "subject": twelfth["subject"],
        "data": {"reason": "reported in error"},
    }
    for event in (amended, retracted):
        r = await stack.intake.post("/v1/events", json=event, headers={**auth, **STRUCTURED})
        assert r.status_code == 202, r.text

    async def corrected() -> dict[str, Any] | None:
        stats = (await stack.projections.get("/v1/stats", params={"by": "country"}, headers=auth)).json()
        cells = {c["country"]: c["incidents"] for c in stats["cells"]}
        return stats if "KZ" in cells and "AU" not in cells else None

    stats = await wait_for(corrected, timeout=60, what="the amendment and the retraction in the statistics")
    assert stats["total_incidents"] == len(SAMPLES) - 1
    assert "KG" not in {c["country"] for c in stats["cells"]}
    withdrawn = (await stack.projections.get(f"/v1/incidents/{ids['sample-12']}", headers=auth)).json()
    assert withdrawn["retracted"] is True
