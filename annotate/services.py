"""Annotate writes: projects, pool import, leases, labels, undo/skip, adjudication, retrain triggers,
promotion/rollback, exports and simulations. Views, the API and jobs call these; nothing else writes.
Jobs are enqueued by dotted path through slmsite.jobs, so this module never imports annotate.jobs."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from annotate import io, promotion, selectors
from annotate.models import (
    Annotation,
    Assignment,
    BackgroundTask,
    Export,
    ImportJob,
    Item,
    Project,
    Simulation,
    TrainingRun,
)
from slm.active import STRATEGIES, in_cold_start
from slm.registry import ModelVersion, RegistryError, parse_ref
from slm.text import PreprocessConfig, clean_text
from slmsite.jobs import enqueue_or_fail, job_state
from slmsite.limits import TextLimitError, texts_check
from slmsite.registry import get_registry
from slmsite.roles import is_admin

log = logging.getLogger(__name__)

MAX_API_ITEMS = 10_000  # items per call of the labeling API's import


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


def resolve_base(ref: str) -> ModelVersion:
    """The registry version a base ref names ("name" = its live version, "name@v0003"); ValidationError
    with the registry's message when there is none."""
    ref = ref.strip().removeprefix("registry:")
    try:
        return get_registry().resolve(ref)
    except (RegistryError, ValueError) as exc:
        raise ValidationError(f"unknown base {ref!r}: {exc}") from exc


def _base_and_family(base: str, retrain_from: str, family: str) -> tuple[str, str, str]:
    """(base ref to store, the family retrains produce, the encoder when the base is a bare one). A given
    base must resolve; the default (empty) base is the live sentiment model, pinned to its current version
    when there is one. Retraining from the parent keeps the parent's family. A bare encoder as the base
    (bert-base-chinese pulled into the registry, a hub id in the HF cache, a directory: see
    slm.classify.encoders) makes a transformer project whose first retrain trains a head on it."""
    from slm.classify.encoders import NotAnEncoder, resolve_encoder
    from slm.loader import ModelNotAvailable

    given = base.strip()
    if not given:
        name = str(settings.SENTIMENT_MODEL)
        live = get_registry().live_version(name)
        if live is None:  # nothing to pin yet (a fresh install before bootstrap): the name's live version
            return name, family, ""
        given = f"{name}@{live}"
    try:
        encoder = resolve_encoder(given, registry=get_registry())
    except (NotAnEncoder, ModelNotAvailable) as exc:
        encoder, why = "", str(exc)
    if encoder:
        return encoder, Project.Family.TRANSFORMER, encoder
    try:
        mv = resolve_base(given)
    except ValidationError as exc:
        raise ValidationError(
            f"{exc.messages[0]}; nor is it an encoder ({why}). A base is a classifier version in the registry "
            "or a bare encoder: a registry version pulled with `pull_model`, a hub id in the local Hugging Face "
            "cache, or a directory"
        ) from exc
    if retrain_from == Project.RetrainFrom.PARENT:
        parent_family = str(mv.metadata.get("family", ""))
        if parent_family not in (Project.Family.NGRAM, Project.Family.TRANSFORMER):
            raise ValidationError(
                f"base {mv.ref} is a {parent_family or 'unknown'} model, which cannot be adapted; choose an "
                "n-gram or transformer version as the base, or retrain from scratch"
            )
        family = parent_family
    return mv.ref, family, ""


def check_strategy(strategy: str, family: str) -> None:
    """ValidationError unless `strategy` is known and runs on `family` models (slm.classify.pool says)."""
    from slm.classify.pool import strategy_refusal

    if strategy not in STRATEGIES:
        raise ValidationError(f"unknown query strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    refusal = strategy_refusal(strategy, family)
    if refusal:
        raise ValidationError(refusal)


@transaction.atomic
def project_create(
    *,
    name: str,
    labels: Sequence[str],
    user: Any = None,
    guidelines: str = "",
    family: str = Project.Family.NGRAM,
    base_model: str = "",
    base: str = "",
    retrain_from: str = Project.RetrainFrom.PARENT,
    new_label_weight: float | None = None,
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
    if family not in Project.Family.values:
        raise ValidationError(f"unknown model family {family!r}")
    if retrain_from not in Project.RetrainFrom.values:
        raise ValidationError(f"retrain_from must be one of {', '.join(Project.RetrainFrom.values)}")
    if promote_policy not in Project.PromotePolicy.values:
        raise ValidationError(f"unknown promote policy {promote_policy!r}")
    if not (0.0 <= gold_fraction < 1.0) or not (0.0 <= overlap_fraction <= 1.0):
        raise ValidationError("fractions must be between 0 and 1 (gold below 1)")
    if not (1 <= overlap_k <= 10) or not (1 <= batch_size <= 1000):
        raise ValidationError("overlap k must be 1..10 and batch size 1..1000")
    if retrain_every < 0 or min_per_label < 0:
        raise ValidationError("retrain every and the cold-start minimum cannot be negative")
    if new_label_weight is not None and not (0.0 < new_label_weight <= 1000.0):
        raise ValidationError("the new-label weight must be above 0 and at most 1000")
    if len(name) > 200 or len(base_model) > 300 or len(base) > 300:
        raise ValidationError("the name is at most 200 characters, the base and encoder at most 300")
    clean_labels = _clean_labels(labels)
    base_ref, family, encoder = _base_and_family(base, retrain_from, family)
    if encoder:  # the base is the encoder a first retrain (or every one, from scratch) trains a head on
        if base_model.strip() not in ("", base.strip(), encoder):
            raise ValidationError(
                f"the base {base.strip()!r} is an encoder already; leave the encoder empty or give the same one"
            )
        base_model = encoder
    check_strategy(strategy, family)
    if retrain_from == Project.RetrainFrom.PARENT and "@" in base_ref and not encoder:
        base_labels = [str(x) for x in resolve_base(base_ref).metadata.get("labels") or []]
        if base_labels and sorted(base_labels) != sorted(clean_labels):
            raise ValidationError(
                f"the label set {clean_labels} differs from the base {base_ref}'s {base_labels}; use the base's "
                "labels, or retrain from scratch"
            )
    # new versions go to the base's name; a project on a bare encoder feeds the served sentiment model (its
    # versions are promoted there when they beat the live one on gold, so the playground and API serve them)
    model_name = (model_name or (settings.SENTIMENT_MODEL if encoder else parse_ref(base_ref)[0])).strip()
    from slm.registry import _NAME_RE  # the registry's own name rule

    if not _NAME_RE.match(model_name):
        raise ValidationError(f"invalid registry model name {model_name!r}")
    return Project.objects.create(
        name=name,
        labels=clean_labels,
        guidelines=guidelines,
        family=family,
        base_model=base_model.strip(),
        base=base_ref,
        retrain_from=retrain_from,
        new_label_weight=new_label_weight,
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


@dataclass(frozen=True)
class NewItem:
    """An item given with an explicit gold flag (the labeling API): a gold item's label is its gold label;
    a non-gold item's label is its final label (a pre-labelled item, trained on like an annotator's)."""

    text: str
    label: str | None = None
    gold: bool = False


def items_add(
    *,
    project: Project,
    rows: Iterable[tuple[str, str | None] | NewItem],
    source: str = Item.Source.IMPORT,
    report: ImportReport | None = None,
    chunk: int = 1000,
) -> ImportReport:
    """Adds rows to the pool: cleans with the preprocessing pipeline, drops empty texts and duplicates
    (within the batch and against the pool), marks gold and overlap items.

    (text, label-or-None) rows come from files: ~gold_fraction of them become gold (chosen by text hash, so
    a re-import chooses the same), and a valid label is the gold label of a gold item and a hidden reference
    label (meta.source_label) otherwise - used only by simulations, never shown or trained on.
    NewItem rows carry their own gold flag and label (see NewItem).
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
    for row in rows:
        text, label = (row.text, row.label) if isinstance(row, NewItem) else row
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
        item = Item(project=project, text=cleaned, text_hash=h, source=source, rand=rng.random())
        if isinstance(row, NewItem):
            item.is_gold = row.gold
            item.gold_label = label if row.gold else ""
            if label and not row.gold:  # pre-labelled: closed with its final label
                item.final_label, item.adjudicated = label, True
                item.meta = {"imported_label": True}
        else:
            item.is_gold = source == Item.Source.IMPORT and _fraction(h, 0) < project.gold_fraction
            item.gold_label = label if item.is_gold else ""
            item.meta = {"source_label": label} if label else {}
        overlap = not item.adjudicated and project.overlap_k > 1 and _fraction(h, 1) < project.overlap_fraction
        item.needed = project.overlap_k if overlap else 1
        pending.append(item)
        if len(pending) >= chunk:
            flush()
    flush()
    return report


def items_import(*, project: Project, items: Sequence[NewItem]) -> ImportReport:
    """The labeling API's import: every item is checked first (a gold item needs a label, labels come from
    the project's set, at most MAX_API_ITEMS), so a bad call adds nothing. Then the pool is re-scored."""
    if len(items) > MAX_API_ITEMS:
        raise ValidationError(f"at most {MAX_API_ITEMS:,} items per call (got {len(items):,})")
    for n, it in enumerate(items):
        label = (it.label or "").strip()
        if it.gold and not label:
            raise ValidationError(f"items[{n}]: a gold item needs a label")
        if label and label not in project.labels:
            raise ValidationError(f"items[{n}]: unknown label {label!r}; the labels are {', '.join(project.labels)}")
    try:
        texts_check([it.text for it in items], allow_empty=True, name=lambda i: f"items[{i}]")
    except TextLimitError as exc:
        raise ValidationError(str(exc)) from exc
    report = items_add(project=project, rows=items)
    if report.added:
        transaction.on_commit(lambda: enqueue_refresh(project.pk))
    return report


@transaction.atomic
def import_create(
    *, project: Project, path: str, text_field: str = "text", label_field: str = "label", user: Any = None
) -> ImportJob:
    if len(path) > 500 or len(text_field) > 100 or len(label_field) > 100:
        raise ValidationError("the path is at most 500 characters and column names at most 100")
    imp = ImportJob.objects.create(
        project=project, path=path, text_field=text_field, label_field=label_field, created_by=user
    )
    transaction.on_commit(lambda: enqueue_import(imp.pk))
    return imp


def import_run(*, import_id: int, progress: Callable[[float], None]) -> dict[str, Any]:
    """Reads an import's file into the project's pool (the import job's work); returns the report."""
    imp = ImportJob.objects.select_related("project").get(pk=import_id)
    rows, total = io.read_rows(Path(imp.path), imp.text_field, imp.label_field)
    report = ImportReport()

    def tracked() -> Iterable[tuple[str, str | None]]:
        for n, row in enumerate(rows, 1):
            if n % 1000 == 0:
                progress(min(0.99, n / max(total, 1)))
            yield row

    items_add(project=imp.project, rows=tracked(), report=report)
    ImportJob.objects.filter(pk=import_id).update(report=report.to_dict())
    enqueue_refresh(imp.project_id)
    return report.to_dict()


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
        },
    )
    if not created and not item.final_label:
        Item.objects.filter(pk=item.pk).update(suggested_label=label, score=2.0)
        item.refresh_from_db()
    return item


# ------------------------------------------------------------------ leases
def _lease_expiry() -> Any:
    return timezone.now() + timedelta(seconds=settings.ANNOTATE_LEASE_SECONDS)


def cold_start(project: Project) -> bool:
    """The project is in cold start (slm.active.in_cold_start over its label counts): random order."""
    return in_cold_start(selectors.label_distribution(project), project.min_per_label)


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
    order = ["rand"] if project.strategy == "random" or cold_start(project) else ["-score", "rand"]
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
    item.save(update_fields=["n_labels", "final_label", "disputed"])
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
        item.save(update_fields=["gold_label", "meta"])
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
        item.save(update_fields=["gold_label", "meta"])
    return item


@transaction.atomic
def item_adjudicate(*, item: Item, label: str, user: Any, make_gold: bool = False) -> Item:
    if label not in item.project.labels:
        raise ValidationError(f"unknown label {label!r}")
    item = Item.objects.select_for_update().get(pk=item.pk)
    item.final_label = label
    item.adjudicated = True
    item.disputed = False
    fields = ["final_label", "adjudicated", "disputed"]
    if make_gold or item.is_gold:
        item.is_gold = True
        item.gold_label = label
        fields += ["is_gold", "gold_label"]
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
    item.save(update_fields=["is_gold", "gold_label"])
    return item


# ------------------------------------------------------------------ job queue
def enqueue_retrain(run_id: int) -> None:
    def failed(message: str) -> None:  # never run in-process, never hang queued
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED, error=message, decision=promotion.failed_text(message)
        )

    job_id = f"annotate-retrain-{run_id}"
    job = enqueue_or_fail(
        "gpu",
        "annotate.jobs.retrain_job",
        run_id,
        job_id=job_id,
        timeout=settings.ANNOTATE_RETRAIN_TIMEOUT_S,
        retries=settings.ANNOTATE_RETRAIN_RETRIES,
        on_fail=failed,
    )
    if job is not None:
        TrainingRun.objects.filter(pk=run_id).update(job_id=job_id)


REFRESH_NOT_QUEUED = "the pool was not re-scored: "


def enqueue_refresh(project_id: int) -> None:
    def failed(message: str) -> None:
        Project.objects.filter(pk=project_id).update(
            pool_error=f"{REFRESH_NOT_QUEUED}{message}; it is queued again once the job queue answers"
        )

    job_id = f"annotate-refresh-{project_id}-{time.time_ns()}"
    enqueue_or_fail(
        "default", "annotate.jobs.refresh_pool_job", project_id, job_id=job_id, timeout=3600, on_fail=failed
    )


def pool_refresh_requeue() -> int:
    """Queues again the pool refresh of every project whose last one could not be queued (Redis was down, or
    `bootstrap_models --demo` made the demo project while no queue ran), so its items get scored and ordered
    by the project's strategy without anybody doing anything; returns how many. The maintenance job calls it.
    A refresh that still cannot be queued puts its error back."""
    ids = list(Project.objects.filter(pool_error__startswith=REFRESH_NOT_QUEUED).values_list("pk", flat=True))
    for pk in ids:
        Project.objects.filter(pk=pk, pool_error__startswith=REFRESH_NOT_QUEUED).update(pool_error="")
        enqueue_refresh(pk)
    return len(ids)


def _enqueue_task(model: type[BackgroundTask], pk: int, job: str, queue: str = "default") -> None:
    def failed(message: str) -> None:
        model.objects.filter(pk=pk).update(status=BackgroundTask.Status.FAILED, error=message)

    job_id = f"annotate-{job}-{pk}"
    enqueue_or_fail(queue, f"annotate.jobs.{job}_job", pk, job_id=job_id, timeout=3600, on_fail=failed)


def enqueue_import(import_id: int) -> None:
    _enqueue_task(ImportJob, import_id, "import")


def enqueue_export(export_id: int) -> None:
    _enqueue_task(Export, export_id, "export")


def enqueue_simulation(sim_id: int) -> None:
    _enqueue_task(Simulation, sim_id, "simulation", queue="gpu")


# ------------------------------------------------------------------ training runs
def _labels_total(project: Project) -> int:
    return Annotation.objects.filter(project=project).count()


def run_trigger(*, project: Project, user: Any = None, trigger: str = "manual") -> tuple[TrainingRun, bool]:
    """Queues a retrain of the project's model. At most one run per project is queued or running: a second
    trigger returns the existing run (select_for_update on the project + a partial unique constraint)."""
    run_reap_stale(project=project)
    try:
        parent = (
            selectors.retrain_parent(project)
            if project.retrain_from == Project.RetrainFrom.PARENT
            else selectors.serving_version(project)
        )
    except RegistryError:
        parent = None  # the job says why it cannot start
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
                    parent_version=selectors.version_label(project, parent) if parent else "",
                )
        except IntegrityError:
            return TrainingRun.objects.get(project=project, status__in=TrainingRun.ACTIVE), False
        Project.objects.filter(pk=project.pk).update(labels_at_last_trigger=_labels_total(project))
        transaction.on_commit(lambda: enqueue_retrain(run.pk))
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
        status=TrainingRun.Status.FAILED, error=error[:5000], finished_at=now, decision=promotion.failed_text(error)
    )
    return bool(n)


def run_reap_stale(*, project: Project | None = None) -> int:
    """Fails runs whose worker died: running without a heartbeat for ANNOTATE_RUN_STALE_S, or whose RQ job
    ended failed / vanished. Run by a scheduled job (annotate/cron.py) and by every trigger; never by a read."""
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
        state = job_state(run.job_id) if run.job_id else None
        if state in ("failed", "stopped", "canceled", "missing") and run.created_at < now - timedelta(seconds=5):
            reaped += run_fail(run_id=run.pk, error=f"the job ended {state} in the queue; the live model is unchanged")
    return reaped


def version_promote(*, project: Project, version: str, user: Any = None, confirm: bool = False) -> str:
    """Makes `version` of the project's model live. A version known to score worse than the live one
    (slmsite.promotion: on the same gold items or held-out data) is promoted only with confirm=True
    (promotion.WorseThanLive with the question otherwise)."""
    from slmsite.promotion import promote_warning

    registry = get_registry()
    registry.get(project.model_name, version)  # VersionNotFound before anything else
    warning = promote_warning(registry, project.model_name, version)
    if warning and not confirm:
        raise promotion.WorseThanLive(warning)
    mv = registry.promote(project.model_name, version)
    who = getattr(user, "username", "") or "an admin"
    for run in TrainingRun.objects.filter(project=project, version=version, promoted=False):
        note = f"promoted by hand by {who}" + (" after confirming it scored worse on gold" if confirm else "")
        TrainingRun.objects.filter(pk=run.pk).update(
            promoted=True, decision=f"{run.decision}; later {note}" if run.decision else note
        )
    transaction.on_commit(lambda: enqueue_refresh(project.pk))
    return mv.ref


def version_rollback(*, project: Project, version: str | None = None, user: Any = None) -> str:
    mv = get_registry().rollback(project.model_name, version)
    transaction.on_commit(lambda: enqueue_refresh(project.pk))
    return mv.ref


# ------------------------------------------------------------------ exports / simulations
@transaction.atomic
def export_create(*, project: Project, fmt: str, user: Any = None) -> Export:
    if fmt not in Export.Format.values:
        raise ValidationError(f"unknown export format {fmt!r}")
    exp = Export.objects.create(project=project, fmt=fmt, created_by=user)
    transaction.on_commit(lambda: enqueue_export(exp.pk))
    return exp


def export_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "annotate" / "exports"


def export_run(*, export_id: int, progress: Callable[[float], None]) -> dict[str, Any]:
    """Writes an export's file (the export job's work); returns {"rows", "path"}."""
    exp = Export.objects.get(pk=export_id)
    rows = selectors.export_rows(exp.project)
    progress(0.5)
    path = io.write_export(rows, exp.fmt, export_dir(), f"project-{exp.project_id}-export-{export_id}")
    Export.objects.filter(pk=export_id).update(path=str(path), rows=len(rows))
    return {"rows": len(rows), "path": str(path)}


@transaction.atomic
def simulation_create(
    *, project: Project, user: Any = None, strategies: Sequence[str] = ("entropy", "margin")
) -> Simulation:
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValidationError(f"unknown strategies {bad}")
    unique = list(dict.fromkeys(strategies))  # each strategy replayed once
    sim = Simulation.objects.create(project=project, created_by=user, config={"strategies": unique})
    transaction.on_commit(lambda: enqueue_simulation(sim.pk))
    return sim


def simulation_run(*, sim_id: int, progress: Callable[[float], None]) -> dict[str, Any]:
    """Replays the simulation's strategies (the simulation job's work) and stores the curves."""
    from annotate import training

    sim = Simulation.objects.select_related("project").get(pk=sim_id)
    result = training.simulate(sim.project, sim.config, progress)
    Simulation.objects.filter(pk=sim_id).update(result=result)
    return {"ok": True}
