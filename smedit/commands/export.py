"""``smedit export lora|model``: write a version of the edited model for use outside smedit.

Both read the version's active deltas straight from the service database (``--database-url``, or
the SQLite file in ``--data-dir``; the same settings / ``SMEDIT_*`` environment as ``smedit serve``)
and the base model directory (``--model-dir``, ``SMEDIT_MODEL_DIR``, or the demo model). Nothing is
written to the database, so it is safe to run next to a live service.

- ``lora``: a PEFT LoRA adapter of the difference to the base (``PeftModel.from_pretrained(base, DIR)``);
  exact unless ``--max-rank`` truncates (then the relative error is reported per module).
- ``model``: a full ``save_pretrained`` directory (safetensors + tokenizer) with exactly the weights
  the service computes (``AutoModelForCausalLM.from_pretrained(DIR)``).

A JSON report is printed and also written to ``DIR/smedit_export.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

export_app = typer.Typer(
    help="Export a model version: a PEFT LoRA adapter (lora) or a full model directory (model).",
    no_args_is_help=True,
)

VERSION = typer.Option(None, "--version", "-v", help="The version to export (default: the latest).")
OUT = typer.Option(..., "--out", "-o", help="Output directory (must be empty or absent, unless --force).")
DATA_DIR = typer.Option(None, "--data-dir", help="Service data directory (env SMEDIT_DATA_DIR, default ./data).")
DATABASE_URL = typer.Option(None, "--database-url", help="SQLAlchemy URL (env SMEDIT_DATABASE_URL).")
MODEL_DIR = typer.Option(None, "--model-dir", help="Base model directory (env SMEDIT_MODEL_DIR; none = demo model).")
FORCE = typer.Option(False, "--force", help="Write into a non-empty output directory.")


class ExportError(Exception):
    pass


@dataclass
class VersionDeltas:
    number: int
    kind: str
    weights_hash: str
    active_ids: list[int]
    edit_ids: list[int]  # edits carried by the active deltas
    deltas: list[Any]  # editor_core.delta.Delta, in order
    base_fingerprint: str | None
    served_model_dir: str | None = None  # the base model the service last served with this database


def _settings(data_dir: Optional[Path], database_url: Optional[str], model_dir: Optional[Path]) -> Any:
    from app.settings import Settings

    overrides = {k: v for k, v in dict(data_dir=data_dir, database_url=database_url, model_dir=model_dir).items()
                 if v is not None}
    return Settings(**overrides)


def resolve_model_dir(settings: Any, served: str | None = None) -> Path:
    """The configured base model; else the one the service serves with this database (recorded
    by its worker on start), if it is still there; else the demo model under the data directory."""
    from app.services import resolve_model

    if settings.model_dir is None and served and (Path(served) / "config.json").is_file():
        return Path(served)
    path = resolve_model(settings, build=False).model_dir
    if not (path / "config.json").is_file():
        raise ExportError(f"no base model at {path} (set --model-dir or SMEDIT_MODEL_DIR)")
    return path


def load_version(settings: Any, version: int | None) -> VersionDeltas:
    """A version's active deltas (sha256-checked), read-only from the service database."""
    from sqlalchemy import inspect

    from app import repository as repo
    from app.db import session_scope
    from app.services import open_database
    from editor_core.delta import Delta

    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path != ":memory:" and not Path(path).is_file():
            raise ExportError(f"no smedit database at {path} (set --data-dir or --database-url)")
    db, sessions = open_database(settings)
    try:
        if "versions" not in inspect(db).get_table_names():
            raise ExportError(f"{db.url.render_as_string(hide_password=True)} has no smedit schema")
        with session_scope(sessions) as s:
            row = repo.latest_version(s) if version is None else _get_version(s, version)
            if row is None:
                raise ExportError("the database has no versions yet (start the service once)")
            active = list(row.active_deltas)
            blobs = repo.load_delta_blobs(s, active) if active else {}
            edit_ids = sorted(repo.edits_in_deltas(s, active)) if active else []
            known = repo.get_meta(s, "base_fingerprint")
            out = VersionDeltas(row.number, row.kind, row.weights_hash, active, edit_ids,
                                [Delta.from_bytes(blobs[i]) for i in active], known, repo.get_meta(s, "base_model_dir"))
    except (repo.ChecksumError, repo.NotFound) as exc:
        raise ExportError(str(exc)) from None
    finally:
        db.dispose()
    return out


def _get_version(session: Any, number: int) -> Any:
    from app import repository as repo

    try:
        return repo.get_version(session, number)
    except repo.NotFound as exc:
        raise ExportError(str(exc)) from None


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise ExportError(f"{out} exists and is not an empty directory (use --force to write into it)")


def _load_base(model_dir: Path, dtype: str, vd: VersionDeltas) -> Any:
    """The base model in ``dtype``, checked against the deltas' fingerprints first. Loaded in
    float32 for the check (a fingerprint is of the weights as the service loaded them; bf16
    rounding would change it), then cast once, as loading in ``dtype`` would."""
    import torch

    from editor_core.export import check_base
    from editor_core.models import load_model

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ExportError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    model, _ = load_model(model_dir, device="cpu", dtype="float32")
    try:
        check_base(model, vd.deltas)
    except ValueError as exc:
        raise ExportError(f"{exc} (model dir {model_dir})") from None
    return model if dtype == "float32" else model.to(getattr(torch, dtype))


def _info(vd: VersionDeltas, model_dir: Path) -> dict[str, Any]:
    return {"version": vd.number, "version_kind": vd.kind, "active_deltas": vd.active_ids, "edit_ids": vd.edit_ids,
            "base_model": str(model_dir), "version_weights_hash": vd.weights_hash}


def _run(fn: Any) -> None:
    try:
        report = fn()
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report, indent=2, default=str))


@export_app.command("lora")
def lora(
    out: Path = OUT,
    version: Optional[int] = VERSION,
    max_rank: Optional[int] = typer.Option(
        None, "--max-rank", min=1,
        help="Cap the LoRA rank: truncated SVD, the relative error is reported (default: exact, rank = sum of ranks).",
    ),
    data_dir: Optional[Path] = DATA_DIR,
    database_url: Optional[str] = DATABASE_URL,
    model_dir: Optional[Path] = MODEL_DIR,
    force: bool = FORCE,
) -> None:
    """Write version N minus the base as a PEFT LoRA adapter (load: PeftModel.from_pretrained(base, OUT))."""

    def work() -> dict[str, Any]:
        from editor_core.export import export_lora

        settings = _settings(data_dir, database_url, model_dir)
        vd = load_version(settings, version)
        base_dir = resolve_model_dir(settings, vd.served_model_dir)
        if not vd.deltas:
            raise ExportError(f"version {vd.number} has no active deltas: it is the base model, nothing to export")
        _prepare_out(out, force)
        model = _load_base(base_dir, "float32", vd)
        # absolute: AutoPeftModelForCausalLM.from_pretrained(OUT) must find the base from any directory
        report = export_lora(model, vd.deltas, out, max_rank=max_rank, base_model_name_or_path=str(Path(base_dir).resolve()),
                             info=_info(vd, base_dir))
        return {**_info(vd, base_dir), **report.as_dict()}

    _run(work)


@export_app.command("model")
def model(
    out: Path = OUT,
    version: Optional[int] = VERSION,
    dtype: str = typer.Option(
        "float32", "--dtype", help="Weights dtype: float32 (the CPU service's bits) or bfloat16 / float16 (a GPU service's)."
    ),
    data_dir: Optional[Path] = DATA_DIR,
    database_url: Optional[str] = DATABASE_URL,
    model_dir: Optional[Path] = MODEL_DIR,
    force: bool = FORCE,
) -> None:
    """Write version N as a full model directory (safetensors; load: AutoModelForCausalLM.from_pretrained(OUT))."""

    def work() -> dict[str, Any]:
        from transformers import AutoTokenizer

        from editor_core.export import export_full

        settings = _settings(data_dir, database_url, model_dir)
        vd = load_version(settings, version)
        base_dir = resolve_model_dir(settings, vd.served_model_dir)
        _prepare_out(out, force)
        base = _load_base(base_dir, dtype, vd)
        tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)  # as shipped (no pad changes)
        modules = _service_modules(base, vd)
        report = export_full(base, vd.deltas, out, tokenizer=tokenizer, info=_info(vd, base_dir), module_names=modules)
        result = {**_info(vd, base_dir), **report.as_dict()}
        result["weights_hash_matches_version"] = report.weights_hash == vd.weights_hash
        return result

    _run(work)


def _service_modules(model: Any, vd: VersionDeltas) -> list[str]:
    """The modules the service's weights hash covers: the editor's (default ones unless configured)."""
    from editor_core.arch import default_modules
    from editor_core.export import touched_modules

    touched = touched_modules(model, vd.deltas)
    try:
        defaults = default_modules(model)
    except ValueError:
        return touched
    return defaults if set(touched) <= set(defaults) else touched
