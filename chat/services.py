"""Writes for the chat app: conversations, the message pair of one generation, ratings."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from chat.models import Conversation, Message

TITLE_CHARS = 60


def _storable(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL characters (a client or a sampled byte token can send one)."""
    return text.replace("\x00", "")


def _title_from(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1].rstrip() + "…"


@transaction.atomic
def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = " ".join(title.split())[:200]
    if not title:
        raise ValueError("the title cannot be empty")
    conversation.title = title
    conversation.save(update_fields=["title", "updated"])
    return conversation


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


@transaction.atomic
def exchange_start(
    *,
    owner: Any,
    conversation: Conversation | None,
    prompt: str,
    params: dict[str, Any],
    seed: int | None,
    model_ref: str,
    queued: bool,
    model_name: str = "",
) -> tuple[Conversation, Message, Message]:
    """Saves the user's message and an empty agent message (queued or streaming) that the stream fills;
    `model_name` (the picker's entry the reply runs on) becomes the conversation's model."""
    prompt = _storable(prompt)
    if params.get("stop"):
        params = {**params, "stop": [_storable(s) for s in params["stop"]]}
    if conversation is None:
        conversation = Conversation.objects.create(owner=owner, title=_title_from(prompt), model=model_name)
    else:
        if not conversation.title:
            conversation.title = _title_from(prompt)
        if model_name:
            conversation.model = model_name
        conversation.save(update_fields=["title", "model", "updated"])
    user_msg = Message.objects.create(conversation=conversation, role=Message.Role.USER, text=prompt)
    agent_msg = Message.objects.create(
        conversation=conversation,
        role=Message.Role.AGENT,
        status=Message.Status.QUEUED if queued else Message.Status.STREAMING,
        params=params,
        seed=seed,
        model_ref=model_ref,
        model_name=model_name,
    )
    return conversation, user_msg, agent_msg


@transaction.atomic
def conversation_set_model(*, conversation: Conversation, model: str, offered: list[str]) -> Conversation:
    """Picks the chat model for the conversation's next replies; `offered`: the names the server offers."""
    if model not in offered:
        raise ValueError(f"no chat model named {model!r} is offered here")
    conversation.model = model
    conversation.save(update_fields=["model"])
    return conversation


@transaction.atomic
def message_progress(*, message_id: int, text: str, model_ref: str | None = None) -> None:
    """Stores the reply as it stands (a page refresh mid-reply shows it)."""
    fields: dict[str, Any] = {"text": _storable(text), "status": Message.Status.STREAMING}
    if model_ref:
        fields["model_ref"] = model_ref
    Message.objects.filter(pk=message_id, status__in=[Message.Status.QUEUED, Message.Status.STREAMING]).update(**fields)


@transaction.atomic
def message_finish(
    *,
    message_id: int,
    text: str,
    reason: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    ttft_ms: float | None = None,
    tokens_per_s: float | None = None,
    model_ref: str | None = None,
    error: bool = False,
) -> None:
    status = (
        Message.Status.ERROR if error else Message.Status.CANCELLED if reason == "cancelled" else Message.Status.DONE
    )
    fields: dict[str, Any] = {
        "text": _storable(text),
        "status": status,
        "finish_reason": "error" if error else reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_ms": ttft_ms,
        "tokens_per_s": tokens_per_s,
    }
    if model_ref:
        fields["model_ref"] = model_ref
    Message.objects.filter(pk=message_id).update(**fields)
    Conversation.objects.filter(messages__pk=message_id).update(updated=timezone.now())


@transaction.atomic
def message_rate(*, message: Message, rating: int) -> Message:
    if rating not in (-1, 0, 1):
        raise ValueError("rating must be -1, 0 or 1")
    if message.role != Message.Role.AGENT:
        raise ValueError("only replies can be rated")
    message.rating = rating
    message.save(update_fields=["rating"])
    return message
