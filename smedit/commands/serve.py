"""``smedit serve`` and ``smedit worker``: run the service in a role.

- ``serve --role all|api|worker``: ``all`` is embedded mode (API + worker in one process, the
  default), ``api`` an API replica that follows the version log (no worker), ``worker`` the editing
  worker alone with only ``/healthz``, ``/readyz`` and ``/metrics`` over HTTP.
- ``worker``: shorthand for ``serve --role worker`` (port 8001 unless ``--port`` / ``SMEDIT_PORT``).

Settings come from the environment (``SMEDIT_*``) or ``.env``; options given here override them.
With no model configured, the demo model is built (or reused) under the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer


def _run(role: Optional[str], overrides: dict[str, Any]) -> None:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    if role is not None:
        values["role"] = role
        if role == "api":
            values["run_worker"] = False
    settings = Settings(**values)
    app = create_app(settings)
    what = {"all": "API + worker", "api": "API replica", "worker": "worker (health + metrics only)"}
    typer.echo(f"smedit: {what[settings.effective_role()]} on http://{settings.host}:{settings.port}")
    if settings.effective_role() != "worker":
        typer.echo(f"smedit: console http://{settings.host}:{settings.port}/admin, API docs /docs")
    if settings.model_dir is None and not _demo_built(settings):
        typer.echo(f"smedit: first start: building the {settings.demo_size} demo model and its editor under "
                   f"{settings.data_dir} (minutes on 2 cores; each phase shows a progress bar); /readyz "
                   "reports the phase, edits submitted meanwhile are queued", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)


def _demo_built(settings: Any) -> bool:
    from demo_world.build import demo_paths

    paths = demo_paths(settings.data_dir, settings.demo_size)
    return paths.stamp_json.is_file() and paths.editor_dir.is_dir()


def serve(
    role: Optional[str] = typer.Option(
        None, "--role", help="all (API + worker, embedded default), api (replica, follows versions) or worker "
        "(env SMEDIT_ROLE).",
    ),
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (env SMEDIT_HOST, default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (env SMEDIT_PORT, default 8000)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data directory (env SMEDIT_DATA_DIR)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Base model dir (env SMEDIT_MODEL_DIR)."),
    editor_dir: Optional[Path] = typer.Option(None, "--editor-dir", help="Editor checkpoint (env SMEDIT_EDITOR_DIR)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL (env SMEDIT_DATABASE_URL)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Redis URL (env SMEDIT_REDIS_URL)."),
    worker: Optional[bool] = typer.Option(
        None, "--worker/--no-worker", help="Older spelling: --no-worker = --role api (env SMEDIT_RUN_WORKER)."
    ),
) -> None:
    """Start the HTTP service in a role: /v1 API (+ worker), /healthz, /readyz, /metrics."""
    if role is not None and role not in ("all", "api", "worker"):
        raise typer.BadParameter("--role must be all, api or worker")
    _run(role, dict(host=host, port=port, data_dir=data_dir, model_dir=model_dir, editor_dir=editor_dir,
                    database_url=database_url, redis_url=redis_url, run_worker=worker))


def worker(
    host: Optional[str] = typer.Option(None, "--host", help="Bind address of /healthz, /readyz, /metrics."),
    port: Optional[int] = typer.Option(None, "--port", help="Port of /healthz, /readyz, /metrics (default 8001)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data directory (env SMEDIT_DATA_DIR)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Base model dir (env SMEDIT_MODEL_DIR)."),
    editor_dir: Optional[Path] = typer.Option(None, "--editor-dir", help="Editor checkpoint (env SMEDIT_EDITOR_DIR)."),
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL (env SMEDIT_DATABASE_URL)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Redis URL (env SMEDIT_REDIS_URL)."),
) -> None:
    """The editing worker alone (one per database: a second one stands by on the lock)."""
    if port is None and "SMEDIT_PORT" not in os.environ:
        port = 8001
    _run("worker", dict(host=host, port=port, data_dir=data_dir, model_dir=model_dir, editor_dir=editor_dir,
                        database_url=database_url, redis_url=redis_url))
