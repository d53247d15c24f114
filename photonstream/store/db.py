"""The database: an engine for a URL (SQLite file by default, PostgreSQL through a URL), sessions, migrations.

Migrations are alembic revisions shipped inside the package (``photonstream/store/migrations``); ``upgrade``
applies them under a lock, so several API processes may start on one PostgreSQL at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from photonstream.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_ID = 0x70686F74  # any constant shared by every process migrating the same database


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (two API processes, one file)
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """One database: ``url`` like ``sqlite:///state/photonstream.db`` or ``postgresql+psycopg://user@host/db``.

    ``schema`` (PostgreSQL only) puts every table in that schema, e.g. one per test.
    """

    def __init__(self, url: str, schema: str | None = None, echo: bool = False) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError(f"database url {url!r} is not a SQLAlchemy URL") from None
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self.schema = schema
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            connect_args["check_same_thread"] = False
        elif schema is not None:
            connect_args["options"] = f"-csearch_path={schema}"
        self.engine: Engine = create_engine(parsed, echo=echo, connect_args=connect_args, pool_pre_ping=True)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision``; concurrent callers wait for each other."""
        from alembic import command

        config = self._alembic_config()
        with self.engine.begin() as connection:
            if self.backend == "postgresql":
                if self.schema is not None:
                    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def head_revision(self) -> str | None:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"
