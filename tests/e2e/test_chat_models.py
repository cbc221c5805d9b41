"""The chat page's model picker in Chromium, at desktop and phone width: pick a model for a new chat, the reply
runs on it and says so in its details, the choice survives a reload, switching it in a conversation is
stored, and the offline-demo notice follows the picked model."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import login, send_message, wait_until_done
from tests.e2e.test_pages import DESKTOP, OVERFLOW_JS, PHONE

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sync_orm_module")]


@pytest.fixture
def picker_models(live_stack):  # type: ignore[no-untyped-def]
    """Two models an admin offers besides the settings' one: a tiny GPT-2 ("picker-a") and a copy marked
    as the offline demo model ("picker-demo")."""
    from django.conf import settings

    from chat.models import ChatModel
    from slm.registry import Registry
    from tests.chat.tiny import add_tiny_chat_version, save_tiny

    registry = Registry(settings.SLM_REGISTRY_DIR)
    a = add_tiny_chat_version(registry, "picker-a", seed=5)
    demo = registry.create_version("picker-demo", lambda d: save_tiny(d, seed=6), {"family": "gpt2", "demo": True})
    registry.promote("picker-demo", demo.version)
    ChatModel.objects.create(name="picker-a", label="Picker A (tiny GPT-2)", source="registry:picker-a", position=1)
    ChatModel.objects.create(name="picker-demo", label="Picker demo", source="registry:picker-demo", position=2)
    return a, demo


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_pick_a_model_for_a_conversation(
    picker_models, plain_user, password, page, artifacts_dir_session, size
) -> None:  # type: ignore[no-untyped-def]
    from chat.models import Conversation

    a, _ = picker_models
    shots = artifacts_dir_session / "screenshots"
    page.set_viewport_size(size)
    login(page, plain_user.username, password)
    page.goto("/chat/")
    page.wait_for_selector("#chat[data-socket=open]")
    picker = page.locator("#chat-model")
    assert picker.is_visible()
    assert picker.locator("option").all_inner_texts()[1:] == ["Picker A (tiny GPT-2)", "Picker demo (offline demo)"]

    picker.select_option("picker-demo")  # the demo notice follows the pick
    assert page.locator("#demo-notice").is_visible()
    assert "pull_model" in page.locator("#demo-notice").inner_text()
    page.screenshot(path=str(shots / f"chat-picker-demo-{size['width']}.png"), full_page=True)
    picker.select_option("picker-a")
    assert page.locator("#demo-notice").is_hidden()

    send_message(page, "hello there", max_new_tokens=6)
    wait_until_done(page)
    reply = page.locator(".cm-agent").last
    # the details come with the stored message the page fetches after "Done" (slow on a loaded machine)
    reply.locator("summary", has_text="Details").click(timeout=90_000)
    assert f"{a.ref} · picked as picker-a" in reply.locator(".cm-details dd").first.inner_text()
    conv_id = int(page.locator("#chat").get_attribute("data-conversation"))
    assert Conversation.objects.get(pk=conv_id).model == "picker-a"
    m = page.evaluate(OVERFLOW_JS)
    assert m["scrollWidth"] <= m["viewport"] and not m["culprits"], m
    page.screenshot(path=str(shots / f"chat-picker-{size['width']}.png"), full_page=True)

    page.reload()  # the conversation's page shows its model
    page.wait_for_selector("#chat[data-socket=open]")
    assert picker.input_value() == "picker-a"
    picker.select_option("picker-demo")  # switching inside the conversation is stored at once
    page.wait_for_function("() => document.getElementById('chat-status').textContent.includes('now use')")
    assert Conversation.objects.get(pk=conv_id).model == "picker-demo"
    page.reload()
    assert picker.input_value() == "picker-demo" and page.locator("#demo-notice").is_visible()
    if size == PHONE:  # two lines on a phone, not a third of the screen
        assert page.locator("#demo-notice").bounding_box()["height"] <= 60
    # dismissed from the keyboard, and it stays dismissed in this browser, also when the picker comes back to it
    page.locator("#demo-notice-dismiss").focus()
    page.keyboard.press("Enter")
    assert page.locator("#demo-notice").is_hidden()
    page.reload()
    page.wait_for_selector("#chat[data-socket=open]")
    assert page.locator("#demo-notice").is_hidden()
    picker.select_option("picker-a")
    picker.select_option("picker-demo")
    assert page.locator("#demo-notice").is_hidden()
    assert page.js_errors == []
