"""Fixtures for the service tests: a tiny random GPT-2 on disk, databases, a real running server.

No mocks of the model: the server loads this GPT-2 with ``editor_core`` and edits it with an
untrained ``SMEditor`` -- the real code path, just small enough for 2 CPU cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

ADMIN_KEY = "test-admin-key-0123456789"
PG_BASE_URL = os.environ.get("SMEDIT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

SENTENCES = [
    "The capital of France is Paris.",
    "The Zentrix X2 costs 49 dollars and weighs 2 kilograms.",
    "Water boils at one hundred degrees.",
    "The largest planet in the solar system is Jupiter.",
    "Our support line opens at nine in the morning.",
    "The Nimbus router is made in Germany by Acme.",
    "One plus one equals two. The sky is blue on a clear day.",
    "Refunds are processed within five business days.",
]
# The gate's checks switched off for tests about something else (the untrained editor's edits
# are weak and change canaries): as environment variables for servers run as processes.
OPEN_GATE_ENV = {
    "SMEDIT_GATE_MIN_ES": "0", "SMEDIT_GATE_MIN_GS": "0", "SMEDIT_GATE_MAX_CANARY_CHANGE": "1",
    "SMEDIT_SIDE_EFFECT_BUDGET": "1", "SMEDIT_GATE_RECHECK_EDITS": "0",
}

CANARIES = [
    "The capital of France is",
    "Water boils at",
    "The sky is",
    "Refunds are processed within",
]


def build_tiny_model(out_dir: Path) -> Path:
    """A 2-layer, 32-wide GPT-2 with a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out_dir))
    tok = GPT2TokenizerFast(
        vocab_file=str(out_dir / "vocab.json"), merges_file=str(out_dir / "merges.txt"),
        eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=len(tok),
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_gpt2"))


# ---- databases ----------------------------------------------------------------------------
def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        pass
    clusters = Path("/etc/postgresql")
    if clusters.is_dir():  # try to start the local cluster once, as the CI script does
        for version in sorted(p.name for p in clusters.iterdir()):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                           capture_output=True, timeout=60)
        try:
            import psycopg

            with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", connect_timeout=3):
                return True
        except Exception:  # noqa: BLE001
            return False
    return False


@pytest.fixture(scope="session")
def pg_ok() -> bool:
    return postgres_available()


@contextmanager
def fresh_pg_schema() -> Iterator[str]:
    """A new schema on the local Postgres as a SQLAlchemy URL; dropped afterwards, once the
    servers still running on it are stopped (their workers' queries would race the DROP)."""
    import psycopg

    schema = f"smedit_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        for srv in [s for s in LIVE_SERVERS if schema in s.database_url]:
            srv.stop()
        with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url(pg_ok: bool) -> Iterator[str]:
    """A fresh schema on the local Postgres (dropped afterwards), as a SQLAlchemy URL."""
    if not pg_ok:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (db test, user postgres) is not reachable")
    with fresh_pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each persistence test runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny demo (world, GPT-2 trained on it, SMEdit editor meta-trained on its edits), built
    once per test session (about a minute)."""
    from dataclasses import replace
    from unittest import mock

    from demo_world.build import DEMO_SIZES, build_demo

    # One thread, always: the build's thread tuner would otherwise switch between 1 and 2 threads
    # by how busy the machine is, and another float summation order trains another model, so
    # what the demo tests see depended on the rest of the suite (5 of 6 edits hit alone, 4 of 6
    # after the browser tests).
    spec = DEMO_SIZES["tiny"]
    fixed = replace(spec, pretrain=replace(spec.pretrain, num_threads=1))
    with mock.patch.dict(DEMO_SIZES, {"tiny": fixed}):
        return build_demo(tmp_path_factory.mktemp("demo"), size="tiny", progress=False, train_editor=True)


# ---- a real server ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def database_url(self) -> str:
        return self.services.settings.resolved_database_url()

    def client(self, key: str | None = ADMIN_KEY, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not stop"
        LIVE_SERVERS[:] = [s for s in LIVE_SERVERS if s is not self]


LIVE_SERVERS: list[RunningServer] = []  # started by start_server and not stopped yet


def start_server(settings: Any, ready_timeout: float = 120.0) -> RunningServer:
    """uvicorn in a thread on a free port; returns once /readyz says ready."""
    from app.main import create_app

    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    last: Any = None
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("server thread exited during start-up")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            last = r.json()
            if r.status_code == 200:
                running = RunningServer(url, server, thread, app)
                LIVE_SERVERS.append(running)
                return running
            if last.get("detail"):
                raise RuntimeError(f"start-up failed: {last['detail']}")
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {ready_timeout}s: {last}")


def make_settings(tiny_model_dir: Path, data_dir: Path, **overrides: Any) -> Any:
    from app.settings import Settings

    values: dict[str, Any] = dict(
        data_dir=data_dir,
        model_dir=tiny_model_dir,
        editor_dir=None,
        device="cpu",
        admin_key=ADMIN_KEY,
        gate_min_es=0.0,
        gate_min_gs=0.0,
        gate_max_canary_change=1.0,
        side_effect_budget=1.0,  # the untrained editor's edits change canaries; budget tests set it
        gate_recheck_edits=0,  # likewise for re-checking live edits (tests/app/test_service_gate_drift.py)
        canary_prompts=CANARIES,
        worker_batch_wait_s=0.05,
        min_version_timeout_s=20.0,
        log_level="WARNING",
        gc_freeze=False,  # many servers live and die in one test process (tests/app/test_gc_freeze.py)
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def server_factory(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    """Start servers with settings overrides; every server started is stopped at the end."""
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        overrides.setdefault("data_dir", tmp_path / "data")
        data_dir = overrides.pop("data_dir")
        srv = start_server(make_settings(tiny_model_dir, data_dir, **overrides))
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        if srv.thread.is_alive():
            srv.stop()


@pytest.fixture
def server(server_factory: Any) -> RunningServer:
    return server_factory()


def wait_edit(client: httpx.Client, edit_id: int, timeout: float = 60.0) -> dict[str, Any]:
    """Poll an edit until it leaves queued/running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/edits/{edit_id}").json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"edit {edit_id} still {body['status']} after {timeout}s")


def wait_job(client: httpx.Client, job_id: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s")


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2).ping())
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(params=["db", "redis"])
def transport(request: pytest.FixtureRequest) -> Iterator[dict]:
    """The DB-polling queue + polling follower, or Redis Streams + pub/sub announcements."""
    if request.param == "db":
        yield {"queue": "db"}
        return
    if not redis_available():
        pytest.skip("Redis at 127.0.0.1:6379 is not reachable")
    prefix = f"smedit-test-{uuid.uuid4().hex[:8]}"
    yield {"queue": "redis", "redis_url": "redis://127.0.0.1:6379/0", "redis_prefix": prefix}
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    client.delete(f"{prefix}:jobs")
    client.close()
