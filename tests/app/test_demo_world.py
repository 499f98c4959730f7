"""The user's story on the demo world: a trained model and editor, served for real.

Builds the ``tiny`` demo (world -> GPT-2 trained from scratch -> SMEdit editor meta-trained on the
world's edits) once per session, serves it, and checks that edits of held-out facts change what
``/v1/generate`` answers and that restoring version 0 gives back the exact old answers.
"""

from __future__ import annotations

from pathlib import Path

import openai

from tests.app.conftest import start_server, wait_edit, wait_job, ADMIN_KEY


def _settings(demo, data_dir: Path):
    from app.settings import Settings

    world = demo.load_world()
    return Settings(
        _env_file=None, data_dir=data_dir, model_dir=demo.model_dir, editor_dir=demo.editor_dir,
        device="cpu", admin_key=ADMIN_KEY, gate_min_es=0.0, gate_min_gs=0.0, gate_max_canary_change=1.0,
        side_effect_budget=1.0, gate_recheck_edits=0,
        canary_prompts=[p.prompt for p in world.canary_prompts(8)], worker_batch_wait_s=0.05, log_level="WARNING",
    )


def _generate(c, prompt: str, min_version: int = 0) -> str:
    r = c.post("/v1/generate", json={"prompt": prompt, "max_tokens": 10, "temperature": 0, "min_version": min_version})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_demo_edits_change_answers_and_restore_brings_them_back(tiny_demo, tmp_path: Path) -> None:
    world = tiny_demo.load_world()
    requests = world.edit_requests("eval", seed=0)[:6]
    srv = start_server(_settings(tiny_demo, tmp_path / "data"))
    try:
        c = srv.client()
        before = [_generate(c, r.prompt) for r in requests]
        before_p = [c.post("/v1/probe", json={"prompt": r.prompt, "target": r.target}).json()["probability"]
                    for r in requests]
        # The trained model knows the old facts; the new targets are what it must now say.
        assert sum(b.strip().startswith(r.ground_truth) for b, r in zip(before, requests)) >= 4
        # The demo ships a chat template: a chat whose message is a fact's prompt answers as a completion.
        oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=ADMIN_KEY, max_retries=0)
        model = oa.models.list().data[0].id
        assert model == "model"  # a configured model_dir is named after its directory
        chat = oa.chat.completions.create(model=model, messages=[{"role": "user", "content": requests[0].prompt}],
                                          max_tokens=10, temperature=0)
        assert chat.model == model and chat.choices[0].message.content.strip() == before[0].strip()
        from langchain_openai import ChatOpenAI  # LangChain's client, out of the box

        llm = ChatOpenAI(base_url=f"{srv.url}/v1", api_key=ADMIN_KEY, model=model, temperature=0, max_tokens=10,
                         max_retries=0)
        assert llm.invoke(requests[0].prompt).content.strip() == before[0].strip()

        sub = c.post("/v1/edits", json={
            "edits": [{"prompt": r.prompt, "target": r.target, "paraphrases": list(r.paraphrases)} for r in requests],
            "author": "test", "reason": "new catalogue",
        })
        assert sub.status_code == 202, sub.text
        results = [wait_edit(c, i, timeout=120) for i in sub.json()["edit_ids"]]
        assert all(e["status"] == "applied" for e in results), results
        version = results[0]["applied_version"]

        after = [_generate(c, r.prompt, version) for r in requests]
        after_p = [c.post("/v1/probe", json={"prompt": r.prompt, "target": r.target}).json()["probability"]
                   for r in requests]
        assert all(a > b for a, b in zip(after_p, before_p)), (before_p, after_p)
        successes = sum(a.strip().startswith(r.target) for a, r in zip(after, requests))
        assert successes >= 5, list(zip(after, [r.target for r in requests]))
        # ... and its paraphrases (the tiny editor gets 90% of them; half is the bar here)
        para = [(p, r.target) for r in requests for p in r.paraphrases]
        para_hits = sum(_generate(c, p, version).strip().startswith(t) for p, t in para)
        assert para_hits >= len(para) // 2, (para_hits, len(para))

        job = c.post("/v1/versions/0/restore")
        assert job.status_code in (200, 202), job.text
        done = wait_job(c, job.json()["job_id"], timeout=120)
        assert done["status"] == "done", done
        restored = c.get("/v1/model").json()
        assert restored["weights_hash"] == c.get("/v1/versions/0").json()["weights_hash"]
        assert [_generate(c, r.prompt, restored["live_version"]) for r in requests] == before
    finally:
        srv.stop()


def test_canary_failure_of_a_batch_is_split_until_the_culprit_is_alone(tiny_demo, tmp_path: Path) -> None:
    """The only canary is a paraphrase of the first edit's prompt and no change is tolerated. The
    batch fails the canary bar, so its halves are gated one after the other down to single edits:
    an edit is rejected for the canary only when it changes it alone, and the others are applied."""
    world = tiny_demo.load_world()
    requests = world.edit_requests("eval", seed=1)[:6]
    settings = replace_settings(_settings(tiny_demo, tmp_path / "data"), gate_max_canary_change=0.0,
                                canary_prompts=[requests[0].paraphrases[0]])
    srv = start_server(settings)
    try:
        c = srv.client()
        ids = c.post("/v1/edits", json={"edits": [{"prompt": r.prompt, "target": r.target} for r in requests]}).json()["edit_ids"]
        edits = [wait_edit(c, i, timeout=120) for i in ids]
        assert edits[0]["status"] == "rejected", edits[0]  # it rewrites the canary's own answer
        for e in edits:
            canary_failed = any(f.startswith("canary") for f in e["metrics"]["gate"]["failures"])
            if canary_failed:
                assert e["metrics"]["batch_size"] == 1 and e["metrics"]["canary_changed"] == 1.0, e
            if e["status"] == "applied":
                assert e["metrics"]["canary_changed"] == 0.0, e
        assert sum(e["status"] == "applied" for e in edits) >= 3, [e["status"] for e in edits]
        assert c.get("/v1/versions").json()["total"] >= 2  # the halves committed their own versions
    finally:
        srv.stop()


def replace_settings(settings, **changes):
    return settings.model_copy(update=changes)


def test_demo_export_writes_the_editor_training_edits_and_the_known_facts_only(tiny_demo, tmp_path: Path) -> None:
    """What ``smedit tune`` needs to re-choose the demo editor: train entities' edits (no eval or
    locality entity ever), and the facts the SMEdit editor protects, exactly as the build uses them."""
    from typer.testing import CliRunner

    from demo_world.build import DEMO_SIZES, editor_requests, preservation_requests
    from editor_core.data import load_edits
    from smedit.cli import app

    data_dir = tiny_demo.root.parent.parent
    out = tmp_path / "export"
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "export", "--data-dir", str(data_dir), "--size", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    world = tiny_demo.load_world()
    train, val = editor_requests(world, DEMO_SIZES["tiny"], 0)
    edits = load_edits(out / "edits.jsonl")
    assert [(r.prompt, r.target, r.paraphrases, r.locality) for r in edits] == [
        (r.prompt, r.target, r.paraphrases, r.locality) for r in train + val]
    assert {r.subject for r in edits} <= set(world.splits["train"])
    known = load_edits(out / "known.jsonl")
    assert [(r.prompt, r.target) for r in known] == [(r.prompt, r.target) for r in preservation_requests(world, 0)]
    missing = runner.invoke(app, ["demo", "export", "--data-dir", str(tmp_path / "nothing"), "--size", "tiny",
                                  "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "smedit demo build --size tiny" in missing.output
    assert not (tmp_path / "x").exists()
