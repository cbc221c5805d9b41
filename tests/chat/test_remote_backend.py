"""CHAT_BACKEND=remote: the same socket protocol served by a stub TGI server on 127.0.0.1."""

from __future__ import annotations

import pytest

from chat.models import Message
from tests.chat.test_consumer import collect, connect, recv
from tests.slm.test_remote import stub  # noqa: F401  (fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


async def test_remote_backend_streams_over_the_socket(stub, chat_settings, plain_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from channels.db import database_sync_to_async

    state, url = stub
    chat_settings.CHAT_BACKEND = "remote"
    chat_settings.CHAT_REMOTE_URL = url
    chat_settings.CHAT_REMOTE_TOKEN = ""
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hi", "params": {"stop": ["User:"], "do_sample": False}})
    start, tokens, end = await collect(comm)
    assert start["model"] == "remote" and end["reason"] == "stop"
    assert "".join(tokens) == end["text"] == "Hello 你好 "
    assert state.requests[0]["body"]["inputs"] == "User: hi\nAgent:"
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.text == end["text"] and agent.model_ref == "remote" and agent.status == "done"
    await comm.disconnect()


# ---------------------------------------------------------------- CHAT_BACKEND=openai (vLLM, Ollama, ...)
@pytest.fixture
def openai_stub(chat_settings):  # type: ignore[no-untyped-def]
    from tests.openai_stub import OpenAIStub

    server = OpenAIStub().start()
    chat_settings.CHAT_BACKEND = "openai"
    chat_settings.CHAT_REMOTE_URL = server.url + "/v1"
    chat_settings.CHAT_REMOTE_TOKEN = "sk-test"
    chat_settings.CHAT_REMOTE_MODEL = ""
    chat_settings.CHAT_REMOTE_API = "completions"
    chat_settings.CHAT_REMOTE_TIMEOUT_S = 30.0
    yield server
    server.stop()


async def test_openai_backend_streams_the_same_frames(openai_stub, plain_user) -> None:  # type: ignore[no-untyped-def]
    from channels.db import database_sync_to_async

    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hi", "params": {"stop": ["User:"], "do_sample": False}})
    start, tokens, end = await collect(comm)
    assert set(start) == {"type", "conversation", "message", "model", "queue_position"}
    assert start["model"] == "openai:stub-model" and end["reason"] == "stop"
    assert set(end) == {"type", "message", "reason", "text", "usage", "timing"}
    assert "".join(tokens) == end["text"] == "Hello 你好 "
    body = openai_stub.state.requests[-1]["body"]
    assert body["prompt"] == "User: hi\nAgent:" and body["temperature"] == 0.0
    assert openai_stub.state.requests[-1]["auth"] == "Bearer sk-test"
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.text == end["text"] and agent.model_ref == "openai:stub-model" and agent.status == "done"
    await comm.disconnect()


async def test_openai_stop_frame_and_socket_close_cancel_upstream_at_once(openai_stub, plain_user) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from channels.db import database_sync_to_async

    state = openai_stub.state
    state.stall_after = 1
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hi", "params": {"stop": []}})
    start = await recv(comm)
    assert start["type"] == "start"
    assert (await recv(comm))["type"] == "token"
    await comm.send_json_to({"type": "stop"})
    end = await recv(comm)
    assert end["type"] == "end" and end["reason"] == "cancelled" and end["text"] == "Hel"
    assert await asyncio.to_thread(state.disconnected.wait, 5)
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.status == "cancelled"

    state.disconnected.clear()
    state.stalled.clear()
    await comm.send_json_to({"type": "generate", "prompt": "again", "params": {"stop": []}})
    assert (await recv(comm))["type"] == "start"
    assert await asyncio.to_thread(state.stalled.wait, 10)
    await comm.disconnect()  # closing the tab: the server must stop generating for nobody
    assert await asyncio.to_thread(state.disconnected.wait, 5)


async def test_openai_429_and_stall_timeout_are_error_frames(openai_stub, plain_user, chat_settings) -> None:  # type: ignore[no-untyped-def]
    from channels.db import database_sync_to_async

    openai_stub.state.status = 429
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hi"})
    start = await recv(comm)
    assert start["type"] == "start"
    err = await recv(comm)
    assert err["type"] == "error" and err["code"] == "busy" and "try again in 7 s" in err["message"]
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.status == "error"

    openai_stub.state.status, openai_stub.state.stall_after = 200, 2
    chat_settings.CHAT_REMOTE_TIMEOUT_S = 0.5
    await comm.send_json_to({"type": "generate", "prompt": "hi", "params": {"stop": []}})
    assert (await recv(comm))["type"] == "start"
    frames = [await recv(comm) for _ in range(3)]
    assert [f["type"] for f in frames] == ["token", "token", "error"] and frames[2]["code"] == "upstream_timeout"
    await comm.disconnect()
