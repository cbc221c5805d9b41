"""Reads for the chat app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import QuerySet

from chat.models import ChatModel, Conversation, Message

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


# ------------------------------------------------------------------ the chat models offered
SETTINGS_MODEL = "default"  # the picker's name for the model the settings configure


@dataclass(frozen=True)
class ChatModelEntry:
    """One model of the picker: where it runs (`backend`) and what it is (`source`: for the local engine a
    registry ref, directory or hub id; for a remote server the model name to ask for)."""

    name: str
    label: str
    backend: str  # local | openai | remote
    source: str
    url: str = ""
    api: str = "completions"  # openai: completions | chat; remote: tgi
    token: str = ""
    description: str = ""

    @property
    def local(self) -> bool:
        return self.backend == ChatModel.Backend.LOCAL


def settings_model() -> ChatModelEntry:
    """The model CHAT_BACKEND / CHAT_MODEL / CHAT_REMOTE_* configure, offered as `default`."""
    backend = settings.CHAT_BACKEND
    if backend == ChatModel.Backend.LOCAL:
        source = settings.CHAT_MODEL
        label = source.removeprefix("registry:")
    else:
        source = settings.CHAT_REMOTE_MODEL
        label = source or urlsplit(settings.CHAT_REMOTE_URL).netloc or backend
    api = "tgi" if backend == ChatModel.Backend.REMOTE else settings.CHAT_REMOTE_API
    return ChatModelEntry(
        SETTINGS_MODEL, label, backend, source, url=settings.CHAT_REMOTE_URL, api=api, token=settings.CHAT_REMOTE_TOKEN
    )


def _entry(row: ChatModel) -> ChatModelEntry:
    api = "tgi" if row.backend == ChatModel.Backend.REMOTE else row.api
    source = row.source.strip()
    label = row.label.strip() or row.name
    return ChatModelEntry(row.name, label, row.backend, source, row.url.strip(), api, row.token, row.description)


def chat_models_offered() -> list[ChatModelEntry]:
    """The models the picker offers, in order: the settings' model (unless a row named `default` replaces
    or disables it), then the enabled rows an admin listed."""
    rows = list(ChatModel.objects.order_by("position", "name"))
    offered = [] if any(r.name == SETTINGS_MODEL for r in rows) else [settings_model()]
    return offered + [_entry(r) for r in rows if r.enabled]


def chat_model_default(offered: list[ChatModelEntry] | None = None) -> ChatModelEntry | None:
    """The model new conversations start with: CHAT_DEFAULT_MODEL if it is offered, else the first offered."""
    offered = chat_models_offered() if offered is None else offered
    return next((e for e in offered if e.name == settings.CHAT_DEFAULT_MODEL), offered[0] if offered else None)


def chat_model_get(name: str, offered: list[ChatModelEntry] | None = None) -> ChatModelEntry | None:
    offered = chat_models_offered() if offered is None else offered
    return next((e for e in offered if e.name == name), None)


def chat_model_for(
    conversation: Conversation | None, offered: list[ChatModelEntry] | None = None
) -> ChatModelEntry | None:
    """The model a conversation runs on: the one it picked while that is offered, else the default."""
    offered = chat_models_offered() if offered is None else offered
    picked = chat_model_get(conversation.model, offered) if conversation is not None and conversation.model else None
    return picked or chat_model_default(offered)


def _local_source(entry: ChatModelEntry) -> Any:
    """The resolved local source (registry version, directory, cached hub id) of a local entry, or None."""
    if not entry.local:
        return None
    from slm.loader import ModelNotAvailable, resolve_source
    from slmsite.registry import get_registry

    try:
        return resolve_source(entry.source, registry=get_registry())
    except ModelNotAvailable:
        return None


def model_window(entry: ChatModelEntry | None = None) -> int | None:
    """The context window (prompt + reply, in tokens) of the model `entry` (default: the default model)
    runs on now, read from its config.json; None when it is unknown (a remote backend, or no model yet)."""
    entry = entry or chat_model_default()
    src = _local_source(entry) if entry is not None else None
    if src is None or src.path is None:
        return None
    try:
        conf = json.loads((src.path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    window = conf.get("n_positions") or conf.get("max_position_embeddings")
    return int(window) if isinstance(window, int) and window > 0 else None


def model_is_demo(entry: ChatModelEntry | None) -> bool:
    """True when `entry` runs the offline demo model that `bootstrap_models` builds (a tiny GPT-2 trained on
    the bundled chatterbot dialogues), so the page can say how to get a real one."""
    src = _local_source(entry) if entry is not None else None
    if src is None:
        return False
    meta = src.metadata or {}
    return bool(meta.get("demo")) or (meta.get("data") or {}).get("source") == "chatterbot-corpus"


def chat_model_choices(conversation: Conversation | None) -> dict[str, Any]:
    """What the chat page's picker shows: each offered model (name, label, context window, demo or not) and
    the one the conversation runs on."""
    offered = chat_models_offered()
    current = chat_model_for(conversation, offered)
    choices = [
        {
            "name": e.name,
            "label": e.label,
            "description": e.description,
            "backend": e.backend,
            "window": model_window(e),
            "demo": model_is_demo(e),
        }
        for e in offered
    ]
    lost = (
        conversation.model
        if conversation is not None and conversation.model and (chat_model_get(conversation.model, offered) is None)
        else ""
    )
    return {"choices": choices, "current": current.name if current else "", "lost": lost}


def model_building(entry: ChatModelEntry | None = None) -> dict[str, Any] | None:
    """The first-run build of the chat model `entry` (default: the default model) while it has no live
    version ("model building (x%)")."""
    entry = entry or chat_model_default()
    if entry is None or not entry.local or not entry.source.startswith("registry:"):
        return None
    from slm.registry import RegistryError
    from slmsite.bootstrap import building
    from slmsite.registry import get_registry

    name = entry.source.removeprefix("registry:").partition("@")[0]
    try:
        return building(get_registry(), name)
    except RegistryError:
        return None
