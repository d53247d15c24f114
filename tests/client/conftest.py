from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from photonstream.buffer import BufferService
from tests.buffer.support import start_service


@pytest.fixture
def make_service() -> Iterator[Callable[..., BufferService]]:
    """Start buffer services in threads (loopback, any port); all are stopped after the test."""
    services: list[BufferService] = []

    def make(**settings: Any) -> BufferService:
        service = start_service(**settings)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


@pytest.fixture
def service(make_service: Callable[..., BufferService]) -> BufferService:
    return make_service()
