"""The application factory: ``create_app(settings)`` wires DB, queue, engine, worker and routers.

Start-up is split in two so that ``/healthz`` answers at once while ``/readyz`` waits:
- in the lifespan (before serving): logging, DB migrations, API key bootstrap. Cheap, and the API
  must not accept anything before the schema is right and keys exist.
- in a background thread: load the model (building the demo model if none is configured),
  replay the latest version, recover unfinished jobs and start the worker. Edits submitted
  meanwhile are persisted and queued; inference answers 503 until the model is ready.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine as SQLEngine
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import repository as repo
from app.db import make_engine, make_sessionmaker, session_scope, upgrade_to_head
from app.logging import configure_logging, request_id_var
from app.metrics import Metrics
from app.queue import DatabaseQueue, InProcessQueue, Queue, RedisStreamQueue
from app.settings import Settings

log = logging.getLogger("app.main")


@dataclass
class Services:
    """Everything a request handler may need, hung on ``app.state.services``."""

    settings: Settings
    db: SQLEngine
    sessions: sessionmaker[Session]
    queue: Queue
    metrics: Metrics
    engine: Any = None  # app.engine.Engine once loaded (imported lazily: torch is slow to import)
    worker: Any = None
    follower: Any = None
    startup_error: str | None = None
    phase: str = "starting"
    replay: dict[str, Any] = field(default_factory=dict)
    generated_admin_key: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def model_loaded(self) -> bool:
        return self.engine is not None

    @property
    def version_replayed(self) -> bool:
        return self._ready.is_set() and self.engine is not None and self.engine.live_version is not None

    @property
    def role(self) -> str:
        return self.settings.effective_role()

    @property
    def runs_worker(self) -> bool:
        return self.role in ("all", "worker")

    @property
    def worker_running(self) -> bool:
        if not self.runs_worker:
            return True  # not this process's job (production API replica)
        return self.worker is not None and self.worker.running

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)


def _bootstrap_keys(services: Services) -> None:
    """Configured admin key stored (hashed); on a key-less DB, print a generated admin key once.

    Several processes may start at once on a fresh database (replicas + worker): a twin insert
    loses on the unique key hash and simply retries (the key is then there)."""
    from sqlalchemy.exc import IntegrityError

    try:
        _bootstrap_keys_once(services)
    except IntegrityError:
        _bootstrap_keys_once(services)


def _bootstrap_keys_once(services: Services) -> None:
    settings = services.settings
    with session_scope(services.sessions) as s:
        if settings.admin_key:
            repo.ensure_api_key(s, "bootstrap-admin", ["admin"], settings.admin_key)
        elif repo.count_active_keys(s) == 0 and settings.generate_admin_key:
            _, token = repo.create_api_key(s, "generated-admin", ["admin"])
            services.generated_admin_key = token
            banner = "=" * 72
            print(f"{banner}\nsmedit: generated an admin API key (shown once, stored hashed):\n\n    {token}\n\n"
                  f"use it as: Authorization: Bearer <key>\n{banner}", flush=True)


def _load_and_start(services: Services) -> None:
    """Background start-up: model, replay, recovery, worker (or follower)."""
    services.phase = "importing torch and the editing library"
    from app.engine import Engine, demo_model
    from app.follower import LocalFollower, PollingFollower, RedisFollower, redis_announcer
    from app.worker import Worker, bootstrap_and_replay

    settings = services.settings
    try:
        canaries: list[str] = []
        model_dir, editor_dir = settings.model_dir, settings.editor_dir
        if model_dir is None:
            services.phase = f"building or loading the demo model ({settings.demo_size}) under {settings.data_dir}"
            log.info("no model configured: building/using the demo model", extra={"size": settings.demo_size})
            model_dir, demo_editor, canaries = demo_model(Path(settings.data_dir), settings.demo_size)
            editor_dir = editor_dir or demo_editor
        services.phase = f"loading model {model_dir}"
        t0 = time.perf_counter()
        engine = Engine(model_dir, editor_dir, device=settings.device, dtype=settings.dtype)
        log.info("model loaded", extra={"model_dir": str(model_dir), "device": engine.device,
                                        "load_s": round(time.perf_counter() - t0, 2)})
        services.phase = "replaying the latest version"
        if services.runs_worker:
            channel = f"{settings.redis_prefix}:versions"
            announce = redis_announcer(settings.redis_url, channel) if settings.redis_url else None
            worker = Worker(settings, services.sessions, services.queue, engine, services.metrics,
                            canaries=canaries, announce=announce)
            services.replay = _retry_db(services, lambda: bootstrap_and_replay(
                services.sessions, engine, worker.cache, writer=True))
            services.engine = engine
            if announce is not None and services.replay.get("version") is not None:
                announce(services.replay["version"])  # replicas waiting for version 0 need not poll
            # the worker takes over unfinished jobs itself, once it holds the writer lock
            worker.start()
            services.worker = worker
            services.follower = LocalFollower(engine)
        else:
            follower = (
                RedisFollower(services.sessions, engine, settings.redis_url, f"{settings.redis_prefix}:versions",
                              interval=settings.follow_interval_s, timeout_s=settings.redis_timeout_s)
                if settings.redis_url else PollingFollower(services.sessions, engine)
            )
            services.replay = _retry_db(services, lambda: bootstrap_and_replay(
                services.sessions, engine, follower.cache, writer=False))
            services.engine = engine
            follower.start()
            services.follower = follower
        if engine.live_version is not None:
            services.metrics.live_version.set(engine.live_version)
        services.phase = "ready"
        services._ready.set()
    except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process stays up for diagnosis
        services.startup_error = f"{type(exc).__name__}: {exc}"
        services.phase = "failed"
        log.exception("start-up failed")


def _retry_db(services: Services, fn: Any, wait_s: float = 120.0) -> Any:
    """Run a start-up step, retrying while the database is unreachable (it may come up later)."""
    from app.errors import is_dependency_error

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_dependency_error(exc) or time.monotonic() > deadline:
                raise
            services.phase = f"waiting for the database: {type(exc).__name__}"
            log.warning("database unavailable during start-up; retrying", extra={"error": str(exc)[:300]})
            time.sleep(1.0)


class BodySizeLimit:
    """Reject request bodies over ``limit`` bytes (413), whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _upgrade_when_reachable(db: SQLEngine, wait_s: float) -> str:
    """Migrate to head; while the database is unreachable, retry for up to ``wait_s`` seconds."""
    import asyncio

    from app.errors import is_dependency_error

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await asyncio.to_thread(upgrade_to_head, db)
        except Exception as exc:
            if not is_dependency_error(exc) or time.monotonic() > deadline:
                raise
            log.warning("database unavailable at start-up; retrying", extra={"error": str(exc)[:300]})
            await asyncio.sleep(1.0)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        db = make_engine(settings.resolved_database_url())
        head = await _upgrade_when_reachable(db, settings.startup_db_wait_s)
        sessions = make_sessionmaker(db)
        kind = settings.resolved_queue()
        queue: Queue
        if kind == "redis":
            if not settings.redis_url:
                raise RuntimeError("SMEDIT_QUEUE=redis needs SMEDIT_REDIS_URL")
            queue = RedisStreamQueue(settings.redis_url, prefix=settings.redis_prefix,
                                     claim_idle_s=settings.claim_idle_s, timeout_s=settings.redis_timeout_s)
        elif kind == "db":
            queue = DatabaseQueue(sessions)
        else:
            queue = InProcessQueue()
        services = Services(settings=settings, db=db, sessions=sessions, queue=queue, metrics=Metrics())
        services.metrics.track_queue(queue.depth)
        app.state.services = services
        if services.role != "worker":
            _bootstrap_keys(services)
        log.info("database ready", extra={"schema": head, "queue": kind, "url": db.url.render_as_string(hide_password=True)})
        starter = threading.Thread(target=_load_and_start, args=(services,), name="smedit-start", daemon=True)
        starter.start()
        try:
            yield
        finally:
            if services.worker is not None:
                services.worker.stop()
            if services.follower is not None:
                services.follower.stop()
            queue.close()
            starter.join(timeout=1)
            db.dispose()

    app = FastAPI(
        title="smedit",
        version="1",
        description="Edit facts in a language model, keep every change in a history, undo any of them.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def request_context(request: Request, call_next: Any) -> Any:
        """Request id (from X-Request-ID or new), access log line, HTTP metrics."""
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        token = request_id_var.set(rid[:128])
        t0 = time.perf_counter()
        status_code = 500
        try:
            response = await call_next(request)
            status_code = response.status_code
            response.headers["X-Request-ID"] = rid[:128]
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            services = getattr(request.app.state, "services", None)
            if services is not None:
                services.metrics.http_requests.labels(request.method, path, str(status_code)).inc()
            log.info("request", extra={"method": request.method, "path": request.url.path, "status": status_code,
                                       "duration_ms": round((time.perf_counter() - t0) * 1000, 1)})
            request_id_var.reset(token)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 listing each bad field as a dotted path (plus pydantic's own detail list)."""
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
             "loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    from app.errors import install_dependency_handlers

    install_dependency_handlers(app)

    from app.api import edits, health, inference, keys, openai_compat, versions

    app.include_router(health.router)
    if settings.effective_role() != "worker":  # the worker process serves only health and metrics
        app.include_router(edits.router)
        app.include_router(versions.router)
        app.include_router(inference.router)
        app.include_router(keys.router)
        app.include_router(openai_compat.router)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    return app
