"""Keeping a serving process on the latest committed version ("version follower").

In embedded mode the worker shares the API's ``Engine`` and switches it itself, so the follower
has nothing to do (``LocalFollower``). An API replica in production has its own model copy: it
catches up from the database on start and whenever a new version is announced. ``PollingFollower``
does that by polling (works with any shared database); the Redis pub/sub follower calls the same
``catch_up`` on each announcement message and once on (re)connect (``RedisFollower``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from app import repository as repo
from app.db import session_scope
from app.engine import Engine
from app.worker import DeltaCache

log = logging.getLogger("app.follower")


class VersionFollower(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def catch_up(self) -> int | None:
        """Apply the latest committed version if it is newer than the live one; return it."""


class LocalFollower:
    """Embedded mode: the in-process worker switches the shared engine; nothing to follow."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def catch_up(self) -> int | None:
        return self.engine.live_version


class PollingFollower:
    """A replica's follower: every ``interval`` seconds, load and apply any newer version."""

    def __init__(self, sessions: sessionmaker[Session], engine: Engine, interval: float = 1.0) -> None:
        self.sessions = sessions
        self.engine = engine
        self.interval = interval
        self.cache = DeltaCache(engine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self) -> int | None:
        with session_scope(self.sessions) as s:
            latest = repo.latest_version(s)
            if latest is None or (self.engine.live_version is not None and latest.number <= self.engine.live_version):
                return self.engine.live_version
            active = self.cache.get_many(s, latest.active_deltas)
            number, stored = latest.number, latest.weights_hash
        digest = self.engine.materialize(number, active)
        if digest != stored:
            log.error("followed version has a different weights hash", extra={"version": number})
        return number

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="smedit-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.catch_up()
            except Exception:  # noqa: BLE001 - keep following; the DB may be briefly unreachable
                log.exception("follower catch-up failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class RedisFollower(PollingFollower):
    """Catch up on each version announced on a Redis channel; poll slowly as a safety net
    (a missed message or a reconnect never leaves the replica behind for long)."""

    def __init__(self, sessions: sessionmaker[Session], engine: Engine, url: str, channel: str,
                 interval: float = 5.0) -> None:
        super().__init__(sessions, engine, interval)
        import redis

        self.redis = redis.Redis.from_url(url)
        self.channel = channel

    def _run(self) -> None:
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    self.catch_up()  # whatever was announced while (re)connecting
                last = time.monotonic()
                while not self._stop.is_set():
                    # wake at least every second so stop() is prompt
                    if pubsub.get_message(timeout=1.0) is not None or time.monotonic() - last >= self.interval:
                        break
                self.catch_up()
            except Exception:  # noqa: BLE001 - reconnect and catch up from the DB
                log.exception("redis follower error; reconnecting")
                pubsub = None
                self._stop.wait(1.0)
        if pubsub is not None:
            pubsub.close()


def redis_announcer(url: str, channel: str):  # noqa: ANN201 - Callable[[int], None]
    """The worker's announce hook: publish each new version number."""
    import redis

    client = redis.Redis.from_url(url)

    def announce(version: int) -> None:
        try:
            client.publish(channel, str(version))
        except Exception:  # noqa: BLE001 - followers also poll; an announcement is an optimisation
            log.exception("could not announce version", extra={"version": version})

    return announce
