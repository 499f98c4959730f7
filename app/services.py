"""The one place that assembles the service's parts: database, queue, model runtime, worker, follower.

``create_app`` (the HTTP app), the CLI (``smedit export``, ``smedit cluster``) and the benchmarks
build what they need through these functions, so every transport runs the same parts wired the
same way. Start-up is split in two so that ``/healthz`` answers at once while ``/readyz`` waits:
:meth:`Services.open` is cheap (connections, no model), :meth:`Services.start_model` (run in a
background thread) loads the model, replays the latest version and starts the worker or follower.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine as SQLEngine
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_sessionmaker
from app.errors import is_dependency_error
from app.metrics import Metrics
from app.queue import DatabaseQueue, InProcessQueue, Queue
from app.redis_queue import RedisStreamQueue
from app.settings import Settings

if TYPE_CHECKING:  # torch is slow to import: the runtime is loaded in the background
    from app.follower import VersionFollower
    from app.runtime import ModelRuntime
    from app.worker import Worker

log = logging.getLogger("app.services")
T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedModel:
    """The base model and editor to serve, and the canary file that goes with them."""

    model_dir: Path
    editor_dir: Path | None
    canary_file: Path | None = None
    name: str | None = None  # what clients see as the model (OpenAI ``model``); none = the directory's name


def resolve_model(settings: Settings, build: bool = True) -> ResolvedModel:
    """The configured model, else the demo model under ``data_dir`` (built first if ``build``).

    The demo's canary file is used only when no canaries are configured."""
    if settings.model_dir is not None:
        return ResolvedModel(Path(settings.model_dir), Path(settings.editor_dir) if settings.editor_dir else None,
                             name=settings.served_model_name or Path(settings.model_dir).name)
    from demo_world.build import build_demo, demo_paths

    data_dir = Path(settings.data_dir)
    # serving needs only the SMEdit editor, not the benchmarks' MALMEN comparison; progress bars
    # where a person watches a terminal (the first start builds for minutes)
    paths = build_demo(data_dir, size=settings.demo_size, progress=sys.stderr.isatty(), comparison=False) if build \
        else demo_paths(data_dir, settings.demo_size)
    editor = Path(settings.editor_dir) if settings.editor_dir else (paths.editor_dir if paths.editor_dir.is_dir() else None)
    canaries = paths.canary_file if paths.canary_file.is_file() else None
    return ResolvedModel(paths.model_dir, editor, canaries,
                         name=settings.served_model_name or f"smedit-demo-{settings.demo_size}")


def with_model_canaries(settings: Settings, model: ResolvedModel) -> Settings:
    """``settings`` with the model's canary file, unless the operator configured canaries."""
    if settings.canary_prompts or settings.canary_file is not None or model.canary_file is None:
        return settings
    return settings.model_copy(update={"canary_file": model.canary_file})


def load_runtime(settings: Settings, model: ResolvedModel) -> ModelRuntime:
    from app.runtime import ModelRuntime

    t0 = time.perf_counter()
    runtime = ModelRuntime(model.model_dir, model.editor_dir, device=settings.device, dtype=settings.dtype,
                           name=model.name)
    log.info("model loaded", extra={"model_dir": str(model.model_dir), "device": runtime.device,
                                    "load_s": round(time.perf_counter() - t0, 2)})
    return runtime


def freeze_long_lived_objects() -> None:
    """Collect once, then exempt everything alive from future collections (``gc.freeze``).

    The model, the libraries and the replayed deltas live as long as the process; a full
    collection walks all of them (~0.5M objects with torch and transformers loaded: ~0.3 s on
    one CPU core), and lands in whichever edit or request is running. Frozen objects are still
    freed by reference counting; only garbage cycles among them would stay, and objects alive
    at start-up are not expected to become garbage."""
    gc.collect()
    gc.freeze()


def open_database(settings: Settings) -> tuple[SQLEngine, sessionmaker[Session]]:
    """Connections to the configured database (no migration: see :func:`app.db.upgrade_to_head`)."""
    db = make_engine(settings.resolved_database_url())
    return db, make_sessionmaker(db)


def make_queue(settings: Settings, sessions: sessionmaker[Session]) -> Queue:
    kind = settings.resolved_queue()
    if kind == "redis":
        if not settings.redis_url:
            raise RuntimeError("SMEDIT_QUEUE=redis needs SMEDIT_REDIS_URL")
        return RedisStreamQueue(settings.redis_url, prefix=settings.redis_prefix,
                                claim_idle_s=settings.claim_idle_s, timeout_s=settings.redis_timeout_s)
    if kind == "db":
        return DatabaseQueue(sessions)
    return InProcessQueue()


def retry_while_unreachable(fn: Callable[[], T], wait_s: float, on_wait: Callable[[BaseException], None]) -> T:
    """Run a start-up step, retrying once a second while the database (or Redis) is unreachable."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_dependency_error(exc) or time.monotonic() > deadline:
                raise
            on_wait(exc)
            log.warning("dependency unavailable during start-up; retrying", extra={"error": str(exc)[:300]})
            time.sleep(1.0)


@dataclass
class Services:
    """Everything a request handler may need, hung on ``app.state.services``."""

    settings: Settings
    db: SQLEngine
    sessions: sessionmaker[Session]
    queue: Queue
    metrics: Metrics
    runtime: ModelRuntime | None = None
    worker: Worker | None = None
    follower: VersionFollower | None = None
    startup_error: str | None = None
    phase: str = "starting"
    replay: dict[str, Any] = field(default_factory=dict)
    generated_admin_key: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        """Database connections, queue and metrics: cheap, no model."""
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        db, sessions = open_database(settings)
        queue = make_queue(settings, sessions)
        services = cls(settings=settings, db=db, sessions=sessions, queue=queue, metrics=Metrics())
        services.metrics.track_queue(queue.depth, lambda: services.worker is not None and services.worker.is_leader)
        return services

    @property
    def model_loaded(self) -> bool:
        return self.runtime is not None

    @property
    def version_replayed(self) -> bool:
        return self._ready.is_set() and self.runtime is not None and self.runtime.live_version is not None

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

    def start_model(self) -> None:
        """Model, replay, recovery, worker (or follower); failures are reported by ``/readyz``."""
        try:
            self._start_model()
            self.phase = "ready"
            self._ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz; the process stays up for diagnosis
            self.startup_error = f"{type(exc).__name__}: {exc}"
            self.phase = "failed"
            log.exception("start-up failed")

    def _start_model(self) -> None:
        self.phase = "importing torch and the editing library"
        from app.follower import LocalFollower, PollingFollower, RedisFollower, redis_announcer
        from app.worker import Worker, bootstrap_and_replay

        settings = self.settings
        if settings.model_dir is None:
            self.phase = f"building or loading the demo model ({settings.demo_size}) under {settings.data_dir}"
            log.info("no model configured: building/using the demo model", extra={"size": settings.demo_size})
        model = resolve_model(settings)
        self.phase = f"loading model {model.model_dir}"
        runtime = load_runtime(settings, model)
        self.phase = "replaying the latest version"
        if self.runs_worker:
            channel = f"{settings.redis_prefix}:versions"
            announce = redis_announcer(settings.redis_url, channel) if settings.redis_url else None
            worker = Worker(with_model_canaries(settings, model), self.sessions, self.queue, runtime, self.metrics,
                            announce=announce)
            self.replay = self._retry_db(lambda: bootstrap_and_replay(self.sessions, runtime, worker.cache, writer=True))
            self.runtime = runtime
            if announce is not None and self.replay.get("version") is not None:
                announce(self.replay["version"])  # replicas waiting for version 0 need not poll
            worker.start()  # it takes over unfinished jobs itself, once it holds the writer lock
            self.worker = worker
            self.follower = LocalFollower(runtime)
        else:
            follower = (
                RedisFollower(self.sessions, runtime, settings.redis_url, f"{settings.redis_prefix}:versions",
                              interval=settings.follow_interval_s, timeout_s=settings.redis_timeout_s)
                if settings.redis_url else PollingFollower(self.sessions, runtime)
            )
            self.replay = self._retry_db(lambda: bootstrap_and_replay(self.sessions, runtime, follower.cache,
                                                                      writer=False))
            self.runtime = runtime
            follower.start()
            self.follower = follower
        if runtime.live_version is not None:
            self.metrics.live_version.set(runtime.live_version)
        if settings.gc_freeze:
            freeze_long_lived_objects()

    def _retry_db(self, fn: Callable[[], T], wait_s: float = 120.0) -> T:
        def waiting(exc: BaseException) -> None:
            self.phase = f"waiting for the database: {type(exc).__name__}"

        return retry_while_unreachable(fn, wait_s, waiting)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.follower is not None:
            self.follower.stop()
        self.queue.close()
        self.db.dispose()
