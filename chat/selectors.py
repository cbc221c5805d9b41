"""Reads for the chat app."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from chat.models import Conversation, Message

HISTORY_TURNS = 64  # newest turns considered for a prompt (older ones never fit a GPT-2 window anyway)


def _as_id(value: Any) -> int | None:
    """A positive integer id from a client value (int or digit string), else None: booleans, fractions,
    Infinity/NaN and other types are never an id."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        pk = int(value)
    except ValueError:
        return None
    return pk if 0 < pk < 2**63 else None


def conversation_list(*, user: Any, limit: int = 100) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).order_by("-updated")[:limit]


def conversation_get(*, user: Any, conversation_id: Any) -> Conversation | None:
    """The user's conversation, or None when it does not exist or belongs to someone else."""
    cid = _as_id(conversation_id)
    if cid is None:
        return None
    return Conversation.objects.filter(owner=user, pk=cid).first()


def conversation_messages(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created", "id")


def conversation_history(*, conversation: Conversation, limit: int = HISTORY_TURNS) -> list[tuple[str, str]]:
    """(role, text) of the finished turns, oldest first, for the dialogue prompt."""
    rows = list(
        conversation.messages.exclude(text="")
        .exclude(status__in=[Message.Status.QUEUED, Message.Status.ERROR])
        .order_by("-created", "-id")
        .values_list("role", "text")[:limit]
    )
    rows.reverse()
    return [(role, text.strip()) for role, text in rows if text.strip()]


def message_get(*, user: Any, message_id: Any) -> Message | None:
    mid = _as_id(message_id)
    if mid is None:
        return None
    return Message.objects.select_related("conversation").filter(pk=mid, conversation__owner=user).first()


def model_window() -> int | None:
    """The context window (prompt + reply, in tokens) of the model new chat requests run on, read from
    its config.json; None when it is unknown (a remote backend, or no model yet)."""
    if settings.CHAT_BACKEND != "local":
        return None
    from slm.loader import ModelNotAvailable, resolve_source
    from slmsite.registry import get_registry

    try:
        src = resolve_source(settings.CHAT_MODEL, registry=get_registry())
        conf = json.loads((src.path / "config.json").read_text()) if src.path is not None else {}
    except (ModelNotAvailable, OSError, ValueError):
        return None
    window = conf.get("n_positions") or conf.get("max_position_embeddings")
    return int(window) if isinstance(window, int) and window > 0 else None


def model_building() -> dict[str, Any] | None:
    """The first-run build of the chat model while it has no live version ("model building (x%)")."""
    if settings.CHAT_BACKEND != "local" or not settings.CHAT_MODEL.startswith("registry:"):
        return None
    from slm.registry import RegistryError
    from slmsite.bootstrap import building
    from slmsite.registry import get_registry

    name = settings.CHAT_MODEL.removeprefix("registry:").partition("@")[0]
    try:
        return building(get_registry(), name)
    except RegistryError:
        return None
