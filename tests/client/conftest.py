"""Buffer services for the tests in this folder (the fixtures live in tests/buffer/support.py)."""

from tests.buffer.support import make_service, service

__all__ = ["make_service", "service"]
