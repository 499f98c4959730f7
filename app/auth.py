"""API keys with scopes: ``read`` (inference, history), ``edit`` (submit), ``admin`` (everything).

Keys travel as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` and are looked up by their
sha256, so the database never holds a usable key. ``admin`` implies every scope; ``read`` and
``edit`` are independent (give a client both when it should submit and then poll).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import api_keys
from app.db import session_scope
from app.settings import Settings

SCOPES = ("read", "edit", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _token_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def authenticate(request: Request) -> Principal:
    token = _token_from(request)
    if token is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with session_scope(request.app.state.services.sessions) as s:
        row = api_keys.find_api_key(s, token)
        if row is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
        principal = Principal(row.id, row.name, frozenset(row.scopes))
    request.state.principal = principal
    return principal


def require(scope: str) -> Callable[..., Principal]:
    """A dependency: the caller's key must carry ``scope`` (or ``admin``)."""
    if scope not in SCOPES:
        raise ValueError(scope)

    def dependency(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.has(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this API key (name {principal.name!r}, scopes {sorted(principal.scopes)}) lacks scope {scope!r}",
            )
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


def bootstrap_admin_key(settings: Settings, sessions: sessionmaker[Session]) -> str | None:
    """Store the configured admin key (hashed); on a key-less database, generate one and print it
    once. Returns the generated key, if any.

    Several processes may start at once on a fresh database (replicas + worker): a twin insert
    loses on the unique key hash and simply retries (the key is then there)."""
    try:
        return _bootstrap_admin_key(settings, sessions)
    except IntegrityError:
        return _bootstrap_admin_key(settings, sessions)


def _bootstrap_admin_key(settings: Settings, sessions: sessionmaker[Session]) -> str | None:
    with session_scope(sessions) as s:
        if settings.admin_key:
            api_keys.ensure_api_key(s, "bootstrap-admin", ["admin"], settings.admin_key)
            return None
        if api_keys.count_active_keys(s) != 0 or not settings.generate_admin_key:
            return None
        _, token = api_keys.create_api_key(s, "generated-admin", ["admin"])
    banner = "=" * 72
    print(f"{banner}\nsmedit: generated an admin API key (shown once, stored hashed):\n\n    {token}\n\n"
          f"use it as: Authorization: Bearer <key>\n{banner}", flush=True)
    return token
