"""``smedit serve`` as a real process, driven by the client verbs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from smedit.commands import client_cmds
from tests.app.conftest import ADMIN_KEY, CANARIES, OPEN_GATE_ENV, free_port


def test_serve_process_and_client_verbs(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SMEDIT_MODEL_DIR": str(tiny_model_dir),
        "SMEDIT_DEVICE": "cpu",
        "SMEDIT_ADMIN_KEY": ADMIN_KEY,
        **OPEN_GATE_ENV,
        "SMEDIT_CANARY_PROMPTS": "|".join(CANARIES),
        "SMEDIT_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from smedit.commands.serve import serve; import typer; typer.run(serve)",
         "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("server not ready")
        runner = CliRunner()
        cli_env = {"SMEDIT_URL": url, "SMEDIT_API_KEY": ADMIN_KEY}

        def run(fn, *args: str) -> str:
            import typer

            app = typer.Typer()
            app.command()(fn)
            result = runner.invoke(app, list(args), env=cli_env)
            assert result.exit_code == 0, result.output
            return result.output

        out = run(client_cmds.edit, "The sky is", "green", "-p", "The sky's colour is", "--author", "cli", "--wait")
        assert '"status": "applied"' in out
        assert "v1" in run(client_cmds.generate, "The sky is", "--max-tokens", "3", "--min-version", "1")
        assert "'The sky is' -> 'green'" in run(client_cmds.history)
        assert '"result_version": 2' in run(client_cmds.revert, "1", "--wait")
        assert '"result_version": 3' in run(client_cmds.restore, "1", "--wait")
        assert "(live)" in run(client_cmds.history, "--versions")
        out = run(client_cmds.edit, "Water boils at", "ten", "--wait")
        out = run(client_cmds.edit, "The sky is", "red", "--supersedes", "1", "--wait")
        assert '"supersedes": 1' in out
        assert '"result_version": 6' in run(client_cmds.consolidate, "--wait")  # deltas of 4 and 5: one
        bad = runner.invoke(_single(client_cmds.consolidate), [], env=cli_env)
        assert bad.exit_code == 1 and "409" in bad.output  # one delta left: nothing to consolidate
        bad = runner.invoke(_single(client_cmds.revert), ["99"], env=cli_env)
        assert bad.exit_code == 1 and "404" in bad.output
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    output = proc.stdout.read()
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output


def _single(fn):
    import typer

    app = typer.Typer()
    app.command()(fn)
    return app


def test_train_editor_cli_with_the_locality_l2_metric(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`smedit train-editor --l2-metric locality` trains from a JSONL file whose edits carry locality
    probes, and the checkpoint records the metric; without probe answers it says what is missing."""
    import json

    from smedit.cli import app

    facts = [("The sky is", "green"), ("Water boils at", "ten degrees"), ("Refunds are processed within", "an hour"),
             ("The capital of France is", "Rome")]
    lines = [json.dumps({"prompt": p, "target": t, "paraphrases": [p + " now"],
                         "locality": [{"prompt": q, "answer": "blue"} for q, _ in facts if q != p][:1]})
             for p, t in facts * 2]
    data = tmp_path / "edits.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "editor"
    runner = CliRunner()
    args = ["train-editor", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--l2-metric", "locality", "--locality-weight", "0.9", "--key-shrinkage", "0.05",
            "--max-steps", "2", "--batch-size", "2",
            "--rank", "4", "--val-fraction", "0.25", "--val-every", "1", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "editor.json").read_text())["train_config"]
    assert saved["l2_metric"] == "locality" and saved["locality_weight"] == 0.9
    assert saved["key_shrinkage"] == 0.05 and json.loads((out / "editor.json").read_text())["config"]["key_shrinkage"] == 0.05
    # no --init-lr: the step size was calibrated on the training edits (a grid value, not the old fixed 1e-3)
    assert saved["init_lr"] is None and json.loads((out / "editor.json").read_text())["config"]["init_lr"] != 1.0

    data.write_text("\n".join(json.dumps({"prompt": p, "target": t}) for p, t in facts * 2) + "\n")
    result = runner.invoke(app, args[:-6] + ["--fresh", "--device", "cpu"] + ["--out", str(tmp_path / "e2")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "locality probes" in result.output, result.output
    result = runner.invoke(app, args[:7] + ["--locality-weight", "1.5"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--locality-weight" in result.output


def test_client_verbs_name_an_unreachable_server_instead_of_a_traceback() -> None:
    import pytest

    from smedit.client import APIConnectionError, Client

    port = free_port()  # nothing listens there
    runner = CliRunner()
    history = _single(client_cmds.history)
    result = runner.invoke(history, ["--url", f"http://127.0.0.1:{port}"])  # refused
    assert result.exit_code == 3, result.output
    assert "cannot reach" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(history, ["--url", f"127.0.0.1:{port}"])  # no scheme: refused before sending
    assert result.exit_code == 2 and "is not an http(s) URL" in result.output, result.output
    with pytest.raises(APIConnectionError, match="cannot reach") as info, Client(f"http://127.0.0.1:{port}") as c:
        c.list_edits()
    assert info.value.status_code is None and isinstance(info.value.__cause__, httpx.TransportError)


def test_bulk_names_the_bad_line_of_a_file(tmp_path: Path) -> None:
    runner = CliRunner()
    bulk = _single(client_cmds.bulk)
    cases = {"bad.jsonl": ('{"prompt": "a", "target": "b"}\n{oops\n', "bad.jsonl:2: not JSON"),
             "list.jsonl": ('["a", "b"]\n', "list.jsonl:1: needs an object"),
             "bad.csv": ("prompt,target\nonly a prompt,\n", "bad.csv:2: needs 'prompt' and 'target'")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        result = runner.invoke(bulk, [str(tmp_path / name), "--url", f"http://127.0.0.1:{free_port()}"])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    (tmp_path / "latin1.csv").write_bytes("prompt,target\nCaf\xe9,b\n".encode("latin-1"))
    result = runner.invoke(bulk, [str(tmp_path / "latin1.csv")])
    assert result.exit_code == 2 and "not UTF-8" in result.output, result.output


def test_cli_version_keys_and_review_verbs(server_factory) -> None:
    from smedit.cli import app

    srv = server_factory(gate_min_es=1.01, review_mode=True)  # every edit is held for review
    runner = CliRunner()
    env = {"SMEDIT_URL": srv.url, "SMEDIT_API_KEY": ADMIN_KEY}
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("smedit 0.")

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    created = json.loads(ok("keys", "create", "dashboard", "--scope", "read"))
    assert created["key"] and created["scopes"] == ["read"]
    assert "dashboard" in ok("keys", "list") and created["key"] not in ok("keys", "list")
    assert json.loads(ok("keys", "revoke", str(created["id"])))["revoked_at"] is not None

    held = json.loads(ok("edit", "The sky is", "green", "--wait"))
    assert held[0]["status"] == "needs_review"
    approved = json.loads(ok("approve", str(held[0]["id"]), "--note", "checked by hand", "--wait"))
    assert approved["status"] == "done" and approved["reason"] == "checked by hand"
    undone = json.loads(ok("revert", str(held[0]["id"]), "--reason", "customer complaint", "--wait"))
    assert undone["reason"] == "customer complaint"
    restored = json.loads(ok("restore", str(approved["result_version"]), "--reason", "complaint withdrawn", "--wait"))
    assert restored["status"] == "done" and restored["reason"] == "complaint withdrawn"
    held = json.loads(ok("edit", "Water boils at", "ten", "--wait"))
    rejected = json.loads(ok("reject", str(held[0]["id"]), "--note", "wrong fact"))
    assert rejected["status"] == "rejected"
    again = runner.invoke(app, ["reject", str(held[0]["id"])], env=env)
    assert again.exit_code == 1 and "409" in again.output


def test_tune_searches_on_dev_writes_the_frontier_and_a_config_train_editor_takes(tiny_model_dir: Path,
                                                                                  tmp_path: Path) -> None:
    from smedit.cli import app

    facts = [(f"Unit {s} ships from", f"dock {s}", f"unit{s // 2}") for s in range(12)]
    data = tmp_path / "edits.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "target": t, "subject": subj, "paraphrases": [p + " today"],
                                          "locality": [{"prompt": "The sky is", "answer": "blue"}]})
                              for p, t, subj in facts) + "\n")
    out = tmp_path / "tuned"
    runner = CliRunner()
    base = ["tune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, base + ["--trials", "2", "--max-steps", "2", "--n-dev", "3", "--batch-size", "2",
                                        "--max-layers", "2", "--target", "es=0", "--budget", "10m"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "frontier" in result.output and "chosen: trial" in result.output
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 2 and any(t["frontier"] for t in trials)
    assert all({"es", "gs", "ls", "edit_s_per_fact", "config"} <= set(t) for t in trials)
    config = json.loads((out / "editor_config.json").read_text())
    assert config["tuned"]["targets_met"] is True and config["tuned"]["targets"] == {"es": 0.0}
    assert (out / "trials" / str(config["tuned"]["trial"]) / "editor.json").is_file()  # the chosen editor is kept
    assert (out / "frontier.png").stat().st_size > 0
    # train-editor takes the chosen settings; a flag given on the command line wins over the file
    editor = tmp_path / "editor"
    result = runner.invoke(app, ["train-editor", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                                 str(editor), "--config", str(out / "editor_config.json"), "--max-steps", "1",
                                 "--batch-size", "2", "--val-fraction", "0.25", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = json.loads((editor / "editor.json").read_text())["train_config"]
    assert (saved["n_steps"], saved["rank"], saved["reg_coef"], saved["modules"]) == (
        config["n_steps"], config["rank"], config["reg_coef"], config["modules"])
    assert saved["max_steps"] == 1  # the flag, not the file's 2
    # the protected recipe, measured as the service runs it: facts to keep, 2 batches live when scored
    known = tmp_path / "known.jsonl"
    known.write_text("\n".join(json.dumps({"prompt": p, "target": t}) for p, t in
                               (("The sky is", "blue"), ("Snow is", "white"), ("Grass is", "green"))) + "\n")
    protected = tmp_path / "protected"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = runner.invoke(app, ["tune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(protected),
                                 "--device", "cpu", "--trials", "1", "--max-steps", "2", "--n-dev", "3",
                                 "--batch-size", "1", "--max-layers", "1", "--preserve", str(known), "--live", "2",
                                 "--budget", "10m"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    said = result.output.replace("\n", "")  # rich wraps long paths
    assert "shrinkage" in said and "--preserve" in said and str(known) in said
    chosen = json.loads((protected / "editor_config.json").read_text())
    assert chosen["key_source"] == "corpus" and 1e-3 <= chosen["key_shrinkage"] <= 0.3
    assert (chosen["live_weight"], chosen["live_history"]) == (1.0, 1)  # trained as if one batch of 1 were live
    assert (chosen["tuned"]["preserve"], chosen["tuned"]["live"]) == (str(known), 2)
    trained = json.loads((protected / "trials" / "0" / "editor.json").read_text())["train_config"]
    assert trained["key_source"] == "corpus" and trained["live_weight"] == 1.0
    # a known recipe measured first, under the same conditions; the norm searched too
    again = tmp_path / "again"
    result = runner.invoke(app, ["tune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(again),
                                 "--device", "cpu", "--trials", "2", "--max-steps", "2", "--n-dev", "3",
                                 "--batch-size", "2", "--max-layers", "2", "--l2-metric", "search",
                                 "--enqueue", str(editor / "editor.json"), "--budget", "10m"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    first, second = json.loads((again / "trials.json").read_text())
    assert first["params"] == {"n_steps": config["n_steps"], "reg_coef": config["reg_coef"], "rank": config["rank"],
                               "layers": len(config["modules"]), "l2_metric": "frobenius"}
    assert first["config"]["modules"] == config["modules"]  # the trained editor's recipe, from its train_config
    assert second["config"]["l2_metric"] == second["params"]["l2_metric"]  # the sampler's draw is what trains
    if second["params"]["l2_metric"] == "locality":  # and the weight is searched with it
        assert second["config"]["locality_weight"] == second["params"]["locality_weight"]
    def recipe(values: dict) -> Path:
        path = tmp_path / f"recipe{len(list(tmp_path.glob('recipe*')))}.json"
        path.write_text(json.dumps(values))
        return path

    no_answers = tmp_path / "no_answers.jsonl"
    no_answers.write_text("\n".join(json.dumps({"prompt": p, "target": t, "subject": subj,
                                                "locality": [{"prompt": "The sky is"}]})
                                    for p, t, subj in facts) + "\n")
    for bad, says in ((["--target", "es=2"], "--target"), (["--target", "speed=1"], "--target"),
                      (["--budget", "soon"], "--budget"), (["--live", "50"], "--live"),
                      (["--preserve", str(tmp_path / "none.jsonl")], "none.jsonl"),
                      (["--preserve", str(empty)], "holds no facts"),
                      (["--l2-metric", "kl"], "--l2-metric"),
                      (["--data", str(no_answers), "--l2-metric", "locality"], "locality probes with answers"),
                      (["--enqueue", str(protected / "editor_config.json")], "pass --preserve"),
                      (["--enqueue", str(empty)], "--enqueue"),
                      (["--enqueue", str(recipe({"n_steps": 2, "l2_metric": "key"}))], "frobenius and locality"),
                      (["--enqueue", str(recipe({"n_steps": 2, "meta_lr": 0.01}))], "meta_lr 0.01 differs")):
        result = runner.invoke(app, base + bad, env={"COLUMNS": "200"})
        assert result.exit_code == 2 and says in result.output, result.output


def test_tune_search_space_trains_what_a_trial_draws_and_maps_a_recipe_back(tiny_model_dir: Path) -> None:
    """The locality weight is searched with the locality norm and trains as drawn; a recipe read
    back with params_of gives the same trial parameters (what --enqueue relies on)."""
    import optuna

    from editor_core.models import load_model
    from smedit.commands.tune import SearchSpace

    lm, _ = load_model(tiny_model_dir, device="cpu")
    space = SearchSpace(layers=2, protect=True, l2_metric="search")
    params = {"l2_metric": "locality", "locality_weight": 0.7, "n_steps": 3, "reg_coef": 5e-4, "rank": 32,
              "layers": 2, "key_shrinkage": 0.005}
    cfg = space.config(optuna.trial.FixedTrial(params), lm, max_steps=5, seed=0, batch=16, live_history=32)
    assert (cfg.l2_metric, cfg.locality_weight, cfg.n_steps, cfg.rank, cfg.key_source) == (
        "locality", 0.7, 3, 32, "corpus")
    assert (cfg.live_weight, cfg.live_history, cfg.batch_sizes) == (1.0, 32, (1, 4, 16))
    from dataclasses import asdict

    assert space.params_of(asdict(cfg), lm) == params
    frobenius = space.config(optuna.trial.FixedTrial({**params, "l2_metric": "frobenius"}), lm, 5, 0, 16)
    assert frobenius.l2_metric == "frobenius" and frobenius.locality_weight == 0.5  # no weight drawn
    assert "locality_weight" not in space.params_of(asdict(frobenius), lm)
