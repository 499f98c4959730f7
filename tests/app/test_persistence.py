"""Persistence on SQLite and on the real PostgreSQL: migrations, version numbers, idempotency, blobs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app import api_keys
from app import repository as repo
from app.db import SchemaTooNewError, current_revision, make_engine, make_sessionmaker, session_scope, upgrade_to_head
from app.tables import Base, DeltaBlob, Version


@pytest.fixture
def sessions(db_url: str):
    engine = make_engine(db_url)
    assert upgrade_to_head(engine) == "0004"
    yield make_sessionmaker(engine)
    engine.dispose()


def test_migrations_match_models_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    upgrade_to_head(engine)  # second start: nothing to do
    assert current_revision(engine) == "0004"
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    engine.dispose()


def test_refuses_a_newer_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaTooNewError, match="ffff_from_the_future"):
        upgrade_to_head(engine)
    engine.dispose()


def test_version_numbers_never_fork(sessions) -> None:
    with session_scope(sessions) as s:
        assert repo.create_version(s, "base", [], "h0").number == 0
        assert repo.create_version(s, "edit", [1], "h1").number == 1
    # a second writer that computed the same number loses on the primary key
    with pytest.raises(IntegrityError):
        with session_scope(sessions) as s:
            s.add(Version(number=1, kind="edit", active_deltas=[], weights_hash="x", edit_ids=[]))
    with session_scope(sessions) as s:
        assert repo.latest_version(s).number == 1
        assert repo.get_version(s, 1).weights_hash == "h1"


def test_idempotency_key_is_unique(sessions) -> None:
    item = repo.NewEdit("The sky is", "green", ["Sky colour:"], [{"prompt": "Water is", "answer": None}])
    with session_scope(sessions) as s:
        edits, jobs = repo.create_edits(s, [item, item], "ann", "why", "key1", idempotency_key="k", request_hash="h")
        ids = [e.id for e in edits]
        assert [j.edit_id for j in jobs] == ids
    with pytest.raises(IntegrityError):
        with session_scope(sessions) as s:
            repo.create_edits(s, [item], "ann", None, "key1", idempotency_key="k", request_hash="h")
    with session_scope(sessions) as s:
        assert repo.find_idempotent(s, "k").edit_ids == ids
        rows, total = repo.list_edits(s)
        assert total == 2 and rows[0].paraphrases == ["Sky colour:"]
        assert rows[0].locality == [{"prompt": "Water is", "answer": None}]
        assert repo.pending_job_ids(s) == [j.id for j in jobs]


def test_filters_and_utc_timestamps(sessions) -> None:
    with session_scope(sessions) as s:
        repo.create_edits(s, [repo.NewEdit("Price of Zentrix", "9", [], [])], "bob", "price fix", "k")
        repo.create_edits(s, [repo.NewEdit("Colour of sky", "red", [], [])], "ann", None, "k")
    with session_scope(sessions) as s:
        rows, _ = repo.list_edits(s, author="bob")
        assert [r.prompt for r in rows] == ["Price of Zentrix"]
        assert repo.list_edits(s, text="PRICE FIX")[1] == 1
        assert repo.list_edits(s, status="queued")[1] == 2
        created = rows[0].created_at
        assert created.tzinfo is not None and abs(created - datetime.now(timezone.utc)) < timedelta(minutes=5)
        assert repo.list_edits(s, since=created + timedelta(hours=1))[1] == 0
        assert repo.count_edits_by_status(s) == {"queued": 2}


def test_delta_blobs_are_checksummed(sessions) -> None:
    blob = bytes(range(256)) * 10
    with session_scope(sessions) as s:
        delta_id = repo.add_delta(s, blob, [1, 2], ["m"], {"editor_id": "x"}, 0.1).id
    with session_scope(sessions) as s:
        assert repo.load_delta_blobs(s, [delta_id]) == {delta_id: blob}
        s.get(DeltaBlob, delta_id).blob = blob[:-1] + b"\x00"
    with session_scope(sessions) as s:
        with pytest.raises(repo.ChecksumError):
            repo.load_delta_blobs(s, [delta_id])
        with pytest.raises(repo.NotFound):
            repo.load_delta_blobs(s, [delta_id + 100])


def test_api_keys_are_stored_hashed(sessions) -> None:
    with session_scope(sessions) as s:
        row, token = api_keys.create_api_key(s, "bot", ["read", "read"])
        assert row.scopes == ["read"] and row.key_hash != token and token not in row.key_hash
    with session_scope(sessions) as s:
        assert api_keys.find_api_key(s, token).name == "bot"
        assert api_keys.find_api_key(s, token + "x") is None
        api_keys.revoke_api_key(s, row.id)
    with session_scope(sessions) as s:
        assert api_keys.find_api_key(s, token) is None
        assert api_keys.count_active_keys(s) == 0
