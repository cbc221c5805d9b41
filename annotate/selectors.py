"""Annotate reads: project stats, agreement, learning curves, versions, dashboards."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

import markdown
import nh3
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet
from django.utils.safestring import SafeString, mark_safe

from annotate import promotion
from annotate.models import Annotation, Assignment, Export, Item, Project, Simulation, TrainingRun
from slm.active import in_cold_start
from slm.registry import ModelVersion, RegistryError
from slmsite.registry import get_registry

_ALLOWED_TAGS = {
    "p", "br", "strong", "em", "b", "i", "code", "pre", "ul", "ol", "li", "blockquote",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "hr",
}  # fmt: skip


def render_guidelines(text: str) -> SafeString:
    """Markdown -> HTML, sanitised by nh3 (no scripts, no event handlers, safe links only)."""
    html = markdown.markdown(text or "", extensions=["tables", "fenced_code"])
    clean = nh3.clean(html, tags=_ALLOWED_TAGS, url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer")
    return mark_safe(clean)  # nosec B308 B703 - sanitised by nh3 just above


def projects_for(user: Any) -> QuerySet[Project]:
    return Project.objects.annotate(
        n_items=Count("items", distinct=True),
    ).order_by("-created_at")


def label_distribution(project: Project) -> dict[str, int]:
    """Final (trained-on) labels per label: non-gold items with a final label."""
    counts = dict(
        Item.objects.filter(project=project, is_gold=False)
        .exclude(final_label="")
        .values_list("final_label")
        .annotate(n=Count("id"))
        .values_list("final_label", "n")
    )
    return {lab: int(counts.get(lab, 0)) for lab in project.labels}


def project_stats(project: Project, user: Any = None) -> dict[str, Any]:
    items = Item.objects.filter(project=project)
    agg = items.aggregate(
        total=Count("id"),
        done=Count("id", filter=~Q(final_label="")),
        gold=Count("id", filter=Q(is_gold=True)),
        gold_labelled=Count("id", filter=Q(is_gold=True) & ~Q(gold_label="")),
        disputed=Count("id", filter=Q(disputed=True)),
        overlap=Count("id", filter=Q(needed__gt=1)),
    )
    stats: dict[str, Any] = {k: int(v or 0) for k, v in agg.items()}
    stats["annotations"] = Annotation.objects.filter(project=project).count()
    stats["percent"] = round(100 * stats["done"] / stats["total"], 1) if stats["total"] else 0.0
    stats["distribution"] = label_distribution(project)
    if user is not None and user.is_authenticated:
        stats["mine"] = Annotation.objects.filter(project=project, annotator=user).count()
    stats["live"] = get_registry().live_version(project.model_name)
    stats["cold_start"] = in_cold_start(stats["distribution"], project.min_per_label)
    return stats


def label_progress(project: Project, user: Any) -> dict[str, Any]:
    """The few figures the label page updates after each label (project_stats without the distribution
    and the registry read, which the hot path does not need)."""
    agg = Item.objects.filter(project=project).aggregate(total=Count("id"), done=Count("id", filter=~Q(final_label="")))
    total, done = int(agg["total"] or 0), int(agg["done"] or 0)
    return {
        "done": done,
        "total": total,
        "percent": round(100 * done / total, 1) if total else 0.0,
        "mine": Annotation.objects.filter(project=project, annotator=user).count(),
        "annotations": Annotation.objects.filter(project=project).count(),
    }


def item_payload(item: Item, project: Project) -> dict[str, Any]:
    """What the label page shows of an item: never whether it is gold."""
    suggestion = None
    if project.show_suggestions:
        if item.suggested_label:
            suggestion = {"label": item.suggested_label, "confidence": None, "source": "playground fix"}
        elif item.pred_label and item.pred_conf is not None:
            suggestion = {"label": item.pred_label, "confidence": round(item.pred_conf, 3), "source": "model"}
    return {"id": item.id, "text": item.text, "suggestion": suggestion}


def my_recent(project: Project, user: Any, n: int = 5) -> list[Annotation]:
    return list(
        Annotation.objects.filter(project=project, annotator=user).select_related("item").order_by("-created_at")[:n]
    )


# ------------------------------------------------------------------ agreement
def _labels_by_item(project: Project) -> dict[int, dict[int, str]]:
    by_item: dict[int, dict[int, str]] = defaultdict(dict)
    for item_id, user_id, label in Annotation.objects.filter(project=project, item__needed__gt=1).values_list(
        "item_id", "annotator_id", "label"
    ):
        by_item[item_id][user_id] = label
    return by_item


def item_agreement(project: Project) -> dict[int, float]:
    """Per overlap item: the share of its labels that agree with its most common label."""
    out: dict[int, float] = {}
    for item_id, labels in _labels_by_item(project).items():
        if len(labels) >= 2:
            top = Counter(labels.values()).most_common(1)[0][1]
            out[item_id] = round(top / len(labels), 3)
    return out


def agreement_summary(project: Project) -> dict[str, Any]:
    """Cohen's kappa per annotator pair, Fleiss' kappa over items with k labels, per-annotator figures
    (mean kappa with others, accuracy on gold, labels, throughput)."""
    from slm import agreement as ag

    names = dict(get_user_model().objects.values_list("id", "username"))
    cats = list(project.labels)
    by_item = _labels_by_item(project)
    pairs: list[dict[str, Any]] = []
    per_user_kappas: dict[int, list[float]] = defaultdict(list)
    users = sorted({u for labels in by_item.values() for u in labels})
    for a, b in combinations(users, 2):
        common = [(labels[a], labels[b]) for labels in by_item.values() if a in labels and b in labels]
        if len(common) < 2:
            continue
        kappa = ag.cohen_kappa([x for x, _ in common], [y for _, y in common], labels=cats)
        pairs.append({"a": names.get(a, a), "b": names.get(b, b), "n": len(common), "kappa": _num(kappa)})
        per_user_kappas[a].append(kappa)
        per_user_kappas[b].append(kappa)
    fleiss = None
    fleiss_n = 0
    if project.overlap_k > 1:
        rows = [list(labels.values()) for labels in by_item.values() if len(labels) >= project.overlap_k]
        rows = [r[: project.overlap_k] for r in rows]
        fleiss_n = len(rows)
        if fleiss_n >= 2:
            fleiss = _num(ag.fleiss_kappa(rows, labels=cats))
    gold = {
        i: g
        for i, g in Item.objects.filter(project=project, is_gold=True)
        .exclude(gold_label="")
        .values_list("id", "gold_label")
    }
    per_user: dict[int, dict[str, Any]] = {}
    for uid, item_id, label, created, seconds in Annotation.objects.filter(project=project).values_list(
        "annotator_id", "item_id", "label", "created_at", "seconds"
    ):
        row = per_user.setdefault(
            uid, {"labels": 0, "gold_n": 0, "gold_ok": 0, "first": created, "last": created, "secs": []}
        )
        row["labels"] += 1
        row["first"] = min(row["first"], created)
        row["last"] = max(row["last"], created)
        if seconds is not None:
            row["secs"].append(seconds)
        if item_id in gold:
            row["gold_n"] += 1
            row["gold_ok"] += int(gold[item_id] == label)
    annotators = []
    for uid, row in sorted(per_user.items(), key=lambda kv: -kv[1]["labels"]):
        span_h = max((row["last"] - row["first"]).total_seconds() / 3600, 1 / 60)
        ks = per_user_kappas.get(uid, [])
        annotators.append(
            {
                "annotator": names.get(uid, str(uid)),
                "labels": row["labels"],
                "per_hour": round(row["labels"] / span_h, 1),
                "median_s": round(sorted(row["secs"])[len(row["secs"]) // 2], 1) if row["secs"] else None,
                "gold_n": row["gold_n"],
                "gold_accuracy": round(row["gold_ok"] / row["gold_n"], 3) if row["gold_n"] else None,
                "kappa": _num(sum(ks) / len(ks)) if ks else None,
            }
        )
    mean_cohen = _num(sum(p["kappa"] for p in pairs if p["kappa"] is not None) / len(pairs)) if pairs else None
    return {
        "pairs": pairs,
        "cohen_mean": mean_cohen,
        "fleiss": fleiss,
        "fleiss_items": fleiss_n,
        "annotators": annotators,
    }


def _count(x: Any) -> int | None:
    value = _num(x)
    return None if value is None else int(value)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else round(v, 4)


def disputed_items(project: Project, limit: int = 100) -> list[dict[str, Any]]:
    names = dict(get_user_model().objects.values_list("id", "username"))
    items = list(Item.objects.filter(project=project, disputed=True).order_by("id")[:limit])
    labels: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for item_id, uid, label in Annotation.objects.filter(item__in=items).values_list(
        "item_id", "annotator_id", "label"
    ):
        labels[item_id].append((names.get(uid, str(uid)), label))
    return [{"item": it, "labels": labels.get(it.id, [])} for it in items]


def gold_todo(project: Project, limit: int = 50) -> list[Item]:
    return list(Item.objects.filter(project=project, is_gold=True, gold_label="").order_by("id")[:limit])


# ------------------------------------------------------------------ runs / versions
def base_encoder(project: Project) -> str:
    """The encoder source when the project's base is a bare encoder (no head yet: its first retrain trains
    one), else ""."""
    if not project.base or project.family != Project.Family.TRANSFORMER or project.base != project.base_model:
        return ""
    from slm.classify.encoders import is_encoder

    return project.base if is_encoder(project.base, registry=get_registry()) else ""


def serving_version(project: Project) -> ModelVersion | None:
    """The version that serves this project now (scores its pool, is the reference for promotion): the
    live version of its registry name, else its base (unless that is a bare encoder, which cannot classify)."""
    registry = get_registry()
    live = registry.live(project.model_name)
    if live is not None or not project.base or base_encoder(project):
        return live
    try:
        return registry.resolve(project.base)
    except RegistryError:
        return None


def retrain_parent(project: Project) -> ModelVersion | None:
    """The version a retrain adapts: the base for the project's first retrain, its live version after that.
    On a bare-encoder base: None (train a head on the encoder) for the first retrain and whenever the live
    version is not one of the project's family (e.g. its model name still serves an n-gram version); its live
    transformer version after that. RegistryError when the base is gone."""
    retrained = TrainingRun.objects.filter(project=project, status=TrainingRun.Status.SUCCEEDED).exclude(version="")
    if base_encoder(project):
        live = serving_version(project) if retrained.exists() else None
        return live if live is not None and live.metadata.get("family") == project.family else None
    if project.base and not retrained.exists():
        return get_registry().resolve(project.base)
    return serving_version(project)


def version_label(project: Project, mv: ModelVersion) -> str:
    """ "v0003" for a version of the project's own registry name, "name@v0003" for another name's."""
    return mv.version if mv.name == project.model_name else mv.ref


def runs(project: Project | None = None, limit: int = 50) -> list[TrainingRun]:
    qs = TrainingRun.objects.select_related("project", "triggered_by")
    if project is not None:
        qs = qs.filter(project=project)
    items = list(qs[:limit])
    live = {}
    for run in items:  # what the registry pointer says, never a stored flag
        name = run.project.model_name
        if name not in live:
            live[name] = get_registry().live_version(name)
        run.is_live = bool(run.version) and run.version == live[name]  # type: ignore[attr-defined]
        run.decision_text = run_decision(run, live[name])  # type: ignore[attr-defined]
    return items


def any_active(runs_: list[TrainingRun]) -> bool:
    return any(r.is_active for r in runs_)


def run_decision(run: TrainingRun, live: str | None) -> str:
    """Why the run's version was or was not promoted, and whether it is live now (`live`: the registry's
    live version of the project's model)."""
    return promotion.run_decision(
        status=run.status, version=run.version, decision=run.decision, promoted=run.promoted, live=live
    )


def versions(project: Project) -> list[dict[str, Any]]:
    from slmsite.promotion import promote_warning

    registry = get_registry()
    live = registry.live_version(project.model_name)
    # what this project's retrains measured on its gold items: the new version's figures and those of the
    # version that was live then (the base has no gold figures of its own, so the table showed "–" for the
    # very version a new one is compared with); later runs win
    measured: dict[str, dict[str, Any]] = {}
    done = TrainingRun.objects.filter(project=project, status=TrainingRun.Status.SUCCEEDED).order_by("created_at")
    for run in done.only("metrics", "version"):
        metrics = run.metrics or {}
        if metrics.get("live_gold") and metrics.get("live_version"):
            measured[str(metrics["live_version"])] = metrics["live_gold"]
        if metrics.get("gold") and run.version:
            measured[run.version] = metrics["gold"]
    out = []
    for mv in reversed(registry.versions(project.model_name)):
        meta = mv.metadata
        gold = measured.get(mv.version) or meta.get("gold_metrics") or {}
        m = mv.metrics
        split = str(m.get("split") or "held-out")
        test = {} if "gold" in split else m  # the version's own test split; gold figures apart
        out.append(
            {
                "version": mv.version,
                "ref": mv.ref,
                "live": mv.version == live,
                "family": meta.get("family", ""),
                "created": meta.get("created", ""),
                "created_text": str(meta.get("created") or "")[:16].replace("T", " "),
                "parent": meta.get("parent") or "",
                "n_train": (meta.get("annotate") or {}).get("n_train"),
                "from_project": (meta.get("annotate") or {}).get("project") == project.pk,
                "gold_accuracy": _num(gold.get("accuracy")),
                "gold_macro_f1": _num(gold.get("macro_f1")),
                "test_macro_f1": _num(test.get("macro_f1")),
                "test_split": split if test else "",
                "on_gold": bool(gold),
                "promote_warning": promote_warning(registry, project.model_name, mv.version),
            }
        )
    return out


def compare_versions(project: Project, a: str, b: str) -> dict[str, Any]:
    registry = get_registry()
    out: dict[str, Any] = {"a": a, "b": b, "rows": []}
    ma = registry.get(project.model_name, a).metadata
    mb = registry.get(project.model_name, b).metadata
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted F1", "ece": "ECE", "n": "items"}

    def split_metrics(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
        metrics = meta.get("metrics") or {}
        own = {} if "gold" in str(metrics.get("split") or "") else metrics
        return {"gold": meta.get("gold_metrics") or (metrics if not own else {}), "held-out": own}

    # each row compares figures measured on the same kind of data: gold with gold, held-out with held-out
    sa, sb = split_metrics(ma), split_metrics(mb)
    for split in ("gold", "held-out"):
        ga, gb = sa[split], sb[split]
        if not ga and not gb:
            continue
        for key, name in names.items():
            if ga.get(key) is not None or gb.get(key) is not None:
                num = _count if key == "n" else _num
                out["rows"].append({"metric": f"{split} {name}", "a": num(ga.get(key)), "b": num(gb.get(key))})
        for lab in project.labels:
            fa = ((ga.get("per_class") or {}).get(lab) or {}).get("f1")
            fb = ((gb.get("per_class") or {}).get(lab) or {}).get("f1")
            if fa is not None or fb is not None:
                out["rows"].append({"metric": f"{split} F1 {lab}", "a": _num(fa), "b": _num(fb)})
    out["family"] = (ma.get("family", ""), mb.get("family", ""))
    return out


def learning_curve(project: Project) -> list[dict[str, Any]]:
    """(labels used, gold macro-F1) per version this project trained."""
    pts = []
    for run in TrainingRun.objects.filter(project=project, status=TrainingRun.Status.SUCCEEDED).order_by("created_at"):
        gold = (run.metrics or {}).get("gold") or {}
        if gold.get("macro_f1") is not None:
            pts.append({"version": run.version, "labels": run.n_train, "macro_f1": _num(gold["macro_f1"])})
    return pts


def dashboard_data(project: Project, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the dashboard charts need, for json_script (`stats`: project_stats, if already read)."""
    registry = get_registry()
    live = registry.live(project.model_name)
    gold = (live.metadata.get("gold_metrics") or live.metrics) if live else {}
    latest = TrainingRun.objects.filter(project=project, status=TrainingRun.Status.SUCCEEDED).first()
    latest_gold = ((latest.metrics or {}).get("gold") if latest else None) or gold
    if latest and (latest.metrics or {}).get("gold"):
        source = f"{latest.version}, on this project's gold items"
    elif live is not None and live.metadata.get("gold_metrics"):
        source = f"live {live.version}, on gold items"
    elif live is not None:
        source = f"live {live.version}, its own evaluation split (no retrain here yet)"
    else:
        source = "no model yet"
    stats = stats or project_stats(project)
    daily = (
        Annotation.objects.filter(project=project)
        .values_list("created_at__date")
        .annotate(n=Count("id"))
        .order_by("created_at__date")
    )
    last = TrainingRun.objects.filter(project=project).exclude(status__in=TrainingRun.ACTIVE).first()
    return {
        "labels": list(project.labels),
        "metrics_source": source,
        "live_version": live.version if live else None,
        "decision": run_decision(last, live.version if live else None) if last else "",
        "decision_run": last.pk if last else None,
        "learning_curve": learning_curve(project),
        "per_class_f1": {
            lab: _num(((latest_gold.get("per_class") or {}).get(lab) or {}).get("f1")) for lab in project.labels
        },
        "confusion": latest_gold.get("confusion_matrix") or [],
        "confusion_labels": latest_gold.get("labels") or list(project.labels),
        "distribution": stats["distribution"],
        "throughput": [{"day": d.isoformat(), "n": n} for d, n in daily],
        "stability": list(project.stability or []),
    }


def exports(project: Project) -> list[Export]:
    return list(Export.objects.filter(project=project)[:10])


def simulations(project: Project) -> list[Simulation]:
    return list(Simulation.objects.filter(project=project)[:5])


def simulation_panel(project: Project) -> dict[str, Any]:
    """The dashboard's simulation card: the newest simulation (its status and progress while it runs)
    and the result of the newest one that succeeded (the chart)."""
    latest = Simulation.objects.filter(project=project).first()
    done = Simulation.objects.filter(project=project, status=Simulation.Status.SUCCEEDED).first()
    return {
        "latest": latest,
        "active": latest is not None and latest.status in (Simulation.Status.QUEUED, Simulation.Status.RUNNING),
        "result": done.result if done else None,
    }


def active_leases(project: Project) -> int:
    from django.utils import timezone

    return Assignment.objects.filter(
        project=project, status=Assignment.Status.LEASED, expires_at__gt=timezone.now()
    ).count()


# ------------------------------------------------------------------ exports / API payloads
def export_rows(project: Project) -> list[dict[str, Any]]:
    """One row per annotation with its item's final/gold label and the item's agreement."""
    agreement = item_agreement(project)
    rows: list[dict[str, Any]] = []
    anns = Annotation.objects.filter(project=project).select_related("item", "annotator").order_by("item_id", "id")
    for a in anns.iterator(chunk_size=2000):
        rows.append(
            {
                "item_id": a.item_id,
                "text": a.item.text,
                "label": a.label,
                "annotator": a.annotator.get_username(),
                "created_at": a.created_at.isoformat(),
                "seconds": a.seconds,
                "final_label": a.item.final_label,
                "gold": a.item.is_gold,
                "gold_label": a.item.gold_label,
                "adjudicated": a.item.adjudicated,
                "n_labels": a.item.n_labels,
                "item_agreement": agreement.get(a.item_id),
            }
        )
    return rows


def project_summary(project: Project) -> dict[str, Any]:
    """A project as the labeling API lists it (DESIGN §4)."""
    agg = Item.objects.filter(project=project).aggregate(
        items=Count("id"),
        labelled=Count("id", filter=Q(is_gold=False) & ~Q(final_label="")),
        gold=Count("id", filter=Q(is_gold=True) & ~Q(gold_label="")),
    )
    return {
        "id": project.pk,
        "name": project.name,
        "labels": list(project.labels),
        "items": int(agg["items"] or 0),
        "labelled": int(agg["labelled"] or 0),
        "gold": int(agg["gold"] or 0),
        "model": project.model_name,
        "live_version": get_registry().live_version(project.model_name),
        "pool_version": project.pool_version or None,
        "pool_error": project.pool_error,
        "base": project.base,
        "retrain_from": project.retrain_from,
        "family": project.family,
        "strategy": project.strategy,
        "retrain_every": project.retrain_every,
        "promote": project.promote_policy,
    }


def run_payload(run: TrainingRun) -> dict[str, Any]:
    """A training run as GET /api/runs/<id> returns it (DESIGN §4), with `live` and `decision` read from
    the registry pointer now."""
    live = get_registry().live_version(run.project.model_name)
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
        "version": run.version or None,
        "parent_version": run.parent_version,
        "promoted": run.promoted,
        "live": bool(run.version) and run.version == live,
        "decision": run_decision(run, live),
        "attempts": run.attempts,
        "log_tail": run.log_tail,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
