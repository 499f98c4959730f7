"""Database engine, sessions and schema migrations.

The same code serves SQLite (embedded mode: one file under the data directory) and PostgreSQL
(production). The schema is owned by Alembic: on start the service upgrades to ``head``, and
refuses to run against a database whose schema is newer than this code knows, because writing
with an old model into a new schema can silently corrupt history.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


MIGRATION_LOCK_KEY = 0x5E3D18  # pg advisory lock id held while migrating


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer smedit; this one must not write to it."""


def make_engine(url: str) -> Engine:
    """An engine with the per-backend settings the service needs."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One engine is shared by API threads and the worker thread.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned from a committed session stay readable.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_to_head(engine: Engine) -> str:
    """Bring the schema to the newest revision this code knows; return it.

    Raises :class:`SchemaTooNewError` when the database is at a revision this code has never
    heard of (it was migrated by a newer release).
    """
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    current = current_revision(engine)
    if current is not None:
        try:
            script.get_revision(current)
        except Exception:
            known = ", ".join(script.get_heads())
            raise SchemaTooNewError(
                f"database schema is at revision {current!r}, which this smedit does not know "
                f"(its newest is {known}); upgrade smedit instead of starting an old one"
            ) from None
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas and the worker start together on a fresh database: one migrates at a
            # time (the lock is released when this transaction ends; the others then see head).
            from sqlalchemy import text

            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    head = script.get_current_head()
    assert head is not None
    return head
