"""Batch CSV predictions: one row per upload, its progress and its result file.

Model versions themselves live in the slm registry (immutable directories), not in the database.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class BatchPrediction(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sentiment_batches")
    requested_model = models.CharField(max_length=120, blank=True, help_text="'' = the live version")
    model_ref = models.CharField(max_length=160, blank=True, help_text="name@version that predicted")
    filename = models.CharField(max_length=255)
    input_file = models.FileField(upload_to="sentiment/batches/in/")
    result_file = models.FileField(upload_to="sentiment/batches/out/", blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    inline = models.BooleanField(default=False, help_text="run in the request (small files) instead of RQ")
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    labels = models.JSONField(default=list, blank=True)
    label_counts = models.JSONField(default=dict, blank=True)
    preview = models.JSONField(default=list, blank=True, help_text="first result rows shown on the page")
    error = models.TextField(blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"batch {self.pk} {self.filename} ({self.status})"

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else (100 if self.is_finished else 0)

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)
