"""Bad input on every field: a 4xx that names the field, and nothing stored."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest

from tests.app.conftest import RunningServer, fresh_pg_schema, make_settings, postgres_available, start_server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tiny_model_dir, tmp_path_factory):
    """One server per database for the module (bad input stores nothing): every case below is
    refused the same way on SQLite and on PostgreSQL."""
    with ExitStack() as stack:
        url = None
        if request.param == "postgres":
            if not postgres_available():
                pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable (.ci/run starts it)")
            url = stack.enter_context(fresh_pg_schema())
        srv = start_server(make_settings(tiny_model_dir, tmp_path_factory.mktemp("input_data"), database_url=url))
        yield srv
        srv.stop()

OK = {"prompt": "The sky is", "target": "blue"}
LONG = "x" * 3000  # over max_prompt_chars (2000) and max_target_chars (500)

EDIT_CASES = [
    ({"target": "blue"}, "edits.0.prompt"),
    ({**OK, "prompt": ""}, "edits.0.prompt"),
    ({**OK, "prompt": "   "}, "edits.0.prompt"),
    ({**OK, "prompt": 5}, "edits.0.prompt"),
    ({**OK, "prompt": "a\x00b"}, "edits.0.prompt"),
    ({**OK, "prompt": LONG}, "edits.0.prompt"),
    ({"prompt": "The sky is"}, "edits.0.target"),
    ({**OK, "target": ""}, "edits.0.target"),
    ({**OK, "target": LONG}, "edits.0.target"),
    ({**OK, "paraphrases": "not a list"}, "edits.0.paraphrases"),
    ({**OK, "paraphrases": ["fine", ""]}, "edits.0.paraphrases.1"),
    ({**OK, "paraphrases": ["p"] * 17}, "edits.0.paraphrases"),
    ({**OK, "paraphrases": [LONG]}, "edits.0.paraphrases.0"),
    ({**OK, "locality": [{"answer": "x"}]}, "edits.0.locality.0.prompt"),
    ({**OK, "locality": [{"prompt": "x", "bogus": 1}]}, "edits.0.locality.0.bogus"),
    ({**OK, "locality": [{"prompt": "x"}] * 17}, "edits.0.locality"),
    ({**OK, "locality": [{"prompt": LONG}]}, "edits.0.locality.0.prompt"),
    ({"edits": []}, "edits"),
    ({"edits": [OK] * 65}, "edits"),
    ({"edits": [OK, {"prompt": "x"}]}, "edits.1.target"),
    ({"edits": "nope"}, "edits"),
    ({**OK, "author": ""}, "author"),
    ({**OK, "author": "a" * 600}, "author"),
    ({**OK, "reason": 5}, "reason"),
    ({**OK, "idempotency_key": "k" * 600}, "idempotency_key"),
    ({**OK, "promt": "typo"}, "promt"),
    ([OK], "body"),
]


def _fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, (r.status_code, r.text)
    return [e["field"] for e in r.json()["detail"]]


def _assert_nothing_stored(c: httpx.Client) -> None:
    assert c.get("/v1/edits").json()["total"] == 0
    assert c.get("/v1/jobs/1").status_code == 404
    assert c.get("/v1/versions").json()["total"] == 1


@pytest.mark.parametrize("body,field", EDIT_CASES, ids=[f for _, f in EDIT_CASES])
def test_bad_edit_fields(server: RunningServer, body: object, field: str) -> None:
    c = server.client()
    assert field in _fields(c.post("/v1/edits", json=body))
    _assert_nothing_stored(c)


def test_bad_inputs_elsewhere(server: RunningServer) -> None:
    c = server.client()
    r = c.post("/v1/edits", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = c.post("/v1/edits", json=OK, headers={"Idempotency-Key": "k" * 300})
    assert "Idempotency-Key" in str(_fields(r))
    r = c.post("/v1/edits", content=b"x" * 1_100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413

    gen = {"prompt": "The sky is"}
    for body, field in [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": LONG}, "prompt"),
        ({**gen, "max_tokens": 0}, "max_tokens"),
        ({**gen, "max_tokens": 100_000}, "max_tokens"),
        ({**gen, "temperature": -1}, "temperature"),
        ({**gen, "stop": [""]}, "stop.0"),
        ({**gen, "min_version": -1}, "min_version"),
        ({**gen, "wait_s": 0}, "wait_s"),
        ({**gen, "seed": "x"}, "seed"),
        ({**gen, "extra": 1}, "extra"),
    ]:
        assert field in _fields(c.post("/v1/generate", json=body)), (body, field)
    # longer than the tiny model's 128-token context
    assert "max_tokens" in _fields(c.post("/v1/generate", json={"prompt": "The sky is", "max_tokens": 200}))
    assert "prompt" in _fields(c.post("/v1/probe", json={"prompt": "The sky is blue " * 60, "target": "x"}))
    for body, field in [
        ({"prompt": "The sky is"}, "target"),
        ({"prompt": "The sky is", "target": " "}, "target"),
        ({"prompt": 1, "target": "x"}, "prompt"),
    ]:
        assert field in _fields(c.post("/v1/probe", json=body)), (body, field)
    for params, field in [
        ({"status": "bogus"}, "status"), ({"limit": 0}, "limit"), ({"limit": 10_000}, "limit"),
        ({"offset": -1}, "offset"), ({"since": "yesterday"}, "since"),
    ]:
        assert field in str(_fields(c.get("/v1/edits", params=params))), (params, field)
    assert "kind" in str(_fields(c.get("/v1/versions", params={"kind": "nope"})))
    assert c.get("/v1/edits/abc").status_code == 422
    assert c.get("/v1/edits/12345").status_code == 404
    assert c.post("/v1/versions/77/restore").status_code == 404
    assert c.post("/v1/edits/77/revert").status_code == 404
    assert "name" in str(_fields(c.post("/v1/keys", json={"name": "", "scopes": ["read"]})))
    assert "scopes" in str(_fields(c.post("/v1/keys", json={"name": "n", "scopes": []})))
    _assert_nothing_stored(c)


SURROGATE = "\\ud800"  # as it arrives in JSON: a lone UTF-16 surrogate escape


@pytest.mark.parametrize("path,body,field", [
    ("/v1/edits", '{"prompt": "%s", "target": "blue"}', "edits.0.prompt"),
    ("/v1/edits", '{"prompt": "The sky is", "target": "b%s"}', "edits.0.target"),
    ("/v1/edits", '{"prompt": "The sky is", "target": "blue", "author": "%s"}', "author"),
    ("/v1/edits", '{"prompt": "The sky is", "target": "blue", "paraphrases": ["ok", "%s"]}', "edits.0.paraphrases"),
    ("/v1/edits", '{"prompt": "The sky is", "target": "blue", "locality": [{"prompt": "%s"}]}', "edits.0.locality.0.prompt"),
    ("/v1/generate", '{"prompt": "The sky %s"}', "prompt"),
    ("/v1/probe", '{"prompt": "The sky is", "target": "%s"}', "target"),
])
def test_a_lone_surrogate_is_a_422_naming_the_field(server: RunningServer, path: str, body: str, field: str) -> None:
    c = server.client()
    r = c.post(path, content=(body % SURROGATE).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (r.status_code, ascii(r.text))  # ascii: a surrogate breaks pytest's report
    fields = _fields(r)
    assert any(f.startswith(field) for f in fields), fields
    assert "unicode" in r.text.lower()
    _assert_nothing_stored(c)


def test_a_lone_surrogate_in_the_openai_layer_is_a_400_naming_the_param(server: RunningServer) -> None:
    c = server.client()
    for path, body, param in [
        ("/v1/completions", '{"model": "m", "prompt": "The sky %s", "max_tokens": 2}', "prompt"),
        ("/v1/chat/completions", '{"model": "m", "messages": [{"role": "user", "content": "hi %s"}]}', "messages"),
    ]:
        r = c.post(path, content=(body % SURROGATE).encode(), headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.status_code, ascii(r.text))
        assert param in r.text and "Unicode" in r.text, ascii(r.text)
