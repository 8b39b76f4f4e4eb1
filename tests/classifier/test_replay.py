"""``tnrwatch replay classifier`` re-labels the whole log, and the projections follow."""

from __future__ import annotations

import asyncio
from typing import Any

from services.classifier.pipeline import classify_incident
from services.classifier.replay import replay_log
from services.classifier.service import ClassifierLoop
from shared.events import Classification, EventType, IncidentClassified, IncidentRecorded
from shared.kafka import ensure_topics, topics_for
from shared.settings import Settings
from shared.vocabulary import ActType
from tests.classifier.helpers import decode, put_on_log, put_raw, read_all, recorded, retracted
from tests.harness import in_process, issue_key, wait_for


def rules_v2(incident: IncidentRecorded) -> IncidentClassified:
    """Stands for a rule change: same labels plus a new classifier_version."""
    current = classify_incident(incident).classification
    return IncidentClassified(
        incident=incident,
        classification=Classification(**{**current.model_dump(by_alias=True), "classifier_version": "rules-v2"}),
    )


async def test_replay_reclassifies_the_log_and_projections_show_the_new_version(fresh_settings: Settings) -> None:
    from services.projections.main import create_app as projections_app

    settings = fresh_settings
    await ensure_topics(settings)
    topics = topics_for(settings)
    kept = recorded("rp-1", acts=[ActType.PASSPORT_CANCELLED])
    gone = recorded("rp-2", narrative="He was lured to Belgrade and kidnapped.")
    await put_on_log(settings, topics.incidents, [
        (EventType.INCIDENT_REPORTED, kept),
        (EventType.INCIDENT_REPORTED, gone),
        (EventType.INCIDENT_RETRACTED, retracted(gone)),
    ])
    await put_raw(settings, topics.incidents, b"garbage", [("ce_specversion", b"1.0")])
    key = await issue_key(settings, partner="sample-ngo", sources=["urn:partner:sample-ngo"], scopes=["incidents:read"])
    auth = {"authorization": f"Bearer {key}"}

    async with in_process(projections_app(settings)) as projections:
        async def version_of(incident_id: str, wanted: str) -> dict[str, Any] | None:
            r = await projections.get(f"/v1/incidents/{incident_id}", headers=auth)
            body = r.json() if r.status_code == 200 else {}
            c = body.get("classification") or {}
            return body if c.get("classifier_version") == wanted else None

        live = ClassifierLoop(settings)
        task = asyncio.create_task(live.run())
        try:
            first = await wait_for(lambda: _classified(settings, 2), timeout=60, what="the live classification")
            current_version = first[0].classification.classifier_version
            await wait_for(lambda: version_of("rp-1", current_version), timeout=60, what="projection, first version")

            result = await replay_log(settings, rules_v2, progress=False)

            incident = await wait_for(lambda: version_of("rp-1", "rules-v2"), timeout=60, what="projection follows")
        finally:
            live.stop()
            await asyncio.wait_for(task, 30)

    assert result.read == 4 and result.written == 3 and result.skipped_poison == 1
    assert incident["classification"]["pace_methods"] == ["mobility_impediment"]
    out = decode(await read_all(settings, topics.classifications))
    replayed = [
        d for _, d in out if isinstance(d, IncidentClassified) and d.classification.classifier_version == "rules-v2"
    ]
    assert sorted(d.incident.incident_id for d in replayed) == ["rp-1", "rp-2"]
    assert [t for t, _ in out].count(EventType.INCIDENT_RETRACTED) == 2  # live, then replayed


async def _classified(settings: Settings, n: int) -> list[IncidentClassified] | None:
    out = [d for _, d in decode(await read_all(settings, topics_for(settings).classifications))
           if isinstance(d, IncidentClassified)]
    return out if len(out) >= n else None


def test_tnrwatch_replay_classifier_command(fresh_settings: Settings, monkeypatch, capsys) -> None:
    from cli.main import main as tnrwatch
    from shared.settings import get_settings
    from tests.harness import settings_env

    settings = fresh_settings
    asyncio.run(ensure_topics(settings))
    reports = [recorded(f"cli-{i}", narrative="他在曼谷被绑架。") for i in range(5)]
    log = [(EventType.INCIDENT_REPORTED, r) for r in reports]
    asyncio.run(put_on_log(settings, topics_for(settings).incidents, log))
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        assert tnrwatch(["replay", "classifier"]) == 0
    finally:
        get_settings.cache_clear()

    assert "read 5 events, wrote 5" in capsys.readouterr().out
    # Kafka answers a transaction's commit before it has written the commit markers, so a
    # read_committed reader may see the last records a moment later (a flake seen in CI).
    out = asyncio.run(wait_for(lambda: _classified(settings, 5), timeout=30, what="the replayed classifications"))
    assert sorted(d.incident.incident_id for d in out) == [f"cli-{i}" for i in range(5)]
    assert all(d.classification.ir_categories == ["IR3"] for d in out)
