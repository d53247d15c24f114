"""The namespace pair: the veth link carries traffic between the two namespaces only, and close() removes both."""

from __future__ import annotations

import subprocess
import sys

import pytest

from photonstream.testing.netns import NamespacePair, unavailable_reason
from tests.helpers import require_privileges

ECHO_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 5700))
print("ready", flush=True)
conn, _ = server.accept()
conn.sendall(conn.recv(64).upper())
"""


@pytest.fixture
def pair() -> NamespacePair:
    require_privileges(unavailable_reason())
    return NamespacePair()


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_the_link_joins_the_two_namespaces_and_close_removes_them(pair: NamespacePair) -> None:
    with pair:
        server = pair.popen(pair.facility, [sys.executable, "-c", ECHO_SERVER, pair.facility_address],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = (
            f"import socket; s = socket.create_connection(('{pair.facility_address}', 5700), timeout=5); "
            "s.sendall(b'over the link'); print(s.recv(64).decode())"
        )
        answer = pair.run(pair.hpc, [sys.executable, "-c", client], capture_output=True, text=True, timeout=30)
        assert answer.stdout.strip() == "OVER THE LINK", answer.stderr
        with pytest.raises(ValueError):
            pair.argv("some-other-namespace", ["true"])
        assert pair.facility in namespaces() and pair.hpc in namespaces()
    assert pair.facility not in namespaces() and pair.hpc not in namespaces()
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert pair.facility_link not in links and pair.hpc_link not in links
