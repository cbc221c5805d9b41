"""Chat in Chromium against the live daphne: log in, send with Enter, watch tokens arrive one by one,
press Stop, reload and find the conversation (with the stopped reply) again; phone layout too."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chat.tiny import add_tiny_chat_version
from tests.e2e.conftest import login, send_message, wait_until_done

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True, scope="module")
def _sync_orm_until_db_teardown() -> Iterator[None]:
    """Playwright's loop runs in this thread; the transactional-db flush after the test is sync ORM too."""
    old = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if old is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = old


@pytest.fixture
def live_chat_model(live_stack):  # type: ignore[no-untyped-def]
    from django.conf import settings

    from slm.registry import Registry

    # The live stack's registry is the test process's: a tiny, paced (50 ms a token) model goes live. It
    # never samples end-of-text, so each reply runs to max_new_tokens (finish reason "length") and is long
    # enough to stop or reload in the middle of it.
    return add_tiny_chat_version(Registry(settings.SLM_REGISTRY_DIR), serving={"min_step_s": 0.05}, never_eos=True)


def send_and_wait_for_tokens(page, text: str, *, max_new_tokens: int, tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Sends `text` (no stop strings) and waits until the streaming reply shows `tokens` tokens."""
    send_message(page, text, max_new_tokens=max_new_tokens)
    page.wait_for_function(
        "n => Number(document.querySelector('.cm-agent.is-streaming .cm-text')?.dataset.tokens || 0) >= n",
        arg=tokens,
    )


def test_chat_streams_stops_and_survives_reload(live_chat_model, plain_user, password, page, artifacts_dir_session):  # type: ignore[no-untyped-def]
    shots = artifacts_dir_session / "screenshots"
    login(page, plain_user.username, password)
    page.goto("/chat/")
    page.wait_for_selector("#chat[data-socket=open]", timeout=20_000)
    page.click("#chat-params summary")
    page.fill("#p-max_new_tokens", "100")
    page.fill("#p-stop", "")
    box = page.locator("#chat-input")
    box.fill("hello there")
    box.press("Shift+Enter")  # a newline, not a send
    assert page.locator(".cm-user").count() == 0
    box.press("Enter")
    assert page.locator(".cm-user .cm-text").inner_text().startswith("hello there")

    streaming = page.locator(".cm-agent.is-streaming .cm-text")
    # the engine child process starts on the first message (imports torch): allow it time
    page.wait_for_function(
        "() => Number(document.querySelector('.cm-agent.is-streaming .cm-text')?.dataset.tokens || 0) >= 2",
        timeout=90_000,
    )
    seen = [int(streaming.get_attribute("data-tokens"))]
    for target in (seen[0] + 1, seen[0] + 2):
        page.wait_for_function(
            f"() => Number(document.querySelector('.cm-agent.is-streaming .cm-text')?.dataset.tokens || 0) >= {target}"
        )
        seen.append(int(streaming.get_attribute("data-tokens")))
    assert seen == sorted(seen) and seen[-1] > seen[0]  # tokens arrive one frame at a time
    assert page.locator("#stop-btn").is_enabled() and page.locator("#send-btn").is_disabled()
    page.screenshot(path=str(shots / "chat-streaming-desktop.png"))

    page.click("#stop-btn")
    page.wait_for_selector("#chat-status:has-text('Stopped')")
    page.wait_for_selector(".cm-agent .badge:has-text('stopped')")
    stopped_text = page.locator(".cm-agent .cm-text").inner_text()
    assert page.locator("#send-btn").is_enabled()
    assert "/chat/c/" in page.url
    page.wait_for_selector(".cm-conv.active")

    page.reload()
    page.wait_for_selector(".cm-agent")
    assert page.locator(".cm-user .cm-text").inner_text().startswith("hello there")
    assert page.locator(".cm-agent .cm-text").inner_text() == stopped_text
    assert page.locator(".cm-agent .badge").inner_text() == "stopped"
    assert page.locator(".cm-conv.active .cm-conv-title").inner_text() == "hello there"
    page.locator(".cm-agent .cm-details summary").click()
    assert live_chat_model.ref in page.locator(".cm-agent .cm-details").inner_text()
    # reload in the middle of a reply: the reply keeps streaming into view, then completes
    send_and_wait_for_tokens(page, "and then?", max_new_tokens=60, tokens=3)
    page.reload()
    second = page.locator(".cm-agent").nth(1)
    assert second.locator(".badge").inner_text().startswith("streaming")
    partial = second.locator(".cm-text").inner_text()  # what the server had saved at the reload
    grows = (
        "n => { const t = document.querySelectorAll('.cm-agent')[1]?.querySelector('.cm-text');"
        " return t && t.textContent.length > n && document.querySelectorAll('.cm-agent')[1].querySelector('.badge'); }"
    )
    page.wait_for_function(grows, arg=len(partial), timeout=30_000)  # more text arrives while still streaming
    page.wait_for_function(grows, arg=len(second.locator(".cm-text").inner_text()), timeout=30_000)
    assert page.locator("#stop-btn").is_enabled()  # Stop works after a reload too (checked below)
    in_view = """() => { const r = document.querySelectorAll('.cm-agent')[1].getBoundingClientRect();
        const l = document.getElementById('chat-log').getBoundingClientRect();
        return r.bottom > l.top && r.bottom <= l.bottom + 2; }"""
    assert page.evaluate(in_view)  # the growing reply is scrolled into view, not below it
    page.wait_for_function("() => !document.querySelectorAll('.cm-agent')[1].querySelector('.badge')", timeout=30_000)
    done_text = page.locator(".cm-agent").nth(1).locator(".cm-text").inner_text()
    assert done_text.startswith(partial) and len(done_text) > len(partial)
    assert page.locator("#send-btn").is_enabled() and page.locator("#stop-btn").is_disabled()
    page.locator(".cm-agent").nth(1).locator(".cm-details summary").click()
    assert "length" in page.locator(".cm-agent").nth(1).locator(".cm-details").inner_text()
    # keyboard: rate the reply with Tab focus + Enter
    page.locator(".cm-agent button[aria-label='Good reply']").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(".cm-agent button[aria-label='Good reply'][aria-pressed=true]")
    # reload mid-reply again, then Stop: the reply stops (server-side) and says so
    send_and_wait_for_tokens(page, "one more", max_new_tokens=120, tokens=3)
    page.reload()
    third = page.locator(".cm-agent").nth(2)
    page.wait_for_function("() => !document.getElementById('stop-btn').disabled")
    page.click("#stop-btn")
    third.locator(".badge", has_text="stopped").wait_for(timeout=15_000)
    from chat.models import Message

    stopped = Message.objects.get(pk=int(third.get_attribute("data-message-id")))
    assert stopped.status == "cancelled" and 0 < stopped.completion_tokens < 120
    assert page.locator("#send-btn").is_enabled()
    page.screenshot(path=str(shots / "chat-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "chat-phone.png"), full_page=True)
    assert page.js_errors == []


def test_a_reply_gets_its_stored_details_while_the_list_refresh_is_slow(  # type: ignore[no-untyped-def]
    live_chat_model, plain_user, password, page
) -> None:
    """The page refreshes the conversation list on "start" and the reply on "end". On a loaded server the list
    request can still be in flight when the reply ends; both refreshes used to share htmx's one request queue
    (the body), where the list refresh queued after it replaced the reply's, and the reply never got its stored
    footer (Details). Here the list requests are held until the reply is done: the reply's details must
    still arrive, and the list, once released, shows the conversation."""
    held = []
    release = {"now": False}

    def is_list(url: str) -> bool:
        return "/chat/list/" in url

    def hold(route) -> None:  # type: ignore[no-untyped-def]
        if release["now"]:
            route.continue_()
        else:
            held.append(route)

    page.route(is_list, hold)
    login(page, plain_user.username, password)
    page.goto("/chat/")
    page.wait_for_selector("#chat[data-socket=open]", timeout=20_000)
    send_message(page, "slow list", max_new_tokens=4)
    wait_until_done(page)
    assert held, "the list refresh on start was not made"
    reply = page.locator(".cm-agent").last
    reply.locator("summary", has_text="Details").click(timeout=20_000)  # arrives with the list still held
    assert live_chat_model.ref in reply.locator(".cm-details").inner_text()
    assert len(held) == 1  # one list refresh at a time: the one asked for at "end" waits for it
    release["now"] = True
    for route in list(held):
        route.continue_()
    page.wait_for_function(
        "() => (document.querySelector('.cm-conv.active .cm-conv-title')?.textContent || '') === 'slow list'",
        timeout=20_000,
    )
    # the list refresh asked for while the first was held runs afterwards, against the fresh list element
    page.wait_for_function("() => document.querySelectorAll('#conv-list').length === 1")
    assert page.js_errors == []
