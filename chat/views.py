"""Chat pages (thin: parse, call a selector/service, render). The socket itself is chat.consumers."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import engine_client, metrics, selectors, services  # noqa: F401  (metrics: registers the chat series for /metrics)
from chat.models import Conversation, Message
from chat.streams import keep_detached_alive, stop_detached
from slmsite import confirm

log = logging.getLogger(__name__)

PRESETS = [
    {
        "name": "balanced",
        "label": "Balanced",
        "params": {"do_sample": True, "temperature": 0.6, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.2},
    },
    {
        "name": "precise",
        "label": "Precise (greedy)",
        "params": {"do_sample": False, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.2},
    },
    {
        "name": "creative",
        "label": "Creative",
        "params": {"do_sample": True, "temperature": 1.0, "top_k": 100, "top_p": 0.95, "repetition_penalty": 1.1},
    },
]

# Set by chat.js when the offline-demo notice is dismissed; read here so a dismissed notice is never drawn.
DEMO_NOTICE_COOKIE = "slm_demo_notice"


def _conversation_or_404(request: HttpRequest, pk: int) -> Conversation:
    conv = selectors.conversation_get(user=request.user, conversation_id=pk)
    if conv is None:
        raise Http404("no such conversation")
    return conv


def _page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    engine_client.warm()  # the engine loads the model while the user types
    picker = selectors.chat_model_choices(conversation)
    current = next((c for c in picker["choices"] if c["name"] == picker["current"]), None)
    defaults = dict(settings.CHAT_DEFAULT_PARAMS)
    limits = dict(settings.CHAT_LIMITS)
    window = current["window"] if current else None
    if window:  # a reply can never be longer than the model's window: the control says so
        low, high = limits["max_new_tokens"]
        limits["max_new_tokens"] = (low, min(high, window))
        defaults["max_new_tokens"] = min(defaults["max_new_tokens"], window // 2)
    entry = selectors.chat_model_get(picker["current"]) if current else None
    return render(
        request,
        "chat/index.html",
        {
            "conversations": selectors.conversation_list(user=request.user),
            "conversation": conversation,
            "chat_messages": selectors.conversation_messages(conversation=conversation) if conversation else [],
            "defaults": defaults,
            "stop_text": ", ".join(defaults.get("stop") or []),
            "limits": limits,
            "max_new_tokens_cap": settings.CHAT_LIMITS["max_new_tokens"][1],
            "window": window,
            "presets": PRESETS,
            "max_prompt_chars": settings.CHAT_MAX_PROMPT_CHARS,
            "building": selectors.model_building(entry),
            "models": picker["choices"],
            "model_current": current,
            "model_lost": picker["lost"],
            "demo_notice_dismissed": request.COOKIES.get(DEMO_NOTICE_COOKIE) == "dismissed",
        },
    )


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return _page(request, None)


@login_required
@require_GET
def conversation(request: HttpRequest, pk: int) -> HttpResponse:
    return _page(request, _conversation_or_404(request, pk))


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    """The sidebar's list (the page refreshes it with htmx). Opened directly (a bookmark, a new tab) it
    would be a bare fragment: the browser is sent to the chat page of the active conversation instead."""
    active = selectors.conversation_get(user=request.user, conversation_id=request.GET.get("active"))
    if not getattr(request, "htmx", False):
        return redirect("chat:conversation", pk=active.pk) if active else redirect("chat:index")
    return render(
        request,
        "chat/index.html#conv_list",
        {"conversations": selectors.conversation_list(user=request.user), "conversation": active},
    )


@login_required
@require_POST
def conversation_rename(request: HttpRequest, pk: int) -> HttpResponse:
    conv = _conversation_or_404(request, pk)
    try:
        services.conversation_rename(conversation=conv, title=request.POST.get("title", ""))
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect("chat:conversation", pk=conv.pk)


@login_required
@require_POST
def conversation_model(request: HttpRequest, pk: int) -> HttpResponse:
    """Picks the chat model of a conversation (the picker posts here; its next replies use it)."""
    conv = _conversation_or_404(request, pk)
    names = [e.name for e in selectors.chat_models_offered()]
    try:
        services.conversation_set_model(conversation=conv, model=request.POST.get("model", ""), offered=names)
    except ValueError as exc:
        if getattr(request, "htmx", False) or request.headers.get("Accept") == "application/json":
            return HttpResponse(str(exc), status=422, content_type="text/plain")
        messages.error(request, str(exc))
        return redirect("chat:conversation", pk=conv.pk)
    if getattr(request, "htmx", False) or request.headers.get("Accept") == "application/json":
        return HttpResponse(status=204)
    return redirect("chat:conversation", pk=conv.pk)


@login_required
@require_POST
def conversation_delete(request: HttpRequest, pk: int) -> HttpResponse:
    conv = _conversation_or_404(request, pk)
    if not confirm.confirmed(request):  # deleting is permanent: ask first
        return confirm.ask(
            request,
            question=f"Delete “{conv}” and all its messages? This cannot be undone.",
            action="Delete conversation",
            cancel_url=reverse("chat:conversation", kwargs={"pk": conv.pk}),
        )
    services.conversation_delete(conversation=conv)
    messages.success(request, "Conversation deleted.")
    if getattr(request, "htmx", False):
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("chat:index")
        return response
    return redirect("chat:index")


def _message_or_404(request: HttpRequest, pk: int) -> Message:
    msg = selectors.message_get(user=request.user, message_id=pk)
    if msg is None:
        raise Http404("no such message")
    return msg


@login_required
@require_GET
def message(request: HttpRequest, pk: int) -> HttpResponse:
    """One message (polled by htmx or chat.js, with HX-Request, while a reply is still streaming, e.g. after a
    page refresh). A poll keeps a reply whose page was reloaded (detached stream) generating."""
    msg = _message_or_404(request, pk)
    if not getattr(request, "htmx", False):  # opened directly: the conversation page at that message
        return redirect(reverse("chat:conversation", kwargs={"pk": msg.conversation_id}) + f"#msg-{msg.pk}")
    if msg.status in (Message.Status.QUEUED, Message.Status.STREAMING):
        try:
            keep_detached_alive(msg.pk)
        except redis.RedisError:  # the reply may stop after its grace; the page still shows what exists
            log.warning("chat: could not extend the grace of detached message %s", msg.pk)
    return render(request, "chat/index.html#message", {"m": msg})


@login_required
@require_POST
def message_stop(request: HttpRequest, pk: int) -> HttpResponse:
    """Stops a reply that goes on after its page was reloaded (the reloaded page follows it by polling and
    has no socket of its own to send "stop" on). 202 when it is being stopped, 409 when it is not running."""
    msg = _message_or_404(request, pk)
    try:
        stopped = msg.status in (Message.Status.QUEUED, Message.Status.STREAMING) and stop_detached(msg.pk)
    except redis.RedisError:
        log.exception("chat: could not stop detached message %s", msg.pk)
        return HttpResponse("the server cannot reach its Redis; try again", status=503, content_type="text/plain")
    if stopped:
        return HttpResponse(status=202)
    return HttpResponse("this reply is not running here", status=409, content_type="text/plain")


@login_required
@require_POST
def message_rate(request: HttpRequest, pk: int) -> HttpResponse:
    msg = _message_or_404(request, pk)
    try:
        rating = int(request.POST.get("rating", ""))
        if msg.rating == rating:
            rating = 0  # pressing the same thumb again clears it
        services.message_rate(message=msg, rating=rating)
    except ValueError as exc:
        return HttpResponse(f"bad rating: {exc}", status=400, content_type="text/plain")
    if getattr(request, "htmx", False):
        return render(request, "chat/index.html#message", {"m": msg})
    return redirect("chat:conversation", pk=msg.conversation_id)
