"""The published contract: every status a route returns is in the OpenAPI spec, integers are
not coerced, 405 names every allowed method, and the control-character policy holds."""

from __future__ import annotations

import httpx
import pytest

from app.api.error_responses import NO_SCOPE, ROUTE_ERRORS
from tests.app.conftest import RunningServer


def test_spec_documents_every_error_a_route_returns(server: RunningServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operations = {(m.upper(), p): op for p, ops in spec["paths"].items() if p.startswith("/v1") for m, op in ops.items()}
    assert set(operations) == set(ROUTE_ERRORS), set(operations) ^ set(ROUTE_ERRORS)
    for key, op in operations.items():
        codes = set(op["responses"])
        wanted = {"401", "413", "503"} | ({"403"} if key not in NO_SCOPE else set())
        wanted |= {str(c) for c in ROUTE_ERRORS[key]}
        assert wanted <= codes, (key, wanted - codes)
        assert op["responses"]["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "422" not in operations[("POST", "/v1/completions")]["responses"]  # OpenAI answers 400
    assert "422" in operations[("POST", "/v1/edits")]["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    edit_in = spec["components"]["schemas"]["EditIn"]["properties"]
    assert edit_in["prompt"]["minLength"] == 1 and edit_in["target"]["minLength"] == 1


@pytest.mark.parametrize("path,body,status", [
    ("/v1/generate", {"prompt": "The sky is", "max_tokens": "3"}, 422),
    ("/v1/generate", {"prompt": "The sky is", "max_tokens": 2.5}, 422),
    ("/v1/edits", {"prompt": "The sky is", "target": "green", "supersedes": "1"}, 422),
    ("/v1/edits", {"prompt": 42, "target": "green"}, 422),
    ("/v1/completions", {"model": "m", "prompt": "The sky is", "max_tokens": "3"}, 400),
    ("/v1/completions", {"model": "m", "prompt": "The sky is", "stream": "yes"}, 400),
])
def test_numbers_and_flags_are_not_coerced(server: RunningServer, path: str, body: dict, status: int) -> None:
    r = server.client().post(path, json=body)
    assert r.status_code == status, r.text
    assert server.client().get("/v1/edits").json()["total"] == 0


def test_integral_floats_and_ints_for_floats_stay_accepted(server: RunningServer) -> None:
    c = server.client()
    assert c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 2, "temperature": 0}).status_code == 200
    assert c.post("/v1/completions", json={"model": "m", "prompt": "The sky is", "max_tokens": 2,
                                           "temperature": 0}).status_code == 200


@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/v1/edits", {"GET", "POST"}),
    ("DELETE", "/v1/versions", {"GET"}),
    ("GET", "/v1/edits/1/revert", {"POST"}),
    ("PATCH", "/v1/keys/3", {"DELETE"}),
    ("DELETE", "/v1/keys/me", {"GET"}),  # a fixed path, though DELETE /v1/keys/{key_id} would route it
    ("GET", "/v1/versions/consolidate", {"POST"}),
    ("OPTIONS", "/v1/keys/me", {"GET"}),
])
def test_405_allow_names_every_method_of_the_path(server: RunningServer, method: str, path: str, allowed: set) -> None:
    r = server.client().request(method, path)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
    assert method in r.json()["detail"]


@pytest.mark.parametrize("char", ["\x1b", "\x00", "\x07", "\x08", "\x7f", "\x85"])
def test_control_characters_are_refused_naming_the_field(server: RunningServer, char: str) -> None:
    c = server.client()
    r = c.post("/v1/edits", json={"prompt": "The sky is", "target": f"gr{char}[31meen"})
    assert r.status_code == 422
    bad = r.json()["detail"][0]
    assert bad["field"] == "edits.0.target" and f"U+{ord(char):04X}" in bad["msg"]
    r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": f"hi{char}"}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    assert c.get("/v1/edits").json()["total"] == 0  # nothing stored


def test_tabs_and_newlines_are_text(server: RunningServer) -> None:
    c = server.client()
    r = c.post("/v1/edits", json={"prompt": "The sky is", "target": "green", "reason": "line one\nline two\ttabbed\r\n"})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("path", ["/v1/edits", "/v1/versions", "/v1/kpis"])
def test_query_times_are_iso_8601_not_numbers(server: RunningServer, path: str) -> None:
    c = server.client()
    bad = c.get(path, params={"until": "0.5"})
    assert bad.status_code == 422 and "ISO 8601" in bad.text
    assert c.get(path, params={"until": "2030-01-01T00:00:00Z"}).status_code == 200


def test_a_vanishing_temperature_samples_as_greedy(server: RunningServer) -> None:
    c = server.client()
    greedy = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 3, "temperature": 0}).json()["text"]
    tiny = c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 3, "temperature": 2.2e-261})
    assert tiny.status_code == 200 and tiny.json()["text"] == greedy  # logits / T would overflow: greedy is its limit


def test_a_locality_probe_without_answer_is_measured_not_a_500(server: RunningServer) -> None:
    r = server.client().post("/v1/edits", json={"prompt": "The sky is", "target": "green",
                                                "locality": [{"prompt": "Water boils at"}]})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("params", [{"q": "a\x00b"}, {"author": "\x1b[31m"}, {"since": "0001-01-01T00:00:00+14:00"}])
def test_bad_query_text_and_times_are_422(server: RunningServer, params: dict) -> None:
    for path in ("/v1/edits", "/v1/versions"):
        key = {"author": "created_by"}.get(next(iter(params)), next(iter(params))) if path == "/v1/versions" else None
        query = {key: next(iter(params.values()))} if key else params
        assert server.client().get(path, params=query).status_code == 422, (path, query)
