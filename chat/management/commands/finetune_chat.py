"""`manage.py finetune_chat`: fine-tune the chat model now (default) or enqueue it on the `gpu` queue."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from chat.finetune import finetune_run_create
from chat.models import FinetuneRun


class Command(BaseCommand):
    help = (
        "Fine-tunes the chat model on a JSONL file of {'messages': [...]} dialogues and/or thumbs-up replies, "
        "registers the result as a new version (parent = base) and optionally promotes it."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--data", help="JSONL file, one {'messages': [{'role', 'content'}, ...]} per line")
        parser.add_argument("--feedback", action="store_true", help="also train on thumbs-up chat replies")
        parser.add_argument("--base", default="live", help="base model: live (default), chat@v0002, a dir, a hub id")
        parser.add_argument("--name", default=None, help="registry model name (default from CHAT_MODEL)")
        parser.add_argument("--epochs", type=float, default=None)
        parser.add_argument("--lr", type=float, default=None)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--grad-accum", type=int, default=None)
        parser.add_argument("--max-length", type=int, default=None)
        parser.add_argument("--warmup-ratio", type=float, default=None)
        parser.add_argument("--max-time", type=float, default=None, help="wall-clock budget in seconds")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--eval-fraction", type=float, default=None)
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--promote", action="store_true", help="make the new version live")
        group.add_argument("--promote-if-better", action="store_true", help="promote only if eval loss beats the base")
        parser.add_argument("--enqueue", action="store_true", help="enqueue on the gpu queue instead of running here")
        parser.add_argument("--user", default=None, help="username recorded as the run's creator (must be an admin)")

    def handle(self, *args: Any, **opts: Any) -> None:
        train: dict[str, Any] = {}
        for opt, key in [
            ("epochs", "epochs"),
            ("lr", "lr"),
            ("batch_size", "batch_size"),
            ("grad_accum", "grad_accum"),
            ("max_length", "max_length"),
            ("warmup_ratio", "warmup_ratio"),
            ("max_time", "max_time_s"),
            ("seed", "seed"),
        ]:
            if opts[opt] is not None:
                train[key] = opts[opt]
        config: dict[str, Any] = {
            "base": opts["base"],
            "data_path": opts["data"],
            "use_feedback": opts["feedback"],
            "promote": "always" if opts["promote"] else "auto" if opts["promote_if_better"] else "manual",
            "train": train,
        }
        if opts["name"]:
            config["name"] = opts["name"]
        if opts["eval_fraction"] is not None:
            config["eval_fraction"] = opts["eval_fraction"]
        user = None
        if opts["user"]:
            user = get_user_model().objects.filter(username=opts["user"]).first()
            if user is None:
                raise CommandError(f"no user {opts['user']!r}")
        try:
            run = finetune_run_create(user=user, config=config, enqueue=opts["enqueue"])
        except (ValidationError, PermissionError) as exc:
            raise CommandError("; ".join(getattr(exc, "messages", [str(exc)]))) from exc
        if opts["enqueue"]:
            run.refresh_from_db()
            if run.status == FinetuneRun.Status.FAILED:
                raise CommandError(f"run {run.pk}: {run.error}")
            self.stdout.write(f"run {run.pk} enqueued on the gpu queue as job {run.job_id} (base {run.base_ref})")
            return
        from chat.jobs import run_finetune

        try:
            result = run_finetune(run.pk, echo=self.stdout.write)
        except Exception as exc:
            raise CommandError(f"run {run.pk} failed: {type(exc).__name__}: {exc}") from exc
        m = result["metrics"]
        self.stdout.write(
            self.style.SUCCESS(
                f"run {run.pk}: registered {result['version']} (parent {run.base_ref}); "
                f"eval_loss {m.get('eval_loss', float('nan')):.4f} perplexity {m.get('perplexity', float('nan')):.2f} "
                f"(base {m.get('base_perplexity', float('nan')):.2f}); promoted: {m.get('promoted')}"
            )
        )
