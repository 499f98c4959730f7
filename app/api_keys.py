"""API keys in the database: stored hashed, shown once, revoked rather than deleted.

Like ``repository``, functions take a ``Session`` and never commit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.repository import NotFound
from app.tables import ApiKey, utcnow


def hash_key(token: str) -> str:
    """Keys are random 256-bit tokens, so a plain sha256 (no salt, no stretching) is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_key_token() -> str:
    return "smk_" + secrets.token_urlsafe(32)


def create_api_key(session: Session, name: str, scopes: Sequence[str], token: str | None = None) -> tuple[ApiKey, str]:
    """Store a key (hashed); return the row and the plain token, which is shown exactly once."""
    token = token or new_key_token()
    row = ApiKey(name=name, key_hash=hash_key(token), scopes=sorted(set(scopes)), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, token


def ensure_api_key(session: Session, name: str, scopes: Sequence[str], token: str) -> ApiKey:
    """Idempotently store a configured key (e.g. SMEDIT_ADMIN_KEY) on every start."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    if row is None:
        row, _ = create_api_key(session, name, scopes, token)
    return row


def find_api_key(session: Session, token: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    if row is None or row.revoked_at is not None:
        return None
    return row


def count_active_keys(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0)


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"api key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
