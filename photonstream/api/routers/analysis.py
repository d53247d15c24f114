"""/v1/streams/{id}/merging and /structure: the crystallography a stream's consumers published, newest first.

The merger publishes a ``merging`` result with each report (shell table, curves, resolution estimate, "data
enough?"); the structure stage a ``structure`` result with each update (R-work/R-free, peaks, a map section, its
history). These endpoints give the newest of each, with the stream's own authorization (404 alike for a stream that
is absent or not the caller's). The structure stage the service runs (worker kind ``structure``) writes its MTZ and
maps into the stream's artifacts folder; ``/structure/files/{name}`` serves those, by a fixed list of names.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from photonstream.api.deps import Context, context
from photonstream.api.errors import NotFoundError
from photonstream.api.routers.streams import AUTH_ERRORS, NOT_FOUND, visible_stream
from photonstream.client.results import STRUCTURE_FILES, StructureFile
from photonstream.store.models import Stream, StreamResult

router = APIRouter(prefix="/v1/streams", tags=["analysis"])

MEDIA_TYPES = {".mtz": "application/octet-stream", ".ccp4": "application/octet-stream", ".json": "application/json"}
NO_RESULT = {404: NOT_FOUND[404] | {"description": "no such stream (or not yours), or nothing published yet"}}


class PublishedResult(BaseModel):
    """The newest result of one kind, with who published it and when."""

    result_id: int
    published_at: dt.datetime
    worker: str
    group: str
    data: dict[str, Any]


class StructureFileInfo(BaseModel):
    name: str
    bytes: int = Field(ge=0)
    url: str


class StructureView(PublishedResult):
    """The newest structure update; ``history`` has R-work and R-free of every update so far (the stage's own)."""

    history: list[dict[str, Any]]
    files: list[StructureFileInfo] = Field(description="files of the service's structure stage, ready to download")


def structure_artifacts(ctx: Context, stream: Stream) -> Path:
    """Where the service's structure stage of ``stream`` writes (worker kind ``structure``: {artifacts}/structure)."""
    return ctx.svc.settings.artifacts(stream.id, stream.workdir) / "structure"


def _newest(ctx: Context, stream: Stream, kind: str, missing: str) -> StreamResult:
    row = ctx.svc.launcher.reports.newest_result(stream.id, kind)
    if row is None:
        raise NotFoundError(f"stream {stream.id}: {missing}")
    return row


def _published(row: StreamResult) -> dict[str, Any]:
    return {"result_id": row.id, "published_at": row.published_at, "worker": row.worker, "group": row.group_name,
            "data": row.data}  # fmt: skip


@router.get(
    "/{stream_id}/merging",
    response_model=PublishedResult,
    responses={**AUTH_ERRORS, **NO_RESULT},
    summary="The merger's newest statistics: CC1/2, completeness, multiplicity, I/sigma per shell, curves, resolution",
)
def stream_merging(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> PublishedResult:
    stream = visible_stream(ctx, stream_id, "stream.results")
    missing = "no merging statistics yet (a merger publishes them: photonstream xtal merge --publish)"
    return PublishedResult(**_published(_newest(ctx, stream, "merging", missing)))


@router.get(
    "/{stream_id}/structure",
    response_model=StructureView,
    responses={**AUTH_ERRORS, **NO_RESULT},
    summary="The structure stage's newest update: R-work/R-free and their history, peaks, map section, files",
)
def stream_structure(stream_id: uuid.UUID, ctx: Context = Depends(context)) -> StructureView:
    stream = visible_stream(ctx, stream_id, "stream.results")
    missing = "no structure update yet (a structure stage publishes them: worker kind 'structure')"
    row = _newest(ctx, stream, "structure", missing)
    folder = structure_artifacts(ctx, stream)
    files = []
    for name in STRUCTURE_FILES:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            url = f"/v1/streams/{stream.id}/structure/files/{name}"
            files.append(StructureFileInfo(name=name, bytes=path.stat().st_size, url=url))
    return StructureView(**_published(row), history=list(row.data.get("history") or []), files=files)


@router.get(
    "/{stream_id}/structure/files/{name}",
    response_class=FileResponse,
    responses={**AUTH_ERRORS, **NO_RESULT, 200: {"content": {"application/octet-stream": {}}}},
    summary="A file of the service's structure stage: structure.mtz, the CCP4 maps or structure.json",
)
def stream_structure_file(stream_id: uuid.UUID, name: StructureFile, ctx: Context = Depends(context)) -> FileResponse:
    stream = visible_stream(ctx, stream_id, "stream.results")
    path = structure_artifacts(ctx, stream) / name
    if not path.is_file() or path.is_symlink():
        raise NotFoundError(f"stream {stream.id}: no {name} (the service's structure stage has not written it)")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], filename=name)
