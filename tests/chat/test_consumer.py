"""The /ws/chat/ protocol (DESIGN.md §3) with WebsocketCommunicator: every error code, streaming,
persistence, greedy == generate, seeds, stop/disconnect, concurrency, context truncation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from chat.models import Conversation, Message
from chat.routing import websocket_urlpatterns
from tests.chat.tiny import tiny_model, tiny_tokenizer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

TIMEOUT = 20


async def connect(user: Any) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/chat/")
    comm.scope["user"] = user
    connected, _ = await comm.connect(timeout=TIMEOUT)
    assert connected
    return comm


async def recv(comm: WebsocketCommunicator) -> dict[str, Any]:
    return await comm.receive_json_from(timeout=TIMEOUT)


async def collect(comm: WebsocketCommunicator) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(start, token texts, end) of one generation."""
    start = await recv(comm)
    assert start["type"] == "start", start
    tokens: list[str] = []
    while True:
        frame = await recv(comm)
        if frame["type"] == "token":
            assert frame["message"] == start["message"]
            tokens.append(frame["text"])
        else:
            assert frame["type"] == "end", frame
            return start, tokens, frame


async def expect_error(comm: WebsocketCommunicator, payload: Any, code: str) -> dict[str, Any]:
    if isinstance(payload, str):
        await comm.send_to(text_data=payload)
    else:
        await comm.send_json_to(payload)
    frame = await recv(comm)
    while frame["type"] == "token":  # a stream already running on this socket keeps sending tokens
        frame = await recv(comm)
    assert frame["type"] == "error", frame
    assert frame["code"] == code, frame
    assert frame["message"]
    return frame


GREEDY = {"do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.2, "stop": []}


async def test_not_authenticated_gets_error_and_close(chat_model) -> None:  # type: ignore[no-untyped-def]
    from slmsite.asgi import application

    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]  # a page of the site itself
    comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await comm.connect(timeout=TIMEOUT)
    assert connected
    frame = await recv(comm)
    assert frame == {"type": "error", "code": "not_authenticated", "message": frame["message"]}
    out = await comm.receive_output(timeout=TIMEOUT)
    assert out["type"] == "websocket.close" and out["code"] == 4401
    await comm.disconnect()


async def test_every_bad_frame_gets_its_code_and_socket_stays_usable(chat_model, plain_user, admin_user, settings):  # type: ignore[no-untyped-def]
    other = await database_sync_to_async(Conversation.objects.create)(owner=admin_user, title="not yours")
    comm = await connect(plain_user)
    errors_before = metric("slm_chat_errors_total", code="bad_json")
    await expect_error(comm, "not json{", "bad_json")
    assert metric("slm_chat_errors_total", code="bad_json") == errors_before + 1
    await expect_error(comm, "[1, 2]", "bad_json")
    await expect_error(comm, {"type": "dance"}, "unknown_type")
    await expect_error(comm, {"prompt": "hi"}, "unknown_type")
    await expect_error(comm, {"type": "generate"}, "missing_prompt")
    await expect_error(comm, {"type": "generate", "prompt": "   "}, "missing_prompt")
    await expect_error(comm, {"type": "generate", "prompt": 5}, "missing_prompt")
    for params in (
        {"temperature": 99},
        {"top_p": -1},
        {"max_new_tokens": 0},
        {"max_new_tokens": 10**6},
        {"top_k": "many"},
        {"do_sample": "yes"},
        {"seed": -3},
        {"stop": [1, 2]},
        {"stop": ["x"] * 50},
        {"bogus": 1},
        "not an object",
    ):
        frame = await expect_error(comm, {"type": "generate", "prompt": "hi", "params": params}, "bad_params")
        assert frame["message"]
    await expect_error(
        comm, {"type": "generate", "prompt": "x" * (settings.CHAT_MAX_PROMPT_CHARS + 1)}, "prompt_too_long"
    )
    # fits in characters but not in the 128-token window once max_new_tokens is reserved
    await expect_error(
        comm,
        {"type": "generate", "prompt": "hello there " * 40, "params": {"max_new_tokens": 100}},
        "prompt_too_long",
    )
    await expect_error(comm, {"type": "generate", "prompt": "hi", "conversation": other.pk}, "not_found")
    await expect_error(comm, {"type": "generate", "prompt": "hi", "conversation": "abc"}, "not_found")
    # still usable: a normal generation works on the same socket
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": GREEDY})
    start, tokens, end = await collect(comm)
    assert end["reason"] in ("eos", "length", "stop")
    assert "".join(tokens) == end["text"]
    assert not await database_sync_to_async(Conversation.objects.filter(owner=plain_user, title="").exists)()
    await comm.disconnect()


async def test_rate_limited(chat_model, plain_user, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT_RATE_LIMIT_PER_MIN = 2
    comm = await connect(plain_user)
    for _ in range(2):
        await comm.send_json_to({"type": "generate", "prompt": "hi", "params": {**GREEDY, "max_new_tokens": 2}})
        await collect(comm)
    await expect_error(comm, {"type": "generate", "prompt": "hi"}, "rate_limited")
    await comm.disconnect()


async def test_model_unavailable_when_registry_empty(chat_settings, plain_user) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    frame = await expect_error(comm, {"type": "generate", "prompt": "hi"}, "model_unavailable")
    assert "bootstrap_models" in frame["message"]
    await comm.disconnect()


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_streams_persists_and_matches_greedy_generate(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    streams_before = metric("slm_chat_streams_total")
    ttft_before = metric("slm_chat_ttft_seconds_count")
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "conversation": None, "prompt": "hello there", "params": GREEDY})
    start, tokens, end = await collect(comm)
    assert start["model"] == chat_model.ref and start["queue_position"] == 0
    assert isinstance(start["conversation"], int) and isinstance(start["message"], int)
    assert "".join(tokens) == end["text"]
    assert set(end) == {"type", "message", "reason", "text", "usage", "timing"}
    assert end["usage"]["prompt_tokens"] > 0 and end["timing"]["ttft_ms"] > 0

    tok = tiny_tokenizer()
    model = tiny_model()
    ids = tok("User: hello there\nAgent:")["input_ids"]
    assert end["usage"]["prompt_tokens"] == len(ids)
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=12,
        repetition_penalty=1.2,
        pad_token_id=tok.eos_token_id,
    )[0, len(ids) :].tolist()
    if tok.eos_token_id in out:
        out = out[: out.index(tok.eos_token_id)]
    assert end["text"] == tok.decode(out, skip_special_tokens=True)
    assert end["usage"]["completion_tokens"] == len(out)

    msgs = await database_sync_to_async(list)(
        Message.objects.filter(conversation_id=start["conversation"]).order_by("id")
    )
    assert [m.role for m in msgs] == ["user", "agent"]
    user_msg, agent = msgs
    assert user_msg.text == "hello there"
    assert agent.pk == start["message"] and agent.text == end["text"]
    assert agent.status == "done" and agent.finish_reason == end["reason"]
    assert agent.model_ref == chat_model.ref
    assert agent.params["max_new_tokens"] == 12 and agent.params["do_sample"] is False
    assert agent.completion_tokens == end["usage"]["completion_tokens"] and agent.ttft_ms is not None
    conv = await database_sync_to_async(Conversation.objects.get)(pk=start["conversation"])
    assert conv.owner_id == plain_user.pk and conv.title == "hello there"
    assert metric("slm_chat_streams_total") == streams_before + 1
    assert metric("slm_chat_ttft_seconds_count") == ttft_before + 1
    assert metric("slm_chat_active_streams") == 0
    await comm.disconnect()


async def test_seed_reproducible_and_recorded(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    params = {
        "do_sample": True,
        "temperature": 1.5,
        "top_k": 50,
        "top_p": 0.95,
        "seed": 1234,
        "max_new_tokens": 16,
        "stop": [],
    }
    texts = []
    for _ in range(2):
        await comm.send_json_to({"type": "generate", "prompt": "tell me a joke", "params": params})
        _, _, end = await collect(comm)
        texts.append(end["text"])
    assert texts[0] == texts[1]
    # no seed given: one is drawn and stored, and replaying it reproduces the reply
    await comm.send_json_to({"type": "generate", "prompt": "tell me a joke", "params": {**params, "seed": None}})
    start, _, end = await collect(comm)
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.seed is not None and agent.params["seed"] == agent.seed
    await comm.send_json_to({"type": "generate", "prompt": "tell me a joke", "params": {**params, "seed": agent.seed}})
    _, _, again = await collect(comm)
    assert again["text"] == end["text"]
    await comm.disconnect()


async def test_stop_cancels_within_a_token_and_socket_reusable(paced_chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 100}})
    start = await recv(comm)
    first = await recv(comm)
    while first["type"] != "token":
        first = await recv(comm)
    received = 1
    await comm.send_json_to({"type": "stop"})
    while True:
        frame = await recv(comm)
        if frame["type"] == "end":
            break
        received += 1
    assert frame["reason"] == "cancelled"
    assert metric("slm_chat_cancellations_total", how="stop") >= 1
    # the engine notices the stop before its next step: at most one token beyond those in flight
    assert frame["usage"]["completion_tokens"] <= received + 1
    assert frame["usage"]["completion_tokens"] < 100
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.status == "cancelled" and agent.finish_reason == "cancelled"
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 3}})
    _, _, end = await collect(comm)
    assert end["reason"] in ("length", "eos", "stop")
    await comm.disconnect()


async def test_disconnect_cancels_and_persists(paced_chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    from chat.engine_client import peek_backend

    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 100}})
    start = await recv(comm)
    assert (await recv(comm))["type"] == "token"
    await comm.disconnect()
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.status == "cancelled" and 0 < agent.completion_tokens < 100
    assert peek_backend().active_ids() == []


async def test_one_live_stream_per_user_and_busy(
    paced_chat_model, plain_user, admin_user, annotator_user, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT_MAX_BATCH = 1
    settings.CHAT_QUEUE_SIZE = 1
    long = {**GREEDY, "max_new_tokens": 100}
    a1 = await connect(plain_user)
    await a1.send_json_to({"type": "generate", "prompt": "hello", "params": long})
    start = await recv(a1)
    assert start["queue_position"] == 0
    await expect_error(a1, {"type": "generate", "prompt": "again", "params": long}, "already_streaming")
    a2 = await connect(plain_user)  # a second tab of the same user
    await expect_error(a2, {"type": "generate", "prompt": "again", "params": long}, "already_streaming")
    b = await connect(admin_user)
    await b.send_json_to({"type": "generate", "prompt": "queued", "params": {**GREEDY, "max_new_tokens": 2}})
    queued = await recv(b)
    assert queued["type"] == "start" and queued["queue_position"] == 1
    c = await connect(annotator_user)
    await expect_error(c, {"type": "generate", "prompt": "no room"}, "busy")
    await a1.send_json_to({"type": "stop"})
    while (await recv(a1))["type"] != "end":
        pass
    while (frame := await recv(b))["type"] != "end":
        pass
    assert frame["reason"] in ("length", "eos", "stop")
    for comm in (a1, a2, b, c):
        await comm.disconnect()


async def test_concurrent_streams_interleave(paced_chat_model, plain_user, admin_user) -> None:  # type: ignore[no-untyped-def]
    comms = [await connect(plain_user), await connect(admin_user)]
    for i, comm in enumerate(comms):
        await comm.send_json_to(
            {"type": "generate", "prompt": f"hello {i}", "params": {**GREEDY, "max_new_tokens": 20}}
        )
    order: list[tuple[int, float]] = []

    async def run(i: int, comm: WebsocketCommunicator) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        start = await recv(comm)
        assert start["type"] == "start"
        texts = []
        while True:
            frame = await recv(comm)
            if frame["type"] == "token":
                order.append((i, loop.time()))
                texts.append(frame["text"])
            else:
                assert "".join(texts) == frame["text"]
                return frame

    ends = await asyncio.gather(*(run(i, c) for i, c in enumerate(comms)))
    assert all(e["type"] == "end" for e in ends)
    order.sort(key=lambda x: x[1])
    firsts = {i: next(k for k, (j, _) in enumerate(order) if j == i) for i in (0, 1)}
    lasts = {i: max(k for k, (j, _) in enumerate(order) if j == i) for i in (0, 1)}
    # both streams were live at the same time: each one's first token came before the other's last
    assert firsts[0] < lasts[1] and firsts[1] < lasts[0]
    for comm in comms:
        await comm.disconnect()


async def test_multi_turn_prompt_and_truncation(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "first question", "params": {**GREEDY, "max_new_tokens": 4}})
    start, _, end1 = await collect(comm)
    conv = start["conversation"]
    await comm.send_json_to(
        {"type": "generate", "conversation": conv, "prompt": "second", "params": {**GREEDY, "max_new_tokens": 4}}
    )
    start2, _, end2 = await collect(comm)
    assert start2["conversation"] == conv
    tok = tiny_tokenizer()
    expected = f"User: first question\nAgent: {' '.join(end1['text'].split())}\nUser: second\nAgent:"
    assert end2["usage"]["prompt_tokens"] == len(tok(expected)["input_ids"])
    # a long history is cut from the oldest turn to fit 128 - max_new_tokens
    for i in range(6):
        await comm.send_json_to(
            {
                "type": "generate",
                "conversation": conv,
                "prompt": f"turn {i} " + "hello there " * 6,
                "params": {**GREEDY, "max_new_tokens": 4},
            }
        )
        _, _, end = await collect(comm)
        assert end["usage"]["prompt_tokens"] <= 128 - 4
    count = await database_sync_to_async(Message.objects.filter(conversation_id=conv).count)()
    assert count == 16
    await comm.disconnect()


async def generate_then_detach(user: Any, max_new_tokens: int) -> int:
    """Starts a reply, waits for its first token, then leaves as a reloading page does (detach + close);
    returns the reply's message id."""
    comm = await connect(user)
    await comm.send_json_to(
        {"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": max_new_tokens}}
    )
    start = await recv(comm)
    assert (await recv(comm))["type"] == "token"
    await comm.send_json_to({"type": "detach"})  # the page is being reloaded
    await comm.disconnect()
    return int(start["message"])


async def test_reload_mid_reply_keeps_generating_while_polled(paced_chat_model, plain_user, chat_settings) -> None:  # type: ignore[no-untyped-def]
    from chat.streams import keep_detached_alive

    chat_settings.CHAT_DETACH_GRACE_S = 2.0
    mid = await generate_then_detach(plain_user, 30)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:  # the reloaded page polls the message until it is final
        agent = await database_sync_to_async(Message.objects.get)(pk=mid)
        if agent.status not in ("queued", "streaming"):
            break
        assert loop.time() < deadline
        await database_sync_to_async(keep_detached_alive)(mid)  # the poll view, in a thread
        await asyncio.sleep(0.1)  # poll interval of the page (a condition wait, bounded by the deadline)
    assert agent.status == "done" and agent.finish_reason in ("length", "eos")
    assert agent.completion_tokens == 30 or agent.finish_reason == "eos"


async def test_detached_stream_without_polls_is_cancelled(paced_chat_model, plain_user, chat_settings) -> None:  # type: ignore[no-untyped-def]
    from chat.engine_client import peek_backend

    chat_settings.CHAT_DETACH_GRACE_S = 0.3
    mid = await generate_then_detach(plain_user, 100)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (agent := await database_sync_to_async(Message.objects.get)(pk=mid)).status == "streaming":
        assert loop.time() < deadline
        await asyncio.sleep(0.1)
    assert agent.status == "cancelled" and agent.completion_tokens < 100
    assert peek_backend().active_ids() == []


async def test_a_followed_detached_stream_stops_on_request(paced_chat_model, plain_user, chat_settings) -> None:  # type: ignore[no-untyped-def]
    """The Stop button of a reloaded page that polls the reply (no socket of its own): stop_detached."""
    from chat.engine_client import peek_backend
    from chat.streams import keep_detached_alive, stop_detached

    chat_settings.CHAT_DETACH_GRACE_S = 5.0
    mid = await generate_then_detach(plain_user, 100)
    assert keep_detached_alive(mid)
    assert stop_detached(mid) and not stop_detached(mid + 1000)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    while (agent := await database_sync_to_async(Message.objects.get)(pk=mid)).status == "streaming":
        assert loop.time() < stopped_at + 5.0  # well within the 5 s grace: the stop is seen in ~0.25 s
        await asyncio.sleep(0.05)
    assert agent.status == "cancelled" and agent.completion_tokens < 100
    assert peek_backend().active_ids() == []


async def test_conversation_ids_of_wrong_types_are_not_found(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    """Infinity crashed int() (OverflowError, socket closed); true / 1.5 used to pick conversation 1."""
    mine = await database_sync_to_async(Conversation.objects.create)(owner=plain_user, title="mine")
    comm = await connect(plain_user)
    await expect_error(comm, '{"type": "generate", "prompt": "hi", "conversation": Infinity}', "not_found")
    await expect_error(comm, '{"type": "generate", "prompt": "hi", "conversation": NaN}', "not_found")
    for cid in (True, mine.pk + 0.5, 10**30, -mine.pk, [mine.pk], {"id": mine.pk}):
        await expect_error(comm, {"type": "generate", "prompt": "hi", "conversation": cid}, "not_found")
    await comm.send_json_to({"type": "generate", "prompt": "hi", "conversation": str(mine.pk), "params": GREEDY})
    start, _, _ = await collect(comm)
    assert start["conversation"] == mine.pk
    await comm.disconnect()


async def test_nul_characters_are_stored_without_crashing(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL text/jsonb reject NUL: the prompt and stop strings with one used to close the socket."""
    comm = await connect(plain_user)
    params = {**GREEDY, "max_new_tokens": 3, "stop": ["\x00", "User:"]}
    await comm.send_json_to({"type": "generate", "prompt": "he\x00llo", "params": params})
    start, tokens, end = await collect(comm)
    assert "".join(tokens) == end["text"]
    user_msg = await database_sync_to_async(Message.objects.filter(role="user").get)(
        conversation_id=start["conversation"]
    )
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert user_msg.text == "hello" and agent.status == "done" and agent.params["stop"] == ["", "User:"]
    await comm.disconnect()


async def test_max_new_tokens_beyond_the_window_still_answers(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    """max_new_tokens 300 is within CHAT_LIMITS but above the 128-token window: every prompt used to get
    prompt_too_long ("at most 1 token fits"); the reply now runs to the window's edge."""
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 300}})
    _, tokens, end = await collect(comm)
    assert end["reason"] in ("eos", "length", "stop") and "".join(tokens) == end["text"]
    assert end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"] <= 128
    await comm.disconnect()


async def test_a_failing_save_ends_the_stream_with_an_error(paced_chat_model, plain_user, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The pump task used to die silently: no frame for the client and the engine kept generating."""
    from chat import consumers, engine_client

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(consumers.services, "message_progress", broken)
    comm = await connect(plain_user)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 100}})
    assert (await recv(comm))["type"] == "start"
    frame = await recv(comm)
    while frame["type"] == "token":
        frame = await recv(comm)
    assert frame["type"] == "error" and frame["code"] == "server_error"
    backend = engine_client.peek_backend()
    for _ in range(200):  # the request is cancelled and leaves the engine
        if not backend.active_ids():
            break
        await asyncio.sleep(0.02)
    assert backend.active_ids() == []
    await comm.disconnect()


async def test_a_failing_exchange_save_is_an_error_frame(chat_model, plain_user, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """exchange_start raising used to propagate: the socket closed (1011) instead of an error frame."""
    from chat import consumers, engine_client

    real = consumers.services.exchange_start

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(consumers.services, "exchange_start", broken)
    comm = await connect(plain_user)
    await expect_error(comm, {"type": "generate", "prompt": "hello", "params": GREEDY}, "server_error")
    backend = engine_client.peek_backend()
    for _ in range(200):  # the submitted request is cancelled
        if not backend.active_ids():
            break
        await asyncio.sleep(0.02)
    assert backend.active_ids() == []
    monkeypatch.setattr(consumers.services, "exchange_start", real)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": GREEDY})
    _, tokens, end = await collect(comm)
    assert "".join(tokens) == end["text"]
    await comm.disconnect()


async def test_lone_surrogate_escapes_are_bad_json(chat_model, plain_user) -> None:  # type: ignore[no-untyped-def]
    """'\\ud800' is valid JSON but no valid text: the tokenizer/DB/encoder failed and the socket hung."""
    comm = await connect(plain_user)
    await expect_error(comm, '{"type": "generate", "prompt": "hi \\ud800 there"}', "bad_json")
    await expect_error(comm, '{"type": "generate", "prompt": "hi", "params": {"stop": ["\\udc00"]}}', "bad_json")
    await comm.send_json_to({"type": "generate", "prompt": "hi 😀 there", "params": {**GREEDY, "max_new_tokens": 3}})
    _, tokens, end = await collect(comm)
    assert "".join(tokens) == end["text"]
    await comm.disconnect()


async def test_deeply_nested_frames_are_bad_json_and_logged(chat_model, plain_user, caplog) -> None:  # type: ignore[no-untyped-def]
    """999 levels of nesting raised an uncaught RecursionError: the socket closed with 1011."""
    comm = await connect(plain_user)
    for depth in (999, 30_000):
        frame = '{"type": "generate", "prompt": "hi", "params": ' + "[" * depth + "]" * depth + "}"
        with caplog.at_level("WARNING", logger="chat.consumers"):
            await expect_error(comm, frame, "bad_json")
        assert "nested deeper" in caplog.text
    await expect_error(comm, {"type": "generate", "prompt": "hi", "params": {"stop": [[[[[[[["x"]]]]]]]]}}, "bad_json")
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 2}})
    await collect(comm)  # still usable
    await comm.disconnect()


async def test_oversized_frames_get_an_error_frame_and_a_log_line(chat_model, plain_user, settings, caplog) -> None:  # type: ignore[no-untyped-def]
    comm = await connect(plain_user)
    big = {"type": "generate", "prompt": "hi", "pad": "x" * settings.CHAT_MAX_FRAME_CHARS}
    with caplog.at_level("WARNING", logger="chat.consumers"):
        await expect_error(comm, big, "frame_too_large")
    assert "sent a frame of" in caplog.text
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 2}})
    await collect(comm)
    await comm.disconnect()


async def test_an_unexpected_failure_while_starting_is_an_error_frame(chat_model, plain_user, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Any exception below generate (here: the backend's prepare) costs one error frame, not the socket."""
    from chat import engine_client

    backend = engine_client.get_backend()
    real = backend.prepare
    monkeypatch.setattr(backend, "prepare", lambda *a, **k: (_ for _ in ()).throw(ImportError("racy import")))
    comm = await connect(plain_user)
    await expect_error(comm, {"type": "generate", "prompt": "hi"}, "server_error")
    monkeypatch.setattr(backend, "prepare", real)
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": {**GREEDY, "max_new_tokens": 2}})
    await collect(comm)
    await comm.disconnect()


async def test_a_slow_progress_write_does_not_hold_the_stream(paced_chat_model, plain_user, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The partial reply is saved every PROGRESS_SAVE_S for a reload mid-reply; that write used to sit between
    two tokens (+25 ms p95 per token on a busy database). Now tokens keep flowing while it is stuck, and the
    final text still lands after it."""
    import threading

    from chat import consumers

    real = consumers.services.message_progress
    stuck, release = threading.Event(), threading.Event()

    def slow(**kwargs: Any) -> None:
        if "model_ref" not in kwargs:  # the token-path write (not the one at "started")
            stuck.set()
            assert release.wait(30)
        real(**kwargs)

    monkeypatch.setattr(consumers, "PROGRESS_SAVE_S", 0.0)
    monkeypatch.setattr(consumers.services, "message_progress", slow)
    comm = await connect(plain_user)
    params = {**GREEDY, "max_new_tokens": 40, "stop": []}
    await comm.send_json_to({"type": "generate", "prompt": "hello", "params": params})
    start = await recv(comm)
    assert start["type"] == "start"
    tokens_while_stuck = 0
    frame = await recv(comm)
    while frame["type"] == "token":
        if stuck.is_set():
            tokens_while_stuck += 1
            if tokens_while_stuck == 5:
                release.set()
        frame = await recv(comm)
    release.set()
    assert frame["type"] == "end" and tokens_while_stuck >= 5, (frame, tokens_while_stuck)
    agent = await database_sync_to_async(Message.objects.get)(pk=start["message"])
    assert agent.status == "done" and agent.text == frame["text"]
    await comm.disconnect()
