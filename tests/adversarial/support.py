"""What several adversarial tests share: settings that keep a real server's embedded buffer off the default ports."""

from __future__ import annotations

from typing import Any

# a real server in these tests runs its embedded buffer on ports of its own (never the default 5600/5601)
OWN_BUFFER_PORTS: dict[str, Any] = {"buffer_bind": "tcp://127.0.0.1:*", "buffer_token_bind": None}
