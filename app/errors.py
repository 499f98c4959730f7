"""A shared dependency (database, Redis) being unreachable is an expected condition, not a bug: answer 503 with a reason.

PostgreSQL or Redis may restart, fail over or be briefly unreachable. Requests that need them then
get ``503 Service Unavailable`` (with ``Retry-After`` and ``detail`` naming the dependency), never
a 500, and the process recovers by itself when the dependency is back: SQLAlchemy's pool re-checks
connections (``pool_pre_ping``) and redis-py reconnects on the next command.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.queue import QueueUnavailable

log = logging.getLogger("app.errors")


def _database_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy import exc as sa_exc

    return (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis
    except ImportError:  # pragma: no cover
        return ()
    return (redis.ConnectionError, redis.TimeoutError)


def dependency_of(exc: BaseException) -> str | None:
    """``database`` / ``redis`` when ``exc`` means that dependency is unreachable, else None."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, QueueUnavailable):
        return "redis"
    if isinstance(exc, _redis_errors()):
        return "redis"
    if isinstance(exc, _database_errors()):
        return "database"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "database"
    try:
        import psycopg

        if isinstance(exc, psycopg.OperationalError):
            return "database"
    except ImportError:  # pragma: no cover
        pass
    return None


def is_dependency_error(exc: BaseException) -> bool:
    return dependency_of(exc) is not None


def unavailable_response(exc: BaseException) -> JSONResponse:
    dep = dependency_of(exc) or "dependency"
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, QueueUnavailable):
        detail = message
    else:
        detail = f"{dep} unavailable: {type(exc).__name__}: {message}"
    return JSONResponse(
        {"detail": detail, "dependency": dep}, status_code=503, headers={"Retry-After": "5"}
    )


def install_dependency_handlers(app: FastAPI) -> None:
    """Map "database / Redis unreachable" exceptions raised by any route to 503."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable", extra={"path": request.url.path, "error": str(exc)[:300]})
        return unavailable_response(exc)

    for cls in (QueueUnavailable, *_redis_errors(), *_database_errors()):
        app.add_exception_handler(cls, handler)

