"""Annotate writes: projects, pool import, leases, labels, undo/skip, adjudication, retrain triggers,
promotion/rollback, exports and simulations. Views and jobs call these; nothing else writes."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from annotate.models import (
    Annotation,
    Assignment,
    Export,
    ImportJob,
    Item,
    Project,
    Simulation,
    TrainingRun,
)
from slm.text import PreprocessConfig, clean_text
from slmsite.limits import TextLimitError, texts_check
from slmsite.registry import get_registry
from slmsite.roles import is_admin

log = logging.getLogger(__name__)

STRATEGY_CHOICES = ["random", "least_confidence", "margin", "entropy", "bald", "kcenter", "hybrid"]


class LeaseLost(Exception):
    """The item is no longer leased to this annotator (already labelled, skipped or reassigned)."""


# ------------------------------------------------------------------ projects
def _clean_labels(labels: Sequence[str]) -> list[str]:
    out: list[str] = []
    for lab in labels:
        lab = str(lab).strip()
        if lab and lab not in out:
            out.append(lab)
    if len(out) < 2:
        raise ValidationError("a project needs at least two distinct labels")
    if len(out) > 50:
        raise ValidationError("at most 50 labels")
    if any(len(lab) > 100 for lab in out):
        raise ValidationError("labels are at most 100 characters")
    return out


@transaction.atomic
def project_create(
    *,
    name: str,
    labels: Sequence[str],
    user: Any = None,
    guidelines: str = "",
    family: str = Project.Family.NGRAM,
    base_model: str = "",
    strategy: str = "entropy",
    batch_size: int = 20,
    overlap_k: int = 2,
    overlap_fraction: float = 0.1,
    retrain_every: int = 50,
    gold_fraction: float = 0.1,
    min_per_label: int = 5,
    promote_policy: str = Project.PromotePolicy.AUTO,
    model_name: str | None = None,
    show_suggestions: bool = True,
) -> Project:
    name = name.strip()
    if not name:
        raise ValidationError("a project needs a name")
    if Project.objects.filter(name=name).exists():
        raise ValidationError(f"a project named {name!r} already exists")
    if strategy not in STRATEGY_CHOICES:
        raise ValidationError(f"unknown query strategy {strategy!r}; choose one of {STRATEGY_CHOICES}")
    if family not in Project.Family.values:
        raise ValidationError(f"unknown model family {family!r}")
    if promote_policy not in Project.PromotePolicy.values:
        raise ValidationError(f"unknown promote policy {promote_policy!r}")
    if not (0.0 <= gold_fraction < 1.0) or not (0.0 <= overlap_fraction <= 1.0):
        raise ValidationError("fractions must be between 0 and 1 (gold below 1)")
    if not (1 <= overlap_k <= 10) or not (1 <= batch_size <= 1000):
        raise ValidationError("overlap k must be 1..10 and batch size 1..1000")
    if retrain_every < 0 or min_per_label < 0:
        raise ValidationError("retrain every and the cold-start minimum cannot be negative")
    if len(name) > 200 or len(base_model) > 300:
        raise ValidationError("the name is at most 200 characters and the base model at most 300")
    model_name = (model_name or settings.SENTIMENT_MODEL).strip()
    from slm.registry import _NAME_RE  # the registry's own name rule

    if not _NAME_RE.match(model_name):
        raise ValidationError(f"invalid registry model name {model_name!r}")
    return Project.objects.create(
        name=name,
        labels=_clean_labels(labels),
        guidelines=guidelines,
        family=family,
        base_model=base_model.strip(),
        strategy=strategy,
        batch_size=batch_size,
        overlap_k=overlap_k,
        overlap_fraction=overlap_fraction,
        retrain_every=retrain_every,
        gold_fraction=gold_fraction,
        min_per_label=min_per_label,
        promote_policy=promote_policy,
        model_name=model_name,
        show_suggestions=show_suggestions,
        created_by=user if user is not None and user.is_authenticated else None,
    )


# ------------------------------------------------------------------ items
def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fraction(h: str, salt: int) -> float:
    """A deterministic number in [0, 1) from a text hash (so re-imports choose the same gold/overlap items)."""
    return int(h[salt * 8 : salt * 8 + 8], 16) / 0x100000000


@dataclass
class ImportReport:
    n_input: int = 0
    added: int = 0
    duplicates: int = 0
    empty: int = 0
    gold: int = 0
    overlap: int = 0
    unknown_labels: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def items_add(
    *,
    project: Project,
    rows: Iterable[tuple[str, str | None]],
    source: str = Item.Source.IMPORT,
    report: ImportReport | None = None,
    chunk: int = 1000,
) -> ImportReport:
    """Adds (text, label-or-None) rows to the pool: cleans with the preprocessing pipeline, drops empty
    texts and duplicates (within the batch and against the pool), marks gold and overlap items.

    A label that is given and valid becomes the gold label of gold items and a hidden reference label
    (meta.source_label) otherwise - used only by simulations, never shown or trained on.
    """
    report = report or ImportReport()
    config = PreprocessConfig()
    pending: list[Item] = []
    seen: set[str] = set()

    def flush() -> None:
        if not pending:
            return
        hashes = [it.text_hash for it in pending]
        existing = set(Item.objects.filter(project=project, text_hash__in=hashes).values_list("text_hash", flat=True))
        fresh = [it for it in pending if it.text_hash not in existing]
        report.duplicates += len(pending) - len(fresh)
        with transaction.atomic():
            Item.objects.bulk_create(fresh, batch_size=500, ignore_conflicts=True)
        report.added += len(fresh)
        for it in fresh:
            report.gold += int(it.is_gold)
            report.overlap += int(it.needed > 1)
        pending.clear()

    rng = random.Random()
    for text, label in rows:
        report.n_input += 1
        cleaned = clean_text(text, config)
        if not cleaned:
            report.empty += 1
            continue
        h = text_hash(cleaned)
        if h in seen:
            report.duplicates += 1
            continue
        seen.add(h)
        label = (str(label).strip() if label is not None else "") or ""
        if label and label not in project.labels:
            report.unknown_labels += 1
            label = ""
        if label:
            report.label_counts[label] = report.label_counts.get(label, 0) + 1
        is_gold = source == Item.Source.IMPORT and _fraction(h, 0) < project.gold_fraction
        overlap = project.overlap_k > 1 and _fraction(h, 1) < project.overlap_fraction
        item = Item(
            project=project,
            text=cleaned,
            text_hash=h,
            source=source,
            is_gold=is_gold,
            gold_label=label if is_gold else "",
            needed=project.overlap_k if overlap else 1,
            meta={"source_label": label} if label else {},
            rand=rng.random(),
        )
        item.lane = item.compute_lane()
        pending.append(item)
        if len(pending) >= chunk:
            flush()
    flush()
    return report


@transaction.atomic
def import_create(
    *, project: Project, path: str, text_field: str = "text", label_field: str = "label", user: Any = None
) -> ImportJob:
    from annotate import jobs

    if len(path) > 500 or len(text_field) > 100 or len(label_field) > 100:
        raise ValidationError("the path is at most 500 characters and column names at most 100")
    imp = ImportJob.objects.create(
        project=project, path=path, text_field=text_field, label_field=label_field, created_by=user
    )
    transaction.on_commit(lambda: jobs.enqueue_import(imp.pk))
    return imp


@transaction.atomic
def fix_submit(*, text: str, label: str, model_ref: str, user: Any) -> Item:
    """The playground's "Wrong? Fix it": adds the text with the proposed label to the pool of the project
    that trains this model (or the demo project) as a suggested item for annotators to review."""
    text = clean_text(text or "")
    if not text:
        raise ValidationError("the text is empty")
    try:
        texts_check([text], name=lambda _i: "the text")
    except TextLimitError as exc:
        raise ValidationError(str(exc)) from exc
    name = (model_ref or "").partition("@")[0] or settings.SENTIMENT_MODEL
    project = (
        Project.objects.filter(model_name=name).order_by("created_at").first()
        or Project.objects.filter(name=settings.ANNOTATE_DEMO_PROJECT).first()
    )
    if project is None:
        raise ValidationError("no annotate project trains this model yet (create one or the demo project)")
    if label not in project.labels:
        raise ValidationError(f"unknown label {label!r}; this project's labels are {', '.join(project.labels)}")
    h = text_hash(text)
    item, created = Item.objects.get_or_create(
        project=project,
        text_hash=h,
        defaults={
            "text": text,
            "source": Item.Source.FIX,
            "suggested_label": label,
            "meta": {"fixed_by": user.get_username(), "model": model_ref},
            "score": 2.0,  # reviewed first: above any uncertainty score
            "rand": random.random(),
            "lane": Item.FIX,
        },
    )
    if not created and not item.final_label:
        Item.objects.filter(pk=item.pk).update(suggested_label=label, score=2.0)
        item.refresh_from_db()
    return item


# ------------------------------------------------------------------ leases
def _lease_expiry() -> Any:
    return timezone.now() + timedelta(seconds=settings.ANNOTATE_LEASE_SECONDS)


def label_counts(project: Project) -> dict[str, int]:
    counts = dict(
        Item.objects.filter(project=project, lane=Item.CLOSED, is_gold=False)  # final labels live in closed items
        .exclude(final_label="")
        .values_list("final_label")
        .annotate(n=Count("id"))
        .values_list("final_label", "n")
    )
    return {lab: int(counts.get(lab, 0)) for lab in project.labels}


def in_cold_start(project: Project) -> bool:
    return min(label_counts(project).values() or [0]) < project.min_per_label


def _open_ids(
    project: Project, user: Any, lane: int, order: Sequence[str], exclude: set[int], want: int, pages: int = 5
) -> list[int]:
    """Up to `want` ids from one lane, in queue order, that this annotator may take now: not theirs already
    (held, done or skipped) and with a free slot. Reads the queue index in pages, checks only those rows."""
    now = timezone.now()
    out: list[int] = []
    page = 200
    for n in range(pages):
        rows = list(
            Item.objects.filter(project=project, lane=lane)
            .order_by(*order)
            .values_list("id", "needed")[n * page : (n + 1) * page]
        )
        if not rows:
            break
        ids = [i for i, _ in rows]
        mine = set(Assignment.objects.filter(annotator=user, item_id__in=ids).values_list("item_id", flat=True))
        held = Counter(
            Assignment.objects.filter(item_id__in=ids, slot__isnull=False)
            .filter(Q(status=Assignment.Status.DONE) | Q(expires_at__gt=now))
            .values_list("item_id", flat=True)
        )
        out += [i for i, need in rows if i not in mine and i not in exclude and held[i] < need]
        if len(out) >= want or len(rows) < page:
            break
    return out[:want]


def _candidates(project: Project, user: Any, exclude: Sequence[int], limit: int) -> list[int]:
    skip = set(exclude)
    gold_lanes = [Item.GOLD] + ([Item.GOLD_TODO] if is_admin(user) else [])
    gold_turn = project.gold_fraction > 0 and random.random() < project.gold_fraction
    order = ["rand"] if project.strategy == "random" or in_cold_start(project) else ["-score", "rand"]
    plan: list[tuple[int, list[str]]] = []
    if gold_turn:
        plan += [(lane, ["rand"]) for lane in gold_lanes]
    plan += [(Item.FIX, ["created_at", "id"]), (Item.POOL, order)]  # playground fixes are reviewed first
    if not gold_turn:
        plan += [(lane, ["rand"]) for lane in gold_lanes]
    out: list[int] = []
    for lane, lane_order in plan:
        out += _open_ids(project, user, lane, lane_order, skip | set(out), limit - len(out))
        if len(out) >= limit:
            break
    return out


def _try_lease(item_id: int, needed: int, project: Project, user: Any) -> Assignment | None:
    now = timezone.now()
    expires = _lease_expiry()
    # 1) take over an expired lease (conditional UPDATE: only one annotator can win it)
    for aid in Assignment.objects.filter(
        item_id=item_id, status=Assignment.Status.LEASED, expires_at__lte=now, slot__isnull=False
    ).values_list("id", flat=True):
        try:
            with transaction.atomic():
                won = Assignment.objects.filter(id=aid, status=Assignment.Status.LEASED, expires_at__lte=now).update(
                    annotator=user, expires_at=expires, created_at=now
                )
        except IntegrityError:
            return None  # this annotator already holds the item (a concurrent request of theirs)
        if won:
            return Assignment.objects.select_related("item").get(id=aid)
    # 2) a free slot: INSERT guarded by unique (item, slot) and (item, annotator)
    used = set(Assignment.objects.filter(item_id=item_id, slot__isnull=False).values_list("slot", flat=True))
    for slot in range(needed):
        if slot in used:
            continue
        try:
            with transaction.atomic():
                return Assignment.objects.create(
                    item_id=item_id, project=project, annotator=user, slot=slot, expires_at=expires
                )
        except IntegrityError:
            continue
    return None


def lease_next(*, project: Project, user: Any, exclude: Sequence[int] = ()) -> Assignment | None:
    """The next item for this annotator: an item they already hold (progress survives a reload), else a
    newly leased one. Race-free: leases are won by conditional UPDATE or a unique-guarded INSERT."""
    held = (
        Assignment.objects.filter(project=project, annotator=user, status=Assignment.Status.LEASED)
        .exclude(item_id__in=list(exclude))
        .select_related("item")
        .order_by("created_at", "id")
        .first()
    )
    if held is not None:
        Assignment.objects.filter(id=held.id, annotator=user, status=Assignment.Status.LEASED).update(
            expires_at=_lease_expiry()
        )
        return held
    for _attempt in range(3):
        cands = _candidates(project, user, exclude, limit=30)
        if not cands:
            return None
        needed = dict(Item.objects.filter(id__in=cands).values_list("id", "needed"))
        for item_id in cands:
            a = _try_lease(item_id, needed[item_id], project, user)
            if a is not None:
                return Assignment.objects.select_related("item").get(id=a.id)
    return None


def _item_refresh(item_id: int) -> Item:
    """Recomputes n_labels / final_label / disputed from the item's annotations (row locked)."""
    item = Item.objects.select_for_update().get(id=item_id)
    labels = list(item.annotations.values_list("label", flat=True))
    item.n_labels = len(labels)
    if not item.adjudicated:
        if item.n_labels >= item.needed:
            top = Counter(labels).most_common()
            unanimous = len(top) == 1
            item.disputed = not unanimous
            item.final_label = top[0][0] if unanimous else ""
        else:
            item.disputed = False
            item.final_label = ""
    item.lane = item.compute_lane()
    item.save(update_fields=["n_labels", "final_label", "disputed", "lane"])
    return item


@transaction.atomic
def label_submit(*, project: Project, user: Any, item_id: int, label: str, seconds: float | None = None) -> Annotation:
    if label not in project.labels:
        raise ValidationError(f"unknown label {label!r}")
    done = Assignment.objects.filter(
        project=project, item_id=item_id, annotator=user, status=Assignment.Status.LEASED
    ).update(status=Assignment.Status.DONE)
    if not done:
        raise LeaseLost("this item is no longer yours to label (already labelled, skipped or its lease expired)")
    if seconds is not None:
        seconds = max(0.0, min(float(seconds), 3600.0))
    ann = Annotation.objects.create(item_id=item_id, project=project, annotator=user, label=label, seconds=seconds)
    item = _item_refresh(item_id)
    if item.is_gold and not item.gold_label and is_admin(user):
        item.gold_label = label
        item.meta = {**item.meta, "gold_from_annotation": ann.pk}  # so an undo takes the gold label back too
        item.lane = item.compute_lane()
        item.save(update_fields=["gold_label", "meta", "lane"])
    transaction.on_commit(lambda: _maybe_auto_retrain(project.pk))
    return ann


@transaction.atomic
def item_skip(*, project: Project, user: Any, item_id: int) -> None:
    done = Assignment.objects.filter(
        project=project, item_id=item_id, annotator=user, status=Assignment.Status.LEASED
    ).update(status=Assignment.Status.SKIPPED, slot=None)
    if not done:
        raise LeaseLost("this item is no longer leased to you")


@transaction.atomic
def label_undo(*, project: Project, user: Any) -> Item | None:
    """Takes back this annotator's latest label: the annotation is removed and the item is leased to them
    again (its slot is kept, so nobody else takes it meanwhile). Returns the item to label again."""
    ann = (
        Annotation.objects.select_for_update()
        .filter(project=project, annotator=user, item__adjudicated=False)
        .order_by("-created_at", "-id")
        .first()
    )
    if ann is None:
        return None
    item_id, ann_pk = ann.item_id, ann.pk
    ann.delete()
    Assignment.objects.filter(item_id=item_id, annotator=user).update(
        status=Assignment.Status.LEASED, expires_at=_lease_expiry(), created_at=timezone.now() - timedelta(days=1)
    )
    item = _item_refresh(item_id)
    if item.meta.get("gold_from_annotation") == ann_pk:  # the undone label had set the gold label
        item.gold_label = ""
        item.meta = {k: v for k, v in item.meta.items() if k != "gold_from_annotation"}
        item.lane = item.compute_lane()
        item.save(update_fields=["gold_label", "meta", "lane"])
    return item


@transaction.atomic
def item_adjudicate(*, item: Item, label: str, user: Any, make_gold: bool = False) -> Item:
    if label not in item.project.labels:
        raise ValidationError(f"unknown label {label!r}")
    item = Item.objects.select_for_update().get(pk=item.pk)
    item.final_label = label
    item.adjudicated = True
    item.disputed = False
    fields = ["final_label", "adjudicated", "disputed", "lane"]
    if make_gold or item.is_gold:
        item.is_gold = True
        item.gold_label = label
        fields += ["is_gold", "gold_label"]
    item.lane = item.compute_lane()
    item.save(update_fields=fields)
    return item


@transaction.atomic
def item_set_gold(*, item: Item, label: str, user: Any) -> Item:
    """An admin labels a gold item (gold items are never trained on; they measure models and annotators)."""
    if label not in item.project.labels:
        raise ValidationError(f"unknown label {label!r}")
    item = Item.objects.select_for_update().get(pk=item.pk)
    item.is_gold = True
    item.gold_label = label
    item.lane = item.compute_lane()
    item.save(update_fields=["is_gold", "gold_label", "lane"])
    return item


# ------------------------------------------------------------------ training runs
def _labels_total(project: Project) -> int:
    return Annotation.objects.filter(project=project).count()


def run_trigger(*, project: Project, user: Any = None, trigger: str = "manual") -> tuple[TrainingRun, bool]:
    """Queues a retrain of the project's model. At most one run per project is queued or running: a second
    trigger returns the existing run (select_for_update on the project + a partial unique constraint)."""
    from annotate import jobs

    run_reap_stale(project=project)
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        existing = TrainingRun.objects.filter(project=project, status__in=TrainingRun.ACTIVE).first()
        if existing is not None:
            return existing, False
        try:
            with transaction.atomic():
                run = TrainingRun.objects.create(
                    project=project,
                    trigger=trigger,
                    triggered_by=user if user is not None and getattr(user, "is_authenticated", False) else None,
                    parent_version=get_registry().live_version(project.model_name) or "",
                )
        except IntegrityError:
            return TrainingRun.objects.get(project=project, status__in=TrainingRun.ACTIVE), False
        Project.objects.filter(pk=project.pk).update(labels_at_last_trigger=_labels_total(project))
        transaction.on_commit(lambda: jobs.enqueue_retrain(run.pk))
    return run, True


def _maybe_auto_retrain(project_id: int) -> None:
    project = Project.objects.filter(pk=project_id).first()
    if project is None or not project.retrain_every:
        return
    total = _labels_total(project)
    if total - project.labels_at_last_trigger < project.retrain_every:
        return
    if TrainingRun.objects.filter(project=project, status__in=TrainingRun.ACTIVE).exists():
        return
    try:
        run_trigger(project=project, trigger="auto")
    except Exception:  # never fail a label because a retrain could not be queued
        log.exception("auto retrain trigger failed for project %s", project_id)


def run_fail(*, run_id: int, error: str, from_status: Sequence[str] = TrainingRun.ACTIVE) -> bool:
    """Marks a run failed if it is still in one of `from_status` (conditional update). The live model is
    never touched here."""
    now = timezone.now()
    n = TrainingRun.objects.filter(pk=run_id, status__in=list(from_status)).update(
        status=TrainingRun.Status.FAILED, error=error[:5000], finished_at=now
    )
    return bool(n)


def run_reap_stale(*, project: Project | None = None) -> int:
    """Fails runs whose worker died: running without a heartbeat for ANNOTATE_RUN_STALE_S, or whose RQ job
    ended failed / vanished. Run by a scheduled job (annotate/cron.py) and by every trigger; never by a read."""
    from annotate import jobs

    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.ANNOTATE_RUN_STALE_S)
    qs = TrainingRun.objects.filter(status__in=TrainingRun.ACTIVE)
    if project is not None:
        qs = qs.filter(project=project)
    reaped = 0
    for run in qs:
        if run.status == TrainingRun.Status.RUNNING:
            beat = run.heartbeat_at or run.started_at or run.created_at
            if beat < stale_before:
                msg = (
                    f"the worker stopped responding (no heartbeat since {beat:%H:%M:%S} UTC); "
                    "the run was abandoned and the live model is unchanged"
                )
                reaped += run_fail(run_id=run.pk, error=msg, from_status=[TrainingRun.Status.RUNNING])
                continue
        state = jobs.job_state(run.job_id) if run.job_id else None
        if state in ("failed", "stopped", "canceled", "missing") and run.created_at < now - timedelta(seconds=5):
            reaped += run_fail(run_id=run.pk, error=f"the job ended {state} in the queue; the live model is unchanged")
    return reaped


def version_promote(*, project: Project, version: str, user: Any = None) -> str:
    from annotate import jobs

    mv = get_registry().promote(project.model_name, version)
    TrainingRun.objects.filter(project=project, version=version).update(promoted=True)
    transaction.on_commit(lambda: jobs.enqueue_refresh(project.pk))
    return mv.ref


def version_rollback(*, project: Project, version: str | None = None, user: Any = None) -> str:
    from annotate import jobs

    mv = get_registry().rollback(project.model_name, version)
    transaction.on_commit(lambda: jobs.enqueue_refresh(project.pk))
    return mv.ref


# ------------------------------------------------------------------ exports / simulations
@transaction.atomic
def export_create(*, project: Project, fmt: str, user: Any = None) -> Export:
    from annotate import jobs

    if fmt not in Export.Format.values:
        raise ValidationError(f"unknown export format {fmt!r}")
    exp = Export.objects.create(project=project, fmt=fmt, created_by=user)
    transaction.on_commit(lambda: jobs.enqueue_export(exp.pk))
    return exp


@transaction.atomic
def simulation_create(
    *, project: Project, user: Any = None, strategies: Sequence[str] = ("entropy", "margin")
) -> Simulation:
    from annotate import jobs

    bad = [s for s in strategies if s not in STRATEGY_CHOICES]
    if bad:
        raise ValidationError(f"unknown strategies {bad}")
    unique = list(dict.fromkeys(strategies))  # each strategy replayed once
    sim = Simulation.objects.create(project=project, created_by=user, config={"strategies": unique})
    transaction.on_commit(lambda: jobs.enqueue_simulation(sim.pk))
    return sim
