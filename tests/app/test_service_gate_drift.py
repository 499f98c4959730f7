"""The gate for edits that live for months: it judges the greedy answer, keeps every live edit
working, spends a side-effect budget measured against the base model, and a new target for a
prompt replaces the old one instead of stacking on it. All on the real server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.runtime_results import EditMeasure
from app.settings import Settings
from tests.app.conftest import ADMIN_KEY, start_server, wait_edit, wait_job


def _demo_settings(demo: Any, data_dir: Path, **changes: Any) -> Settings:
    """The tiny demo served with the gate's defaults (its 64-fact canary file), except ``changes``."""
    return Settings(_env_file=None, data_dir=data_dir, model_dir=demo.model_dir, editor_dir=demo.editor_dir,
                    device="cpu", admin_key=ADMIN_KEY, canary_file=demo.canary_file, worker_batch_wait_s=0.05,
                    log_level="WARNING", **changes)


def _greedy(c: Any, prompt: str, target: str) -> bool:
    r = c.post("/v1/probe", json={"prompt": prompt, "target": target})
    assert r.status_code == 200, r.text
    return bool(r.json()["greedy"])


def _submit(c: Any, fact: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/v1/edits", json=fact)
    assert r.status_code == 202, r.text
    return wait_edit(c, r.json()["edit_ids"][0], timeout=120)


def test_an_edit_that_breaks_a_live_edit_is_rejected_naming_it(tiny_demo, tmp_path: Path) -> None:
    """Edit A has one paraphrase; edit B rewrites that paraphrase (another prompt, so no
    supersede) to another answer. If B would take A's paraphrase, A no longer passes the bar it
    was committed under: B is rejected and the verdict names A. And whatever the gate lets
    through, A's prompt and paraphrase still give A's target; every applied edit's prompt gives
    its own target greedily."""
    world = tiny_demo.load_world()
    requests = world.edit_requests("eval", seed=0)
    srv = start_server(_demo_settings(tiny_demo, tmp_path / "data", side_effect_budget=1.0,
                                      gate_max_canary_change=1.0))
    try:
        c = srv.client()
        a_req, a = None, None
        for r in requests[:10]:
            a = _submit(c, {"prompt": r.prompt, "target": r.target, "paraphrases": [r.paraphrases[0]]})
            if a["status"] == "applied":
                a_req = r
                break
            assert a["status"] == "rejected" and a["error"].startswith(("es:", "gs:")), a
        assert a_req is not None and a is not None, "no edit of the tiny demo passed the gate"
        paraphrase = a_req.paraphrases[0]
        assert _greedy(c, a_req.prompt, a_req.target) and _greedy(c, paraphrase, a_req.target)

        others = [r.target for r in requests if r.meta["relation"] == a_req.meta["relation"] and r.target != a_req.target]
        verdicts = []
        for target in list(dict.fromkeys(others))[:4]:
            b = _submit(c, {"prompt": paraphrase, "target": target})
            verdicts.append(b)
            if b["status"] == "applied":
                assert _greedy(c, paraphrase, target)
            # nothing the gate let through took A's prompt or its only paraphrase
            assert _greedy(c, a_req.prompt, a_req.target) and _greedy(c, paraphrase, a_req.target), b
            if b["status"] == "rejected" and any(f.startswith("breaks:") for f in b["metrics"]["gate"]["failures"]):
                assert f"breaks: edit {a['id']}:" in b["error"], b["error"]
                assert b["metrics"]["broken_edits"] == [a["id"]]
                break
        assert any("breaks: edit" in (b["error"] or "") for b in verdicts), [(b["status"], b["error"]) for b in verdicts]
        assert 'smedit_gate_rejections_total{check="breaks"}' in c.get("/metrics").text

        for e in c.get("/v1/edits", params={"status": "applied", "limit": 100}).json()["items"]:
            assert _greedy(c, e["prompt"], e["target"]), e  # applied means the user gets the target
    finally:
        srv.stop()


def test_side_effect_budget_is_spent_then_edits_get_409_capacity(tiny_demo, tmp_path: Path) -> None:
    """Drift is counted against the base model over all live edits; the gate never commits past
    the budget, and once no canary is left to spend the API refuses edits before storing them,
    /readyz warns and the metric says so. A revert's version is measured too."""
    budget = 0.05
    srv = start_server(_demo_settings(tiny_demo, tmp_path / "data", side_effect_budget=budget, gate_recheck_edits=0))
    try:
        c = srv.client()
        n = len(srv.services.worker.canaries)
        requests = tiny_demo.load_world().edit_requests("eval", seed=2)
        refused = None
        applied: list[int] = []
        for r in requests[:40]:
            resp = c.post("/v1/edits", json={"prompt": r.prompt, "target": r.target, "paraphrases": list(r.paraphrases)})
            if resp.status_code == 409:
                refused = resp
                break
            e = wait_edit(c, resp.json()["edit_ids"][0], timeout=120)
            if e["status"] == "applied":
                applied.append(e["id"])
                side = c.get(f"/v1/versions/{e['applied_version']}").json()["side_effects"]
                assert side["total"] == n and side["changed"] <= budget * n, side
                assert e["metrics"]["canary_changed"] == side["changed"] / n
        assert refused is not None, "the budget was never spent"
        detail = refused.json()["detail"]
        assert detail["reason"] == "capacity" and "budget" in detail["message"]
        total = c.get("/v1/edits").json()["total"]
        assert c.post("/v1/edits", json={"prompt": "The Zorvex 300 costs", "target": "1 dollar"}).status_code == 409
        assert c.get("/v1/edits").json()["total"] == total  # nothing stored for a refused edit
        ready = c.get("/readyz").json()
        assert ready["ready"] and any("budget spent" in w for w in ready["warnings"]), ready
        share = ready["side_effects"]["share"]
        assert f"smedit_side_effects_ratio {share}" in c.get("/metrics").text
        assert f"smedit_side_effect_budget_ratio {budget}" in c.get("/metrics").text

        job = wait_job(c, c.post(f"/v1/edits/{applied[-1]}/revert").json()["job_id"])
        deadline = time.monotonic() + 30
        side = None
        while side is None and time.monotonic() < deadline:  # recorded right after the revert's commit
            side = c.get(f"/v1/versions/{job['result_version']}").json()["side_effects"]
            time.sleep(0.05)
        assert side is not None and side["total"] == n and 0 <= side["changed"] <= n
    finally:
        srv.stop()


def test_the_commit_that_spends_the_budget_queues_a_consolidation(tiny_demo, tmp_path: Path) -> None:
    from app.status import JobKind
    from app.tables import Job

    srv = start_server(_demo_settings(tiny_demo, tmp_path / "data", side_effect_budget=0.05, gate_recheck_edits=0,
                                      consolidate_when_spent=True))
    try:
        c = srv.client()
        for r in tiny_demo.load_world().edit_requests("eval", seed=2)[:40]:
            resp = c.post("/v1/edits", json={"prompt": r.prompt, "target": r.target, "paraphrases": list(r.paraphrases)})
            if resp.status_code == 409:
                break
            wait_edit(c, resp.json()["edit_ids"][0], timeout=120)
        assert resp.status_code == 409, "the budget was never spent"
        with srv.services.sessions() as s:
            jobs = s.query(Job).filter(Job.kind == JobKind.CONSOLIDATE).all()
            assert len(jobs) == 1 and jobs[0].requested_by == "worker: side-effect budget spent"
            job_id = jobs[0].id
        job = wait_job(c, job_id)
        assert job["status"] in ("done", "failed"), job  # decided: committed, or refused by the gate
        if job["status"] == "failed":
            assert job["error"].startswith("not committed:")
    finally:
        srv.stop()


def test_a_new_target_supersedes_the_live_one_and_revert_brings_it_back(server_factory, db_url: str) -> None:
    """Same prompt again: the old edit is marked superseded (linked both ways) and its delta is
    dropped, while the other edit of that delta stays applied (recomputed); reverting the new
    edit brings the old one back; restoring an old version is exact. SQLite and PostgreSQL."""
    srv = server_factory(database_url=db_url)
    c = srv.client()
    ids = c.post("/v1/edits", json={"edits": [{"prompt": "The sky is", "target": "green"},
                                              {"prompt": "Water boils at", "target": "ten degrees"}]}).json()["edit_ids"]
    sky, water = (wait_edit(c, i) for i in ids)
    assert sky["applied_version"] == water["applied_version"] == 1 and sky["delta_id"] == water["delta_id"]
    v1_hash = c.get("/v1/versions/1").json()["weights_hash"]

    red = wait_edit(c, c.post("/v1/edits", json={"prompt": " The sky is ", "target": "red"}).json()["edit_ids"][0])
    assert red["status"] == "applied" and red["supersedes"] == sky["id"] and red["applied_version"] == 2
    old = c.get(f"/v1/edits/{sky['id']}").json()
    assert old["status"] == "superseded" and old["superseded_by"] == red["id"]
    v2 = c.get("/v1/versions/2").json()
    assert sky["delta_id"] not in v2["active_deltas"] and red["delta_id"] in v2["active_deltas"]
    assert f"edit {red['id']} supersedes edit {sky['id']}" in v2["note"] and sky["id"] in v2["edit_ids"]
    water2 = c.get(f"/v1/edits/{water['id']}").json()
    assert water2["status"] == "applied" and water2["delta_id"] in v2["active_deltas"]
    assert water2["delta_id"] != water["delta_id"] and len(v2["active_deltas"]) == 2

    # a supersedes that names nothing applied: refused before anything is stored
    total = c.get("/v1/edits").json()["total"]
    r = c.post("/v1/edits", json={"prompt": "The sea is", "target": "pink", "supersedes": 999})
    assert r.status_code == 422 and "supersedes" in r.text and "does not exist" in r.text
    r = c.post("/v1/edits", json={"prompt": "The sea is", "target": "pink", "supersedes": sky["id"]})
    assert r.status_code == 409 and r.json()["detail"]["reason"] == "not_applied"
    assert c.get("/v1/edits").json()["total"] == total

    job = wait_job(c, c.post(f"/v1/edits/{red['id']}/revert").json()["job_id"])
    back = c.get(f"/v1/edits/{sky['id']}").json()
    assert back["status"] == "applied" and back["superseded_by"] is None
    assert back["applied_version"] == job["result_version"]
    assert c.get(f"/v1/edits/{red['id']}").json()["status"] == "reverted"
    assert "is live again" in c.get(f"/v1/versions/{job['result_version']}").json()["note"]

    # explicit supersedes, another prompt
    blue = wait_edit(c, c.post("/v1/edits", json={"prompt": "The colour of the sky is", "target": "blue",
                                                  "supersedes": sky["id"]}).json()["edit_ids"][0])
    assert blue["status"] == "applied" and blue["supersedes"] == sky["id"]
    assert c.get(f"/v1/edits/{sky['id']}").json()["status"] == "superseded"
    live = c.get("/v1/edits", params={"status": "applied"}).json()["items"]
    assert sorted(e["id"] for e in live) == sorted([water["id"], blue["id"]])

    job = wait_job(c, c.post("/v1/versions/1/restore").json()["job_id"])
    assert c.get(f"/v1/versions/{job['result_version']}").json()["weights_hash"] == v1_hash
    restored = {e["id"]: e["status"] for e in c.get("/v1/edits", params={"limit": 100}).json()["items"]}
    assert restored[sky["id"]] == "applied" and restored[water["id"]] == "applied"
    assert restored[red["id"]] == "reverted" and restored[blue["id"]] == "reverted"
    assert c.get(f"/v1/edits/{sky['id']}").json()["superseded_by"] is None


def test_the_gate_judges_greedy_answers_under_its_match_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A token-level average that trailing tokens inflate does not pass: an edit whose greedy
    answer misses the target fails ``exact``; with ``first_token`` the first token decides."""
    from app.metrics import Metrics
    from app.worker.gate import Gate

    def measure(**kw: Any) -> EditMeasure:
        values: dict[str, Any] = dict(es=0.67, es_exact=0.0, es_first=1.0, es_gen=0.0, gs=0.5, gs_exact=0.0,
                                      gs_gen=0.0, locality=None, canary_changed=0.0, gs_first=1.0)
        values.update(kw)
        return EditMeasure(**values)

    exact = Gate(Settings(_env_file=None, model_dir=tiny_model_dir, data_dir=tmp_path), None, Metrics(), [])  # type: ignore[arg-type]
    fails = exact.edit_failures(measure())
    assert [f.split(":")[0] for f in fails] == ["es", "gs"]
    assert exact.edit_failures(measure(es_exact=1.0, gs_exact=0.5)) == []
    first = Gate(Settings(_env_file=None, model_dir=tiny_model_dir, data_dir=tmp_path, gate_match="first_token"),
                 None, Metrics(), [])  # type: ignore[arg-type]
    assert first.edit_failures(measure()) == []
    assert [f.split(":")[0] for f in first.edit_failures(measure(es_first=0.0))] == ["es"]
