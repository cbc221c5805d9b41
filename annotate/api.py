"""Annotate JSON API (DESIGN §4): POST /api/annotate/projects/<id>/retrain -> 202 {"run": id};
GET /api/runs/<id> -> status, progress, metrics, error. Session or bearer-token auth (slmsite.api);
triggering a retrain needs the admin role, reading a run the annotator role."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema
from ninja.errors import HttpError

from annotate import services
from annotate.models import Project, TrainingRun
from slmsite.roles import is_admin, is_annotator
from slmsite.schemas import ErrorOut

router = Router(tags=["annotate"])


class RetrainOut(Schema):
    run: int
    created: bool
    status: str


class RunOut(Schema):
    id: int
    project: int
    status: str
    progress: float
    epoch: int
    epochs: int
    loss: float | None
    eta_s: float | None
    metrics: dict[str, Any]
    error: str
    version: str
    parent_version: str
    promoted: bool
    attempts: int
    log_tail: str
    created_at: str
    started_at: str | None
    finished_at: str | None


def _run_out(run: TrainingRun) -> dict[str, Any]:
    return {
        "id": run.pk,
        "project": run.project_id,
        "status": run.status,
        "progress": run.progress,
        "epoch": run.epoch,
        "epochs": run.epochs,
        "loss": run.loss,
        "eta_s": run.eta_s,
        "metrics": run.metrics or {},
        "error": run.error,
        "version": run.version,
        "parent_version": run.parent_version,
        "promoted": run.promoted,
        "attempts": run.attempts,
        "log_tail": run.log_tail,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


@router.post(
    "annotate/projects/{id:project_id}/retrain",
    response={202: RetrainOut, 403: ErrorOut, 404: ErrorOut},
    summary="Queue a retrain of the project's model (one per project at a time)",
)
def retrain(request: HttpRequest, project_id: int) -> tuple[int, dict[str, Any]]:
    if not is_admin(request.user):
        raise HttpError(403, "retraining needs the admin role")
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        raise HttpError(404, f"no project {project_id}")
    run, created = services.run_trigger(project=project, user=request.user, trigger="api")
    return 202, {"run": run.pk, "created": created, "status": run.status}


@router.get("runs/{id:run_id}", response={200: RunOut, 403: ErrorOut, 404: ErrorOut}, summary="A training run")
def run_status(request: HttpRequest, run_id: int) -> dict[str, Any]:
    if not is_annotator(request.user):
        raise HttpError(403, "needs the annotator or admin role")
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None:
        raise HttpError(404, f"no run {run_id}")
    return _run_out(run)
