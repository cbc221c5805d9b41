"""RQ jobs of the chat app (queue `gpu`). Jobs take ids, never objects."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.utils import timezone

from chat.models import FinetuneRun, Message
from slm.chat_data import Dialogue, format_dialogue, load_jsonl_dialogues, normalize_dialogue, split_dialogues
from slm.data import data_hash
from slm.lm_train import LMTrainConfig, encode_texts, evaluate_lm, save_model, train_causal_lm
from slm.registry import Registry

logger = logging.getLogger(__name__)

LOG_MAX_CHARS = 50_000
PROGRESS_WRITE_INTERVAL_S = 1.0


def feedback_dialogues(*, limit: int | None = None) -> list[Dialogue]:
    """Thumbs-up agent replies with the user turn that preceded each, as dialogues."""
    out: list[Dialogue] = []
    liked = Message.objects.filter(role=Message.Role.AGENT, rating__gt=0).exclude(text="").order_by("id")
    if limit:
        liked = liked[:limit]
    for reply in liked:
        question = (
            Message.objects.filter(conversation_id=reply.conversation_id, role=Message.Role.USER, id__lt=reply.id)
            .exclude(text="")
            .order_by("-id")
            .first()
        )
        if question is None:
            continue
        try:
            out.append(
                normalize_dialogue(
                    [{"role": "user", "content": question.text}, {"role": "assistant", "content": reply.text}]
                )
            )
        except ValueError:
            continue
    return out


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: NaN/inf (a diverged run) become None (PostgreSQL jsonb rejects NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class _RunRecorder:
    """Writes status/progress/log of one FinetuneRun, throttled, with `update()` (no stale overwrites)."""

    def __init__(self, run_id: int, echo: Callable[[str], None] | None) -> None:
        self.run_id = run_id
        self.echo = echo
        self.lines: list[str] = []
        self._last_write = 0.0

    def _log_text(self) -> str:
        text = "\n".join(self.lines)
        return text[-LOG_MAX_CHARS:]

    def log(self, line: str) -> None:
        stamped = f"[{timezone.now():%H:%M:%S}] {line}"
        self.lines.append(stamped)
        if self.echo is not None:
            self.echo(stamped)

    def write(self, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < PROGRESS_WRITE_INTERVAL_S:
            return
        self._last_write = now
        FinetuneRun.objects.filter(pk=self.run_id).update(log=self._log_text(), **fields)


def _load_base(registry: Registry, name: str, base_ref: str) -> tuple[Any, Any, str | None]:
    """(model, tokenizer, parent version) for 'name@vNNNN' / 'registry:…' / a local dir / a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm.loader import load_pretrained

    parent: str | None = None
    if base_ref.startswith(f"{name}@"):
        parent = base_ref.split("@", 1)[1]
        source = f"registry:{base_ref}"
    else:
        source = base_ref
    model = load_pretrained(AutoModelForCausalLM, source, registry=registry)
    tokenizer = load_pretrained(AutoTokenizer, source, registry=registry)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"base model {base_ref!r} has a tokenizer without an EOS token")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer, parent


def run_finetune(run_id: int, *, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The fine-tune itself (the RQ job and `manage.py finetune_chat` both call this)."""
    from slmsite.registry import get_registry

    run = FinetuneRun.objects.get(pk=run_id)
    rec = _RunRecorder(run_id, echo)
    FinetuneRun.objects.filter(pk=run_id).update(
        status=FinetuneRun.Status.RUNNING, started=timezone.now(), progress=0.0, error=""
    )
    try:
        cfg = dict(run.config)
        name = cfg.get("name", "chat")
        registry = get_registry()
        train_cfg = LMTrainConfig.from_dict(cfg.get("train", {}))  # processes: SLM_TRAIN_PROCESSES unless set
        rec.log(f"base {run.base_ref}; config {cfg}")
        dialogues: list[Dialogue] = []
        sources: dict[str, Any] = {}
        if cfg.get("data_path"):
            from_file = load_jsonl_dialogues(cfg["data_path"], skip_invalid=bool(cfg.get("skip_invalid", False)))
            dialogues += from_file
            sources["jsonl"] = {"path": str(cfg["data_path"]), "dialogues": len(from_file)}
        if cfg.get("use_feedback"):
            liked = feedback_dialogues()
            dialogues += liked
            sources["feedback"] = {"dialogues": len(liked)}
        if not dialogues:
            raise ValueError("no training dialogues: the JSONL file is empty and/or there are no thumbs-up replies")
        rec.log(f"{len(dialogues)} dialogues ({sources})")
        train_d, eval_d = split_dialogues(dialogues, float(cfg.get("eval_fraction", 0.1)), seed=train_cfg.seed)
        train_texts = [format_dialogue(d) for d in train_d]
        eval_texts = [format_dialogue(d) for d in eval_d]

        model, tokenizer, parent = _load_base(registry, name, run.base_ref)
        max_pos = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 1024))
        train_cfg = replace(train_cfg, max_length=min(train_cfg.max_length, max_pos))
        base_metrics: dict[str, float] = {}
        if eval_texts:
            ev = evaluate_lm(model, encode_texts(tokenizer, eval_texts, train_cfg.max_length))
            base_metrics = {"base_eval_loss": ev["eval_loss"], "base_perplexity": ev["perplexity"]}
            rec.log(f"base eval_loss {ev['eval_loss']:.4f} perplexity {ev['perplexity']:.2f}")
        rec.write(force=True, progress=0.02)

        def on_progress(info: dict[str, Any]) -> None:
            rec.write(progress=round(0.02 + 0.9 * float(info["fraction"]), 4))

        result = train_causal_lm(
            model, tokenizer, train_texts, eval_texts, train_cfg, progress=on_progress, log=rec.log
        )
        metrics: dict[str, Any] = _finite({**result.metrics, **base_metrics})
        if metrics.get("eval_loss") is not None and metrics.get("base_eval_loss") is not None:
            metrics["improved"] = bool(metrics["eval_loss"] < metrics["base_eval_loss"])
        rec.write(force=True, progress=0.95)

        def write(directory: Path) -> None:
            save_model(model, tokenizer, directory)
            (directory / "train_log.txt").write_text("\n".join(result.log) + "\n", encoding="utf-8")

        metadata = {
            "config": {**cfg, "train": train_cfg.to_dict()},
            "data_hash": data_hash(dialogues),
            "data": {**sources, "train": len(train_d), "eval": len(eval_d)},
            "metrics": metrics,
            "family": getattr(model.config, "model_type", "gpt2"),
            "base_ref": run.base_ref,
            "finetune_run": run_id,
            "format": {"user": "User:", "agent": "Agent:", "eos": tokenizer.eos_token, "stop": ["User:"]},
        }
        mv = registry.create_version(name, write, metadata, parent=parent)
        rec.log(f"registered {mv.ref}")
        promote = cfg.get("promote", "manual")
        if promote == "always" or (promote == "auto" and metrics.get("improved")):
            registry.promote(name, mv.version)
            rec.log(f"promoted {mv.ref} ({promote})")
            metrics["promoted"] = True
        else:
            metrics["promoted"] = False
            rec.log(f"not promoted ({promote}); promote with `manage.py promote {name} {mv.version}`")
        rec.write(
            force=True,
            status=FinetuneRun.Status.SUCCEEDED,
            progress=1.0,
            metrics=metrics,
            result_ref=mv.ref,
            finished=timezone.now(),
        )
        return {"run": run_id, "version": mv.ref, "metrics": metrics}
    except Exception as exc:
        logger.exception("finetune run %s failed", run_id)
        rec.log(f"FAILED: {type(exc).__name__}: {exc}")
        rec.write(
            force=True,
            status=FinetuneRun.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}"[:20_000],
            finished=timezone.now(),
        )
        raise


def finetune_chat_job(run_id: int) -> dict[str, Any]:
    """RQ job (queue `gpu`): fine-tunes the chat model for FinetuneRun `run_id`."""
    return run_finetune(run_id)
