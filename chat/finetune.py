"""Chat fine-tuning services: create a run (enqueued on the `gpu` queue after commit), promote, roll back.

Run config (stored in FinetuneRun.config)::

    {"name": "chat",                 # registry model name the result is registered under
     "base": "live" | "chat@v0003" | "<local dir>" | "<hub id>",   # resolved into FinetuneRun.base_ref
     "data_path": "/path/dialogues.jsonl" | None,   # ultrachat `messages` JSONL
     "use_feedback": false,          # add thumbs-up agent replies with their user turn
     "eval_fraction": 0.1,
     "promote": "manual" | "auto" | "always",       # auto = only if held-out loss beats the base
     "train": {LMTrainConfig fields: epochs, lr, batch_size, grad_accum, warmup_ratio, max_length, ...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from chat.models import FinetuneRun
from slm.lm_train import LMTrainConfig
from slm.loader import ModelNotAvailable, resolve_source
from slm.registry import ModelVersion, RegistryError, parse_ref
from slmsite.registry import get_registry
from slmsite.roles import is_admin

DEFAULT_TRAIN: dict[str, Any] = {
    "epochs": 3.0,
    "lr": 5e-4,
    "batch_size": 8,
    "grad_accum": 2,
    "warmup_ratio": 0.1,
    "max_length": 256,
    "keep_best": True,
}
CONFIG_KEYS = {"name", "base", "data_path", "use_feedback", "eval_fraction", "promote", "train", "skip_invalid"}
PROMOTE_CHOICES = ("manual", "auto", "always")


def _check_admin(user: Any) -> None:
    if user is not None and not is_admin(user):
        raise PermissionDenied("only admins can fine-tune, promote or roll back chat models")


def default_model_name() -> str:
    source = settings.CHAT_MODEL
    if source.startswith("registry:"):
        return parse_ref(source.removeprefix("registry:"))[0]
    return "chat"


def finetune_config_clean(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Validates a run config; returns (normalised config, resolved base ref). Raises ValidationError."""
    if not isinstance(config, dict):
        raise ValidationError("config must be an object")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValidationError(f"unknown config key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
    cfg: dict[str, Any] = {
        "name": str(config.get("name") or default_model_name()),
        "base": str(config.get("base") or "live"),
        "data_path": str(config["data_path"]) if config.get("data_path") else None,
        "use_feedback": bool(config.get("use_feedback", False)),
        "eval_fraction": config.get("eval_fraction", 0.1),
        "promote": str(config.get("promote") or "manual"),
        "skip_invalid": bool(config.get("skip_invalid", False)),
    }
    try:
        cfg["eval_fraction"] = float(cfg["eval_fraction"])
    except (TypeError, ValueError) as exc:
        raise ValidationError("eval_fraction must be a number") from exc
    if not 0.0 <= cfg["eval_fraction"] < 0.9:
        raise ValidationError("eval_fraction must be in [0, 0.9)")
    if cfg["promote"] not in PROMOTE_CHOICES:
        raise ValidationError(f"promote must be one of {PROMOTE_CHOICES}")
    train = {**DEFAULT_TRAIN, "processes": settings.SLM_TRAIN_PROCESSES, **(config.get("train") or {})}
    try:
        cfg["train"] = LMTrainConfig.from_dict(train).to_dict()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"bad training options: {exc}") from exc
    if not cfg["data_path"] and not cfg["use_feedback"]:
        raise ValidationError("give a JSONL data file (data_path) and/or use_feedback=true")
    if cfg["data_path"]:
        path = Path(cfg["data_path"])
        if not path.is_file():
            raise ValidationError(f"data file {path} does not exist")
        if path.suffix.lower() not in {".jsonl", ".json"}:
            raise ValidationError("data file must be .jsonl (one {'messages': [...]} object per line)")
    return cfg, _resolve_base(cfg["name"], cfg["base"])


def _resolve_base(name: str, base: str) -> str:
    registry = get_registry()
    try:
        if base in ("live", "registry:" + name):
            live = registry.live_version(name)
            if live is None:
                raise ValidationError(f"model {name!r} has no live version; run `manage.py bootstrap_models chat`")
            return f"{name}@{live}"
        ref = base.removeprefix("registry:")
        if ref.startswith(f"{name}@") or ref.startswith("v") and ref[1:].isdigit():
            version = ref.split("@", 1)[1] if "@" in ref else ref
            return registry.get(name, version).ref
        resolve_source(base, registry=registry)
        return base
    except (RegistryError, ModelNotAvailable) as exc:
        raise ValidationError(f"base model: {exc}") from exc


def _enqueue(run_id: int, job_id: str) -> None:
    from slmsite.jobs import enqueue_or_fail

    def failed(message: str) -> None:  # queue down: say so on the run, never run it in-process
        FinetuneRun.objects.filter(pk=run_id).update(
            status=FinetuneRun.Status.FAILED, error=f"could not enqueue on the gpu queue: {message}"
        )

    enqueue_or_fail("gpu", "chat.jobs.finetune_chat_job", run_id, job_id=job_id, on_fail=failed)


@transaction.atomic
def finetune_run_create(*, user: Any, config: dict[str, Any], enqueue: bool = True) -> FinetuneRun:
    """Validates `config`, records a queued FinetuneRun and (after commit) enqueues `finetune_chat_job`
    on the `gpu` queue. `user` must be an admin (None = a management command)."""
    _check_admin(user)
    cfg, base_ref = finetune_config_clean(config)
    run = FinetuneRun.objects.create(
        created_by=user if user is not None and getattr(user, "pk", None) else None,
        config=cfg,
        base_ref=base_ref,
        status=FinetuneRun.Status.QUEUED,
    )
    if enqueue:
        run.job_id = f"chat-finetune-{run.pk}"
        run.save(update_fields=["job_id"])
        transaction.on_commit(lambda: _enqueue(run.pk, run.job_id))
    return run


def finetune_promote(*, user: Any, version: str, name: str | None = None) -> ModelVersion:
    """Makes a chat model version live; running engines pick it up without restart."""
    _check_admin(user)
    try:
        return get_registry().promote(name or default_model_name(), version)
    except RegistryError as exc:
        raise ValidationError(str(exc)) from exc


def finetune_rollback(*, user: Any, version: str | None = None, name: str | None = None) -> ModelVersion:
    """Goes back to `version` or to the previously live chat model version."""
    _check_admin(user)
    try:
        return get_registry().rollback(name or default_model_name(), version)
    except RegistryError as exc:
        raise ValidationError(str(exc)) from exc
