"""Chat pages: list, conversation, polling partial, rating, rename/delete, ownership."""

from __future__ import annotations

import pytest
from django.urls import reverse

from chat import services
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_engine_warmup(settings):  # type: ignore[no-untyped-def]
    settings.CHAT_ENGINE_WARM = False


@pytest.fixture
def exchange(plain_user):  # type: ignore[no-untyped-def]
    conv, user_msg, agent = services.exchange_start(
        owner=plain_user,
        conversation=None,
        prompt="hello <b>there</b>",
        params={"do_sample": False},
        seed=None,
        model_ref="chat@v0001",
        queued=False,
    )
    return conv, user_msg, agent


def test_pages_need_login(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get(reverse("chat:index"))
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


def test_index_and_conversation_page(client, plain_user, password, exchange) -> None:  # type: ignore[no-untyped-def]
    conv, user_msg, agent = exchange
    client.login(username=plain_user.username, password=password)
    r = client.get(reverse("chat:index"))
    assert r.status_code == 200 and b'id="chat-form"' in r.content and b"hello &lt;b&gt;there&lt;/b&gt;" in r.content
    r = client.get(reverse("chat:conversation", args=[conv.pk]))
    body = r.content.decode()
    assert r.status_code == 200 and f'data-conversation="{conv.pk}"' in body
    assert "hello &lt;b&gt;there&lt;/b&gt;" in body and "<b>there</b>" not in body
    # a reply still streaming polls itself until it is final (refresh mid-reply)
    assert f'hx-get="{reverse("chat:message", args=[agent.pk])}"' in body
    r = client.get(reverse("chat:message", args=[agent.pk]))  # opened directly: the page at that message
    assert r.status_code == 302 and r["Location"] == reverse("chat:conversation", args=[conv.pk]) + f"#msg-{agent.pk}"
    services.message_progress(message_id=agent.pk, text="partial rep")
    r = client.get(reverse("chat:message", args=[agent.pk]), HTTP_HX_REQUEST="true")
    assert b"partial rep" in r.content and b"every 1s" in r.content
    services.message_finish(
        message_id=agent.pk, text="partial reply.", reason="eos", completion_tokens=3, ttft_ms=12.0, tokens_per_s=40.0
    )
    r = client.get(reverse("chat:message", args=[agent.pk]), HTTP_HX_REQUEST="true")
    assert b"partial reply." in r.content and b"every 1s" not in r.content
    assert b"chat@v0001" in r.content and b"40.0 tok/s" in r.content and b"12 ms" in r.content


def test_other_users_conversations_are_404(client, admin_user, password, exchange) -> None:  # type: ignore[no-untyped-def]
    conv, _, agent = exchange
    client.login(username=admin_user.username, password=password)
    assert client.get(reverse("chat:conversation", args=[conv.pk])).status_code == 404
    assert client.get(reverse("chat:message", args=[agent.pk]), HTTP_HX_REQUEST="true").status_code == 404
    assert client.post(reverse("chat:rate", args=[agent.pk]), {"rating": 1}).status_code == 404
    assert client.post(reverse("chat:delete", args=[conv.pk])).status_code == 404
    assert Conversation.objects.filter(pk=conv.pk).exists()


def test_rate_toggle_and_bad_rating(client, plain_user, password, exchange) -> None:  # type: ignore[no-untyped-def]
    _, user_msg, agent = exchange
    client.login(username=plain_user.username, password=password)
    url = reverse("chat:rate", args=[agent.pk])
    r = client.post(url, {"rating": "1"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and b'aria-pressed="true"' in r.content
    assert Message.objects.get(pk=agent.pk).rating == 1
    client.post(url, {"rating": "1"}, HTTP_HX_REQUEST="true")
    assert Message.objects.get(pk=agent.pk).rating == 0
    client.post(url, {"rating": "-1"})
    assert Message.objects.get(pk=agent.pk).rating == -1
    assert client.post(url, {"rating": "7"}).status_code == 400
    assert client.post(url, {"rating": "x"}).status_code == 400
    assert client.post(reverse("chat:rate", args=[user_msg.pk]), {"rating": "1"}).status_code == 400


def test_rename_delete_and_list(client, plain_user, password, exchange) -> None:  # type: ignore[no-untyped-def]
    conv, _, _ = exchange
    client.login(username=plain_user.username, password=password)
    r = client.post(reverse("chat:rename", args=[conv.pk]), {"title": "  My   chat "})
    assert r.status_code == 302 and Conversation.objects.get(pk=conv.pk).title == "My chat"
    client.post(reverse("chat:rename", args=[conv.pk]), {"title": "  "})
    assert Conversation.objects.get(pk=conv.pk).title == "My chat"
    r = client.get(reverse("chat:list") + f"?active={conv.pk}", HTTP_HX_REQUEST="true")
    assert b"My chat" in r.content and b'aria-current="page"' in r.content
    # opened directly (no htmx) it is not a bare fragment: the browser goes to the chat page
    r = client.get(reverse("chat:list") + f"?active={conv.pk}")
    assert r.status_code == 302 and r["Location"] == reverse("chat:conversation", args=[conv.pk])
    r = client.get(reverse("chat:list"))
    assert r.status_code == 302 and r["Location"] == reverse("chat:index")
    # deleting is permanent: without confirm=1 (the page's dialog adds it) the answer is a question
    r = client.post(reverse("chat:delete", args=[conv.pk]))
    assert r.status_code == 200 and "cannot be undone" in r.content.decode()
    assert b'name="confirm" value="1"' in r.content
    assert Conversation.objects.filter(pk=conv.pk).exists()
    r = client.post(reverse("chat:delete", args=[conv.pk]), {"confirm": "1"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 204 and r["HX-Redirect"] == reverse("chat:index")
    assert not Conversation.objects.filter(pk=conv.pk).exists()
    # its old URL: the app's own "not found" page, also with DEBUG on
    r = client.get(reverse("chat:conversation", args=[conv.pk]))
    assert r.status_code == 404 and "Not found" in r.content.decode()
    assert "technical" not in r.content.decode() and "URLconf" not in r.content.decode()


def test_metrics_exposes_chat_series(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/metrics").content.decode()
    for name in (
        "slm_chat_streams_total",
        "slm_chat_queue_depth",
        "slm_chat_ttft_seconds",
        "slm_chat_tokens_per_second",
        "slm_chat_cancellations_total",
        "slm_chat_errors_total",
    ):
        assert name in body


def test_chat_page_warms_the_engine(client, plain_user, password, chat_model, settings) -> None:  # type: ignore[no-untyped-def]
    from chat.engine_client import peek_backend

    settings.CHAT_ENGINE_WARM = True
    client.login(username=plain_user.username, password=password)
    assert client.get(reverse("chat:index")).status_code == 200
    backend = peek_backend()
    assert backend is not None and backend.alive()


def test_stop_view_answers_for_own_running_replies_only(client, plain_user, password, exchange, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from chat import views

    conv, _, agent = exchange
    client.login(username=plain_user.username, password=password)
    url = reverse("chat:stop", args=[agent.pk])
    assert client.get(url).status_code == 405
    Message.objects.filter(pk=agent.pk).update(status=Message.Status.DONE)
    assert client.post(url).status_code == 409  # finished: nothing to stop
    Message.objects.filter(pk=agent.pk).update(status=Message.Status.STREAMING)
    stopped: list[int] = []
    monkeypatch.setattr(views, "stop_detached", lambda mid: stopped.append(mid) or True)
    assert client.post(url).status_code == 202 and stopped == [agent.pk]
    client.logout()
    from slmsite.services import user_create

    user_create(username="other", password=password)
    client.login(username="other", password=password)
    assert client.post(url).status_code == 404 and stopped == [agent.pk]
