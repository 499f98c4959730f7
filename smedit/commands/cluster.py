"""Production topology as local processes.

- ``cluster up``: what ``docker-compose.yml`` runs, without Docker: N API replicas + one worker
  (+ optional standby workers) as child processes sharing ``--database-url`` and ``--redis-url``.

``LocalCluster`` is the same thing as a Python object (used by the production tests and
``bench/service.py``): start, wait until ready, ``kill -9`` a member, start another, stop all.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer

from smedit.commands.serve import serve, worker

cluster_app = typer.Typer(help="Run the production topology (API replicas + worker) as local processes.",
                          no_args_is_help=True)


# ---- local processes ----------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    """One child process of a local cluster."""

    name: str
    role: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def readyz(self, timeout: float = 2.0) -> dict[str, Any] | None:
        import httpx

        try:
            return httpx.get(f"{self.url}/readyz", timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            return None

    def metric(self, name: str, timeout: float = 2.0) -> float:
        """Sum of a Prometheus metric's samples on this member (0 when absent)."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=timeout).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """API replicas + worker(s) as local processes on one database and one Redis."""

    database_url: str
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = field(default_factory=lambda: Path("cluster-logs"))
    host: str = "127.0.0.1"
    members: list[Member] = field(default_factory=list)
    _count: int = 0

    def _spawn(self, role: str, port: int | None = None, name: str | None = None,
               env: dict[str, str] | None = None) -> Member:
        self._count += 1
        port = port or free_port(self.host)
        name = name or f"{role}{self._count}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            **self.env,
            **(env or {}),
            "SMEDIT_DATABASE_URL": self.database_url,
            "SMEDIT_REDIS_URL": self.redis_url,
            "SMEDIT_ROLE": role,
            "SMEDIT_RUN_WORKER": "false" if role == "api" else "true",
            "SMEDIT_HOST": self.host,
            "SMEDIT_PORT": str(port),
        }
        root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "smedit.commands.cluster", "serve"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(root), start_new_session=True,
            )
        member = Member(name, role, port, proc, log_path, self.host)
        self.members.append(member)
        return member

    def start_api(self, port: int | None = None, name: str | None = None) -> Member:
        return self._spawn("api", port, name)

    def start_worker(self, port: int | None = None, name: str | None = None,
                     env: dict[str, str] | None = None) -> Member:
        """A worker process; ``env`` adds to the cluster's (e.g. ``SMEDIT_CRASH_AT`` for one member)."""
        return self._spawn("worker", port, name, env)

    def start(self, api_replicas: int = 2, workers: int = 1, api_ports: list[int] | None = None,
              worker_ports: list[int] | None = None, timeout: float = 300.0) -> "LocalCluster":
        """Start the worker(s) (the first to take the lock leads, the others stand by) and the
        replicas, all at once; return when one worker leads and every member serves."""
        for i in range(workers):
            self.start_worker(worker_ports[i] if worker_ports and i < len(worker_ports) else None)
        for i in range(api_replicas):
            self.start_api(api_ports[i] if api_ports and i < len(api_ports) else None)
        self.wait_leader(None, timeout)
        for m in self.members:
            self.wait_up(m, timeout)
        return self

    @property
    def apis(self) -> list[Member]:
        return [m for m in self.members if m.role == "api" and m.alive]

    @property
    def workers(self) -> list[Member]:
        return [m for m in self.members if m.role == "worker" and m.alive]

    def wait_up(self, member: Member, timeout: float = 300.0) -> dict[str, Any]:
        """Until the member has loaded the model and replayed (a standby worker counts as up)."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not member.alive:
                raise RuntimeError(f"{member.name} exited ({member.proc.returncode}):\n{member.log_tail()}")
            body = member.readyz()
            if body is not None and (body.get("ready") or (member.role == "worker" and body.get("phase") == "ready")):
                return body
            if body is not None and body.get("phase") == "failed":
                raise RuntimeError(f"{member.name} failed to start: {body.get('detail')}\n{member.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{member.name} not up after {timeout}s: {body}\n{member.log_tail()}")

    def wait_leader(self, member: Member | None = None, timeout: float = 300.0) -> Member:
        """Until ``member`` (or any live worker) is the writer and ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in [member] if member is not None else self.workers:
                if not m.alive:
                    if member is not None:
                        raise RuntimeError(f"{m.name} exited ({m.proc.returncode}):\n{m.log_tail()}")
                    continue
                body = m.readyz()
                if body and body.get("ready") and body.get("worker_leader"):
                    return m
            time.sleep(0.2)
        raise TimeoutError("no worker became the leader in time")

    def leader(self) -> Member | None:
        for m in self.workers:
            body = m.readyz()
            if body and body.get("worker_leader"):
                return m
        return None

    def kill(self, member: Member, sig: int = signal.SIGKILL) -> None:
        if member.alive:
            os.killpg(member.proc.pid, sig)  # its own session: nothing else is hit
            member.proc.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        for m in self.members:
            if m.alive:
                try:
                    os.killpg(m.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for m in self.members:
            try:
                m.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(m)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@cluster_app.command("up")
def up(
    database_url: Optional[str] = typer.Option(
        None, "--database-url", envvar="SMEDIT_DATABASE_URL", help="Shared PostgreSQL (SQLAlchemy URL)."
    ),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", envvar="SMEDIT_REDIS_URL", help="Shared Redis."),
    api_replicas: int = typer.Option(2, "--api-replicas", min=1, help="API replicas to start."),
    standby: int = typer.Option(0, "--standby", min=0, help="Extra workers standing by on the writer lock."),
    api_port: int = typer.Option(8000, "--api-port", help="First replica's port (the next ones count up)."),
    worker_port: int = typer.Option(8100, "--worker-port", help="First worker's health/metrics port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address of every member."),
    log_dir: Path = typer.Option(Path("cluster-logs"), "--log-dir", help="One log file per member."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="SMEDIT_DATA_DIR for every member."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="SMEDIT_MODEL_DIR (none: demo model)."),
    editor_dir: Optional[Path] = typer.Option(None, "--editor-dir", help="SMEDIT_EDITOR_DIR."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for every member to be up."),
) -> None:
    """Start N API replicas + one worker (+ standbys) as local processes; Ctrl-C stops them all.

    The same topology as docker-compose.yml: every member gets the same SMEDIT_* settings from
    the environment, plus DATABASE_URL / REDIS_URL and its role and port.
    """
    if not database_url or not redis_url:
        raise typer.BadParameter("--database-url and --redis-url (or SMEDIT_DATABASE_URL / SMEDIT_REDIS_URL) are required")
    env: dict[str, str] = {}
    for key, value in (("SMEDIT_DATA_DIR", data_dir), ("SMEDIT_MODEL_DIR", model_dir), ("SMEDIT_EDITOR_DIR", editor_dir)):
        if value is not None:
            env[key] = str(Path(value).resolve())
    settings_env = {**os.environ, **env}
    if not settings_env.get("SMEDIT_ADMIN_KEY"):
        env["SMEDIT_ADMIN_KEY"] = "smk_" + secrets.token_urlsafe(32)
        typer.echo(f"admin API key (all replicas): {env['SMEDIT_ADMIN_KEY']}")
    if not settings_env.get("SMEDIT_MODEL_DIR"):
        # build the demo model once here, not three times concurrently in the members
        from app.services import resolve_model
        from app.settings import Settings

        s = Settings(**({"data_dir": data_dir} if data_dir else {}))
        typer.echo(f"building / loading the demo model ({s.demo_size}) under {s.data_dir} ...")
        resolve_model(s)
    cluster = LocalCluster(database_url, redis_url, env=env, log_dir=log_dir, host=host)
    try:
        cluster.start(api_replicas=api_replicas, workers=1 + standby,
                      api_ports=[api_port + i for i in range(api_replicas)],
                      worker_ports=[worker_port + i for i in range(1 + standby)], timeout=timeout)
        for m in cluster.members:
            typer.echo(f"  {m.name:10s} {m.role:7s} {m.url}  (log {m.log_path})")
        typer.echo("cluster up; Ctrl-C to stop")
        while True:
            for m in cluster.members:
                if not m.alive:
                    typer.echo(f"{m.name} exited with {m.proc.returncode}; see {m.log_path}", err=True)
                    raise typer.Exit(1)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


# ``python -m smedit.commands.cluster serve|worker|up`` works without the main CLI
_main = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)
_main.command("serve")(serve)
_main.command("worker")(worker)
_main.command("up")(up)

if __name__ == "__main__":
    _main()
