"""The abuse suite (issue 9, item 4): garbage on every socket, truncated and oversized messages, path traversal,
resource exhaustion against quotas, bad credentials through the data plane, schemathesis over the whole API.

Every case is bounded in time and asserts numbers: unauthorized reads = 0, 5xx = 0, messages lost by the other
streams = 0, files opened outside the data root = 0. Run it alone with ``pytest -m abuse``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.harness import Pki
from tests.buffer.conftest import make_service

__all__ = ["make_service"]

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "abuse: the abuse suite (garbage, traversal, quotas, bad credentials)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.abuse)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))
