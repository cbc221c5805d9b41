import json

import pytest
from django.urls import reverse

from slm.registry import Registry


@pytest.mark.django_db
def test_healthz_reports_database_redis_worker_models(client, registry: Registry):
    registry.create_version("chat", lambda d: (d / "w").write_text("x"), {})
    registry.promote("chat", "v0001")
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert body["worker"]["count"] == 0 and body["worker"]["ok"] is False
    assert body["models"] == {"chat": "v0001"}
    assert body["bootstrap"] is None  # no first-run build ever ran here


@pytest.mark.django_db
def test_healthz_and_predict_say_the_default_model_is_building(
    client, registry: Registry, settings, plain_user, annotator_user
):
    import sentiment.inference
    from slmsite import bootstrap
    from slmsite.services import api_token_create

    sentiment.inference.reset_services()
    api_headers = {"HTTP_AUTHORIZATION": f"Bearer {api_token_create(user=plain_user)}"}

    settings.SENTIMENT_MODEL = "sentiment"
    builders = [bootstrap.Builder(name=n, model_name=n, build=lambda r, p: None) for n in ("chat", "sentiment")]
    writer = bootstrap.StatusWriter(registry, builders)
    writer.update("chat", state="done", fraction=1.0, force=True)
    registry.create_version("chat", lambda d: (d / "w").write_text("x"), {})
    registry.promote("chat", "v0001")
    writer.update("sentiment", state="running", fraction=0.37, message="epoch 1/4", force=True)
    body = client.get("/healthz").json()
    assert body["bootstrap"]["state"] == "running"
    assert body["bootstrap"]["models"] == [
        {"model": "chat", "state": "done", "percent": 100, "live": "v0001"},
        {"model": "sentiment", "state": "running", "percent": 37, "live": None},
    ]
    r = client.post("/api/sentiment/predict", {"texts": ["好"]}, content_type="application/json", **api_headers)
    assert r.status_code == 503 and "still being built (37%: epoch 1/4)" in r.json()["message"]
    # the playground says the same in words, not "no live version (build one with bootstrap_models)"
    client.force_login(plain_user)
    page = client.get("/sentiment/", {"text": "好"})
    html = page.content.decode()
    assert page.status_code == 503
    assert "The sentiment model is still being built (37%, see above); your text is kept" in html
    assert "No versions yet: the default model is being built" in html
    assert "Nothing to compare yet: this needs model versions, and the first one is being built" in html
    assert 'id="compare-form"' not in html  # no empty A/B selects
    assert "bootstrap_models" not in html and "has no live version" not in html
    r = client.post("/sentiment/classify/", {"text": "好"}, HTTP_HX_REQUEST="true")
    assert "still being built (37%" in r.content.decode()
    home = client.get("/").content.decode()
    assert "Sentiment model building (37%)" in home and "no live model yet" in home and "model —" not in home
    client.force_login(annotator_user)
    projects = client.get("/annotate/").content.decode()
    assert "The demo project appears here when the sentiment model is built." in projects
    assert "Ask an admin" not in projects
    writer.finish("done")
    assert client.get("/healthz").json()["bootstrap"]["state"] == "done"


@pytest.mark.django_db
def test_healthz_503_when_redis_down(client, settings):
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0"}, "gpu": {"URL": "redis://127.0.0.1:1/0"}}
    r = client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["redis"]["ok"] is False


@pytest.mark.django_db
def test_metrics_is_prometheus_text(client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    assert b"python_info" in r.content or b"process_" in r.content


@pytest.mark.django_db
def test_pages_need_login_and_have_csp(client, plain_user, password):
    r = client.get("/")
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]
    login = client.get("/accounts/login/")
    assert login.status_code == 200
    assert "script-src 'self'" in login["Content-Security-Policy"]
    assert client.login(username=plain_user.username, password=password)
    home = client.get("/")
    assert home.status_code == 200
    html = home.content.decode()
    for label in ["Chat", "Playground"]:  # Annotate and Runs need the annotator role (test below)
        assert f">{label}</a>" in html
    assert ">Admin</a>" not in html
    assert 'hx-headers=\'{"X-CSRFToken"' in html


@pytest.mark.django_db
def test_admin_sees_admin_link_and_django_admin(client, admin_user, password):
    client.login(username=admin_user.username, password=password)
    assert ">Admin</a>" in client.get("/").content.decode()
    assert client.get(reverse("admin:index")).status_code == 200


@pytest.mark.django_db
def test_logout_is_post(client, plain_user, password):
    client.login(username=plain_user.username, password=password)
    r = client.post("/accounts/logout/")
    assert r.status_code == 302
    assert client.get("/").status_code == 302


def test_vendored_assets_recorded():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "static" / "vendor"
    versions = (root / "VERSIONS").read_text()
    assert "htmx.org 2.0.11" in versions and "chart.js 4.5.1" in versions
    assert (root / "htmx.min.js").stat().st_size > 10_000
    assert json.dumps({"ok": True})


@pytest.mark.django_db
def test_healthz_counts_only_live_workers(client):
    """A worker killed with -9 leaves its registration in Redis until the TTL: it must not count."""
    import os
    import subprocess
    import sys
    import uuid

    import django_rq
    from rq import Queue, Worker

    conn = django_rq.get_connection("default")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    registered = []
    for pid in (dead.pid, os.getpid()):
        w = Worker([Queue("default", connection=conn)], connection=conn, name=f"test-{uuid.uuid4().hex[:8]}")
        w.pid = pid
        w.register_birth()
        registered.append(w)
    try:
        names = {w["name"] for w in client.get("/healthz").json()["worker"]["workers"]}
        assert registered[1].name in names and registered[0].name not in names
    finally:
        for w in registered:
            w.register_death()


@pytest.mark.django_db
def test_csp_connects_only_to_the_own_origin(client):
    """connect-src was 'self' ws: wss: — any WebSocket host. Now 'self' (plus CHAT_WS_ORIGIN when set)."""
    import re
    import subprocess
    import sys

    policy = client.get("/accounts/login/")["Content-Security-Policy"]
    assert re.search(r"connect-src 'self';", policy), policy
    assert "ws:" not in policy and "wss:" not in policy
    code = "from django.conf import settings; print(settings.CONTENT_SECURITY_POLICY)"
    env = {"DJANGO_SETTINGS_MODULE": "slmsite.settings.test", "CHAT_WS_ORIGIN": "wss://ws.example.com"}
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "connect-src 'self' wss://ws.example.com;" in out


@pytest.mark.django_db
def test_a_user_without_a_role_sees_no_annotate_links_and_a_403_in_words(client, plain_user, annotator_user):
    client.force_login(plain_user)
    home = client.get("/").content.decode()
    assert "/annotate/" not in home and ">Chat</a>" in home and ">Playground</a>" in home
    r = client.get("/annotate/")  # typed by hand: the app's page, saying why
    html = r.content.decode()
    assert r.status_code == 403 and 'class="topbar"' in html and "Labelling needs the annotator role" in html
    client.force_login(annotator_user)
    home = client.get("/").content.decode()
    assert ">Annotate</a>" in home and ">Runs</a>" in home


@pytest.mark.django_db
def test_favicon_ico_and_the_admin_pages_have_an_icon(client, admin_user):
    r = client.get("/favicon.ico")
    assert r.status_code == 301 and r["Location"].endswith("favicon.svg")  # no 404 in the console
    client.force_login(admin_user)
    assert 'rel="icon"' in client.get("/admin/").content.decode()
