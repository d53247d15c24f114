"""The browser dashboard (``/ui``) and the per-stream metrics (``/metrics/streams``) of the API service.

``install(app)`` adds them to an app made by ``create_app``: the routes, the static files and a ``Monitor``
(``app.state.monitor``) that is closed when the app shuts down. A results channel plugs in later with
``app.state.monitor.results = reader`` (see ``photonstream.api.monitor.ResultsReader``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the package also holds ``photonstream status``: the CLI must not pay for FastAPI to import it
    from fastapi import FastAPI

    from photonstream.api.monitor import Monitor


def install(app: FastAPI, monitor: Monitor | None = None) -> Monitor:
    from fastapi.staticfiles import StaticFiles

    from photonstream.api.monitor import Monitor, buffer_stats_source, buffer_subscriber
    from photonstream.api.ui.ui import STATIC, router

    settings = app.state.services.settings
    endpoint = settings.buffer_endpoint
    monitor = monitor or Monitor(buffer_stats_source(endpoint), buffer_subscriber(endpoint))
    app.state.monitor = monitor
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(the_app: Any) -> AsyncIterator[Any]:
        async with inner(the_app) as state:
            try:
                yield state
            finally:
                monitor.close()

    app.router.lifespan_context = lifespan
    return monitor
