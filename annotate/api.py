"""Annotate JSON API (DESIGN §4): the labeling loop the pages run, for SDKs and scripts.

    POST /api/annotate/projects                       (admin) create -> 201 project
    GET  /api/annotate/projects                       the projects the caller may see
    GET  /api/annotate/projects/<id>                  one project + its last runs
    POST /api/annotate/projects/<id>/items            (admin) import <= 10,000 items -> 201 {created, duplicates}
    GET  /api/annotate/projects/<id>/next             the next item, leased to the caller -> 200, or 204
    POST /api/annotate/projects/<id>/labels           label a leased item -> 201; 409 not yours; 422 bad label
    POST /api/annotate/projects/<id>/retrain          (admin) -> 202 {"run": id}
    POST /api/annotate/projects/<id>/promote          (admin) make a version live (409: worse on gold, unconfirmed)
    POST /api/annotate/projects/<id>/rollback         (admin) back to the previous (or a given) version
    GET  /api/runs/<id>                               status, progress, metrics, decision in words

Session or bearer-token auth (slmsite.api); every endpoint needs the annotator or admin role. Views and
this API call the same services and selectors.
"""

from __future__ import annotations

from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.errors import HttpError

from annotate import promotion, selectors, services
from annotate.models import Project, TrainingRun
from slm.active import STRATEGIES
from slm.registry import RegistryError
from slmsite.roles import is_admin, is_annotator
from slmsite.schemas import ErrorOut

router = Router(tags=["annotate"])


class ProjectIn(Schema):
    name: str = Field(..., max_length=200)
    labels: list[str] = Field(..., description="two or more distinct labels")
    base: str = Field(
        "",
        description="registry ref the first retrain adapts (default: the live sentiment model), or a bare encoder "
        "(a registry version pulled with pull_model, a hub id in the HF cache, a directory) the first retrain "
        "trains a head on",
    )
    model: str | None = Field(None, description="registry name new versions go to; default the base's name")
    strategy: str = Field("entropy", description=f"one of {', '.join(STRATEGIES)}")
    retrain_every: int = Field(0, ge=0, description="auto retrain after this many new labels (0 = off)")
    promote: Literal["auto", "manual"] = "auto"
    retrain_from: Literal["parent", "scratch"] = "parent"
    new_label_weight: float | None = Field(None, description="weight of the new labels against the parent's data")
    family: Literal["ngram", "transformer"] = Field("ngram", description="the family trained from scratch")
    encoder: str = Field("", max_length=300, description="encoder of a transformer trained from scratch")
    guidelines: str = ""
    batch_size: int = 20
    overlap_k: int = Field(1, description="annotators per overlap item")
    overlap_fraction: float = 0.0
    gold_fraction: float = Field(0.0, description="share of file-imported items made gold (API items say it)")
    min_per_label: int = 5
    show_suggestions: bool = True


class ProjectOut(Schema):
    id: int
    name: str
    labels: list[str]
    items: int
    labelled: int
    gold: int
    model: str
    live_version: str | None
    pool_version: str | None = Field(None, description="the version whose predictions order the queue now")
    pool_error: str = Field("", description="why the pool could not be scored by the project's strategy")
    base: str
    retrain_from: str
    family: str
    strategy: str
    retrain_every: int
    promote: str


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
    version: str | None
    parent_version: str
    promoted: bool
    live: bool
    decision: str
    attempts: int
    log_tail: str
    created_at: str
    started_at: str | None
    finished_at: str | None


class ProjectDetailOut(ProjectOut):
    runs: list[RunOut]


class ItemIn(Schema):
    text: str
    label: str | None = None
    gold: bool = False


class ItemsIn(Schema):
    items: list[ItemIn] = Field(..., max_length=services.MAX_API_ITEMS)


class ItemsOut(Schema):
    created: int
    duplicates: int
    empty: int
    gold: int


class SuggestionOut(Schema):
    label: str
    score: float | None


class NextItemOut(Schema):
    id: int
    text: str
    suggestion: SuggestionOut | None


class NextOut(Schema):
    item: NextItemOut


class LabelIn(Schema):
    item: int
    label: str


class LabelOut(Schema):
    id: int
    item: int
    label: str
    progress: dict[str, Any]


class RetrainOut(Schema):
    run: int
    created: bool
    status: str


class PromoteIn(Schema):
    version: str
    confirm: bool = Field(False, description="promote even if it scored worse on gold than the live version")


class RollbackIn(Schema):
    version: str | None = None


class LiveOut(Schema):
    live: str


def _annotator(request: HttpRequest) -> None:
    if not is_annotator(request.user):
        raise HttpError(403, "needs the annotator or admin role")


def _admin(request: HttpRequest, what: str) -> None:
    if not is_admin(request.user):
        raise HttpError(403, f"{what} needs the admin role")


def _project(project_id: int) -> Project:
    project = Project.objects.filter(pk=project_id).first() if 0 < project_id < 2**63 else None
    if project is None:
        raise HttpError(404, f"no project {project_id}")
    return project


def _invalid(exc: ValidationError) -> HttpError:
    return HttpError(422, "; ".join(exc.messages))


@router.post(
    "annotate/projects",
    response={201: ProjectOut, 403: ErrorOut, 422: ErrorOut},
    summary="Create a labeling project (admin)",
)
def project_create(request: HttpRequest, payload: ProjectIn) -> tuple[int, dict[str, Any]]:
    _admin(request, "creating a project")
    try:
        project = services.project_create(
            user=request.user,
            name=payload.name,
            labels=payload.labels,
            base=payload.base,
            model_name=payload.model,
            strategy=payload.strategy,
            retrain_every=payload.retrain_every,
            promote_policy=payload.promote,
            retrain_from=payload.retrain_from,
            new_label_weight=payload.new_label_weight,
            family=payload.family,
            base_model=payload.encoder,
            guidelines=payload.guidelines,
            batch_size=payload.batch_size,
            overlap_k=payload.overlap_k,
            overlap_fraction=payload.overlap_fraction,
            gold_fraction=payload.gold_fraction,
            min_per_label=payload.min_per_label,
            show_suggestions=payload.show_suggestions,
        )
    except ValidationError as exc:
        raise _invalid(exc) from exc
    return 201, selectors.project_summary(project)


@router.get("annotate/projects", response={200: list[ProjectOut], 403: ErrorOut}, summary="Projects you may see")
def project_list(request: HttpRequest) -> list[dict[str, Any]]:
    _annotator(request)
    return [selectors.project_summary(p) for p in selectors.projects_for(request.user)]


@router.get(
    "annotate/projects/{id:project_id}",
    response={200: ProjectDetailOut, 403: ErrorOut, 404: ErrorOut},
    summary="A project and its last runs",
)
def project_detail(request: HttpRequest, project_id: int) -> dict[str, Any]:
    _annotator(request)
    project = _project(project_id)
    runs = TrainingRun.objects.filter(project=project).select_related("project")[:10]
    return {**selectors.project_summary(project), "runs": [selectors.run_payload(r) for r in runs]}


@router.post(
    "annotate/projects/{id:project_id}/items",
    response={201: ItemsOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
    summary="Import items (admin; at most 10,000 per call; gold items need a label)",
)
def items_import(request: HttpRequest, project_id: int, payload: ItemsIn) -> tuple[int, dict[str, Any]]:
    _admin(request, "importing items")
    project = _project(project_id)
    items = [services.NewItem(text=it.text, label=it.label, gold=it.gold) for it in payload.items]
    try:
        report = services.items_import(project=project, items=items)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    return 201, {"created": report.added, "duplicates": report.duplicates, "empty": report.empty, "gold": report.gold}


@router.get(
    "annotate/projects/{id:project_id}/next",
    response={200: NextOut, 204: None, 403: ErrorOut, 404: ErrorOut},
    summary="The next item to label, leased to you (204 when nothing is left for you)",
)
def next_item(request: HttpRequest, project_id: int) -> Any:
    _annotator(request)
    project = _project(project_id)
    lease = services.lease_next(project=project, user=request.user)
    if lease is None:
        return 204, None
    shown = selectors.item_payload(lease.item, project)  # never says whether an item is gold
    sug = shown["suggestion"]
    suggestion = {"label": sug["label"], "score": sug["confidence"]} if sug else None
    return 200, {"item": {"id": shown["id"], "text": shown["text"], "suggestion": suggestion}}


@router.post(
    "annotate/projects/{id:project_id}/labels",
    response={201: LabelOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut},
    summary="Label an item leased to you",
)
def label_submit(request: HttpRequest, project_id: int, payload: LabelIn) -> tuple[int, dict[str, Any]]:
    _annotator(request)
    project = _project(project_id)
    try:
        ann = services.label_submit(project=project, user=request.user, item_id=payload.item, label=payload.label)
    except services.LeaseLost as exc:
        raise HttpError(409, str(exc)) from exc
    except ValidationError as exc:
        raise _invalid(exc) from exc
    progress = selectors.label_progress(project, request.user)
    return 201, {"id": ann.pk, "item": ann.item_id, "label": ann.label, "progress": progress}


@router.post(
    "annotate/projects/{id:project_id}/retrain",
    response={202: RetrainOut, 403: ErrorOut, 404: ErrorOut},
    summary="Queue a retrain of the project's model (one per project at a time)",
)
def retrain(request: HttpRequest, project_id: int) -> tuple[int, dict[str, Any]]:
    _admin(request, "retraining")
    project = _project(project_id)
    run, created = services.run_trigger(project=project, user=request.user, trigger="api")
    return 202, {"run": run.pk, "created": created, "status": run.status}


@router.post(
    "annotate/projects/{id:project_id}/promote",
    response={200: LiveOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="Make a version of the project's model live (admin)",
)
def promote(request: HttpRequest, project_id: int, payload: PromoteIn) -> dict[str, Any]:
    _admin(request, "promoting")
    project = _project(project_id)
    try:
        ref = services.version_promote(
            project=project, version=payload.version, user=request.user, confirm=payload.confirm
        )
    except promotion.WorseThanLive as exc:
        raise HttpError(409, "; ".join(exc.messages)) from exc
    except RegistryError as exc:
        raise HttpError(404, str(exc)) from exc
    return {"live": ref}


@router.post(
    "annotate/projects/{id:project_id}/rollback",
    response={200: LiveOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    summary="Go back to the previously live version, or to a given one (admin)",
)
def rollback(request: HttpRequest, project_id: int, payload: RollbackIn) -> dict[str, Any]:
    _admin(request, "rolling back")
    project = _project(project_id)
    try:
        ref = services.version_rollback(project=project, version=payload.version, user=request.user)
    except RegistryError as exc:
        raise HttpError(409, str(exc)) from exc
    return {"live": ref}


@router.get("runs/{id:run_id}", response={200: RunOut, 403: ErrorOut, 404: ErrorOut}, summary="A training run")
def run_status(request: HttpRequest, run_id: int) -> dict[str, Any]:
    _annotator(request)
    run = TrainingRun.objects.filter(pk=run_id).select_related("project").first() if 0 < run_id < 2**63 else None
    if run is None:
        raise HttpError(404, f"no run {run_id}")
    return selectors.run_payload(run)
