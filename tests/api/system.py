"""The whole service for end-to-end tests: the API under uvicorn (HTTPS with our CA) with its launcher and embedded
buffer (CURVE and token listeners on free ports), jobs on a real backend that report back to it.

``make_system`` takes ApiSettings changes (e.g. ``job_backend="slurm"``); a job runs ``python -m photonstream run``
and reports its progress to the API (``reporter_from_env``) unless ``reports=False``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tests.api.harness import ApiHarness, Pki, stream_request
from tests.api.servers import running_server
from tests.store.databases import DatabaseSpec

DEADLINE_S = 60.0


@dataclass
class System:
    api: ApiHarness
    app: FastAPI
    url: str

    @property
    def alice(self) -> Any:
        return self.api.client(cert="alice", app=self.app)

    def create(self, events: int = 12, **changes: Any) -> dict[str, Any]:
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": events}
        return self.create_with(source, **changes)

    def create_with(self, source: dict[str, Any], steps: list[Any] | None = None, **changes: Any) -> dict[str, Any]:
        pipeline: dict[str, Any] = {"source": source, **({"steps": steps} if steps else {})}
        body = stream_request(pipeline=pipeline, consumers=[{"name": "analysis"}], **changes)
        response = self.alice.post("/v1/streams", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def wait_state(self, stream_id: str, states: set[str], deadline_s: float = DEADLINE_S) -> dict[str, Any]:
        deadline = time.monotonic() + deadline_s
        while True:
            shown = dict(self.alice.get(f"/v1/streams/{stream_id}").json())
            if shown["state"] in states:
                return shown
            if time.monotonic() > deadline:
                logs = self.alice.get(f"/v1/streams/{stream_id}/logs").json()["text"]
                raise AssertionError(f"stream stayed {shown['state']} ({shown['reason']}); job log:\n{logs}")
            time.sleep(0.1)

    def transitions(self, stream_id: str) -> list[tuple[str, str]]:
        rows = self.alice.get(f"/v1/streams/{stream_id}/transitions").json()
        return [(t["to_state"], t["reason"]) for t in rows]

    def logs(self, stream_id: str, **params: Any) -> str:
        response = self.alice.get(f"/v1/streams/{stream_id}/logs", params=params)
        assert response.status_code == 200, response.text
        return str(response.json()["text"])


def make_system(pki: Pki, tmp_path: Path, reports: bool = True, **settings: Any) -> Iterator[System]:
    spec = DatabaseSpec("sqlite", tmp_path)
    api = ApiHarness(
        spec,
        pki,
        tmp_path / "state",
        buffer_bind="tcp://127.0.0.1:*",
        buffer_token_bind="tcp://127.0.0.1:*",
        launcher_interval_s=0.2,
        results_poll_s=0.2,
        events_poll_s=0.1,
        local_max_concurrent=2,
        run_command=[sys.executable, "-m", "photonstream"],
        **settings,
    )
    api.services().db.dispose()
    api.app = api.new_app(launcher=True)
    try:
        with running_server(api.app, pki) as url:
            if reports:
                api.services().settings.report_url = url
            yield System(api, api.app, url)
    finally:
        api.close()
        spec.close()
