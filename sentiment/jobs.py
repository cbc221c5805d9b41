"""RQ jobs of the sentiment app (queue `default`). Jobs take ids, never objects."""

from __future__ import annotations

from typing import Any


def batch_predict_job(batch_id: int) -> dict[str, Any]:
    """Predicts a big CSV upload; progress is written to the BatchPrediction row as it goes."""
    from sentiment.services import batch_run

    batch = batch_run(batch_id=batch_id)
    return {"batch": batch.pk, "status": batch.status, "done": batch.done, "error": batch.error}
