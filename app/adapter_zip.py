"""A version of the edited model as a PEFT LoRA adapter in a zip (``GET /v1/versions/{n}/adapter``).

The same adapter ``smedit export lora`` writes, made from the version's stored deltas and the base
model the service has loaded (only its module types and shapes are read, so the worker may go on
editing meanwhile). ``base_model_name_or_path`` is the served model directory's absolute path:
``AutoPeftModelForCausalLM.from_pretrained(unzipped_dir)`` finds the base on the service's host or
wherever the same directory is mounted; elsewhere, load the base yourself and use
``PeftModel.from_pretrained(base, unzipped_dir)``.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.db import session_scope

if TYPE_CHECKING:
    from app.runtime import ModelRuntime


class NothingToExport(Exception):
    """The version has no active deltas: it is the base model."""


def adapter_zip(sessions: sessionmaker[Session], runtime: ModelRuntime, number: int,
                max_rank: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """The zipped adapter of version ``number`` and its export report (``NotFound`` if no such version)."""
    from editor_core.export import export_lora

    with session_scope(sessions) as s:
        version = repo.get_version(s, number)
        active = list(version.active_deltas)
        if not active:
            raise NothingToExport(f"version {number} has no active deltas: it is the base model, nothing to export")
        blobs = repo.load_delta_blobs(s, active)
        info = {"version": number, "version_kind": version.kind, "active_deltas": active,
                "edit_ids": sorted(repo.edits_in_deltas(s, active)), "version_weights_hash": version.weights_hash,
                "base_model": str(runtime.model_dir.resolve()), "served_model_name": runtime.model_id}
    deltas = [runtime.delta_from_bytes(blobs[i]) for i in active]
    for delta in deltas:
        runtime.check_delta(delta)
    with tempfile.TemporaryDirectory(prefix="smedit-adapter-") as tmp:
        report = export_lora(runtime.model, deltas, tmp, max_rank=max_rank,
                             base_model_name_or_path=str(runtime.model_dir.resolve()), info=info)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(tmp).iterdir()):
                archive.write(path, arcname=path.name)
    return buffer.getvalue(), {**info, **report.as_dict()}
