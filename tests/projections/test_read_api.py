"""The §2 read API against the real broker and database: what a dashboard, a partner and the
public each get to see."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta
from typing import Any

import pytest

from tests.harness import wait_for
from tests.projections.conftest import Projections
from tests.projections.logdata import T0, LogWriter, alert, classified, report, retraction

INC1 = report(1, occurred_on=date(2024, 6, 1), narrative="He was taken from his flat by four men.")
INC2_FIRST = report(2, country="TR", occurred_on=date(2024, 5, 1))
INC2_AMENDED = report(
    2, country="TH", occurred_on=date(2024, 5, 1), acts=("family_threatened",), received_at=T0 + timedelta(minutes=5)
)
INC3 = report(3, occurred_on=date(2024, 2, 1))
INC4 = report(4, group="dissident", occurred_on=date(2024, 4, 1), acts=("family_threatened",))
INC5 = report(5, group="dissident", occurred_on=date(2024, 3, 1), partner="ngo-b", target_ref=INC1.target_ref)
INC6 = report(6, country="TR", occurred_on=date(2023, 7, 1), partner="ngo-b")
INC7 = report(
    7, country="KG", occurred_on=date(2023, 2, 1), acts=("online_threat",), narrative="Messages threatening his mother."
)


@pytest.fixture(scope="module")
async def seeded(projections: Projections) -> Projections:
    async with LogWriter(projections.settings) as log:
        await log.reported(INC1)
        await log.classified(classified(INC1))
        # An amendment overtakes the classification of the first version.
        await log.reported(INC2_FIRST)
        await log.reported(INC2_AMENDED, amended=True)
        await log.classified(classified(INC2_AMENDED))
        await log.classified(classified(INC2_FIRST))
        await log.reported(INC3)
        await log.classified(classified(INC3))
        await log.retracted(retraction(INC3))
        await log.reported(INC4)
        await log.classified(classified(INC4, version="test-v1"))
        await log.classified(classified(INC4, version="test-v2"))  # `tnrwatch replay classifier`
        for incident in (INC5, INC6):
            await log.reported(incident)
            await log.classified(classified(incident))
        await log.reported(INC7)  # not classified yet
        await log.erased(INC7.target_ref, T0 + timedelta(days=1))
        await log.poison()
        await log.alert(alert("fp1", "open"))
        await log.alert(alert("fp1", "acknowledged"))
        await log.alert(alert("fp2", "open", severity="high", target_ref="tgt-000006", incident_ids=["inc-000006"]))
        await log.alert(alert("fp3", "open"))
        await log.alert(alert("fp3", "resolved"))
    sent = 2 + 4 + 3 + 3 + 4 + 1 + 1 + 5  # everything but the poison record

    async def applied() -> bool:
        r = await projections.client.get("/v1/projections/status", headers=projections.auth("public"))
        return r.status_code == 200 and r.json()["events_applied"] == sent

    await wait_for(applied, what="every seeded event applied")
    return projections


async def _get(p: Projections, who: str, path: str, **params: Any) -> Any:
    response = await p.client.get(path, params=params, headers=p.auth(who))
    assert response.status_code == 200, response.text
    return response.json()


async def test_incident_has_its_current_classification(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_b", "/v1/incidents/inc-000001")
    assert body["country"] == "TH" and body["occurred_on"] == "2024-06-01" and body["retracted"] is False
    assert body["classification"]["ir_categories"] == ["IR3"]
    assert body["classification"]["pace_methods"] == ["direct_attack"]
    assert [a["type"] for a in body["acts"]] == ["kidnapping"]


async def test_amendment_wins_over_a_late_classification_of_the_old_version(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", "/v1/incidents/inc-000002")
    assert body["country"] == "TH"
    assert body["classification"]["ir_categories"] == ["IR1"]


async def test_reclassification_replaces_the_old_classifier_version(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", "/v1/incidents/inc-000004")
    assert body["classification"]["classifier_version"] == "test-v2"


async def test_retracted_incident_is_marked_and_left_out_of_lists(seeded: Projections) -> None:
    assert (await _get(seeded, "ngo_a", "/v1/incidents/inc-000003"))["retracted"] is True
    listed = await _get(seeded, "ngo_a", "/v1/incidents", limit=100)
    assert "inc-000003" not in [i["incident_id"] for i in listed["incidents"]]
    everything = await _get(seeded, "ngo_a", "/v1/incidents", include_retracted="true")
    assert "inc-000003" in [i["incident_id"] for i in everything["incidents"]]


async def test_narrative_sources_and_spans_only_for_the_reporting_partner_and_admins(seeded: Projections) -> None:
    own = await _get(seeded, "ngo_a", "/v1/incidents/inc-000001")
    assert own["narrative"]["text"].startswith("He was taken")
    assert own["sources"][0]["url"] == "https://example.org/1"
    assert any("span" in e for e in own["classification"]["evidence"])
    admin = await _get(seeded, "admin", "/v1/incidents/inc-000001")
    assert admin["narrative"] == own["narrative"]
    other = await _get(seeded, "ngo_b", "/v1/incidents/inc-000001")
    assert "narrative" not in other and "sources" not in other
    assert "He was taken" not in json.dumps(other) and "taken" not in json.dumps(other["classification"])
    assert {e["rule"] for e in other["classification"]["evidence"]} == {"act:kidnapping", "text:en"}


async def test_erasure_removes_quoted_text_even_for_the_owner(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", "/v1/incidents/inc-000007")
    assert body["narrative"] is None and body["sources"] == []
    assert body["country"] == "KG"  # the facts that count stay


async def test_filters_and_cursor_pagination(seeded: Projections) -> None:
    async def ids(**params: Any) -> list[str]:
        return [i["incident_id"] for i in (await _get(seeded, "ngo_a", "/v1/incidents", **params))["incidents"]]

    assert await ids(country="TH") == ["inc-000001", "inc-000002", "inc-000004", "inc-000005"]
    assert await ids(country="TR,KG") == ["inc-000006", "inc-000007"]
    assert await ids(group="dissident") == ["inc-000004", "inc-000005"]
    assert await ids(method="threat_from_distance") == ["inc-000002", "inc-000004"]
    assert await ids(method="kidnapping_or_luring", ir="IR3") == ["inc-000001", "inc-000005", "inc-000006"]
    assert await ids(**{"from": "2024-03-01", "to": "2024-05-31"}) == ["inc-000002", "inc-000004", "inc-000005"]

    first = await _get(seeded, "ngo_a", "/v1/incidents", country="TH", limit=3)
    assert [i["incident_id"] for i in first["incidents"]] == ["inc-000001", "inc-000002", "inc-000004"]
    second = await _get(seeded, "ngo_a", "/v1/incidents", country="TH", limit=3, cursor=first["next_cursor"])
    assert [i["incident_id"] for i in second["incidents"]] == ["inc-000005"]
    assert second["next_cursor"] is None


async def test_target_timeline_lists_every_incident_and_act_in_order(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", f"/v1/targets/{INC1.target_ref}/timeline")
    assert [i["incident_id"] for i in body["incidents"]] == ["inc-000005", "inc-000001"]
    assert [(a["on"], a["incident_id"], a["type"]) for a in body["acts"]] == [
        ("2024-03-01", "inc-000005", "kidnapping"),
        ("2024-06-01", "inc-000001", "kidnapping"),
    ]
    assert "narrative" not in body["incidents"][0]  # inc 5 is ngo-b's
    assert body["incidents"][1]["narrative"] is not None  # inc 1 is ngo-a's own


async def test_exact_stats_for_incident_readers(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", "/v1/stats", by="country")
    assert body["suppressed"] is False and body["total_incidents"] == 6
    assert {c["country"]: c["incidents"] for c in body["cells"]} == {"TH": 4, "TR": 1, "KG": 1}
    by_ir = await _get(seeded, "ngo_a", "/v1/stats", by="ir_category")
    assert {c["ir_category"]: c["incidents"] for c in by_ir["cells"]} == {"IR1": 2, "IR3": 3, None: 1}
    cube = await _get(seeded, "ngo_a", "/v1/stats", by="country,pace_method,ccdi_method,ir_category,group,year")
    assert sum(c["incidents"] for c in cube["cells"]) == 6  # one label per scheme each here
    assert {
        "country": "TH",
        "pace_method": "threat_from_distance",
        "ccdi_method": "persuade_to_return",
        "ir_category": "IR1",
        "group": "uyghur",
        "year": 2024,
        "incidents": 1,
    } in cube["cells"]
    filtered = await _get(seeded, "ngo_a", "/v1/stats", by="year", country="TH")
    assert filtered["cells"] == [{"year": 2024, "incidents": 4}]


async def test_small_cells_are_suppressed_for_readers_without_incidents_read(seeded: Projections) -> None:
    body = await _get(seeded, "public", "/v1/stats", by="country")
    assert body["suppressed"] is True and body["k"] == 3 and "total_incidents" not in body
    cells = {c["country"]: c for c in body["cells"]}
    assert cells["TH"]["incidents"] == 4
    assert cells["TR"] == {"country": "TR", "incidents": None, "suppressed": True}
    assert cells["KG"]["incidents"] is None
    # One small cell beside a total would give itself away: its neighbour is hidden too.
    total = await _get(seeded, "public", "/v1/stats", by="")
    assert total["cells"] == [{"incidents": 6}]
    by_group = await _get(seeded, "public", "/v1/stats", by="group", country="TH")
    assert all(c["incidents"] is None for c in by_group["cells"])  # uyghur 2, dissident 2


async def test_public_readers_see_no_incident_level_data(seeded: Projections) -> None:
    for path in (
        "/v1/incidents/inc-000001",
        "/v1/incidents",
        f"/v1/targets/{INC1.target_ref}/timeline",
        "/v1/export.csv",
        "/v1/export.jsonl",
    ):
        response = await seeded.client.get(path, headers=seeded.auth("public"))
        assert response.status_code == 403, path
        assert response.headers["content-type"] == "application/problem+json"
        assert "incidents:read" in response.json()["detail"]


async def test_errors_are_problem_details(seeded: Projections) -> None:
    anonymous = await seeded.client.get("/v1/stats")
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    bad_key = await seeded.client.get("/v1/stats", headers={"authorization": "Bearer tnr_nope_nope"})
    assert bad_key.status_code == 401
    missing = await seeded.client.get("/v1/incidents/inc-999999", headers=seeded.auth("ngo_a"))
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    bad = await seeded.client.get(
        "/v1/incidents", params={"country": "Thailand", "group": "martians", "limit": 0}, headers=seeded.auth("ngo_a")
    )
    assert bad.status_code == 422
    pointers = {e["pointer"] for e in bad.json()["errors"]}
    assert "/query/limit" in pointers or {"/query/country", "/query/group"} <= pointers
    dims = await seeded.client.get("/v1/stats", params={"by": "country,shoe_size"}, headers=seeded.auth("ngo_a"))
    assert dims.status_code == 422 and dims.json()["errors"] == [
        {"pointer": "/query/by", "detail": "unknown dimension 'shoe_size'"}
    ]
    cursor = await seeded.client.get("/v1/incidents", params={"cursor": "garbage!"}, headers=seeded.auth("ngo_a"))
    assert cursor.status_code == 422 and cursor.json()["errors"][0]["pointer"] == "/query/cursor"


async def test_csv_and_jsonl_exports_of_the_filtered_list(seeded: Projections) -> None:
    response = await seeded.client.get("/v1/export.csv", params={"country": "TH"}, headers=seeded.auth("ngo_a"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["incident_id"] for r in rows] == ["inc-000001", "inc-000002", "inc-000004", "inc-000005"]
    assert rows[0]["ir_categories"] == "IR3" and rows[0]["act_types"] == "kidnapping"
    assert "taken" not in response.text  # never quoted text in CSV
    lines = await seeded.client.get("/v1/export.jsonl", params={"country": "TH"}, headers=seeded.auth("ngo_a"))
    items = [json.loads(line) for line in lines.text.splitlines()]
    assert [i["incident_id"] for i in items] == ["inc-000001", "inc-000002", "inc-000004", "inc-000005"]
    assert items[0]["narrative"]["text"].startswith("He was taken")  # ngo-a's own
    assert "narrative" not in items[3]  # ngo-b's


async def test_alerts_view_follows_the_alerts_events(seeded: Projections) -> None:
    body = await _get(seeded, "ngo_a", "/v1/dashboard/alerts")
    assert [(a["fingerprint"], a["status"]) for a in body["alerts"]] == [("fp1", "acknowledged"), ("fp2", "open")]
    resolved = await _get(seeded, "ngo_a", "/v1/dashboard/alerts", status="resolved")
    assert [a["fingerprint"] for a in resolved["alerts"]] == ["fp3"]
    assert (await seeded.client.get("/v1/dashboard/alerts", headers=seeded.auth("ngo_b"))).status_code == 403


async def test_etag_and_if_none_match(seeded: Projections) -> None:
    headers = seeded.auth("ngo_a")
    first = await seeded.client.get("/v1/stats", params={"by": "country"}, headers=headers)
    etag = first.headers["etag"]
    again = await seeded.client.get("/v1/stats", params={"by": "country"}, headers={**headers, "if-none-match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""
    other_reader = await seeded.client.get(
        "/v1/stats", params={"by": "country"}, headers={**seeded.auth("public"), "if-none-match": etag}
    )
    assert other_reader.status_code == 200  # a suppressed view is a different representation
    export = await seeded.client.get("/v1/export.csv", headers=headers)
    assert (
        await seeded.client.get("/v1/export.csv", headers={**headers, "if-none-match": export.headers["etag"]})
    ).status_code == 304

    async with LogWriter(seeded.settings) as log:
        late = report(8, country="TH", occurred_on=date(2024, 8, 1))
        await log.reported(late)

    async def changed() -> Any:
        r = await seeded.client.get("/v1/stats", params={"by": "country"}, headers={**headers, "if-none-match": etag})
        return r if r.status_code == 200 else None

    fresh = await wait_for(changed, what="a new ETag after a new event")
    assert fresh.headers["etag"] != etag
    assert {c["country"]: c["incidents"] for c in fresh.json()["cells"]}["TH"] == 5


async def test_openapi_documents_every_read_with_examples(seeded: Projections) -> None:
    spec = (await seeded.client.get("/openapi.json")).json()
    for path in (
        "/v1/incidents/{incident_id}",
        "/v1/incidents",
        "/v1/targets/{target_ref}/timeline",
        "/v1/stats",
        "/v1/export.csv",
        "/v1/export.jsonl",
        "/v1/dashboard/alerts",
    ):
        get = spec["paths"][path]["get"]
        ok = get["responses"]["200"]["content"]
        assert any("example" in media for media in ok.values()), path
        assert {"304", "401"} <= set(get["responses"]), path
    params = {p["name"] for p in spec["paths"]["/v1/incidents"]["get"]["parameters"]}
    assert {"country", "group", "method", "ir", "from", "to", "cursor", "limit"} <= params
