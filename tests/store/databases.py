"""A migrated, empty database per test: a SQLite file, and a PostgreSQL schema of its own (dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from photonstream.store.db import Database, sqlite_url

POSTGRES_URL = os.environ.get("PHOTONSTREAM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_postgres_reachable: bool | None = None


def postgres_reachable() -> bool:
    global _postgres_reachable
    if _postgres_reachable is None:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            _postgres_reachable = True
        except OperationalError:
            _postgres_reachable = False
        finally:
            engine.dispose()
    return _postgres_reachable


class DatabaseSpec:
    """Where a test's database lives; ``open()`` gives a new Database object on it (a 'restarted process')."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.url, self.schema = sqlite_url(tmp_path / "state.db"), None
        else:
            self.url, self.schema = POSTGRES_URL, f"t_{uuid.uuid4().hex[:12]}"
        self._opened: list[Database] = []

    def open(self) -> Database:
        db = Database(self.url, schema=self.schema)
        self._opened.append(db)
        return db

    def close(self) -> None:
        for db in self._opened:
            db.dispose()
        if self.schema is not None:
            engine = create_engine(self.url)
            with engine.begin() as connection:
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseSpec]:
    if request.param == "postgresql" and not postgres_reachable():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} (set PHOTONSTREAM_TEST_POSTGRES_URL)")
    spec = DatabaseSpec(request.param, tmp_path)
    try:
        yield spec
    finally:
        spec.close()


@pytest.fixture()
def database(database_spec: DatabaseSpec) -> Database:
    db = database_spec.open()
    db.upgrade()
    return db
