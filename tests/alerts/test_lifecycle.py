"""One situation, one alert: the pure lifecycle, and the receivers file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.alerts.delivery import alertmanager_payload
from services.alerts.engine import Cause, Evaluation
from services.alerts.lifecycle import LifecycleError, acknowledge, on_evaluation, resolve
from services.alerts.receivers import Backoff, ReceiversError, parse_receivers
from shared.events import AlertSeverity, AlertStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ev(
    ids: tuple[str, ...],
    *,
    holds: bool = True,
    deadline: date | None = None,
    as_of: int = 0,
    cause: Cause = Cause.REPORTED,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
) -> Evaluation:
    return Evaluation(
        rule="R2_imminent_refoulement",
        severity=severity,
        key_kind="target_ref",
        key_value="t",
        fingerprint="fp",
        holds=holds,
        cause=cause,
        incident_ids=ids,
        summary="s",
        deadline=deadline,
        deadline_as_of=NOW + timedelta(minutes=as_of) if deadline else None,
        first_received=NOW,
        last_received=NOW + timedelta(minutes=as_of),
    )


def test_raise_once_update_quietly_and_notify_on_deadline_moves() -> None:
    raised = on_evaluation(None, ev(("a",), deadline=date(2025, 4, 15)), new_alert_id="x", now=NOW)
    assert raised is not None and raised.notify_key == "0:raised" and raised.record.status == AlertStatus.OPEN
    quiet = on_evaluation(raised.record, ev(("a", "b"), deadline=date(2025, 4, 15), as_of=1), new_alert_id="x", now=NOW)
    assert quiet is not None and quiet.notify_key is None and quiet.record.incident_ids == ("a", "b")
    moved = on_evaluation(quiet.record, ev(("a", "b"), deadline=date(2025, 5, 2), as_of=2), new_alert_id="x", now=NOW)
    assert moved is not None and moved.notify_key == "0:updated:critical:2025-05-02"
    # A replay walking through the older version does not move the deadline back.
    assert (
        on_evaluation(moved.record, ev(("a",), deadline=date(2025, 4, 15), as_of=0), new_alert_id="x", now=NOW) is None
    )
    assert (
        on_evaluation(moved.record, ev(("a", "b"), deadline=date(2025, 5, 2), as_of=2), new_alert_id="x", now=NOW)
        is None
    )


def test_severity_rise_notifies() -> None:
    first = on_evaluation(None, ev(("a",), severity=AlertSeverity.HIGH), new_alert_id="x", now=NOW)
    assert first is not None
    rise = on_evaluation(first.record, ev(("a",), severity=AlertSeverity.CRITICAL), new_alert_id="x", now=NOW)
    assert rise is not None and rise.notify_key == "0:updated:critical:-"


def test_retraction_resolves_and_only_a_new_incident_reopens() -> None:
    raised = on_evaluation(None, ev(("a",)), new_alert_id="x", now=NOW)
    assert raised is not None
    gone = on_evaluation(raised.record, ev(("a",), holds=False, cause=Cause.RETRACTED), new_alert_id="x", now=NOW)
    assert gone is not None and gone.record.status == AlertStatus.RESOLVED and gone.record.resolved_by == "engine"
    assert on_evaluation(gone.record, ev(("a",)), new_alert_id="x", now=NOW) is None
    back = on_evaluation(gone.record, ev(("a", "c")), new_alert_id="x", now=NOW)
    assert back is not None and back.record.status == AlertStatus.OPEN and back.notify_key == "1:raised"


def test_ack_then_resolve_by_hand_and_refuse_the_impossible() -> None:
    raised = on_evaluation(None, ev(("a",)), new_alert_id="x", now=NOW)
    assert raised is not None
    acked = acknowledge(raised.record, who="p/k", why="on it", now=NOW)
    assert acked.notify_key is None and acked.record.acknowledged_by == "p/k"
    with pytest.raises(LifecycleError):
        acknowledge(acked.record, who="p/k", why="again", now=NOW)
    done = resolve(acked.record, who="p/k", why="safe", now=NOW)
    assert done.notify_key == "0:resolved" and done.record.resolved_reason == "safe"
    with pytest.raises(LifecycleError):
        resolve(done.record, who="p/k", why="again", now=NOW)


def test_alertmanager_payload_shape() -> None:
    raised = on_evaluation(None, ev(("a",), deadline=date(2025, 4, 15)), new_alert_id="x", now=NOW)
    assert raised is not None
    body = alertmanager_payload("hook", [{"kind": "raised", "alert": raised.record.to_api()}], "http://a")
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "hook"
    (alert,) = body["alerts"]
    assert alert["labels"] == {
        "alertname": "R2_imminent_refoulement",
        "rule": "R2_imminent_refoulement",
        "severity": "critical",
        "target_ref": "t",
    }
    assert alert["annotations"]["deadline"] == "2025-04-15" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["fingerprint"] == "fp"


def test_receivers_file_is_validated_and_backoff_is_capped() -> None:
    with pytest.raises(ReceiversError) as caught:
        parse_receivers(
            {"receivers": [{"name": "x", "type": "pager"}, {"name": "y", "type": "webhook", "url": "ftp://"}]}
        )
    assert "receivers[0].type" in str(caught.value) and "receivers[1].url" in str(caught.value)
    backoff = Backoff(initial_seconds=1, max_seconds=300)
    assert [backoff.delay(n) for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]


def test_the_alert_event_json_is_what_pydantic_would_write() -> None:
    """The alerts topic, history and outbox carry ``event_json``: written out by hand for speed,
    it must stay what the contract's model dumps (UTC as ``Z``, dates as ISO, enums as values)."""
    from shared.events import MatchedAct
    from shared.vocabulary import ActStatus, ActType

    raised = on_evaluation(None, ev(("a", "b"), deadline=date(2025, 4, 15)), new_alert_id="x", now=NOW)
    assert raised is not None
    acts = (
        MatchedAct(
            incident_id="a",
            act_index=0,
            type=ActType("extradition_request"),
            on=date(2025, 3, 1),
            status=ActStatus("pending"),
        ),
        MatchedAct(
            incident_id="b", act_index=2, type=ActType("family_threatened"), on=None, status=ActStatus("carried_out")
        ),
    )
    for record in [
        raised.record,
        replace(raised.record, matched_acts=acts, last_seen=NOW + timedelta(microseconds=120_000), deadline=None),
        replace(
            raised.record, first_seen=datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=2))), place="IT/rome"
        ),
    ]:
        assert record.event_json() == record.to_event().model_dump(mode="json")
