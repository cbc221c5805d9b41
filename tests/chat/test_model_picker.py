"""The chat model picker: which models are offered (settings' model + admin rows), the choice stored on the
conversation and shown per message, per-model greedy == generate over the socket, the page and its
endpoint, the demo-model notice, and one backend per remote model."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse

from chat import selectors, services
from chat.models import ChatModel, Conversation, Message
from tests.chat.test_consumer import GREEDY, collect, connect, expect_error
from tests.chat.tiny import add_tiny_chat_version, tiny_model, tiny_tokenizer
from tests.slm.test_engine import reference


def greedy_reference(seed: int, prompt: str, max_new_tokens: int = 12) -> str:
    """What transformers' greedy `generate` replies with the tiny model of `seed` (GREEDY's params)."""
    tok = tiny_tokenizer()
    ids = reference(tiny_model(seed), tok(prompt)["input_ids"], do_sample=False, max_new_tokens=max_new_tokens,
                    repetition_penalty=1.2)  # fmt: skip
    return tok.decode(ids, skip_special_tokens=True)


@pytest.fixture
def two_models(registry, chat_settings):  # type: ignore[no-untyped-def]
    """The settings' model ("default" = registry:chat, seed 0) and an admin row "other" (registry:other, seed 5)."""
    chat = add_tiny_chat_version(registry, "chat", seed=0)
    other = add_tiny_chat_version(registry, "other", seed=5)
    ChatModel.objects.create(name="other", label="Other model", source="registry:other", position=1)
    return chat, other


# ------------------------------------------------------------------------------------------ offered
@pytest.mark.django_db
def test_offered_models_are_the_settings_model_and_the_enabled_rows(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT_BACKEND, settings.CHAT_MODEL, settings.CHAT_DEFAULT_MODEL = "local", "registry:chat", "default"
    ChatModel.objects.create(name="zh", source="registry:gpt2-zh", position=2)
    ChatModel.objects.create(name="vllm", backend="openai", url="http://gpu:8000/v1", source="qwen", position=1)
    ChatModel.objects.create(name="off", source="registry:x", enabled=False)
    offered = selectors.chat_models_offered()
    assert [e.name for e in offered] == ["default", "vllm", "zh"]
    assert offered[0].label == "chat" and offered[0].local and not offered[1].local
    assert selectors.chat_model_default().name == "default"
    settings.CHAT_DEFAULT_MODEL = "zh"
    assert selectors.chat_model_default().name == "zh"
    settings.CHAT_DEFAULT_MODEL = "off"  # not offered: the first offered one
    assert selectors.chat_model_default().name == "default"
    # a row named "default" replaces the settings' model, and switched off it hides it
    ChatModel.objects.create(name="default", source="registry:chat@v0001", enabled=False)
    assert [e.name for e in selectors.chat_models_offered()] == ["vllm", "zh"]


@pytest.mark.django_db
def test_a_conversation_keeps_its_model_while_offered(plain_user, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT_DEFAULT_MODEL = "default"
    row = ChatModel.objects.create(name="zh", source="registry:gpt2-zh")
    conv = Conversation.objects.create(owner=plain_user, model="zh")
    assert selectors.chat_model_for(conv).name == "zh"
    row.enabled = False
    row.save()
    assert selectors.chat_model_for(conv).name == "default"  # no longer offered: the default
    assert selectors.chat_model_choices(conv)["lost"] == "zh"
    with pytest.raises(ValueError, match="no chat model named 'zh'"):
        services.conversation_set_model(conversation=conv, model="zh", offered=["default"])


def test_chat_model_rows_validate(db) -> None:  # type: ignore[no-untyped-def]
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="source"):
        ChatModel(name="a", backend="local", source="").full_clean()
    with pytest.raises(ValidationError, match="URL"):
        ChatModel(name="b", backend="openai", url="gpu-box:8000").full_clean()
    ChatModel(name="c", backend="openai", url="http://gpu-box:8000/v1").full_clean()


# ------------------------------------------------------------------------------------------ socket
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_picking_a_model_over_the_socket_is_stored_and_greedy_equals_its_generate(two_models, plain_user) -> None:  # type: ignore[no-untyped-def]
    chat, other = two_models
    comm = await connect(plain_user)
    prompt = "User: hello there\nAgent:"
    await comm.send_json_to({"type": "generate", "prompt": "hello there", "params": GREEDY, "model": "other"})
    start, tokens, end = await collect(comm)
    assert start["model"] == other.ref and "".join(tokens) == end["text"]
    assert end["text"] == greedy_reference(5, prompt)
    conv = await database_sync_to_async(Conversation.objects.get)(pk=start["conversation"])
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert conv.model == "other" and agent.model_name == "other" and agent.model_ref == other.ref

    # the next message without "model" stays on the conversation's model
    await comm.send_json_to({"type": "generate", "conversation": conv.pk, "prompt": "hi", "params": GREEDY})
    start2, _, _ = await collect(comm)
    assert start2["model"] == other.ref
    # switching inside the conversation: stored, and the default model's reply is its own greedy
    await comm.send_json_to(
        {"type": "generate", "conversation": None, "prompt": "hello there", "params": GREEDY, "model": "default"}
    )
    start3, _, end3 = await collect(comm)
    assert start3["model"] == chat.ref and end3["text"] == greedy_reference(0, prompt)
    assert end3["text"] != end["text"]
    await comm.send_json_to(
        {"type": "generate", "conversation": conv.pk, "prompt": "and now?", "params": GREEDY, "model": "default"}
    )
    start4, _, _ = await collect(comm)
    assert start4["model"] == chat.ref
    conv = await database_sync_to_async(Conversation.objects.get)(pk=conv.pk)
    assert conv.model == "default"
    names = await database_sync_to_async(list)(
        Message.objects.filter(conversation=conv, role="agent").order_by("id").values_list("model_name", flat=True)
    )
    assert names == ["other", "other", "default"]
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_an_unknown_or_malformed_model_is_an_error_frame(two_models, plain_user) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    frame = await expect_error(comm, {"type": "generate", "prompt": "hi", "model": "gpt-5"}, "unknown_model")
    assert "default, other" in frame["message"]
    await expect_error(comm, {"type": "generate", "prompt": "hi", "model": 3}, "unknown_model")
    await expect_error(comm, {"type": "generate", "prompt": "hi", "model": ""}, "unknown_model")
    assert await database_sync_to_async(Message.objects.count)() == 0
    await comm.send_json_to({"type": "generate", "prompt": "hi", "params": GREEDY, "model": "other"})
    _, tokens, end = await collect(comm)  # the socket is still fine
    assert "".join(tokens) == end["text"]
    await comm.disconnect()


# ------------------------------------------------------------------------------------------ pages
@pytest.fixture
def page_client(client, plain_user, password, settings):  # type: ignore[no-untyped-def]
    settings.CHAT_ENGINE_WARM = False
    client.login(username=plain_user.username, password=password)
    return client


def _exchange(owner: Any, model_name: str) -> Conversation:
    conv, _, agent = services.exchange_start(
        owner=owner, conversation=None, prompt="hi", params={}, seed=None, model_ref="other@v0001",
        model_name=model_name, queued=False,
    )  # fmt: skip
    services.message_finish(message_id=agent.pk, text="yo", reason="eos")
    return conv


@pytest.mark.django_db
def test_the_page_offers_the_models_and_the_endpoint_stores_the_pick(page_client, plain_user, two_models) -> None:  # type: ignore[no-untyped-def]
    conv = _exchange(plain_user, "other")
    body = page_client.get(reverse("chat:conversation", args=[conv.pk])).content.decode()
    assert '<option value="default" data-window="128"' in body
    assert '<option value="other" data-window="128" selected>Other model</option>' in body
    assert 'other@v0001 <span class="muted">· picked as other</span>' in body  # the message's details
    url = reverse("chat:model", args=[conv.pk])
    r = page_client.post(url, {"model": "default"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 204
    conv.refresh_from_db()
    assert conv.model == "default"
    r = page_client.post(url, {"model": "nope"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 422 and b"no chat model named 'nope'" in r.content
    r = page_client.post(url, {"model": "other"})  # the no-JS form: back to the conversation
    assert r.status_code == 302 and r["Location"] == reverse("chat:conversation", args=[conv.pk])
    conv.refresh_from_db()
    assert conv.model == "other"
    body = page_client.get(reverse("chat:index")).content.decode()  # a new chat starts on the default
    assert '<option value="default" data-window="128" selected>' in body


@pytest.mark.django_db
def test_someone_elses_conversation_cannot_be_switched(client, admin_user, password, plain_user, two_models) -> None:  # type: ignore[no-untyped-def]
    conv = _exchange(plain_user, "other")
    client.login(username=admin_user.username, password=password)
    assert client.post(reverse("chat:model", args=[conv.pk]), {"model": "default"}).status_code == 404
    conv.refresh_from_db()
    assert conv.model == "other"


@pytest.mark.django_db
def test_demo_notice_only_for_the_offline_demo_model(page_client, registry, chat_settings) -> None:  # type: ignore[no-untyped-def]
    from chat.bootstrap import build_tiny_chat_version

    build_tiny_chat_version(registry, "chat")  # what bootstrap_models builds (marked as the demo)
    add_tiny_chat_version(registry, "real", seed=2)  # e.g. a pulled model
    ChatModel.objects.create(name="real", label="A real model", source="registry:real")
    body = page_client.get(reverse("chat:index")).content.decode()
    assert '<p class="cm-notice" id="demo-notice">Offline demo model' in body
    assert "pull_model" in body and "OpenAI-compatible server" in body
    assert 'data-demo="1" selected>chat (offline demo)</option>' in body
    chat_settings.CHAT_DEFAULT_MODEL = "real"
    body = page_client.get(reverse("chat:index")).content.decode()
    assert '<p class="cm-notice" id="demo-notice" hidden>' in body  # there for the picker, hidden


@pytest.mark.django_db
def test_a_dismissed_demo_notice_is_not_drawn(page_client, registry, chat_settings) -> None:  # type: ignore[no-untyped-def]
    from chat.bootstrap import build_tiny_chat_version

    build_tiny_chat_version(registry, "chat")
    body = page_client.get(reverse("chat:index")).content.decode()
    assert 'id="demo-notice-dismiss" aria-label="Dismiss the offline demo notice"' in body
    assert 'class="cm-notice-short">: expect fragments' in body  # what a phone shows
    page_client.cookies["slm_demo_notice"] = "dismissed"  # what the notice's × sets
    body = page_client.get(reverse("chat:index")).content.decode()
    assert '<p class="cm-notice" id="demo-notice" hidden data-dismissed="1">' in body
    assert 'data-demo="1" selected>chat (offline demo)</option>' in body  # the picker still says so


# ------------------------------------------------------------------------------------------ backends
@pytest.mark.django_db
def test_local_models_share_one_engine_and_each_remote_model_has_its_own(chat_settings) -> None:  # type: ignore[no-untyped-def]
    from chat import engine_client
    from slm.engine import EngineView
    from slm.remote import RemoteEngine

    ChatModel.objects.create(name="other", source="registry:other")
    ChatModel.objects.create(name="a", backend="openai", url="http://127.0.0.1:9/v1", source="m1")
    ChatModel.objects.create(name="b", backend="remote", url="http://127.0.0.1:9")
    entries = {e.name: e for e in selectors.chat_models_offered()}
    try:
        local1, local2 = engine_client.get_backend(entries["default"]), engine_client.get_backend(entries["other"])
        assert isinstance(local1, EngineView) and local1.engine is local2.engine
        assert (local1.model, local2.model) == ("registry:chat", "registry:other")
        a, b = engine_client.get_backend(entries["a"]), engine_client.get_backend(entries["b"])
        assert isinstance(a, RemoteEngine) and isinstance(b, RemoteEngine) and a is not b
        assert a.cfg.api == "completions" and a.cfg.model == "m1" and b.cfg.api == "tgi"
        assert engine_client.get_backend(entries["a"]) is a  # kept while its settings hold
        ChatModel.objects.filter(name="a").update(url="http://127.0.0.1:10/v1")
        moved = {e.name: e for e in selectors.chat_models_offered()}["a"]
        a2 = engine_client.get_backend(moved)
        assert a2 is not a and a2.cfg.url == "http://127.0.0.1:10/v1" and a.closed
    finally:
        engine_client.shutdown()
