"""``smedit serve``: run the editing service (API + worker in one process: embedded mode).

Settings come from the environment (``SMEDIT_*``) or ``.env``; options given here override them.
With no model configured, the demo model is built (or reused) under the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Bind address (env SMEDIT_HOST, default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (env SMEDIT_PORT, default 8000)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="SQLite file, demo model, generated files (env SMEDIT_DATA_DIR, default ./data)."
    ),
    model_dir: Optional[Path] = typer.Option(
        None, "--model-dir", help="Hugging Face base model directory (env SMEDIT_MODEL_DIR; none = demo model)."
    ),
    editor_dir: Optional[Path] = typer.Option(
        None, "--editor-dir", help="SMEdit editor checkpoint (env SMEDIT_EDITOR_DIR)."
    ),
    database_url: Optional[str] = typer.Option(
        None, "--database-url", help="SQLAlchemy URL (env SMEDIT_DATABASE_URL; none = SQLite in the data dir)."
    ),
    worker: Optional[bool] = typer.Option(
        None, "--worker/--no-worker", help="Run the editing worker in this process (env SMEDIT_RUN_WORKER)."
    ),
) -> None:
    """Start the HTTP service: /v1 API, worker, /healthz, /readyz, /metrics."""
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    overrides = {
        k: v
        for k, v in dict(
            host=host, port=port, data_dir=data_dir, model_dir=model_dir, editor_dir=editor_dir,
            database_url=database_url, run_worker=worker,
        ).items()
        if v is not None
    }
    settings = Settings(**overrides)
    app = create_app(settings)
    typer.echo(f"smedit: serving on http://{settings.host}:{settings.port} (data dir {settings.data_dir})")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)
