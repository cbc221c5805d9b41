"""CHAT_BACKEND=remote: the same socket protocol served by a stub TGI server on 127.0.0.1."""

from __future__ import annotations

import pytest

from chat.models import Message
from tests.chat.test_consumer import collect, connect
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
