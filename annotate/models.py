"""Annotate: projects, pool items, leases (assignments), labels, training runs, exports, simulations."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Case, F, Q, Value, When


def _default_sentiment_model() -> str:
    return str(settings.SENTIMENT_MODEL)


def _default_labels() -> list[str]:
    return ["negative", "positive"]


class Project(models.Model):
    class PromotePolicy(models.TextChoices):
        AUTO = "auto", "auto if better on gold"
        MANUAL = "manual", "manual"

    class RetrainFrom(models.TextChoices):
        PARENT = "parent", "the parent model (adapt it with the new labels)"
        SCRATCH = "scratch", "scratch (the project's labels only)"

    class Family(models.TextChoices):
        NGRAM = "ngram", "n-gram (fast, CPU)"
        TRANSFORMER = "transformer", "transformer encoder + head"

    name = models.CharField(max_length=200, unique=True)
    labels = models.JSONField(default=_default_labels)
    guidelines = models.TextField(blank=True, default="")
    family = models.CharField(max_length=20, choices=Family.choices, default=Family.NGRAM)
    base_model = models.CharField(
        max_length=300, blank=True, default="", help_text="encoder for a transformer retrained from scratch"
    )
    base = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="registry ref the first retrain adapts (name or name@version; empty = the name's live version)",
    )
    retrain_from = models.CharField(max_length=10, choices=RetrainFrom.choices, default=RetrainFrom.PARENT)
    new_label_weight = models.FloatField(
        null=True, blank=True, help_text="weight of the project's labels against the parent's data (empty = default)"
    )
    strategy = models.CharField(max_length=40, default="entropy")
    batch_size = models.PositiveIntegerField(default=20)
    overlap_k = models.PositiveIntegerField(default=2, help_text="annotators per overlap item")
    overlap_fraction = models.FloatField(default=0.1, help_text="share of items labelled by overlap_k annotators")
    retrain_every = models.PositiveIntegerField(
        default=50, help_text="auto retrain after this many new labels (0 = off)"
    )
    gold_fraction = models.FloatField(default=0.1)
    min_per_label = models.PositiveIntegerField(
        default=5, help_text="cold start: random sampling until each label has this many"
    )
    promote_policy = models.CharField(max_length=10, choices=PromotePolicy.choices, default=PromotePolicy.AUTO)
    model_name = models.CharField(max_length=100, default=_default_sentiment_model)
    show_suggestions = models.BooleanField(default=True)
    labels_at_last_trigger = models.PositiveIntegerField(default=0)
    pool_version = models.CharField(max_length=40, blank=True, default="", help_text="model version of cached scores")
    pool_error = models.TextField(blank=True, default="", help_text="why the last pool refresh could not score")
    stability = models.JSONField(default=list, blank=True, help_text="prediction stability between versions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


# Lanes: where an item waits to be labelled. Item.lane is computed by the database from the item's fields
# (a stored generated column), so it is derived in this one place and indexed for the queue queries.
CLOSED = 0  # has all its labels (or was adjudicated)
POOL = 1  # ordinary pool item, ordered by the query strategy
GOLD = 2  # gold item with a gold label: mixed into annotators' queues to measure accuracy
FIX = 3  # sent from the playground's "Wrong? Fix it": reviewed first
GOLD_TODO = 4  # gold item without a gold label yet: admins only

LANE = Case(
    When(Q(adjudicated=True) | Q(n_labels__gte=F("needed")), then=Value(CLOSED)),
    When(Q(is_gold=True) & ~Q(gold_label=""), then=Value(GOLD)),
    When(is_gold=True, then=Value(GOLD_TODO)),
    When(source="fix", then=Value(FIX)),
    default=Value(POOL),
)


class Item(models.Model):
    CLOSED, POOL, GOLD, FIX, GOLD_TODO = CLOSED, POOL, GOLD, FIX, GOLD_TODO

    class Source(models.TextChoices):
        IMPORT = "import", "import"
        FIX = "fix", "playground fix"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    text = models.TextField()
    text_hash = models.CharField(max_length=64)
    meta = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.IMPORT)
    suggested_label = models.CharField(max_length=100, blank=True, default="")
    is_gold = models.BooleanField(default=False)
    gold_label = models.CharField(max_length=100, blank=True, default="")
    needed = models.PositiveSmallIntegerField(default=1, help_text="labels this item collects (overlap k or 1)")
    n_labels = models.PositiveSmallIntegerField(default=0)
    final_label = models.CharField(max_length=100, blank=True, default="")
    adjudicated = models.BooleanField(default=False)
    disputed = models.BooleanField(default=False)
    # Cached model output for the pool (refreshed by a job after each new live version).
    pred_label = models.CharField(max_length=100, blank=True, default="")
    pred_conf = models.FloatField(null=True, blank=True)
    score = models.FloatField(default=0.0, help_text="query priority (higher = ask sooner)")
    # Which queue the item waits in (an integer so SQLite and PostgreSQL both use the queue indexes).
    lane = models.GeneratedField(expression=LANE, output_field=models.PositiveSmallIntegerField(), db_persist=True)
    rand = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "text_hash"], name="annotate_item_unique_text")]
        indexes = [
            models.Index(fields=["project", "is_gold", "-score", "rand"], name="annotate_item_queue"),
            models.Index(fields=["project", "lane", "-score", "rand"], name="annotate_item_lane_score"),
            models.Index(fields=["project", "lane", "rand"], name="annotate_item_lane_rand"),
            models.Index(fields=["project", "final_label"], name="annotate_item_final"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Assignment(models.Model):
    """A lease of one label slot of an item to one annotator.

    (item, annotator) is unique: nobody gets an item twice. (item, slot) is unique: at most `needed`
    annotators hold or filled an item. Skipped assignments give their slot back (slot = NULL).
    """

    class Status(models.TextChoices):
        LEASED = "leased", "leased"
        DONE = "done", "done"
        SKIPPED = "skipped", "skipped"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    slot = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="annotate_assignment_once_per_annotator"),
            models.UniqueConstraint(fields=["item", "slot"], name="annotate_assignment_slot"),
        ]
        indexes = [models.Index(fields=["project", "annotator", "status"], name="annotate_assign_user")]


class Annotation(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="annotations")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="annotations")
    label = models.CharField(max_length=100)
    seconds = models.FloatField(null=True, blank=True, help_text="time the annotator spent on the item")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "annotator"], name="annotate_annotation_once")]
        indexes = [models.Index(fields=["project", "annotator", "-created_at"], name="annotate_ann_user")]


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=10, default="manual")
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    job_id = models.CharField(max_length=100, blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    progress = models.FloatField(default=0.0)
    epoch = models.PositiveIntegerField(default=0)
    epochs = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)
    log = models.TextField(blank=True, default="")
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    n_train = models.PositiveIntegerField(default=0)
    n_gold = models.PositiveIntegerField(default=0)
    parent_version = models.CharField(max_length=40, blank=True, default="")
    version = models.CharField(max_length=40, blank=True, default="")
    promoted = models.BooleanField(default=False, help_text="this run's version was promoted (it may not be live now)")
    decision = models.TextField(blank=True, default="", help_text="why the version was promoted or kept, in words")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(status__in=["queued", "running"]),
                name="annotate_one_active_run_per_project",
            )
        ]

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def log_tail(self) -> str:
        return "\n".join(self.log.splitlines()[-15:])


class BackgroundTask(models.Model):
    """What imports, exports and simulations share: a job's status, progress, error and who started it."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]


class ImportJob(BackgroundTask):
    """An import of a file / dataset into a project's pool, run as a job with progress."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="imports")
    path = models.CharField(max_length=500)
    text_field = models.CharField(max_length=100, default="text")
    label_field = models.CharField(max_length=100, blank=True, default="label")
    report = models.JSONField(default=dict, blank=True)


class Export(BackgroundTask):
    class Format(models.TextChoices):
        JSONL = "jsonl", "JSONL"
        CSV = "csv", "CSV"
        HF = "hf", "Hugging Face dataset (zip)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="exports")
    fmt = models.CharField(max_length=10, choices=Format.choices, default=Format.JSONL)
    path = models.CharField(max_length=500, blank=True, default="")
    rows = models.PositiveIntegerField(default=0)


class Simulation(BackgroundTask):
    """An admin-launched replay of AL strategies vs random on a fully labelled dataset."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="simulations")
    config = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
