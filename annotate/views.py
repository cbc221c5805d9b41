"""Annotate pages (thin: parse, call a service or selector, render). Annotators label; admins manage."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from annotate import selectors, services
from annotate.models import Export, ImportJob, Item, Project, TrainingRun
from slm.active import STRATEGY_SPECS
from slm.registry import RegistryError
from slmsite import bootstrap, confirm
from slmsite.promotion import promote_warning
from slmsite.registry import get_registry
from slmsite.roles import admin_required, annotator_required, is_admin


def _err(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


_MAX_ID = 2**63 - 1  # larger ids overflow the database's integer (a 500 instead of "not found")


def _id(raw: str | None) -> int | None:
    """A database id from user input, or None when it is not one."""
    raw = (raw or "").strip()
    return int(raw) if raw.isdecimal() and int(raw) <= _MAX_ID else None


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# ------------------------------------------------------------------ projects
@annotator_required
def index(request: HttpRequest) -> HttpResponse:
    projects = [(p, selectors.project_stats(p, request.user)) for p in selectors.projects_for(request.user)]
    building = bootstrap.building(get_registry(), settings.SENTIMENT_MODEL)
    return render(request, "annotate/index.html", {"projects": projects, "building": building})


def _project_form_values(post: Any) -> dict[str, Any]:
    def num(name: str, default: float | None, cast: type = int) -> Any:
        raw = (post.get(name) or "").strip()
        if raw == "":
            return default
        try:
            return cast(raw)
        except ValueError as exc:
            raise ValidationError(f"{name.replace('_', ' ')} must be a number") from exc

    labels = [x for x in (post.get("labels") or "").replace("\n", ",").split(",")]
    return {
        "name": post.get("name", ""),
        "labels": labels,
        "guidelines": post.get("guidelines", ""),
        "family": post.get("family", "ngram"),
        "base_model": post.get("base_model", ""),
        "base": post.get("base", ""),
        "retrain_from": post.get("retrain_from", "parent"),
        "new_label_weight": num("new_label_weight", None, float),
        "strategy": post.get("strategy", "entropy"),
        "batch_size": num("batch_size", 20),
        "overlap_k": num("overlap_k", 2),
        "overlap_fraction": num("overlap_fraction", 0.1, float),
        "retrain_every": num("retrain_every", 50),
        "gold_fraction": num("gold_fraction", 0.1, float),
        "min_per_label": num("min_per_label", 5),
        "promote_policy": post.get("promote_policy", "auto"),
        "model_name": post.get("model_name") or None,
        "show_suggestions": bool(post.get("show_suggestions")),
    }


@admin_required
def project_create(request: HttpRequest) -> HttpResponse:
    error = ""
    values: dict[str, Any] = {}
    if request.method == "POST":
        try:
            values = _project_form_values(request.POST)
            project = services.project_create(user=request.user, **values)
        except ValidationError as exc:
            error = _err(exc)
        else:
            messages.success(request, f"Project “{project.name}” created. Import items to start labelling.")
            return redirect("annotate:project", pk=project.pk)
    return render(
        request,
        "annotate/project_form.html",
        {
            "error": error,
            "values": values,
            "strategies": list(STRATEGY_SPECS.values()),
            "families": Project.Family.choices,
            "retrain_choices": Project.RetrainFrom.choices,
            "policies": Project.PromotePolicy.choices,
            "default_model": settings.SENTIMENT_MODEL,
        },
        status=400 if error else 200,
    )


@annotator_required
def project_detail(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    runs = selectors.runs(project, limit=5)
    stats = selectors.project_stats(project, request.user)
    ctx = {
        "project": project,
        "stats": stats,
        "guidelines": selectors.render_guidelines(project.guidelines),
        "runs": runs,
        "polling": selectors.any_active(runs),
        "agreement": selectors.agreement_summary(project),
        "dashboard": selectors.dashboard_data(project, stats),
        "imports": list(ImportJob.objects.filter(project=project)[:5]),
        "exports": selectors.exports(project),
        "sim": selectors.simulation_panel(project),
        "versions": selectors.versions(project)[:5],
        "admin": is_admin(request.user),
        "export_formats": Export.Format.choices,
        "strategies": list(STRATEGY_SPECS),
    }
    return render(request, "annotate/project.html", ctx)


# ------------------------------------------------------------------ labelling
@annotator_required
def label(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    a = services.lease_next(project=project, user=request.user)
    nxt = services.lease_next(project=project, user=request.user, exclude=[a.item_id]) if a else None
    ctx = {
        "project": project,
        "item": selectors.item_payload(a.item, project) if a else None,
        "next_item": selectors.item_payload(nxt.item, project) if nxt else None,
        "stats": selectors.project_stats(project, request.user),
        "guidelines": selectors.render_guidelines(project.guidelines),
        # every label gets a button; the first nine also get a number key
        "keys": [(i + 1 if i < 9 else None, lab) for i, lab in enumerate(project.labels)],
        "recent": selectors.my_recent(project, request.user),
    }
    return render(request, "annotate/label.html", ctx)


@annotator_required
def next_item(request: HttpRequest, pk: int) -> JsonResponse:
    project = get_object_or_404(Project, pk=pk)
    exclude = [i for i in map(_id, request.GET.getlist("exclude")) if i is not None]
    a = services.lease_next(project=project, user=request.user, exclude=exclude)
    return JsonResponse({"item": selectors.item_payload(a.item, project) if a else None})


def _progress(project: Project, user: Any) -> dict[str, Any]:
    return selectors.label_progress(project, user)


@require_POST
@annotator_required
def submit(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    item_id = _id(request.POST.get("item"))
    try:
        seconds = float(request.POST["seconds"]) if request.POST.get("seconds") else None
    except ValueError:
        item_id = None
    if item_id is None:
        return _reply(request, project, error="bad item or time", status=400)
    action = request.POST.get("action", "label")
    try:
        if action == "skip":
            services.item_skip(project=project, user=request.user, item_id=item_id)
        else:
            services.label_submit(
                project=project,
                user=request.user,
                item_id=item_id,
                label=request.POST.get("label", ""),
                seconds=seconds,
            )
    except services.LeaseLost as exc:
        return _reply(request, project, error=str(exc), status=409)
    except ValidationError as exc:
        return _reply(request, project, error=_err(exc), status=400)
    return _reply(request, project)


def _reply(request: HttpRequest, project: Project, *, error: str = "", status: int = 200) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(
            {"ok": not error, "error": error, "progress": _progress(project, request.user)}, status=status
        )
    if error:
        messages.error(request, error)
    return redirect("annotate:label", pk=project.pk)


@require_POST
@annotator_required
def undo(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    item = services.label_undo(project=project, user=request.user)
    if _wants_json(request):
        return JsonResponse(
            {
                "item": selectors.item_payload(item, project) if item else None,
                "progress": _progress(project, request.user),
            }
        )
    if item is None:
        messages.info(request, "Nothing to undo.")
    return redirect("annotate:label", pk=project.pk)


@require_POST
@annotator_required
def fix(request: HttpRequest) -> HttpResponse:
    nxt = request.POST.get("next") or reverse("sentiment:playground")
    if not url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        nxt = reverse("sentiment:playground")
    try:
        item = services.fix_submit(
            text=request.POST.get("text", ""),
            label=request.POST.get("label", ""),
            model_ref=request.POST.get("model_ref", ""),
            user=request.user,
        )
    except ValidationError as exc:
        messages.error(request, f"Could not send the fix: {_err(exc)}")
    else:
        messages.success(
            request, f"Thanks: sent to “{item.project.name}” as “{item.suggested_label}” for an annotator to review."
        )
    return redirect(nxt)


# ------------------------------------------------------------------ admin actions
@require_POST
@admin_required
def import_items(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    text_field = request.POST.get("text_field") or "text"
    label_field = request.POST.get("label_field", "label")
    upload = request.FILES.get("file")
    path = (request.POST.get("path") or "").strip()
    try:
        if upload is not None:
            if upload.size > settings.ANNOTATE_MAX_IMPORT_BYTES:
                raise ValidationError(f"the file is larger than {settings.ANNOTATE_MAX_IMPORT_BYTES // 2**20} MiB")
            suffix = Path(upload.name).suffix.lower()
            if suffix not in {".csv", ".tsv", ".jsonl", ".json"}:
                raise ValidationError("upload a .csv, .tsv, .jsonl or .json file (or give a dataset directory path)")
            folder = Path(settings.MEDIA_ROOT) / "annotate" / "uploads"
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=suffix, dir=folder)
            with os.fdopen(fd, "wb") as fh:
                for chunk in upload.chunks():
                    fh.write(chunk)
            path = tmp
        elif path:
            if len(path) > 500 or not Path(path).exists():
                raise ValidationError(f"{path} does not exist on the server")
        else:
            raise ValidationError("choose a file to upload or give a path")
        services.import_create(
            project=project, path=path, text_field=text_field, label_field=label_field, user=request.user
        )
    except ValidationError as exc:
        messages.error(request, _err(exc))
    else:
        messages.success(request, "Import queued; progress below.", extra_tags="transient")
    return redirect("annotate:project", pk=pk)


@require_POST
@admin_required
def retrain(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    run, created = services.run_trigger(project=project, user=request.user)
    if created:
        messages.success(request, f"Retrain #{run.pk} queued.", extra_tags="transient")
    else:
        messages.info(request, f"Retrain #{run.pk} is already {run.status}; showing it.")
    return redirect("annotate:run", pk=run.pk)


@admin_required
def review(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    if request.method == "POST":
        item_id = _id(request.POST.get("item"))
        if item_id is None:
            messages.error(request, "Choose an item.")
            return redirect("annotate:review", pk=pk)
        item = get_object_or_404(Item, pk=item_id, project=project)
        try:
            if request.POST.get("kind") == "gold":
                services.item_set_gold(item=item, label=request.POST.get("label", ""), user=request.user)
            else:
                services.item_adjudicate(
                    item=item,
                    label=request.POST.get("label", ""),
                    user=request.user,
                    make_gold=bool(request.POST.get("make_gold")),
                )
        except ValidationError as exc:
            messages.error(request, _err(exc))
        else:
            messages.success(request, f"Item {item.pk} labelled.")
        return redirect("annotate:review", pk=pk)
    return render(
        request,
        "annotate/review.html",
        {
            "project": project,
            "disputed": selectors.disputed_items(project),
            "gold_todo": selectors.gold_todo(project),
        },
    )


@admin_required
def models(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    versions = selectors.versions(project)
    compare = None
    a, b = request.GET.get("a"), request.GET.get("b")
    if a and b:
        try:
            compare = selectors.compare_versions(project, a, b)
        except RegistryError as exc:
            messages.error(request, str(exc))
    return render(request, "annotate/models.html", {"project": project, "versions": versions, "compare": compare})


@require_POST
@admin_required
def model_action(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    version = request.POST.get("version") or None
    try:
        if request.POST.get("action") == "promote":
            if not version:
                raise ValidationError("choose a version")
            warning = promote_warning(get_registry(), project.model_name, version)
            if warning and not confirm.confirmed(request):  # worse on gold: ask first
                return confirm.ask(
                    request,
                    question=warning,
                    action=f"Make {version} live",
                    cancel_url=reverse("annotate:models", kwargs={"pk": pk}),
                )
            ref = services.version_promote(project=project, version=version, user=request.user, confirm=bool(warning))
            messages.success(request, f"{ref} is live; the playground serves it now.")
        else:
            ref = services.version_rollback(project=project, version=version, user=request.user)
            messages.success(request, f"Rolled back: {ref} is live.")
    except (RegistryError, ValidationError) as exc:
        messages.error(request, _err(exc))
    return redirect("annotate:models", pk=pk)


@require_POST
@admin_required
def export(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    try:
        services.export_create(project=project, fmt=request.POST.get("fmt", "jsonl"), user=request.user)
    except ValidationError as exc:
        messages.error(request, _err(exc))
    else:
        messages.success(request, "Export queued; the download link appears when it is ready.", extra_tags="transient")
    return redirect(reverse("annotate:project", kwargs={"pk": pk}) + "#exports")


@admin_required
def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    exp = get_object_or_404(Export, pk=pk, status="succeeded")
    path = Path(exp.path)
    if not path.exists():
        raise Http404("the export file is gone")
    return FileResponse(open(path, "rb"), as_attachment=True, filename=path.name)


@require_POST
@admin_required
def simulate(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    strategies = request.POST.getlist("strategies") or ["entropy", "margin"]
    error = ""
    try:
        services.simulation_create(project=project, user=request.user, strategies=strategies)
    except ValidationError as exc:
        error = _err(exc)
    if getattr(request, "htmx", False):  # the card swaps itself and polls until the chart is there
        return _simulation_card(request, project, error=error)
    if error:
        messages.error(request, error)
    else:
        messages.success(
            request, "Simulation queued; its progress and then the chart show on the dashboard.", extra_tags="transient"
        )
    return redirect(reverse("annotate:project", kwargs={"pk": pk}) + "#simulation")


def _simulation_card(request: HttpRequest, project: Project, *, error: str = "") -> HttpResponse:
    ctx = {
        "project": project,
        "sim": selectors.simulation_panel(project),
        "admin": is_admin(request.user),
        "strategies": list(STRATEGY_SPECS),
        "error": error,
    }
    return render(request, "annotate/project.html#simulation", ctx)


@annotator_required
def simulation(request: HttpRequest, pk: int) -> HttpResponse:
    """The simulation card alone (polled by htmx while a simulation is queued or running); opened directly,
    the project page at that card."""
    project = get_object_or_404(Project, pk=pk)
    if not getattr(request, "htmx", False):
        return redirect(reverse("annotate:project", kwargs={"pk": pk}) + "#simulation")
    return _simulation_card(request, project)


# ------------------------------------------------------------------ runs
@annotator_required
def runs(request: HttpRequest) -> HttpResponse:
    project = None
    if (project_id := _id(request.GET.get("project"))) is not None:
        project = Project.objects.filter(pk=project_id).first()
    items = selectors.runs(project)
    ctx = {"runs": items, "polling": selectors.any_active(items), "project": project}
    if getattr(request, "htmx", False):
        return render(request, "annotate/runs.html#runs-table", ctx)
    return render(request, "annotate/runs.html", ctx)


@annotator_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun.objects.select_related("project"), pk=pk)
    live = get_registry().live_version(run.project.model_name)  # the pointer, never a stored flag
    ctx = {
        "run": run,
        "admin": is_admin(request.user),
        "is_live": bool(run.version) and run.version == live,
        "decision": selectors.run_decision(run, live),
    }
    if getattr(request, "htmx", False):
        return render(request, "annotate/run.html#run-status", ctx)
    return render(request, "annotate/run.html", ctx)
