"""The quality gate: failing edits are rejected (or held for review) with their numbers kept."""

from __future__ import annotations

from tests.app.conftest import wait_edit, wait_job


def test_gate_rejects_and_keeps_numbers(server_factory) -> None:
    # No untrained editor reaches ES > 1: every edit fails the ES check.
    srv = server_factory(gate_min_es=1.01)
    c = srv.client()
    r = c.post("/v1/edits", json={"prompt": "The capital of France is", "target": "Rome", "paraphrases": ["Paris is in"]})
    e = wait_edit(c, r.json()["edit_ids"][0])
    assert e["status"] == "rejected"
    assert e["applied_version"] is None and e["delta_id"] is None
    assert e["metrics"]["gate"]["passed"] is False
    assert any(f.startswith("es:") for f in e["metrics"]["gate"]["failures"])
    assert isinstance(e["metrics"]["es"], float) and isinstance(e["metrics"]["gs"], float)
    assert "es" in e["error"]
    versions = c.get("/v1/versions").json()
    assert versions["total"] == 1  # only the base: nothing committed
    assert c.get("/v1/model").json()["weights_hash"] == versions["items"][0]["weights_hash"]
    assert 'smedit_gate_rejections_total{check="es"} 1.0' in c.get("/metrics").text


def test_canary_gate_and_batch_with_a_bad_edit(server_factory) -> None:
    # Threshold below zero: any batch fails the canary check, so the worker isolates each edit;
    # all fail alone -> all rejected, and nothing is committed.
    srv = server_factory(gate_max_canary_change=-1.0)
    c = srv.client()
    r = c.post("/v1/edits", json={"edits": [{"prompt": "Water boils at", "target": "ten degrees"},
                                            {"prompt": "The sky is", "target": "red"}]})
    for eid in r.json()["edit_ids"]:
        e = wait_edit(c, eid)
        assert e["status"] == "rejected"
        assert e["metrics"]["canary_changed"] is not None
        assert any(f.startswith("canary") for f in e["metrics"]["gate"]["failures"])
    assert c.get("/v1/versions").json()["total"] == 1


def test_batch_commits_the_good_edits(server_factory) -> None:
    # GS threshold: an edit WITH paraphrases fails (GS < 1.01), one without has no GS and passes.
    srv = server_factory(gate_min_gs=1.01)
    c = srv.client()
    r = c.post("/v1/edits", json={"edits": [
        {"prompt": "The Zentrix X2 costs", "target": "12 dollars", "paraphrases": ["The price of the Zentrix X2 is"]},
        {"prompt": "Refunds are processed within", "target": "two days"},
    ]})
    bad_id, good_id = r.json()["edit_ids"]
    bad, good = wait_edit(c, bad_id), wait_edit(c, good_id)
    assert bad["status"] == "rejected" and any(f.startswith("gs:") for f in bad["metrics"]["gate"]["failures"])
    assert good["status"] == "applied" and good["applied_version"] == 1
    # the committed delta carries only the good edit
    assert c.get("/v1/versions/1").json()["edit_ids"] == [good_id]


def test_review_mode_approve_and_reject(server_factory) -> None:
    srv = server_factory(gate_min_es=1.01, review_mode=True)
    c = srv.client()
    ids = c.post("/v1/edits", json={"edits": [{"prompt": "The sky is", "target": "purple"},
                                              {"prompt": "Water boils at", "target": "zero"}]}).json()["edit_ids"]
    held = [wait_edit(c, i) for i in ids]
    assert [e["status"] for e in held] == ["needs_review", "needs_review"]
    assert c.get("/v1/edits", params={"status": "needs_review"}).json()["total"] == 2

    r = c.post(f"/v1/edits/{ids[0]}/approve")
    assert r.status_code == 202, r.text
    wait_job(c, r.json()["job_id"])
    approved = c.get(f"/v1/edits/{ids[0]}").json()
    assert approved["status"] == "applied" and approved["applied_version"] == 1
    assert approved["metrics"]["gate"]["approved_by_review"] is True

    r = c.post(f"/v1/edits/{ids[1]}/reject", json={"note": "wrong fact"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert c.post(f"/v1/edits/{ids[1]}/approve").status_code == 409
    assert c.post(f"/v1/edits/{ids[0]}/reject").status_code == 409


def test_one_broken_edit_does_not_sink_its_batch(server) -> None:
    """The editing library raising on one edit (simulated: every input it can be given is now
    checked at submit) fails that edit alone; its batch mate is applied, the worker runs on."""
    c = server.client()
    runtime = server.services.runtime
    real = runtime.compute

    def compute(requests):
        if any(r.prompt == "This prompt breaks the editor:" for r in requests):
            raise IndexError("index out of range in self")
        return real(requests)

    runtime.compute = compute
    try:
        ids = c.post("/v1/edits", json={"edits": [{"prompt": "Water boils at", "target": "ten"},
                                                  {"prompt": "This prompt breaks the editor:", "target": "green"}]}
                     ).json()["edit_ids"]
        good, broken = wait_edit(c, ids[0]), wait_edit(c, ids[1])
    finally:
        del runtime.compute
    assert broken["status"] == "failed" and "index out of range" in broken["error"]
    assert good["status"] == "applied" and good["applied_version"] == 1
    assert server.client().get("/readyz").json()["worker_running"] is True


def test_rows_past_the_context_are_refused_at_submit_with_token_counts(server) -> None:
    c = server.client()
    long_prompt = "The sky is blue and " * 60 + "the sea is"
    before = c.get("/v1/edits").json()["total"]
    for fact, field in [
        ({"prompt": long_prompt, "target": "green"}, ["body", "edits", 0, "prompt"]),
        ({"prompt": "The sea is", "target": "green", "paraphrases": ["ok", long_prompt]}, ["body", "edits", 0, "paraphrases", 1]),
        ({"prompt": "The sea is", "target": "green " * 80}, ["body", "edits", 0, "prompt"]),
        ({"prompt": "The sea is", "target": "green", "locality": [{"prompt": long_prompt}]},
         ["body", "edits", 0, "locality", 0, "prompt"]),
    ]:
        r = c.post("/v1/edits", json=fact)
        assert r.status_code == 422, r.text
        [err] = r.json()["detail"]
        assert err["loc"] == field and "tokens; the model's context is 128" in err["msg"], err
    assert c.get("/v1/edits").json()["total"] == before


def test_canary_references_are_the_base_models_answers(server_factory) -> None:
    """The gate compares canaries with the base model's answers (a canary that is a live edit's
    prompt: with its target), never with the previous version's, so drift adds up where it can be
    seen; each version records it. After a gated commit the gate's own pass is the committed
    state's measurement: the next edit needs no extra canary pass."""
    srv = server_factory()
    c = srv.client()
    worker, runtime = srv.services.worker, srv.services.runtime
    canaries = worker.canaries
    base = runtime.base_answers(canaries, srv.services.settings.canary_tokens)
    extra_passes: list[int] = []
    real_kept = runtime.canaries_kept
    for n, (prompt, target) in enumerate([("The sky is", "made of green cheese"),
                                          ("Water boils at", "minus forty kelvin")]):
        if n == 1:
            runtime.canaries_kept = lambda *a: extra_passes.append(1) or real_kept(*a)
        r = c.post("/v1/edits", json={"prompt": prompt, "target": target})
        assert wait_edit(c, r.json()["edit_ids"][0])["status"] == "applied"
    del runtime.canaries_kept
    assert extra_passes == []

    with runtime.exclusive():
        _, _, live = worker.edits.committed_state()
        reference = worker.gate.reference([x.request for x in live])
        kept = runtime.canaries_kept(canaries, reference)
    assert runtime.base_answers(canaries, srv.services.settings.canary_tokens) == base  # live state untouched
    for canary, ref, answer in zip(canaries, reference, base):
        if canary == "The sky is":
            assert ref == runtime.target_ids(canary, "made of green cheese")
        elif canary == "Water boils at":
            assert ref == runtime.target_ids(canary, "minus forty kelvin")
        else:
            assert ref == answer
    side_effects = c.get("/v1/versions/2").json()["side_effects"]
    assert side_effects["total"] == len(canaries)
    assert side_effects["changed"] == kept.count(False)
    assert side_effects["changed_canaries"] == [p for p, k in zip(canaries, kept) if not k]
    assert c.get("/readyz").json()["side_effects"] == side_effects
