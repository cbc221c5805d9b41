from __future__ import annotations

from django.conf import settings
from django.db import models


class ChatModel(models.Model):
    """A chat model the server offers in the chat page's model picker; admins edit the list. The model the
    settings configure (CHAT_BACKEND, CHAT_MODEL, CHAT_REMOTE_*) is offered too, as `default`, unless a row
    of that name replaces it (and may switch it off). chat.selectors.chat_models_offered reads both."""

    class Backend(models.TextChoices):
        LOCAL = "local", "local engine"
        OPENAI = "openai", "OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI /v1)"
        REMOTE = "remote", "TGI generate_stream / HF Inference API"

    class Api(models.TextChoices):
        COMPLETIONS = "completions", "/v1/completions (base models)"
        CHAT = "chat", "/v1/chat/completions (chat-tuned models)"

    name = models.SlugField(max_length=64, unique=True, help_text="what users pick and conversations store")
    label = models.CharField(max_length=100, blank=True, default="", help_text="shown in the picker (empty: the name)")
    backend = models.CharField(max_length=10, choices=Backend.choices, default=Backend.LOCAL)
    source = models.CharField(
        max_length=300,
        blank=True,
        default="",
        help_text="local: registry:<name>[@version], a save_pretrained directory or a hub id in the HF cache; "
        "openai: the model name to ask the server for (empty: the first it lists)",
    )
    url = models.CharField(
        max_length=300, blank=True, default="", help_text="openai / remote: the server, e.g. http://gpu-box:8000/v1"
    )
    api = models.CharField(max_length=12, choices=Api.choices, default=Api.COMPLETIONS, help_text="openai only")
    token = models.CharField(max_length=300, blank=True, default="", help_text="API key, sent as Authorization: Bearer")
    description = models.CharField(max_length=300, blank=True, default="")
    enabled = models.BooleanField(default=True, help_text="offered in the picker")
    position = models.PositiveIntegerField(default=0, help_text="order in the picker")

    class Meta:
        ordering = ["position", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.backend == self.Backend.LOCAL and not self.source.strip():
            raise ValidationError({"source": "a local model needs a source (registry:<name>, a directory or a hub id)"})
        if self.backend != self.Backend.LOCAL and not self.url.strip().startswith(("http://", "https://")):
            raise ValidationError({"url": "a remote model needs the server's http(s) URL"})


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True, default="")
    model = models.CharField(
        max_length=64, blank=True, default="", help_text="the chat model picked (a name the picker offers)"
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated"]
        indexes = [models.Index(fields=["owner", "-updated"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        AGENT = "agent", "Agent"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        STREAMING = "streaming", "Streaming"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"
        ERROR = "error", "Error"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=8, choices=Role.choices)
    text = models.TextField(blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DONE)
    # generation record (agent messages): what produced this reply
    params = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    model_ref = models.CharField(max_length=200, blank=True, default="")
    model_name = models.CharField(max_length=64, blank=True, default="")  # the picker's entry (e.g. "default")
    finish_reason = models.CharField(max_length=16, blank=True, default="")  # eos|length|stop|cancelled|error
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    rating = models.SmallIntegerField(default=0)  # -1 thumbs down, 0 none, +1 thumbs up
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:40]}"


class FinetuneRun(models.Model):
    """A chat fine-tuning job (RQ, queue `gpu`) and its outcome."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)  # 0..1
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    base_ref = models.CharField(max_length=200, blank=True, default="")
    result_ref = models.CharField(max_length=200, blank=True, default="")
    job_id = models.CharField(max_length=64, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
