"""The adversarial suite (issue 13): each defect found from outside as a regression test, and the attack classes
they came from. The API fixtures are those of ``tests/api`` (our CA, real certificates, SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import api, pki, sqlite_api
from tests.store.databases import database_spec

__all__ = ["api", "database_spec", "pki", "sqlite_api"]

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adversarial: the adversarial suite of issue 13")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.adversarial)
