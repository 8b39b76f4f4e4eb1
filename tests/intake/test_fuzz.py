"""Property-based fuzzing of ``POST /v1/events`` (hypothesis): whatever a client sends, intake
never answers 5xx, and every 4xx is RFC 9457 problem+json."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.intake.conftest import BATCH, STRUCTURED, Keys, report
from tests.intake.mutation import paths_in

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
content_types = st.sampled_from([STRUCTURED, BATCH, "application/json", "text/plain", "",
                                 "application/cloudevents+json; charset=utf-8", "application/xml"])
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def mutated_reports(draw: st.DrawFn) -> dict[str, Any]:
    """A valid report with a few fields replaced, removed or added."""
    event = report(f"fz-{draw(st.integers(0, 10**9))}")
    for _ in range(draw(st.integers(0, 3))):
        paths = [p for p in paths_in(event) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = event
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    return copy.deepcopy(event)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    kind = draw(st.sampled_from(["structured", "batch", "binary", "raw"]))
    headers: dict[str, str] = {"content-type": draw(content_types)}
    if kind == "structured":
        headers["content-type"] = STRUCTURED
        return headers, json.dumps(draw(mutated_reports())).encode()
    if kind == "batch":
        headers["content-type"] = BATCH
        events = draw(st.lists(mutated_reports() | json_values, max_size=4))
        return headers, json.dumps(events).encode()
    if kind == "binary":
        headers["content-type"] = "application/json"
        event = draw(mutated_reports())
        for name in ("specversion", "id", "source", "type", "subject"):
            if name in event and draw(st.booleans()):
                value = str(event[name]) if draw(st.booleans()) else draw(header_text)
                headers[f"ce-{name}"] = value.encode().decode("latin-1")  # raw UTF-8 bytes on the wire
        if draw(st.booleans()):
            headers[f"ce-{draw(st.from_regex(r'[a-z0-9]{1,8}', fullmatch=True))}"] = draw(header_text)
        return headers, json.dumps(event.get("data")).encode()
    raw = draw(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
               | st.sampled_from([b'{"a": "\\ud800"}', b"[" * 5000, b'{"id": 1' + b"0" * 5000 + b"}"]))
    return headers, raw


@pytest.fixture(scope="module")
async def loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_no_request_gets_a_5xx_and_every_4xx_is_a_problem(
    intake: httpx.AsyncClient, keys: Keys, loop: asyncio.AbstractEventLoop
) -> None:
    # hypothesis drives a synchronous test; each request runs on the loop the app lives on.
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=requests(), key=st.sampled_from(["partner", "admin", "reader", "none"]))
    def check(request: tuple[dict[str, str], bytes], key: str) -> None:
        headers, content = request
        if key != "none":
            headers = {**headers, "authorization": f"Bearer {getattr(keys, key)}"}
        wire = {k.encode(): v.encode("latin-1") for k, v in headers.items()}
        response = loop.run_until_complete(intake.post("/v1/events", content=content, headers=wire))
        assert response.status_code < 500, (response.status_code, response.text, content[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json"), response.text
            assert response.json()["status"] == response.status_code
        else:
            assert response.status_code == 202
            assert set(response.json()) == {"accepted", "duplicates"}

    check()


async def test_the_openapi_document_describes_the_request_bodies(intake: httpx.AsyncClient) -> None:
    doc = (await intake.get("/openapi.json")).json()
    body = doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]
    assert set(body) == {STRUCTURED, BATCH, "application/json"}
    schemas = doc["components"]["schemas"]
    assert {"PartnerCloudEvent", "IncidentReport", "ErasureRequest", "RetractionData"} <= set(schemas)
    assert "acts" in schemas["IncidentReport"]["properties"]
