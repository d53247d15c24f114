"""A user at another site: asks the API for a stream with her certificate and follows it to its end.

Used by the cross-facility test and ``photonstream bench wan``::

    python -m photonstream.testing.remote_requester URL REQUEST.json --cert U.crt --key U.key --ca CA.crt [--wait-s 60]

Uses the typed client (``photonstream.client.api.PhotonstreamClient``) over HTTPS with mutual TLS. Waits until
``/v1/health`` answers (the service may still be starting), then prints one JSON line
``{"requested_at": T0, "answered_at": T1, "stream_id": ..., "data_endpoint": {...}}`` (times are ``time.time()``,
comparable across processes and network namespaces; ``data_endpoint`` holds the consumer's secret key, shown once),
follows the stream's events to its end and prints ``{"final": <the stream as the API shows it>, "seen_at": T2}``
(T2: when the user learnt of the end). Exit status 0 when the stream finished (whatever its state), 2 when the
service never answered, 3 when it refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from photonstream.client.api import ApiError, ApiUnreachableError, PhotonstreamClient


def wait_healthy(client: PhotonstreamClient, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            client.health()
            return True
        except ApiUnreachableError:
            time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("request", type=Path, help="the stream request (JSON)")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--wait-s", type=float, default=60.0, help="how long the service may take to answer")
    args = parser.parse_args(argv)
    request = json.loads(args.request.read_text())
    with PhotonstreamClient(args.url, cert=args.cert, key=args.key, ca=args.ca) as client:
        if not wait_healthy(client, args.wait_s):
            print(json.dumps({"error": f"{args.url} did not answer within {args.wait_s:g} s"}), flush=True)
            return 2
        requested_at = time.time()
        try:
            created = client.create_stream(request)
        except ApiError as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            return 3
        answered_at = time.time()
        print(json.dumps({"requested_at": requested_at, "answered_at": answered_at, "stream_id": str(created.id),
                          "data_endpoint": created.data_endpoint.model_dump(mode="json")}), flush=True)  # fmt: skip
        final = client.wait(created.id)
        print(json.dumps({"final": final.model_dump(mode="json"), "seen_at": time.time()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
