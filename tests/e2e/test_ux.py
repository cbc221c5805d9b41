"""What a new user trips over (issue #13), checked in Chromium at desktop and phone width: a too-long
prompt keeps its text and says what to do, risky actions ask first, the playground matches the live
model's languages, the login form keeps the username, the phone menu opens from the keyboard."""

from __future__ import annotations

import shutil
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sync_orm_module")]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture
def registry(live_stack):  # type: ignore[no-untyped-def]
    from django.conf import settings

    from slm.registry import Registry

    return Registry(settings.SLM_REGISTRY_DIR)


def _shots(artifacts_dir_session):  # type: ignore[no-untyped-def]
    path = artifacts_dir_session / "screenshots" / "ux"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_too_long_prompt_keeps_the_text_and_says_what_to_do(
    page, registry, plain_user, password, artifacts_dir_session
):  # type: ignore[no-untyped-def]
    from tests.chat.tiny import add_tiny_chat_version

    add_tiny_chat_version(registry, n_positions=128)
    login(page, plain_user.username, password)
    page.goto("/chat/")
    page.wait_for_selector("#chat[data-socket=open]")
    # the control cannot ask for more than the model's window
    assert page.get_attribute("#p-max_new_tokens", "max") == "128"
    assert "share 128 tokens" in (page.locator("#p-window").text_content() or "")
    long_text = " ".join(f"word{i}" for i in range(300))
    box = page.locator("#chat-input")
    box.fill(long_text)
    box.press("Enter")
    status = page.locator("#chat-status.error")
    status.wait_for(timeout=90_000)  # the engine process starts on the first message
    text = status.inner_text()
    assert text.startswith("Your message is too long for this model") and "Shorten it by about" in text
    assert "[" not in text and "prompt_too_long" not in text
    assert box.input_value() == long_text  # nothing typed is lost
    assert page.locator(".cm-user").count() == 0  # the refused message is not shown as sent
    assert page.locator("#send-btn").is_enabled()
    page.screenshot(path=str(_shots(artifacts_dir_session) / "chat-too-long-1280.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(_shots(artifacts_dir_session) / "chat-too-long-390.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    # an out-of-range parameter is caught before sending, in words, and the text stays too
    box.fill("hello there")
    page.click("#chat-params summary")
    page.fill("#p-max_new_tokens", "500")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.includes('Max new tokens')")
    assert "between 1 and 128" in page.locator("#chat-status").inner_text()
    assert box.input_value() == "hello there" and page.locator(".cm-user").count() == 0
    assert page.js_errors == []


def test_deleting_a_conversation_asks_first_then_its_url_is_not_found(
    page, plain_user, password, artifacts_dir_session
):  # type: ignore[no-untyped-def]
    from chat.models import Conversation

    conv = Conversation.objects.create(owner=plain_user, title="keep me please")
    login(page, plain_user.username, password)
    page.set_viewport_size(PHONE)
    page.goto(f"/chat/c/{conv.pk}/")
    page.click(".cm-manage summary")
    page.click("#delete-chat")
    dialog = page.locator("dialog.confirm-dialog")
    dialog.wait_for()
    assert "Delete “keep me please” and all its messages? This cannot be undone." in dialog.inner_text()
    page.screenshot(path=str(_shots(artifacts_dir_session) / "chat-delete-confirm-390.png"))
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert Conversation.objects.filter(pk=conv.pk).exists() and f"/chat/c/{conv.pk}/" in page.url
    page.click("#delete-chat")
    page.keyboard.press("Escape")  # Escape is "no" too
    dialog.wait_for(state="detached")
    assert Conversation.objects.filter(pk=conv.pk).exists()
    page.set_viewport_size(DESKTOP)
    page.click("#delete-chat")
    dialog.get_by_role("button", name="Delete conversation").click()
    page.wait_for_url("**/chat/")
    assert not Conversation.objects.filter(pk=conv.pk).exists()
    assert "Conversation deleted." in page.locator(".messages").inner_text()
    response = page.goto(f"/chat/c/{conv.pk}/")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not found" and page.locator("nav.nav").count() == 1
    assert page.js_errors == []


def _worse_copy(registry: Any, live: Any, **meta: Any) -> Any:
    """A new version with the live one's weights and different metadata (figures)."""

    def write(directory: Any) -> None:
        for path in live.path.iterdir():
            if path.is_file() and path.name != "metadata.json":
                shutil.copy(path, directory / path.name)

    keep = {k: v for k, v in live.metadata.items() if k not in ("name", "version", "created", "parent")}
    return registry.create_version(live.name, write, {**keep, **meta})


def test_promoting_a_worse_version_by_hand_asks_first(page, registry, admin_user, password, artifacts_dir_session):  # type: ignore[no-untyped-def]
    from django.conf import settings

    from slm.classify.testing import make_tiny_version

    live = make_tiny_version(registry, name=settings.SENTIMENT_MODEL)
    metrics = {**live.metadata["metrics"], "macro_f1": 0.5, "accuracy": 0.55}
    worse = _worse_copy(registry, live, metrics=metrics)
    login(page, admin_user.username, password)
    page.goto("/sentiment/models/")
    row = page.locator("table.s-versions tr", has_text=worse.version)
    row.get_by_role("button", name="Promote").click()
    dialog = page.locator("dialog.confirm-dialog")
    dialog.wait_for()
    question = dialog.inner_text()
    assert f"{worse.version} scores 0.500 macro-F1 on its train (tiny test model) split" in question
    assert f"below the live {live.version}'s 1.00" in question
    page.screenshot(path=str(_shots(artifacts_dir_session) / "promote-confirm-1280.png"))
    dialog.get_by_role("button", name="Cancel").click()
    assert registry.live_version(settings.SENTIMENT_MODEL) == live.version
    row.get_by_role("button", name="Promote").click()
    dialog.get_by_role("button", name=f"Make {worse.version} live").click()
    page.wait_for_url(f"**/sentiment/models/{worse.version}/")
    assert registry.live_version(settings.SENTIMENT_MODEL) == worse.version
    # the better one goes back live at once: nothing to ask
    page.goto(f"/sentiment/models/{live.version}/")
    page.get_by_role("button", name="Promote").click()
    page.wait_for_url(f"**/sentiment/models/{live.version}/")
    assert registry.live_version(settings.SENTIMENT_MODEL) == live.version
    assert page.js_errors == []


def test_playground_matches_the_live_models_languages(page, registry, plain_user, password, artifacts_dir_session):  # type: ignore[no-untyped-def]
    from django.conf import settings

    from slm.classify.testing import make_tiny_version

    tiny = make_tiny_version(registry, name=settings.SENTIMENT_MODEL)
    zh_only = _worse_copy(registry, tiny, languages=["zh"])
    registry.promote(settings.SENTIMENT_MODEL, zh_only.version)
    login(page, plain_user.username, password)
    for size in (DESKTOP, PHONE):
        page.set_viewport_size(size)
        page.goto("/sentiment/")
        assert "trained on Chinese text only" in page.locator("#s-lang-notice").inner_text()
        assert page.get_attribute("#s-text", "placeholder") == "Type a review in Chinese…"
        assert page.locator("a.s-example[lang=en]").count() == 0 and page.locator("a.s-example[lang=zh]").count() > 0
        page.fill("#s-text", "Absolutely loved it: friendly staff")
        page.click("#classify-form button[type=submit]")
        page.locator("#result .s-lang-warning").wait_for()
        assert "unreliable" in page.locator("#result .s-lang-warning").inner_text()
        page.screenshot(
            path=str(_shots(artifacts_dir_session) / f"playground-languages-{size['width']}.png"), full_page=True
        )
    answer = page.evaluate("fetch('/api/sentiment/models').then(r => r.json())")
    langs = {v["version"]: v["languages"] for v in answer["versions"]}
    assert langs[zh_only.version] == ["zh"] and langs[tiny.version] == ["zh", "en"]
    assert page.js_errors == []


def test_login_keeps_username_and_phone_menu_opens_from_the_keyboard(page, live_stack, plain_user, password):  # type: ignore[no-untyped-def]
    page.goto("/accounts/login/")
    page.fill("input[name=username]", plain_user.username)
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    page.locator(".error[role=alert]").wait_for()
    assert page.input_value("input[name=username]") == plain_user.username
    assert page.evaluate("document.activeElement.name") == "password"  # straight to the field to fix
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    # "**/" would also match /accounts/login/ itself; wait for the redirect to the home page proper
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    page.set_viewport_size(PHONE)
    page.goto("/")
    nav = page.locator("nav.nav")
    assert not nav.is_visible()
    for _ in range(6):  # Tab from the top of the page reaches the menu toggle
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "nav-toggle":
            break
    assert page.evaluate("document.activeElement.id") == "nav-toggle"
    page.keyboard.press("Space")
    assert nav.get_by_role("link", name="Chat").is_visible()
    assert page.js_errors == []


def test_api_docs_example_succeeds_and_rq_admin_runs_under_the_csp(page, registry, admin_user, password):  # type: ignore[no-untyped-def]
    from django.conf import settings

    from slm.classify.testing import make_tiny_version

    make_tiny_version(registry, name=settings.SENTIMENT_MODEL)
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    login(page, admin_user.username, password)
    page.goto("/api/docs")
    op = page.locator(".opblock-post", has_text="/api/sentiment/predict").first
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    assert "model" not in op.locator("textarea.body-param__text").input_value()  # no made-up version
    op.get_by_role("button", name="Execute").click()
    status = op.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200"), op.locator(".live-responses-table").inner_text()
    # a job in the list, so django-rq's page runs its inline script and the select-all box works
    import datetime

    import django_rq

    queue = django_rq.get_queue("default")
    job = queue.enqueue_in(datetime.timedelta(hours=1), "builtins.print", "later")
    try:
        page.goto("/admin/django-rq/queues/0/scheduled/")
        page.locator("input.action-select").first.wait_for()
        page.locator("#action-toggle").check()
        assert page.locator("input.action-select").first.is_checked()
        n = page.locator("input.action-select").count()
        assert page.locator(".action-counter").inner_text() == f"{n} of {n} selected"
    finally:
        job.delete()
    assert refused == [], refused
    assert page.js_errors == []
