"""``smedit export lora|model`` against a live service's database reproduce its edited model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from smedit.commands.export import export_app
from tests.app.conftest import RunningServer, wait_edit, wait_job

peft = pytest.importorskip("peft")

PROMPTS = ["The sky is", "Water boils at", "The Zentrix X2 costs"]


def _service_logits(server: RunningServer) -> list[torch.Tensor]:
    runtime = server.services.runtime
    with runtime.exclusive(), torch.no_grad():
        return [runtime.model(input_ids=runtime.tokenizer(p, return_tensors="pt")["input_ids"]).logits.float()
                for p in PROMPTS]


def _logits(model: torch.nn.Module, tokenizer, prompts=PROMPTS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=tokenizer(p, return_tensors="pt")["input_ids"]).logits.float() for p in prompts]


def _export(*args: str) -> dict:
    result = CliRunner().invoke(export_app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_exports_reproduce_the_service_model(server: RunningServer, tiny_model_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    admin = server.client()
    for prompt, target in [("The sky is", "green"), ("The Zentrix X2 costs", "59 dollars")]:
        sub = admin.post("/v1/edits", json={"prompt": prompt, "target": target}).json()
        assert wait_edit(admin, sub["edit_ids"][0])["status"] == "applied"
    assert server.services.runtime.live_version == 2
    live = _service_logits(server)
    where = ["--data-dir", str(server.services.settings.data_dir), "--model-dir", str(tiny_model_dir)]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    report = _export("lora", "--version", "2", "--out", str(tmp_path / "lora"), *where)
    assert report["exact"] and report["version"] == 2 and report["edit_ids"] == [1, 2]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_logits = _logits(base, tok)
    lora = peft.PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    for got, want in zip(_logits(lora, tok), live):
        assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(live, base_logits))  # the edits did something
    # the adapter names its base by an absolute path, even when --model-dir was given relative
    import os

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_model_dir, tmp_path)
    _export("lora", "-v", "2", "--out", "lora_rel", "--data-dir", where[1], "--model-dir", relative)
    config = json.loads((tmp_path / "lora_rel" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())

    report = _export("model", "--out", str(tmp_path / "full"), *where)  # default: the latest version
    assert report["version"] == 2 and report["weights_hash_matches_version"]
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    for got, want in zip(_logits(full, AutoTokenizer.from_pretrained(tmp_path / "full")), live):
        assert torch.equal(got, want)

    # an older version: truncated LoRA (error reported) and full, checked after restoring it live
    cut = _export("lora", "-v", "1", "--max-rank", "1", "--out", str(tmp_path / "lora1"), *where)
    assert cut["rank"] == 1 and cut["edit_ids"] == [1]
    assert all(m["rank"] == 1 for m in cut["modules"])
    assert cut["exact"] == (cut["max_rel_error"] < 1e-6)
    _export("model", "-v", "1", "--out", str(tmp_path / "full1"), *where)
    job = admin.post("/v1/versions/1/restore").json()
    assert wait_job(admin, job["job_id"])["status"] == "done"
    v1 = _service_logits(server)
    full1 = AutoModelForCausalLM.from_pretrained(tmp_path / "full1").eval()
    assert all(torch.equal(a, b) for a, b in zip(_logits(full1, tok), v1))

    # errors: not a version, not an empty directory, the base model is nothing to export
    runner = CliRunner()
    bad = runner.invoke(export_app, ["lora", "-v", "99", "--out", str(tmp_path / "x"), *where])
    assert bad.exit_code == 1 and "version 99 not found" in bad.output
    bad = runner.invoke(export_app, ["lora", "--out", str(tmp_path / "lora"), *where])
    assert bad.exit_code == 1 and "--force" in bad.output
    bad = runner.invoke(export_app, ["lora", "-v", "0", "--out", str(tmp_path / "y"), *where])
    assert bad.exit_code == 1 and "nothing to export" in bad.output


def test_export_finds_the_served_model_and_the_adapter_zip_loads_alone(
        server: RunningServer, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import zipfile

    from transformers import AutoTokenizer

    admin = server.client()
    sub = admin.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()
    assert wait_edit(admin, sub["edit_ids"][0])["status"] == "applied"
    live = _service_logits(server)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    # no --model-dir: the base the service serves with this database (not the demo model)
    monkeypatch.delenv("SMEDIT_MODEL_DIR", raising=False)
    report = _export("lora", "--out", str(tmp_path / "cli"), "--data-dir", str(server.services.settings.data_dir))
    assert report["base_model"] == str(tiny_model_dir.resolve()) and report["exact"]

    # over HTTP, admin only: a zip that AutoPeftModelForCausalLM loads from its folder alone
    got = admin.get("/v1/versions/1/adapter")
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert 'filename="smedit-v1-lora.zip"' in got.headers["content-disposition"]
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(io.BytesIO(got.content)).extractall(folder)
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "smedit_export.json"}
    monkeypatch.chdir(tmp_path)  # the adapter names its base absolutely
    model = peft.AutoPeftModelForCausalLM.from_pretrained(folder).eval()
    for a, b in zip(_logits(model, tok), live):
        assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert json.loads((folder / "smedit_export.json").read_text())["version"] == 1

    reader = admin.post("/v1/keys", json={"name": "r", "scopes": ["read", "edit"]}).json()["key"]
    assert server.client(reader).get("/v1/versions/1/adapter").status_code == 403
    assert admin.get("/v1/versions/0/adapter").status_code == 409
    assert admin.get("/v1/versions/99/adapter").status_code == 404
    assert admin.get("/v1/versions/1/adapter", params={"max_rank": 0}).status_code == 422
