from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.harness import ApiHarness, Pki
from tests.store.databases import DatabaseSpec, database_spec

__all__ = ["database_spec"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def api(database_spec: DatabaseSpec, pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    """The API on SQLite and on PostgreSQL (each test its own database), launcher off."""
    harness = ApiHarness(database_spec, pki, tmp_path / "state")
    yield harness
    harness.close()


@pytest.fixture()
def sqlite_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    """The API on a SQLite file only (for tests whose subject is not the database)."""
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state")
    yield harness
    harness.close()
    spec.close()
