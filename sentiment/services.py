"""Writes for the sentiment app: batch CSV predictions and promotion/rollback of registry versions.

Inference itself: `sentiment.inference` (one service per process) over `slm.classify.serving` (micro-batched).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from sentiment.inference import InferenceError, get_service
from sentiment.models import BatchPrediction
from slm.registry import ModelVersion, RegistryError
from slm.sentiment_data import csv_delimiter, decode_text
from slmsite.limits import TextLimitError, texts_check
from slmsite.registry import get_registry

log = logging.getLogger(__name__)

PREVIEW_ROWS = 200
TEXT_COLUMN = "text"


class BatchInputError(ValueError):
    """The uploaded file cannot be used; the message says why."""


# ------------------------------------------------------------------------------------------ CSV parsing
def _decode(data: bytes) -> str:
    try:
        return decode_text(data)
    except ValueError as exc:
        raise BatchInputError(str(exc)) from exc


def csv_read(data: bytes) -> tuple[list[str], list[dict[str, str]], str]:
    """Parses an uploaded CSV: returns (columns, rows, name of the text column). Needs a `text` column."""
    text = _decode(data)
    if not text.strip():
        raise BatchInputError("the file is empty")
    delimiter = csv_delimiter(text.splitlines()[0], TEXT_COLUMN)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = [{k: (v if isinstance(v, str) else "") for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise BatchInputError(f"not a valid CSV file: {exc}") from exc
    text_col = next((c for c in columns if c.strip().lower() == TEXT_COLUMN), None)
    if text_col is None:
        shown = ", ".join(columns[:8]) or "none"
        raise BatchInputError(f"the CSV needs a column named 'text' (found: {shown})")
    if not rows:
        raise BatchInputError("the CSV has a header but no rows")
    return columns, rows, text_col


# ------------------------------------------------------------------------------------------ batches
@transaction.atomic
def batch_create(*, owner: Any, upload: UploadedFile, model: str | None = None) -> BatchPrediction:
    """Validates the upload and stores it; small files are marked inline, big ones are queued on RQ."""
    limit = settings.SENTIMENT_MAX_UPLOAD_BYTES
    if upload.size is not None and upload.size > limit:
        raise BatchInputError(f"the file is {upload.size:,} bytes; the limit is {limit:,} bytes")
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise BatchInputError(f"the file is larger than the limit of {limit:,} bytes")
    _, rows, text_col = csv_read(data)
    try:
        texts_check([r.get(text_col) or "" for r in rows], allow_empty=True, name=lambda i: f"row {i + 1}'s text")
    except TextLimitError as exc:
        raise BatchInputError(str(exc)) from exc
    model = (model or "").strip()
    if model:
        try:
            get_service().normalise_version(model)
        except InferenceError as exc:
            raise BatchInputError(str(exc)) from exc
    inline = len(rows) <= settings.SENTIMENT_INLINE_ROWS
    batch = BatchPrediction(
        owner=owner,
        requested_model=model,
        filename=(upload.name or "upload.csv")[-255:],
        total=len(rows),
        inline=inline,
    )
    batch.input_file.save("upload.csv", ContentFile(data), save=False)
    batch.save()
    if not inline:
        transaction.on_commit(lambda: _batch_enqueue(batch.pk))
    return batch


def _batch_enqueue(batch_id: int) -> None:
    from slmsite.jobs import enqueue_or_fail

    def failed(message: str) -> None:  # the queue is down: say so instead of running silently in-process
        BatchPrediction.objects.filter(pk=batch_id).update(
            status=BatchPrediction.Status.FAILED,
            error=f"{message}; try again later",
            finished=timezone.now(),
        )

    job = enqueue_or_fail("default", "sentiment.jobs.batch_predict_job", batch_id, timeout=3600, on_fail=failed)
    if job is not None:
        BatchPrediction.objects.filter(pk=batch_id).update(job_id=job.id)


def batch_submit(*, owner: Any, upload: UploadedFile, model: str | None = None) -> BatchPrediction:
    """Creates the batch and, for a small file, predicts it right away in this request."""
    batch = batch_create(owner=owner, upload=upload, model=model)
    if batch.inline:
        batch_run(batch_id=batch.pk)
        batch.refresh_from_db()
    return batch


def batch_run(*, batch_id: int, chunk: int | None = None) -> BatchPrediction:
    """Predicts every row of a batch, records progress as it goes and writes the result CSV."""
    batch = BatchPrediction.objects.get(pk=batch_id)
    if batch.is_finished:
        return batch
    BatchPrediction.objects.filter(pk=batch_id).update(
        status=BatchPrediction.Status.RUNNING, started=timezone.now(), done=0
    )
    try:
        with batch.input_file.open("rb") as fh:
            columns, rows, text_col = csv_read(fh.read())
        service = get_service()
        chunk = chunk or max(settings.SENTIMENT_BATCH_SIZE, 1)
        labels: list[str] = []
        ref = ""
        results: list[dict[str, Any] | None] = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            texts = [(r.get(text_col) or "").strip() for r in part]  # lengths were checked on upload
            idx = [i for i, t in enumerate(texts) if t]
            out: list[dict[str, Any] | None] = [None] * len(part)
            if idx:
                result = service.predict([texts[i] for i in idx], batch.requested_model or None)
                ref, labels = result.ref, result.labels
                for i, p in zip(idx, result.predictions(digits=4), strict=True):
                    out[i] = p
            results += out
            BatchPrediction.objects.filter(pk=batch_id).update(done=min(start + len(part), len(rows)))
        if not ref:
            raise BatchInputError("every row's text is empty")
        out_columns = [c for c in columns if c not in ("label", "score")] + ["label", "score"]
        out_columns += [f"p_{label}" for label in labels]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(out_columns)
        preview: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for row, pred in zip(rows, results, strict=True):
            values = {c: row.get(c, "") for c in columns}
            if pred is not None:
                counts[pred["label"]] += 1
                values.update({"label": pred["label"], "score": pred["score"]})
                values.update({f"p_{k}": v for k, v in pred["probs"].items()})
            writer.writerow([values.get(c, "") for c in out_columns])
            if len(preview) < PREVIEW_ROWS:
                preview.append(
                    {
                        "text": (row.get(text_col) or "")[:300],
                        "label": pred["label"] if pred else "",
                        "score": pred["score"] if pred else None,
                        "probs": pred["probs"] if pred else {},
                    }
                )
        batch.refresh_from_db()
        # UTF-8 with a byte-order mark: Excel then opens Chinese text correctly (other readers skip it)
        data = buf.getvalue().encode("utf-8-sig")
        batch.result_file.save(f"batch-{batch_id}-predictions.csv", ContentFile(data), save=False)
        batch.model_ref = ref
        batch.labels = labels
        batch.label_counts = dict(counts)
        batch.preview = preview
        batch.done = len(rows)
        batch.status = BatchPrediction.Status.SUCCEEDED
        batch.finished = timezone.now()
        batch.save()
    except (BatchInputError, InferenceError) as exc:
        _batch_fail(batch_id, str(exc))
    except Exception as exc:
        log.exception("batch %s failed", batch_id)
        _batch_fail(batch_id, f"{type(exc).__name__}: {exc}")
    return BatchPrediction.objects.get(pk=batch_id)


def _batch_fail(batch_id: int, message: str) -> None:
    BatchPrediction.objects.filter(pk=batch_id).update(
        status=BatchPrediction.Status.FAILED, error=message[:2000], finished=timezone.now()
    )


# ------------------------------------------------------------------------------------------ versions
def version_promote(*, version: str, user: Any = None) -> ModelVersion:
    """Makes a version live; serving processes pick it up on their next request."""
    mv = get_registry().promote(settings.SENTIMENT_MODEL, version)
    log.info("sentiment: %s promoted by %s", mv.ref, getattr(user, "username", "?"))
    return mv


def version_rollback(*, user: Any = None, version: str | None = None) -> ModelVersion:
    """Goes back to the previously live version (or to `version`). Raises RegistryError when impossible."""
    mv = get_registry().rollback(settings.SENTIMENT_MODEL, version)
    log.info("sentiment: rolled back to %s by %s", mv.ref, getattr(user, "username", "?"))
    return mv


__all__ = [
    "BatchInputError",
    "RegistryError",
    "batch_create",
    "batch_run",
    "batch_submit",
    "csv_read",
    "version_promote",
    "version_rollback",
]
