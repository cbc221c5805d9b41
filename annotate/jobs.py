"""RQ jobs for annotate. Jobs take ids, never objects, and are enqueued in transaction.on_commit.

retrain_job runs on the `gpu` queue: trains on non-gold final labels, evaluates on gold, registers a
registry version (parent = live) and promotes it if the policy says so. It heartbeats while it runs so a
worker killed mid-run is detected (services.run_reap_stale) and the live model is never touched.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import shutil
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django_rq
import numpy as np
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from annotate.models import Annotation, Export, ImportJob, Item, Project, Simulation, TrainingRun
from slmsite.registry import get_registry

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ enqueue helpers
def _fresh_db() -> None:
    """Drops a broken/stale DB connection before a job (not inside a test's transaction)."""
    if not connection.in_atomic_block:
        close_old_connections()


def get_queue(kind: str) -> Queue:
    """The RQ queue for "gpu" (training, simulations) or "default" (imports, exports, pool refresh) jobs."""
    name = settings.ANNOTATE_GPU_QUEUE if kind == "gpu" else settings.ANNOTATE_DEFAULT_QUEUE
    return Queue(name, connection=django_rq.get_connection("gpu"))


def _enqueue(queue: str, func: Callable[..., Any], *args: Any, job_id: str, timeout: int, retries: int = 0) -> Job:
    q = get_queue(queue)
    kwargs: dict[str, Any] = {"job_id": job_id, "job_timeout": timeout}
    if retries:
        kwargs["retry"] = Retry(max=retries)  # re-queued at once after an exception (a crash is reaped)
    return q.enqueue(func, *args, **kwargs)


def enqueue_retrain(run_id: int) -> None:
    job_id = f"annotate-retrain-{run_id}"
    try:
        _enqueue(
            "gpu",
            retrain_job,
            run_id,
            job_id=job_id,
            timeout=settings.ANNOTATE_RETRAIN_TIMEOUT_S,
            retries=settings.ANNOTATE_RETRAIN_RETRIES,
        )
    except Exception as exc:  # the queue is down: say so instead of running in-process or hanging queued
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED, error=f"could not queue the job ({type(exc).__name__}: {exc})"
        )
        return
    TrainingRun.objects.filter(pk=run_id).update(job_id=job_id)


def enqueue_refresh(project_id: int) -> None:
    try:
        _enqueue(
            "default",
            refresh_pool_job,
            project_id,
            job_id=f"annotate-refresh-{project_id}-{time.time_ns()}",
            timeout=3600,
        )
    except Exception as exc:
        log.warning("could not queue the pool refresh of project %s: %s", project_id, exc)


def enqueue_import(import_id: int) -> None:
    try:
        _enqueue("default", import_job, import_id, job_id=f"annotate-import-{import_id}", timeout=3600)
    except Exception as exc:
        ImportJob.objects.filter(pk=import_id).update(status="failed", error=f"could not queue the import: {exc}")


def enqueue_export(export_id: int) -> None:
    try:
        _enqueue("default", export_job, export_id, job_id=f"annotate-export-{export_id}", timeout=3600)
    except Exception as exc:
        Export.objects.filter(pk=export_id).update(status="failed", error=f"could not queue the export: {exc}")


def enqueue_simulation(sim_id: int) -> None:
    try:
        _enqueue("gpu", simulation_job, sim_id, job_id=f"annotate-sim-{sim_id}", timeout=3600)
    except Exception as exc:
        Simulation.objects.filter(pk=sim_id).update(status="failed", error=f"could not queue the simulation: {exc}")


def job_state(job_id: str) -> str | None:
    """The RQ status of a job ('queued', 'started', 'finished', 'failed', ...) or 'missing'."""
    try:
        job = Job.fetch(job_id, connection=django_rq.get_connection("gpu"))
    except NoSuchJobError:
        return "missing"
    except Exception:  # Redis unreachable: no verdict
        return None
    status = job.get_status(refresh=True)
    return str(getattr(status, "value", status)) if status is not None else "missing"


# ------------------------------------------------------------------ retrain
def reap_stale_runs_job() -> dict[str, int]:
    """Scheduled (annotate/cron.py, every ANNOTATE_REAP_INTERVAL_S): fails runs whose worker died."""
    from annotate import services

    _fresh_db()
    return {"reaped": services.run_reap_stale()}


class _Heartbeat:
    """Writes run.heartbeat_at every ANNOTATE_RUN_HEARTBEAT_S from a thread (own DB connection)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(settings.ANNOTATE_RUN_HEARTBEAT_S):
                TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _RunLog:
    """Progress + log lines written to the run row (throttled)."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        previous = TrainingRun.objects.filter(pk=run_id).values_list("log", flat=True).first() or ""
        self.lines: list[str] = previous.splitlines()  # a retried run keeps the earlier attempt's log
        self._last = 0.0

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {text}")
        self.lines = self.lines[-200:]
        TrainingRun.objects.filter(pk=self.run_id).update(log="\n".join(self.lines), heartbeat_at=timezone.now())

    def progress(self, fraction: float, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < 0.5 and fraction < 1.0:
            return
        self._last = now
        update = {"progress": max(0.0, min(1.0, float(fraction))), "heartbeat_at": timezone.now()}
        for key in ("epoch", "epochs", "loss", "eta_s"):
            if fields.get(key) is not None:
                update[key] = fields[key]
        TrainingRun.objects.filter(pk=self.run_id).update(**update)


def training_data(project: Project) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train_texts, train_labels, gold_texts, gold_labels): final non-gold labels / gold labels."""
    train = list(
        Item.objects.filter(project=project, is_gold=False).exclude(final_label="").values_list("text", "final_label")
    )
    gold = list(
        Item.objects.filter(project=project, is_gold=True).exclude(gold_label="").values_list("text", "gold_label")
    )
    return [t for t, _ in train], [lab for _, lab in train], [t for t, _ in gold], [lab for _, lab in gold]


def _wait_for_pause_file(rlog: _RunLog) -> None:
    path = settings.ANNOTATE_TRAIN_PAUSE_FILE
    if not path or not os.path.exists(path):
        return
    rlog.line(f"test hook: waiting while {path} exists")
    while os.path.exists(path):
        time.sleep(0.05)


def evaluate(model: Any, texts: list[str], labels: list[str], label_names: list[str]) -> dict[str, Any]:
    """Gold metrics in the project's label order; {} without gold items, {"error"} for another label set."""
    from slm.classify.versions import evaluate as evaluate_classifier

    if not texts:
        return {}
    if sorted(model.labels) != sorted(label_names):
        return {"error": f"model labels {list(model.labels)} differ from the project's {label_names}"}
    return evaluate_classifier(model, texts, labels, label_order=label_names)


def retrain_job(run_id: int) -> dict[str, Any]:
    from annotate import training

    _fresh_db()
    job = get_current_job()
    now = timezone.now()
    started = TrainingRun.objects.filter(pk=run_id, status__in=TrainingRun.ACTIVE).update(
        status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now, error=""
    )
    if not started:
        return {"skipped": "run is no longer active"}
    TrainingRun.objects.filter(pk=run_id).update(attempts=TrainingRun.objects.get(pk=run_id).attempts + 1)
    run = TrainingRun.objects.select_related("project").get(pk=run_id)
    project = run.project
    rlog = _RunLog(run_id)
    registry = get_registry()
    try:
        with _Heartbeat(run_id):
            rlog.line(f"attempt {run.attempts} on worker {getattr(job, 'worker_name', None) or os.getpid()}")
            _wait_for_pause_file(rlog)
            texts, labels, gold_texts, gold_labels = training_data(project)
            present = sorted(set(labels))
            TrainingRun.objects.filter(pk=run_id).update(n_train=len(texts), n_gold=len(gold_texts))
            rlog.line(f"{len(texts)} training labels ({', '.join(present) or 'none'}), {len(gold_texts)} gold items")
            if len(present) < 2:
                raise training.TrainingError(
                    f"need labelled examples of at least two labels to train (have {len(texts)} labels: "
                    f"{present or 'none'})"
                )
            live = registry.live(project.model_name)
            started_t = time.monotonic()
            model, write, meta = training.train(
                project=project, texts=texts, labels=labels, progress=rlog.progress, log=rlog.line
            )
            rlog.line(f"trained in {time.monotonic() - started_t:.1f}s; evaluating on {len(gold_texts)} gold items")
            metrics = evaluate(model, gold_texts, gold_labels, list(project.labels))
            live_metrics: dict[str, Any] = {}
            if live is not None and gold_texts:
                try:
                    from slm.classify.base import load_classifier

                    live_metrics = evaluate(load_classifier(live.path), gold_texts, gold_labels, list(project.labels))
                except Exception as exc:
                    rlog.line(f"could not evaluate the live version {live.ref}: {exc}")
            meta = {
                **meta,
                "metrics": {**metrics, "split": "gold"} if metrics else {},
                "gold_metrics": metrics,
                "description": f"retrained from annotate project {project.name!r} (run #{run_id})",
                "annotate": {
                    "project": project.pk,
                    "project_name": project.name,
                    "run": run_id,
                    "n_train": len(texts),
                    "n_gold": len(gold_texts),
                    "labels_total": Annotation.objects.filter(project=project).count(),
                    "parent_gold_metrics": {k: live_metrics.get(k) for k in ("accuracy", "macro_f1")},
                },
            }
            mv = registry.create_version(project.model_name, write, meta, parent=live.version if live else None)
            rlog.line(f"registered {mv.ref}: gold macro-F1 {metrics.get('macro_f1', float('nan')):.3f}")
        new_f1 = metrics.get("macro_f1")
        old_f1 = live_metrics.get("macro_f1")
        finished = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.SUCCEEDED,
            version=mv.version,
            metrics={"gold": metrics, "live_gold": live_metrics},
            progress=1.0,
            eta_s=0,
            finished_at=timezone.now(),
        )
        if not finished:
            rlog.line("the run was marked failed meanwhile; not promoting")
            return {"version": mv.version, "promoted": False}
        better = live is None or old_f1 is None or (new_f1 is not None and new_f1 >= old_f1)
        promoted = False
        if project.promote_policy == Project.PromotePolicy.AUTO and better:
            registry.promote(project.model_name, mv.version)
            TrainingRun.objects.filter(pk=run_id).update(promoted=True)
            promoted = True
            rlog.line(f"promoted {mv.ref} (gold macro-F1 {new_f1} vs live {old_f1})")
        else:
            why = "manual promote policy" if project.promote_policy == Project.PromotePolicy.MANUAL else "not better"
            rlog.line(f"kept live {live.ref if live else '-'} ({why}; new {new_f1} vs live {old_f1})")
        enqueue_refresh(project.pk)
        return {"version": mv.version, "promoted": promoted}
    except Exception as exc:
        retries_left = getattr(job, "retries_left", 0) or 0
        detail = f"{type(exc).__name__}: {exc}"
        rlog.line(f"error: {detail}")
        log.warning("retrain run %s failed: %s\n%s", run_id, detail, traceback.format_exc())
        if retries_left > 0 and not isinstance(exc, _no_retry_errors()):
            TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
                status=TrainingRun.Status.QUEUED, error=f"{detail} (retrying)"
            )
            raise
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.FAILED, error=detail, finished_at=timezone.now()
        )
        if job is not None:
            job.retries_left = 0
        raise


def _no_retry_errors() -> tuple[type[BaseException], ...]:
    from annotate.training import TrainingError

    return (TrainingError,)


# ------------------------------------------------------------------ pool refresh
def pool_cache_path(project_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "annotate" / "pool" / f"project-{project_id}.npz"


def refresh_pool_job(project_id: int, chunk: int = 512) -> dict[str, Any]:
    """Predicts the unlabelled pool with the live version, caches probs (+ embeddings when the model has
    them) and writes each item's query score, so choosing the next batch is one indexed query."""
    from annotate import training

    _fresh_db()
    project = Project.objects.get(pk=project_id)
    registry = get_registry()
    live = registry.live(project.model_name)
    if live is None:
        return {"skipped": "no live version"}
    from slm.classify.base import load_classifier

    model = load_classifier(live.path)
    model_labels = list(model.labels)
    if sorted(model_labels) != sorted(project.labels):
        return {"skipped": f"live model labels {model_labels} differ from the project's"}
    order = [model_labels.index(lab) for lab in project.labels]
    ids = list(
        Item.objects.filter(project=project, is_gold=False, final_label="").order_by("id").values_list("id", flat=True)
    )
    t0 = time.monotonic()
    want_embeddings = project.strategy in ("kcenter", "hybrid") and hasattr(model, "features")
    probs_parts: list[np.ndarray] = []
    emb_parts: list[np.ndarray] = []
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        texts = dict(Item.objects.filter(id__in=part).values_list("id", "text"))
        batch = [texts[i] for i in part]
        probs_parts.append(np.asarray(model.predict_proba(batch), dtype=np.float32)[:, order])
        if want_embeddings:  # encoder features (transformer family) for k-center / hybrid
            try:
                feats = model.features(batch)
                feats = feats.detach().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats)
                emb_parts.append(feats.astype(np.float32))
            except Exception as exc:
                log.warning("no embeddings for the pool of project %s: %s", project_id, exc)
                want_embeddings = False
                emb_parts = []
    probs = np.concatenate(probs_parts) if probs_parts else np.zeros((0, len(project.labels)), dtype=np.float32)
    embeddings = np.concatenate(emb_parts) if emb_parts and len(emb_parts) == len(probs_parts) else None
    if embeddings is not None and embeddings.shape[1] > 64:
        from slm.active import reduce_embeddings

        embeddings = reduce_embeddings(embeddings, 64)  # k-center over 100k stays well under a second
    scores = training.query_scores(project.strategy, probs, embeddings, batch_size=project.batch_size)
    path = pool_cache_path(project_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        ids=np.asarray(ids, dtype=np.int64),
        probs=probs,
        **({"embeddings": embeddings} if embeddings is not None else {}),
    )
    labels = list(project.labels)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    objs = [
        Item(id=i, pred_label=labels[int(p)], pred_conf=float(c), score=float(s))
        for i, p, c, s in zip(ids, pred, conf, scores, strict=True)
    ]
    Item.objects.bulk_update(objs, ["pred_label", "pred_conf", "score"], batch_size=1000)
    previous = project.pool_version
    Project.objects.filter(pk=project_id).update(pool_version=live.version)
    stability = training.record_stability(project_id, live.version, ids, pred, previous)
    return {"items": len(ids), "seconds": round(time.monotonic() - t0, 2), "version": live.version, **stability}


# ------------------------------------------------------------------ import
def import_job(import_id: int) -> dict[str, Any]:
    from annotate import services

    _fresh_db()
    imp = ImportJob.objects.select_related("project").get(pk=import_id)
    ImportJob.objects.filter(pk=import_id).update(status="running")
    try:
        rows, total = _read_rows(Path(imp.path), imp.text_field, imp.label_field)
        report = services.ImportReport()

        def tracked() -> Any:
            for n, row in enumerate(rows, 1):
                if n % 1000 == 0:
                    ImportJob.objects.filter(pk=import_id).update(progress=min(0.99, n / max(total, 1)))
                yield row

        services.items_add(project=imp.project, rows=tracked(), report=report)
        ImportJob.objects.filter(pk=import_id).update(status="succeeded", progress=1.0, report=report.to_dict())
        enqueue_refresh(imp.project_id)
        return report.to_dict()
    except Exception as exc:
        ImportJob.objects.filter(pk=import_id).update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _as_utf8(path: Path) -> Path:
    """The file itself when it is UTF-8, else a UTF-8 copy next to it: UTF-16 with a BOM (Excel's "Unicode
    text") or GB18030/GBK (Excel on Chinese Windows) are common for Chinese CSVs."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:  # checked in chunks: a large UTF-8 file is never held in memory
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        return path
    except UnicodeDecodeError:
        pass
    data = path.read_bytes()
    encodings = ["utf-16"] if data[:2] in (b"\xff\xfe", b"\xfe\xff") else []
    for encoding in [*encodings, "gb18030"]:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        copy = path.with_name(f"{path.stem}.utf8{path.suffix}")
        copy.write_text(text, encoding="utf-8")
        return copy
    raise ValueError(f"{path.name} is not UTF-8, UTF-16 or GB18030 text")


def _read_rows(path: Path, text_field: str, label_field: str) -> tuple[Any, int]:
    """Rows (text, label) from a CSV/TSV/JSONL/JSON file or a `save_to_disk` dataset directory."""
    from slm.data import load_table

    if path.is_dir():
        from datasets import Dataset, DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        assert isinstance(ds, Dataset)
    else:
        path = _as_utf8(path)
        try:
            ds = load_table(path)
        except Exception as exc:  # datasets hides the parser's message in __cause__
            cause = exc.__cause__ or exc
            raise ValueError(f"could not read {path.name}: {type(cause).__name__}: {cause}"[:500]) from exc
    columns = list(ds.column_names)
    if text_field not in columns:
        raise ValueError(f"no column {text_field!r} in {path.name} (columns: {', '.join(columns)})")
    has_label = bool(label_field) and label_field in columns
    feature = ds.features.get(label_field) if has_label else None
    names = getattr(feature, "names", None)

    def gen() -> Any:
        for row in ds:
            label = row.get(label_field) if has_label else None
            if names is not None and isinstance(label, int):
                label = names[label]
            yield (str(row[text_field]) if row[text_field] is not None else "", None if label is None else str(label))

    return gen(), len(ds)


# ------------------------------------------------------------------ export
def export_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "annotate" / "exports"


def export_rows(project: Project) -> list[dict[str, Any]]:
    from annotate import selectors

    agreement = selectors.item_agreement(project)
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


def export_job(export_id: int) -> dict[str, Any]:
    import csv

    _fresh_db()
    exp = Export.objects.select_related("project").get(pk=export_id)
    Export.objects.filter(pk=export_id).update(status="running")
    try:
        rows = export_rows(exp.project)
        Export.objects.filter(pk=export_id).update(progress=0.5)
        out = export_dir()
        out.mkdir(parents=True, exist_ok=True)
        stem = f"project-{exp.project_id}-export-{export_id}"
        if exp.fmt == Export.Format.JSONL:
            path = out / f"{stem}.jsonl"
            with open(path, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        elif exp.fmt == Export.Format.CSV:
            path = out / f"{stem}.csv"
            fields = list(rows[0].keys()) if rows else ["item_id", "text", "label", "annotator", "created_at"]
            with open(path, "w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        else:
            from datasets import Dataset

            tmp = out / f"{stem}-hf"
            shutil.rmtree(tmp, ignore_errors=True)
            Dataset.from_list(rows or [{"item_id": 0, "text": "", "label": ""}][:0] or rows).save_to_disk(str(tmp))
            path = out / f"{stem}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(tmp.rglob("*")):
                    if f.is_file():
                        zf.write(f, f.relative_to(tmp))
            shutil.rmtree(tmp, ignore_errors=True)
        Export.objects.filter(pk=export_id).update(status="succeeded", progress=1.0, path=str(path), rows=len(rows))
        return {"rows": len(rows), "path": str(path)}
    except Exception as exc:
        Export.objects.filter(pk=export_id).update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


# ------------------------------------------------------------------ simulation
def simulation_job(sim_id: int) -> dict[str, Any]:
    from annotate import training

    _fresh_db()
    sim = Simulation.objects.select_related("project").get(pk=sim_id)
    Simulation.objects.filter(pk=sim_id).update(status="running")
    try:

        def progress(fraction: float) -> None:
            Simulation.objects.filter(pk=sim_id).update(progress=max(0.0, min(1.0, fraction)))

        result = training.simulate(sim.project, sim.config, progress)
        Simulation.objects.filter(pk=sim_id).update(status="succeeded", progress=1.0, result=result)
        return {"ok": True}
    except Exception as exc:
        Simulation.objects.filter(pk=sim_id).update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
