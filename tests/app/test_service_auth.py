"""Every route checks its scope: no key -> 401, wrong scope -> 403, right scope -> through."""

from __future__ import annotations

import httpx
import pytest

from tests.app.conftest import RunningServer

EDIT = {"prompt": "The sky is", "target": "blue"}
# (method, path, scope needed, json body)
ROUTES = [
    ("POST", "/v1/edits", "edit", EDIT),
    ("GET", "/v1/edits", "read", None),
    ("GET", "/v1/edits/1", "read", None),
    ("POST", "/v1/edits/1/revert", "admin", None),
    ("POST", "/v1/edits/1/approve", "admin", None),
    ("POST", "/v1/edits/1/reject", "admin", None),
    ("GET", "/v1/jobs/1", "read", None),
    ("GET", "/v1/versions", "read", None),
    ("GET", "/v1/versions/0", "read", None),
    ("POST", "/v1/versions/0/restore", "admin", None),
    ("POST", "/v1/versions/consolidate", "admin", None),
    ("POST", "/v1/generate", "read", {"prompt": "The sky is", "max_tokens": 2}),
    ("POST", "/v1/probe", "read", {"prompt": "The sky is", "target": "blue"}),
    ("GET", "/v1/model", "read", None),
    ("GET", "/v1/models", "read", None),
    ("GET", "/v1/models/x-model", "read", None),
    ("GET", "/v1/versions/0/adapter", "admin", None),
    ("GET", "/v1/kpis", "read", None),
    ("GET", "/v1/keys/me", "any", None),
    ("POST", "/v1/completions", "read", {"model": "m", "prompt": "The sky is", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", "read", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/keys", "admin", {"name": "x", "scopes": ["read"]}),
    ("GET", "/v1/keys", "admin", None),
    ("DELETE", "/v1/keys/999", "admin", None),
]


def _template(path: str) -> str:
    return path.replace("/1/", "/{edit_id}/").replace("/edits/1", "/edits/{edit_id}").replace(
        "/jobs/1", "/jobs/{job_id}").replace("/versions/0", "/versions/{number}").replace("/keys/999", "/keys/{key_id}").replace(
        "/models/x-model", "/models/{model_id}")


def test_route_table_covers_every_v1_route(server: RunningServer) -> None:
    paths = server.app.openapi()["paths"]
    served = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}
    tested = {(m, _template(p)) for m, p, _, _ in ROUTES}
    assert served == tested


@pytest.fixture
def keys(server: RunningServer) -> dict[str, str]:
    admin = server.client()
    out = {}
    for scopes in (["read"], ["edit"], ["read", "edit"]):
        r = admin.post("/v1/keys", json={"name": "+".join(scopes), "scopes": scopes})
        assert r.status_code == 201, r.text
        out["+".join(scopes)] = r.json()["key"]
    return out


def test_scopes_on_every_route(server: RunningServer, keys: dict[str, str]) -> None:
    http = httpx.Client(base_url=server.url, timeout=60)
    for method, path, scope, body in ROUTES:
        kw = {"json": body} if body is not None else {}
        r = http.request(method, path, **kw)
        assert r.status_code == 401, (method, path, r.status_code)
        r = http.request(method, path, headers={"Authorization": "Bearer nope"}, **kw)
        assert r.status_code == 401, (method, path)
        wrong = {"read": ["edit"], "edit": ["read"], "admin": ["read", "edit", "read+edit"], "any": []}[scope]
        for name in wrong:
            r = http.request(method, path, headers={"Authorization": f"Bearer {keys[name]}"}, **kw)
            assert r.status_code == 403, (method, path, name, r.status_code)
            assert scope in r.json()["detail"]
        right = [keys[scope]] if scope in keys else list(keys.values()) if scope == "any" else []
        for token in [*right, "test-admin-key-0123456789"]:
            r = http.request(method, path, headers={"X-API-Key": token}, **kw)
            assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)


def test_key_lifecycle(server: RunningServer) -> None:
    admin = server.client()
    created = admin.post("/v1/keys", json={"name": "faq-bot", "scopes": ["read"]}).json()
    token = created["key"]
    assert token not in admin.get("/v1/keys").text  # only hashes are kept
    assert httpx.get(f"{server.url}/v1/versions", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert admin.delete(f"/v1/keys/{created['id']}").json()["revoked_at"] is not None
    assert httpx.get(f"{server.url}/v1/versions", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    bad = admin.post("/v1/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"].startswith("scopes")


def test_generated_admin_key_on_first_start(server_factory, capsys) -> None:
    srv = server_factory(admin_key=None)
    token = srv.services.generated_admin_key
    assert token and token in capsys.readouterr().out
    assert httpx.get(f"{srv.url}/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
