"""Shared engines failing under a running service: 503 with a reason, recovery without restart.

- Redis (our own ``redis-server`` on a free port, no persistence) is killed while edits are
  queued and brought back empty: submissions meanwhile get 503 naming Redis, nothing is lost (the
  worker re-enqueues from the database what is still pending), every edit is applied once.
- PostgreSQL is reached through a TCP proxy that the test cuts and restores: requests get 503
  naming the database, ``/readyz`` says why, and everything works again once it is back (the
  worker re-takes its lock and carries on).

The worker and the replica run in this process (uvicorn threads): the engines are what fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import free_port, wait_edit


# ---- our own Redis ---------------------------------------------------------------------------
class OwnRedis:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: everything in memory is gone
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.kill()


# ---- a cuttable link to PostgreSQL -------------------------------------------------------------
class TcpProxy:
    """127.0.0.1:port -> upstream; ``cut()`` closes the listener and every open connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            if self._listener is not lst:  # cut meanwhile
                client.close()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _applied_once(client: httpx.Client, ids: list[int]) -> None:
    versions = client.get("/v1/versions", params={"limit": 500}).json()["items"]
    numbers = sorted(v["number"] for v in versions)
    assert numbers == list(range(len(numbers)))
    committed: Counter[int] = Counter()
    for v in versions:
        if v["kind"] == "edit":
            committed.update(v["edit_ids"])
    for i in ids:
        e = client.get(f"/v1/edits/{i}").json()
        assert e["status"] == "applied", e
        assert committed[i] == 1, (i, committed[i])


def test_redis_restart_loses_no_edit(pg_url: str, own_redis: OwnRedis, server_factory, tmp_path: Path) -> None:
    import redis

    from app import repository as repo
    from app.db import session_scope

    common = dict(data_dir=tmp_path / "d", database_url=pg_url, redis_url=own_redis.url, redis_prefix="fault",
                  requeue_interval_s=1.0, requeue_grace_s=0.2, worker_batch_size=1, redis_timeout_s=1.0)
    worker = server_factory(**common, role="worker")
    replica = server_factory(**common, role="api")
    c = replica.client(timeout=30)
    ids = [c.post("/v1/edits", json={"prompt": f"Fact {i} is", "target": "blue"}).json()["edit_ids"][0]
           for i in range(6)]
    own_redis.kill()  # some of these are still in the (now lost) stream
    r = c.post("/v1/edits", json={"prompt": "The sky is", "target": "red"})
    assert r.status_code == 503 and "redis" in r.json()["detail"].lower(), r.text
    assert r.json()["dependency"] == "redis"
    assert c.get(f"/v1/edits/{ids[0]}").status_code == 200  # reads need only the database
    ready = c.get("/readyz").json()
    assert ready["queue"] != "ok" and ready["database"] == "ok"
    assert httpx.get(f"{worker.url}/readyz", timeout=10).status_code == 503  # the worker can't work
    # "the API crashed between its DB commit and the enqueue": a job only the database knows
    with session_scope(replica.services.sessions) as s:
        edits, _ = repo.create_edits(s, [repo.NewEdit("Orphan fact is", "known", [], [])], "test", None, "test")
        ids.append(edits[0].id)
    own_redis.start()  # same port, empty: no stream, no consumer group
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = c.post("/v1/edits", json={"prompt": "The sky is", "target": "red"})
        if r.status_code == 202:
            ids += r.json()["edit_ids"]
            break
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    else:
        raise AssertionError("submissions did not recover after Redis came back")
    for i in ids:
        assert wait_edit(c, i, timeout=60)["status"] == "applied"
    _applied_once(c, ids)
    latest = max(v["number"] for v in c.get("/v1/versions").json()["items"])
    g = c.post("/v1/generate", json={"prompt": "x", "max_tokens": 1, "min_version": latest, "wait_s": 20})
    assert g.status_code == 200 and g.json()["version"] == latest  # the replica re-subscribed and followed
    assert worker.services.metrics.requeued._value.get() >= 1  # the sweep re-enqueued the lost ones
    client = redis.Redis.from_url(own_redis.url)
    deadline = time.monotonic() + 10
    while client.xlen("fault:jobs") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.xlen("fault:jobs") == 0


def test_postgres_outage_is_503_and_recovers(pg_url: str, server_factory, tmp_path: Path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        common = dict(data_dir=tmp_path / "d", database_url=url, queue="db", leader_check_interval_s=0.5)
        srv = server_factory(**common)  # embedded API + worker on PostgreSQL
        c = srv.client(timeout=30)
        first = wait_edit(c, c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0])
        assert first["status"] == "applied"
        proxy.cut()
        for method, path, body in (("POST", "/v1/edits", {"prompt": "Water boils at", "target": "ten"}),
                                   ("GET", "/v1/edits", None), ("GET", "/v1/versions", None)):
            r = c.request(method, path, json=body)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.json()["dependency"] == "database" and "database unavailable" in r.json()["detail"]
            assert r.headers.get("retry-after")
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["database"].startswith("unavailable"), ready.text
        time.sleep(1.5)  # the worker notices it lost its lock's session
        proxy.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = c.post("/v1/edits", json={"prompt": "Water boils at", "target": "ten"})
            if r.status_code == 202:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.2)
        else:
            raise AssertionError("the API did not recover after the database came back")
        e = wait_edit(c, r.json()["edit_ids"][0], timeout=60)
        assert e["status"] == "applied" and e["applied_version"] == 2, e
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/readyz").json()["ready"] is True
        assert srv.services.worker.leader_terms >= 2  # stepped down and took the lock again
    finally:
        proxy.cut()
