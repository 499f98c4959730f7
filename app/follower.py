"""Keeping a serving process on the latest committed version ("version follower").

In embedded mode the worker shares the API's ``ModelRuntime`` and switches it itself, so the follower
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
from app.errors import dependency_of
from app.runtime import ModelRuntime
from app.worker.replay import DeltaCache

log = logging.getLogger("app.follower")


class VersionFollower(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def catch_up(self) -> int | None:
        """Apply the latest committed version if it is newer than the live one; return it."""


class LocalFollower:
    """Embedded mode: the in-process worker switches the shared runtime; nothing to follow."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def catch_up(self) -> int | None:
        return self.runtime.live_version


class PollingFollower:
    """A replica's follower: every ``interval`` seconds, load and apply any newer version."""

    def __init__(self, sessions: sessionmaker[Session], runtime: ModelRuntime, interval: float = 1.0) -> None:
        self.sessions = sessions
        self.runtime = runtime
        self.interval = interval
        self.cache = DeltaCache(runtime)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self) -> int | None:
        with session_scope(self.sessions) as s:
            latest = repo.latest_version(s)
            if latest is None or (self.runtime.live_version is not None and latest.number <= self.runtime.live_version):
                return self.runtime.live_version
            active = self.cache.get_many(s, latest.active_deltas)
            number, stored = latest.number, latest.weights_hash
        digest = self.runtime.materialize(number, active)
        if stored is None:  # the worker records it right after the version goes live: look again
            with session_scope(self.sessions) as s:
                stored = repo.get_version(s, number).weights_hash
        if stored is not None and digest != stored:
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
    """Follow the version log: each version the worker commits is announced on a Redis channel.

    Announcements only say "version N exists"; the state always comes from the database, so
    order and gaps take care of themselves: a message for N <= live is ignored, anything newer
    (the next version, or a jump after missed messages) makes the replica catch up to the latest
    committed version (the same bits as applying each version in turn: a version's weights are a
    function of its active list). On start and on every (re)connect it catches up from the
    database; every ``interval`` seconds it also polls, as a safety net for lost messages.
    A burst of announcements is drained first and answered with one catch-up.
    """

    def __init__(self, sessions: sessionmaker[Session], runtime: ModelRuntime, url: str, channel: str,
                 interval: float = 5.0, timeout_s: float = 5.0) -> None:
        super().__init__(sessions, runtime, interval)
        import redis

        self.redis = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s + 2.0,
                                          health_check_interval=30)
        self.channel = channel
        self.connected = False

    @staticmethod
    def _number(message: dict) -> int | None:
        try:
            return int(message.get("data"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None

    def _run(self) -> None:
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    self.connected = True
                    self.catch_up()  # whatever was committed while we were (re)connecting
                last = time.monotonic()
                newest: int | None = None
                while not self._stop.is_set():
                    # wake at least every second so stop() is prompt
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        newest = _newer(newest, self._number(message))
                        while (more := pubsub.get_message(timeout=0)) is not None:  # drain a burst
                            newest = _newer(newest, self._number(more))
                        live = self.runtime.live_version
                        if newest is None or live is None or newest > live:
                            break
                        newest = None
                    # nothing served yet (no version 0 when we started): poll every second
                    interval = self.interval if self.runtime.live_version is not None else 1.0
                    if time.monotonic() - last >= interval:
                        break
                self.catch_up()
            except Exception as exc:  # noqa: BLE001 - reconnect and catch up from the DB
                dependency = dependency_of(exc)
                if dependency is not None:  # an outage, not a bug: one line, not a traceback per retry
                    log.warning("follower: %s unreachable; retrying", dependency,
                                extra={"error": str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""})
                elif self.connected:
                    log.exception("redis follower error; reconnecting")
                self.connected = False
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
                pubsub = None
                # Redis may be down while the database is not: keep following by polling
                try:
                    self.catch_up()
                except Exception:  # noqa: BLE001
                    pass
                self._stop.wait(1.0)
        if pubsub is not None:
            pubsub.close()


def _newer(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def redis_announcer(url: str, channel: str):  # noqa: ANN201 - Callable[[int], None]
    """The worker's announce hook: publish each new version number."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)

    def announce(version: int) -> None:
        try:
            client.publish(channel, str(version))
        except Exception:  # noqa: BLE001 - followers also poll; an announcement is an optimisation
            log.exception("could not announce version", extra={"version": version})

    return announce
