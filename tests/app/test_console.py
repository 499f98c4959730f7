"""The console's server side and what the ecosystem's clients meet first, over real HTTP: the
/admin page and its assets (all local), offline /docs and /redoc, /v1/keys/me, /v1/kpis,
GET /v1/models/{id}, and the reason a revert or restore is asked for."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.app.conftest import RunningServer, wait_edit, wait_job

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def _assets(html: str) -> list[str]:
    return [a for a in ASSET.findall(html) if not a.startswith(("#", "data:"))]


def test_admin_page_and_every_asset_are_served_locally(server: RunningServer) -> None:
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    root = anonymous.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/admin"
    page = anonymous.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = _assets(page.text)
    assert {"/admin/static/console.css", "/admin/static/console.js"} <= set(assets)
    modules = ["/admin/static/api.js", "/admin/static/charts.js"]
    for asset in assets + modules:
        assert not asset.startswith(("http:", "https:", "//")), f"external asset {asset}"
        r = anonymous.get(asset)
        assert r.status_code == 200 and r.content, asset
    js = anonymous.get("/admin/static/console.js").text
    assert "https://" not in js and "http://" not in js
    assert 'from "./api.js"' in js and 'from "./charts.js"' in js
    assert anonymous.get("/admin/static/nothing.js").status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_their_assets_from_the_service(server: RunningServer, path: str) -> None:
    anonymous = httpx.Client(base_url=server.url, timeout=30)
    page = anonymous.get(path)
    assert page.status_code == 200
    scripts = _assets(page.text)
    assert scripts, "the docs page references no assets"
    for asset in scripts:
        assert asset.startswith("/"), f"{path} loads {asset} from elsewhere"
        assert anonymous.get(asset).status_code == 200, asset
    assert "cdn.jsdelivr" not in page.text and "fonts.googleapis" not in page.text
    assert anonymous.get("/openapi.json").json()["info"]["title"] == "smedit"


def test_keys_me_names_the_caller_and_its_scopes(server: RunningServer) -> None:
    admin = server.client()
    me = admin.get("/v1/keys/me").json()
    assert "admin" in me["scopes"] and me["name"]
    token = admin.post("/v1/keys", json={"name": "dashboard", "scopes": ["read"]}).json()["key"]
    reader = server.client(token)
    assert reader.get("/v1/keys/me").json() == {"id": me["id"] + 1, "name": "dashboard", "scopes": ["read"]}
    assert reader.get("/v1/keys").status_code == 403  # the list stays admin-only
    assert server.client(None).get("/v1/keys/me").status_code == 401
    assert server.client("not-a-key").get("/v1/keys/me").status_code == 401


def test_models_retrieve_by_id_and_the_served_name(server: RunningServer) -> None:
    client = server.client()
    listed = client.get("/v1/models").json()
    card = listed["data"][0]
    assert card["id"] == server.services.runtime.model_dir.name  # a configured model_dir: its name
    assert client.get(f"/v1/models/{card['id']}").json() == card
    missing = client.get("/v1/models/gpt-4o")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found" and card["id"] in missing.json()["error"]["message"]
    out = client.post("/v1/completions", json={"model": card["id"], "prompt": "The sky is", "max_tokens": 2}).json()
    assert out["model"] == card["id"]


def test_served_model_name_setting_names_the_model(server_factory) -> None:
    srv = server_factory(served_model_name="acme/faq-bot")
    client = srv.client()
    assert client.get("/v1/models").json()["data"][0]["id"] == "acme/faq-bot"
    assert client.get("/v1/models/acme/faq-bot").json()["id"] == "acme/faq-bot"
    chat_or_completion = client.post("/v1/completions", json={"model": "x", "prompt": "Water boils at", "max_tokens": 1})
    assert chat_or_completion.json()["model"] == "acme/faq-bot"


def test_kpis_summarise_decided_edits_per_bucket(server: RunningServer) -> None:
    client = server.client()
    before = client.get("/v1/kpis", params={"bucket": "minute"}).json()["buckets"]
    assert all(b["decided"] == 0 and b["edit_success"] is None for b in before)  # at most the base's measurement
    ids = client.post("/v1/edits", json={"edits": [
        {"prompt": "The capital of France is", "target": "Rome"},
        {"prompt": "Water boils at", "target": "ten degrees"},
    ], "author": "kpi-test"}).json()["edit_ids"]
    edits = [wait_edit(client, i) for i in ids]
    assert all(e["status"] == "applied" for e in edits)
    series = client.get("/v1/kpis", params={"bucket": "minute"}).json()
    assert sum(b["decided"] for b in series["buckets"]) == 2
    bucket = series["buckets"][-1]
    assert bucket["statuses"] == {"applied": 2} and bucket["accept_rate"] == 1.0
    es = [e["metrics"]["es"] for e in edits]
    assert bucket["edit_success"] == pytest.approx(sum(es) / 2)
    m = edits[0]["metrics"]
    assert bucket["cost_s_per_edit"] == pytest.approx(m["compute_s"] / m["batch_size"], rel=1e-6)
    assert bucket["latency_p50_s"] is not None and bucket["latency_p50_s"] >= 0
    assert 0.0 <= bucket["side_effects_vs_base"] <= 1.0
    day = client.get("/v1/kpis", params={"bucket": "day"}).json()["buckets"]
    assert len(day) == 1 and day[0]["decided"] == 2
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert client.get("/v1/kpis", params={"since": future}).status_code == 400  # since after until
    wide = client.get("/v1/kpis", params={"bucket": "minute", "since": "2020-01-01T00:00:00Z"})
    assert wide.status_code == 400 and "buckets" in wide.json()["detail"]
    assert client.get("/v1/kpis", params={"bucket": "week"}).status_code == 422


def test_revert_and_restore_keep_their_reason(server: RunningServer) -> None:
    client = server.client()
    edit_id = client.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    applied = wait_edit(client, edit_id)
    job = wait_job(client, client.post(f"/v1/edits/{edit_id}/revert", json={"reason": "wrong colour"}).json()["job_id"])
    assert job["status"] == "done" and job["reason"] == "wrong colour"
    assert client.get(f"/v1/versions/{job['result_version']}").json()["note"].endswith("; reason: wrong colour")
    restore = client.post(f"/v1/versions/{applied['applied_version']}/restore", json={"reason": "it was right"})
    job = wait_job(client, restore.json()["job_id"])
    assert "reason: it was right" in client.get(f"/v1/versions/{job['result_version']}").json()["note"]
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "applied"
    bad = client.post(f"/v1/edits/{edit_id}/revert", json={"why": "unknown field"})
    assert bad.status_code == 422
