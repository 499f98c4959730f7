"""The application factory: ``create_app(settings)`` builds the FastAPI app around :class:`Services`.

In the lifespan (before serving): logging, DB migrations, API key bootstrap. Cheap, and the API
must not accept anything before the schema is right and keys exist. Then, in a background
thread, :meth:`Services.start_model` loads the model, replays the latest version and starts the
worker; edits submitted meanwhile are persisted and queued, inference answers 503 until ready.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from app import console, method_not_allowed
from app.api import edits, error_responses, health, inference, keys, kpis, openai, versions
from app.auth import bootstrap_admin_key
from app.db import upgrade_to_head
from app.errors import install_dependency_handlers
from app.logging import configure_logging
from app.middleware import BodySizeLimit, request_context
from app.services import Services, retry_while_unreachable
from app.settings import Settings

log = logging.getLogger("app.main")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.open(settings)
        try:
            head = await asyncio.to_thread(
                retry_while_unreachable, lambda: upgrade_to_head(services.db), settings.startup_db_wait_s,
                lambda exc: None,
            )
            app.state.services = services
            if services.role != "worker":
                services.generated_admin_key = bootstrap_admin_key(settings, services.sessions)
            log.info("database ready", extra={"schema": head, "queue": settings.resolved_queue(),
                                              "url": services.db.url.render_as_string(hide_password=True)})
            starter = threading.Thread(target=services.start_model, name="smedit-start", daemon=True)
            starter.start()
            yield
            starter.join(timeout=1)
        finally:
            services.close()

    app = FastAPIOffline(  # /docs and /redoc with their assets served from the package, not a CDN
        title="smedit",
        version="1",
        description="Edit facts in a language model, keep every change in a history, undo any of them.",
        lifespan=lifespan,
    )
    app.middleware("http")(request_context)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    install_dependency_handlers(app)
    method_not_allowed.install(app)
    app.include_router(health.router)
    if settings.effective_role() != "worker":  # the worker process serves only health and metrics
        app.include_router(edits.router)
        app.include_router(versions.router)
        app.include_router(inference.router)
        app.include_router(keys.router)
        app.include_router(openai.router)
        app.include_router(kpis.router)
        console.mount(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    error_responses.install(app)
    return app


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 listing each bad field as a dotted path (plus pydantic's own detail list)."""
    errors = [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
         "loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)
