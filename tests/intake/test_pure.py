"""Unit tests of intake's pure modules: pseudonyms, the vault, limits, the HTTP binding."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.intake.binding import Mode, envelope_errors, parse
from services.intake.limits import RateLimiter, TtlCache
from services.intake.models import ErasureRequest, Identity, IncidentReport
from services.intake.pseudonym import event_id_for, incident_id_for, normalise_name, target_ref_for
from services.intake.vault import (
    VaultError,
    master_key_from,
    new_data_key,
    nonces,
    open_identity,
    seal_identity,
    unwrap_data_key,
    wrap_data_key,
)
from shared.problems import Problem

KEY = b"k" * 32


def ref(name: str | None = None, name_zh: str | None = None, birth: str | None = None) -> str:
    identity = Identity(name=name, name_zh=name_zh, birth_date=date.fromisoformat(birth) if birth else None)
    return target_ref_for(KEY, identity, source="urn:s", subject="S-1")


def test_names_normalise_over_case_width_punctuation_and_order() -> None:
    assert ref("Li Wei", birth="1990-01-01") == ref("WEI,  li", birth="1990-01-01")
    assert ref("Ｌｉ Ｗｅｉ") == ref("li wei")  # full-width letters (NFKC)
    assert ref("Li-Wei") == ref("li wei")
    assert ref(name_zh="王 伟") == ref(name_zh="王伟")
    assert ref(name_zh="王伟") != ref(name_zh="伟王")  # Chinese order is meaningful
    assert ref("Li Wei", birth="1990-01-01") != ref("Li Wei", birth="1990-01-02")
    assert ref("Li Wei") != target_ref_for(b"x" * 32, Identity(name="Li Wei"), source="urn:s", subject="S-1")


def test_without_a_name_the_target_is_the_partners_incident_series() -> None:
    assert ref() == target_ref_for(KEY, None, source="urn:s", subject="S-1")
    assert ref() != target_ref_for(KEY, None, source="urn:s", subject="S-2")


@given(st.text(max_size=40))
def test_normalising_twice_changes_nothing(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once


def test_ids_are_deterministic() -> None:
    assert incident_id_for("urn:s", "a") == incident_id_for("urn:s", "a") != incident_id_for("urn:s", "b")
    assert event_id_for("urn:s", "1") == event_id_for("urn:s", "1") != event_id_for("urn:t", "1")


def test_sealed_identities_open_only_with_their_key_and_target() -> None:
    master = master_key_from("ab" * 32)
    data_key = new_data_key()
    wrapped = wrap_data_key(master, data_key, "tr_a")
    assert unwrap_data_key(master, wrapped, "tr_a") == data_key
    identity = Identity(name="Person", birth_date=date(1980, 1, 1))
    sealed = seal_identity(data_key, identity, "tr_a")
    assert b"Person" not in sealed
    assert open_identity(data_key, sealed, "tr_a") == identity
    with pytest.raises(VaultError):
        open_identity(data_key, sealed, "tr_b")  # bound to its target
    with pytest.raises(VaultError):
        open_identity(new_data_key(), sealed, "tr_a")
    with pytest.raises(VaultError):
        unwrap_data_key(master_key_from("cd" * 32), wrapped, "tr_a")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(VaultError):
        open_identity(data_key, tampered, "tr_a")


def test_identities_sealed_together_each_get_their_own_nonce() -> None:
    data_key = new_data_key()
    identity = Identity(name="Person", birth_date=date(1980, 1, 1))
    sealed = [seal_identity(data_key, identity, "tr_a", nonce) for nonce in nonces(50)]
    assert len({s[1:13] for s in sealed}) == 50  # AES-GCM must never reuse a nonce under a key
    assert all(open_identity(data_key, s, "tr_a") == identity for s in sealed)


def test_master_keys_must_be_strong() -> None:
    assert len(master_key_from("x" * 40)) == 32
    with pytest.raises(ValueError, match="32 bytes"):
        master_key_from("short")


def test_rate_limiter_refills_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(60, lambda: now[0])
    assert limiter.peek("a", 60) == 0.0
    assert limiter.take("a", 60) == 0.0
    assert limiter.peek("a") == pytest.approx(1.0)
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0  # partners do not share a bucket
    now[0] = 2.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a", 500) > 0  # larger than the bucket: waits for a full one
    now[0] = 200.0
    assert limiter.take("a", 500) == 0.0


def test_key_cache_expires() -> None:
    now = [0.0]
    cache: TtlCache[str] = TtlCache(5.0, lambda: now[0])
    cache.put("secret", "principal")
    assert cache.get("secret") == "principal"
    assert cache.get("other") is None
    now[0] = 5.1
    assert cache.get("secret") is None


def test_binding_modes() -> None:
    assert parse("application/cloudevents+json; charset=utf-8", {}, b"{}").mode is Mode.STRUCTURED
    assert parse("application/cloudevents-batch+json", {}, b"[]").events == []
    binary = parse("application/json", {"ce-id": "1", "ce-source": "s", "ce-type": "t", "ce-specversion": "1.0",
                                         "ce-subject": "a%20b"}, b"{}")
    assert binary.events[0]["subject"] == "a b"
    with pytest.raises(Problem) as refused:
        parse("text/plain", {}, b"{}")
    assert refused.value.status == 415
    with pytest.raises(Problem) as refused:
        parse("application/cloudevents+json", {}, b'{"a": "\\ud800"}')
    assert refused.value.status == 400


def test_envelope_errors_name_the_attribute() -> None:
    assert envelope_errors({"specversion": "1.0", "id": "1", "source": "s", "type": "t"}) == []
    pointers = [e["pointer"] for e in envelope_errors({"specversion": "2", "id": 5, "Ext": 1, "ok": {"a": 1}})]
    assert pointers == ["/source", "/type", "/id", "/specversion", "/Ext", "/ok"]


def test_report_dates() -> None:
    data = {"occurred_on": "2020-07", "date_precision": "month", "location": {"country": "FR"}}
    assert IncidentReport.model_validate(data).occurred_on == date(2020, 7, 1)
    with pytest.raises(ValidationError):
        IncidentReport.model_validate({**data, "date_precision": "day"})
    with pytest.raises(ValidationError):
        IncidentReport.model_validate({**data, "occurred_on": "2020-13"})


def test_erasure_requests_name_the_target_one_way() -> None:
    assert ErasureRequest.model_validate({"target_ref": "tr_abc"}).as_identity() is None
    assert ErasureRequest.model_validate({"name": "A B"}).as_identity() == Identity(name="A B")
    assert ErasureRequest.model_validate({"identity": {"name_zh": "王伟"}}).as_identity() == Identity(name_zh="王伟")
    for bad in ({}, {"target_ref": "tr_abc", "name": "x"}, {"birth_date": "1990-01-01"}, {"target_ref": "x y"}):
        with pytest.raises(ValidationError):
            ErasureRequest.model_validate(bad)


def test_the_event_on_the_log_is_a_valid_pseudonymised_incident() -> None:
    import json as _json
    from datetime import UTC, datetime

    from services.intake.service import _internal_event
    from services.intake.validation import prepare
    from shared.auth import Principal
    from shared.events import IncidentRecorded
    from shared.serialization import event_data, from_record, to_record
    from tests.intake.conftest import report

    event = report("pure-1")
    event["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event["partnerref"] = "x"
    principal = Principal("k", "sample-ngo", frozenset({"events:write"}), frozenset({event["source"]}))
    [prepared] = prepare([event], principal, KEY, batch=False)
    internal = _internal_event(prepared, principal, datetime.now(UTC))
    record = to_record(internal, key=prepared.target_ref)
    decoded = from_record(record.value, record.headers)
    data = event_data(decoded)
    assert isinstance(data, IncidentRecorded)
    assert data.facts == IncidentReport.model_validate(event["data"]).pseudonymised()
    assert decoded.extensions == {"partnerref": "x"}
    assert "Person Alpha" not in _json.dumps(decoded.data)


@given(st.text(max_size=60), st.text(max_size=60))
def test_fast_uuid5_is_uuid5(source: str, name: str) -> None:
    import uuid

    from services.intake import pseudonym

    expected = str(uuid.uuid5(pseudonym._INCIDENT_NAMESPACE, f"{source}\x00{name}"))
    try:
        f"{source}{name}".encode()
    except UnicodeEncodeError:
        return
    assert incident_id_for(source, name) == expected


@given(st.text(max_size=80))
def test_name_parts_split_where_str_isalnum_says(name: str) -> None:
    """The separator pattern splits exactly where the per-character definition does."""
    import unicodedata

    text = unicodedata.normalize("NFKC", name).casefold()
    tokens = "".join(c if c.isalnum() else " " for c in text).split()
    from services.intake.pseudonym import _ALL_HAN

    expected = "".join(tokens) if tokens and _ALL_HAN.fullmatch("".join(tokens)) else " ".join(sorted(tokens))
    assert normalise_name(name) == expected


@given(st.binary(min_size=20, max_size=20))
def test_target_ref_letters_are_base32(digest: bytes) -> None:
    import base64

    from services.intake.pseudonym import b32_160

    assert b32_160(digest) == base64.b32encode(digest).decode().lower()


@given(st.binary(max_size=100), st.binary(max_size=200))
def test_hmac_from_precomputed_pads_is_hmac(key: bytes, message: bytes) -> None:
    import hmac

    from services.intake.pseudonym import hmac_sha256

    assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


@given(st.binary(max_size=120), st.integers(min_value=1, max_value=64))
def test_a_record_goes_to_the_partition_aiokafka_s_default_partitioner_picks(key: bytes, count: int) -> None:
    """Intake passes the partition to ``send`` itself: each target's events must stay on the
    partition they always went to, whatever the key's length."""
    from aiokafka.partitioner import DefaultPartitioner, murmur2

    from services.intake.partition import murmur2 as fast_murmur2
    from services.intake.partition import partition_for

    partitions = list(range(count))
    assert fast_murmur2(key) == murmur2(key)
    assert partition_for(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON_VALUES, st.booleans())
def test_bodies_read_by_orjson_give_the_standard_library_s_values(value: object, ascii_only: bool) -> None:
    """Bodies are read by orjson where it agrees with ``json.loads`` to the type (integers past
    64 bits among them: orjson would make them floats), else by ``json``."""
    import json

    from services.intake.binding import _loads

    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(body)
    except ValueError:
        return
    got = _loads(body)
    assert repr(got) == repr(expected)
