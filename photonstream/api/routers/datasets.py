"""/v1/datasets: the experiments and runs the caller may read, with detectors and sizes."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from photonstream.api.deps import Context, context
from photonstream.api.routers.streams import AUTH_ERRORS
from photonstream.api.schemas import DatasetInfo, DatasetList
from photonstream.store.policy import ALL_EXPERIMENTS

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.get("", response_model=DatasetList, responses=AUTH_ERRORS, summary="Runs the caller may stream")
def list_datasets(ctx: Context = Depends(context)) -> DatasetList:
    experiments = ctx.principal.experiments
    rows = ctx.svc.policy.datasets(None if ALL_EXPERIMENTS in experiments else sorted(experiments))
    ctx.audit.allow("dataset.list", "datasets", f"{len(rows)} runs")
    return DatasetList(
        items=[
            DatasetInfo(
                experiment=row.experiment,
                run=row.run,
                detectors=row.detectors,
                size_bytes=row.size_bytes,
                events=row.events,
            )
            for row in rows
        ]
    )
