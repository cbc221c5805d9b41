"""Two server processes behind one proxy share the chat rules through Redis (chat/streams.py): one live stream
per user, the per-user rate limit, and a detached stream kept alive by polls that reach the other process.
Before, each process kept its own counters: a user could run one stream per process and N x the limit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from urllib.request import Request, urlopen

import pytest
from django.test import Client, override_settings
from websockets.sync.client import connect

from tests.chat.tiny import add_tiny_chat_version
from tests.stack import ROOT, free_port, listening, stack_env, stop, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
LONG = {"do_sample": False, "max_new_tokens": 120, "stop": []}


@pytest.fixture
def servers(registry, plain_user, tmp_path):  # type: ignore[no-untyped-def]
    add_tiny_chat_version(registry, serving={"min_step_s": 0.1})  # at most 10 tokens a second
    prefix = f"test-chat-{uuid.uuid4().hex[:8]}"
    env = stack_env(
        CHAT_ENGINE_MODE="thread",
        CHAT_PRECISION="fp32",
        CHAT_RATE_LIMIT_PER_MIN="3",
        CHAT_DETACH_GRACE_S="4",
        CHAT_STREAMS_PREFIX=prefix,
    )
    procs, ports = [], []
    for name in ("a", "b"):
        port = free_port()
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slmsite.server",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "slmsite.asgi:application",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        ports.append(port)
    client = Client()
    client.force_login(plain_user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    try:
        for port in ports:
            wait_until(lambda port=port: listening(port), 60, "the servers to listen")
            with urlopen(Request(f"http://127.0.0.1:{port}/chat/", headers={"Cookie": cookie}), timeout=60) as r:
                assert r.status == 200  # warm: the first request of a process is slow on a loaded machine
        yield ports, cookie, prefix
    finally:
        stop(*procs)


def _ws(port: int, cookie: str):  # type: ignore[no-untyped-def]
    headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
    return connect(f"ws://127.0.0.1:{port}/ws/chat/", additional_headers=headers, open_timeout=30)


def _send(ws, prompt: str, params=LONG) -> dict:  # type: ignore[no-untyped-def]
    ws.send(json.dumps({"type": "generate", "prompt": prompt, "params": params}))
    return json.loads(ws.recv(timeout=60))


def _until_end(ws) -> dict:  # type: ignore[no-untyped-def]
    while (frame := json.loads(ws.recv(timeout=60)))["type"] != "end":
        assert frame["type"] == "token", frame
    return frame


def test_two_processes_share_the_stream_rule_the_rate_limit_and_detached_streams(servers):
    (a, b), cookie, prefix = servers
    with _ws(a, cookie) as on_a, _ws(b, cookie) as on_b:
        first = _send(on_a, "hello")
        assert first["type"] == "start", first  # 1st request of the minute
        refused = _send(on_b, "hello from the other tab")  # 2nd: the stream on A counts on B
        assert refused == {**refused, "type": "error", "code": "already_streaming"}
        on_a.send(json.dumps({"type": "stop"}))
        assert _until_end(on_a)["reason"] == "cancelled"
        assert _send(on_b, "now it may", {**LONG, "max_new_tokens": 2})["type"] == "start"  # 3rd
        _until_end(on_b)
        limited = _send(on_a, "one too many")  # 4th within the minute, on the other process
        assert limited == {**limited, "type": "error", "code": "rate_limited"}

    # a detached stream is kept alive by polls that reach the other process (a fresh minute for the limit)
    from chat import streams

    with override_settings(CHAT_STREAMS_PREFIX=prefix):
        streams.reset()
    with _ws(a, cookie) as on_a:
        start = _send(on_a, "hello", LONG)  # ~12 s: it outlives the 4 s grace only if B's polls extend it
        assert start["type"] == "start"
        assert json.loads(on_a.recv(timeout=60))["type"] == "token"
        on_a.send(json.dumps({"type": "detach"}))  # the page reloads ...
    mid = start["message"]
    deadline = time.monotonic() + 60
    while True:  # ... and the reloaded page, served by B, polls the message
        with urlopen(
            Request(f"http://127.0.0.1:{b}/chat/m/{mid}/", headers={"Cookie": cookie, "HX-Request": "true"}), timeout=30
        ) as r:
            html = r.read().decode()
        if 'data-status="streaming"' not in html and 'data-status="queued"' not in html:
            break
        assert time.monotonic() < deadline, "the detached reply never finished"
        time.sleep(0.5)  # the page's poll interval (each poll must land within the 4 s grace)
    from chat.models import Message

    agent = Message.objects.get(pk=mid)
    assert agent.status == "done" and agent.finish_reason in ("length", "eos"), (agent.status, agent.finish_reason)
