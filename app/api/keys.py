"""API key management (admin only), and ``/v1/keys/me`` for any key. Tokens are returned once, at
creation; only hashes are kept."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from app import api_keys
from app.repository import NotFound
from app.tables import ApiKey
from app.api.deps import RowId, ServicesDep
from app.auth import Principal, authenticate, require
from app.db import session_scope
from app.schemas import KeyCreated, KeyIn, KeyOut, KeyWhoAmI

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(id=row.id, name=row.name, scopes=list(row.scopes), created_at=row.created_at, revoked_at=row.revoked_at)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyIn, svc: ServicesDep, _: Principal = Depends(require("admin"))) -> KeyCreated:
    with session_scope(svc.sessions) as s:
        row, token = api_keys.create_api_key(s, body.name, body.scopes)
        return KeyCreated(**_out(row).model_dump(), key=token)


@router.get("", response_model=list[KeyOut])
def list_keys(svc: ServicesDep, _: Principal = Depends(require("admin"))) -> list[KeyOut]:
    with session_scope(svc.sessions) as s:
        return [_out(r) for r in api_keys.list_api_keys(s)]


@router.get("/me", response_model=KeyWhoAmI)
def who_am_i(principal: Principal = Depends(authenticate)) -> KeyWhoAmI:
    """The calling key's name and scopes (any valid key): what a client may do, e.g. which buttons
    the console shows. The API enforces scopes on every route regardless."""
    return KeyWhoAmI(id=principal.key_id, name=principal.name, scopes=sorted(principal.scopes))


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: RowId, svc: ServicesDep, principal: Principal = Depends(require("admin"))) -> KeyOut:
    if key_id == principal.key_id:
        raise HTTPException(status.HTTP_409_CONFLICT, "refusing to revoke the key making this request")
    with session_scope(svc.sessions) as s:
        try:
            return _out(api_keys.revoke_api_key(s, key_id))
        except NotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
