"""Pages, the label JSON endpoints, the API contract (DESIGN §4) and roles: everyone who is not an
annotator/admin gets 403 on every view, endpoint and job trigger."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from annotate import services
from annotate.models import Annotation, Export, Item, Project, Simulation, TrainingRun
from slm.classify.testing import make_tiny_version
from slmsite.services import api_token_create

pytestmark = pytest.mark.django_db

ANNOTATOR_VIEWS = [
    ("get", "annotate:index", False),
    ("get", "annotate:runs", False),
    ("get", "annotate:run", "run"),
    ("get", "annotate:project", "project"),
    ("get", "annotate:label", "project"),
    ("get", "annotate:next", "project"),
    ("post", "annotate:submit", "project"),
    ("post", "annotate:undo", "project"),
    ("post", "annotate:fix", False),
]
ADMIN_VIEWS = [
    ("get", "annotate:project_create", False),
    ("post", "annotate:project_create", False),
    ("post", "annotate:import", "project"),
    ("post", "annotate:retrain", "project"),
    ("get", "annotate:review", "project"),
    ("post", "annotate:review", "project"),
    ("get", "annotate:models", "project"),
    ("post", "annotate:model_action", "project"),
    ("post", "annotate:export", "project"),
    ("get", "annotate:export_download", "export"),
    ("post", "annotate:simulate", "project"),
]


@pytest.fixture
def objs(project):  # type: ignore[no-untyped-def]
    run = TrainingRun.objects.create(project=project, status="failed")
    exp = Export.objects.create(project=project, status="succeeded", path="/nonexistent")
    return {"project": project.pk, "run": run.pk, "export": exp.pk}


def _url(name: str, kind, objs) -> str:  # type: ignore[no-untyped-def]
    return reverse(name, kwargs={"pk": objs[kind]}) if kind else reverse(name)


@pytest.mark.parametrize("method,name,kind", ANNOTATOR_VIEWS + ADMIN_VIEWS)
def test_plain_user_gets_403_everywhere(client, plain_user, password, objs, method, name, kind):
    client.login(username=plain_user.username, password=password)
    resp = getattr(client, method)(_url(name, kind, objs))
    assert resp.status_code == 403


@pytest.mark.parametrize("method,name,kind", ANNOTATOR_VIEWS + ADMIN_VIEWS)
def test_anonymous_is_sent_to_login(client, objs, method, name, kind):
    resp = getattr(client, method)(_url(name, kind, objs))
    assert resp.status_code == 302 and "/accounts/login/" in resp["Location"]


@pytest.mark.parametrize("method,name,kind", ADMIN_VIEWS)
def test_annotator_gets_403_on_admin_views(client, annotator_user, password, objs, method, name, kind):
    client.login(username=annotator_user.username, password=password)
    resp = getattr(client, method)(_url(name, kind, objs))
    assert resp.status_code == 403
    assert not Simulation.objects.exists() and TrainingRun.objects.count() == 1  # no job was triggered


def test_no_job_trigger_for_plain_user(client, plain_user, password, project):
    client.login(username=plain_user.username, password=password)
    client.post(reverse("annotate:retrain", kwargs={"pk": project.pk}))
    client.post(reverse("annotate:export", kwargs={"pk": project.pk}), {"fmt": "csv"})
    assert not TrainingRun.objects.exists() and not Export.objects.exists()


def test_label_page_and_json_flow(client, annotator_user, password, project):
    client.login(username=annotator_user.username, password=password)
    page = client.get(reverse("annotate:label", kwargs={"pk": project.pk}))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-key="1"' in html and "<kbd>s</kbd>" in html and 'id="a-next"' in html
    current = page.context["item"]
    nxt = page.context["next_item"]
    assert current and nxt and current["id"] != nxt["id"]  # next item already leased and loaded
    url = reverse("annotate:submit", kwargs={"pk": project.pk})
    r = client.post(url, {"item": current["id"], "label": "positive", "seconds": "1.5"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 200 and r.json()["ok"] and r.json()["progress"]["mine"] == 1
    r = client.post(url, {"item": current["id"], "label": "positive"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 409  # a repeated submit never duplicates
    r = client.post(url, {"item": nxt["id"], "label": "nope"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 400 and "unknown label" in r.json()["error"]
    r = client.post(url, {"item": "x"}, HTTP_ACCEPT="application/json")
    assert r.status_code == 400
    r = client.get(reverse("annotate:next", kwargs={"pk": project.pk}), {"exclude": [nxt["id"]]})
    assert r.json()["item"]["id"] not in (current["id"], nxt["id"])
    r = client.post(reverse("annotate:undo", kwargs={"pk": project.pk}), HTTP_ACCEPT="application/json")
    assert r.json()["item"]["id"] == current["id"] and not Annotation.objects.exists()
    # without JS: a plain form post redirects back to the label page
    r = client.post(url, {"item": current["id"], "label": "negative"})
    assert r.status_code == 302 and Annotation.objects.get().label == "negative"
    r = client.post(url, {"item": nxt["id"], "action": "skip"}, HTTP_ACCEPT="application/json")
    assert r.json()["ok"]


def test_pages_render_for_annotator_and_admin(client, admin_user, annotator_user, password, project, registry):
    make_tiny_version(registry)
    client.login(username=annotator_user.username, password=password)
    for name in ("annotate:index", "annotate:runs"):
        assert client.get(reverse(name)).status_code == 200
    resp = client.get(reverse("annotate:project", kwargs={"pk": project.pk}))
    assert resp.status_code == 200 and b"dashboard-data" in resp.content and b"Retrain now" not in resp.content
    client.login(username=admin_user.username, password=password)
    resp = client.get(reverse("annotate:project", kwargs={"pk": project.pk}))
    assert b"Retrain now" in resp.content
    for name in ("annotate:review", "annotate:models"):
        assert client.get(reverse(name, kwargs={"pk": project.pk})).status_code == 200
    resp = client.get(reverse("annotate:models", kwargs={"pk": project.pk}), {"a": "v0001", "b": "v0001"})
    assert resp.status_code == 200 and b"held-out macro-F1" in resp.content  # compared on the same split, named


def test_guidelines_markdown_is_sanitised(client, annotator_user, password, db):
    p = services.project_create(
        name="g", labels=["a", "b"], guidelines="**bold** <script>alert(1)</script> [x](javascript:alert(1))"
    )
    client.login(username=annotator_user.username, password=password)
    html = client.get(reverse("annotate:project", kwargs={"pk": p.pk})).content.decode()
    assert "<strong>bold</strong>" in html and "<script>alert" not in html and "javascript:" not in html


def test_admin_creates_project_and_bad_input_is_a_400(client, admin_user, password):
    client.login(username=admin_user.username, password=password)
    url = reverse("annotate:project_create")
    r = client.post(url, {"name": "X", "labels": "only-one"})
    assert r.status_code == 400 and b"at least two" in r.content
    r = client.post(url, {"name": "X", "labels": "a, b", "batch_size": "many"})
    assert r.status_code == 400
    r = client.post(url, {"name": "X", "labels": "neg, neu, pos", "strategy": "margin", "overlap_k": "3"})
    assert r.status_code == 302
    p = Project.objects.get(name="X")
    assert p.labels == ["neg", "neu", "pos"] and p.overlap_k == 3 and p.model_name == "sentiment"


def test_fix_adds_a_suggested_item_to_the_models_project(client, annotator_user, password, project):
    client.login(username=annotator_user.username, password=password)
    r = client.post(
        reverse("annotate:fix"),
        {"text": "这个其实很好", "label": "positive", "model_ref": "sentiment@v0001", "next": "/sentiment/"},
    )
    assert r.status_code == 302 and r["Location"] == "/sentiment/"
    item = Item.objects.get(text="这个其实很好")
    assert item.project == project and item.suggested_label == "positive" and item.source == "fix"
    a = services.lease_next(project=project, user=annotator_user)
    assert a.item_id == item.pk  # fixes are reviewed first
    r = client.post(reverse("annotate:fix"), {"text": "x y", "label": "bogus", "next": "https://evil.example/"})
    assert r.status_code == 302 and r["Location"] == reverse("sentiment:playground")


def test_api_retrain_and_run_status(client, admin_user, annotator_user, plain_user, project):
    url = f"/api/annotate/projects/{project.pk}/retrain"
    admin_token = api_token_create(user=admin_user)
    r = client.post(url, HTTP_AUTHORIZATION=f"Bearer {admin_token}")
    assert r.status_code == 202
    run_id = r.json()["run"]
    r2 = client.post(url, HTTP_AUTHORIZATION=f"Bearer {admin_token}")
    assert r2.status_code == 202 and r2.json()["run"] == run_id  # idempotent
    for user in (annotator_user, plain_user):
        tok = api_token_create(user=user)
        assert client.post(url, HTTP_AUTHORIZATION=f"Bearer {tok}").status_code == 403
    assert client.post(url).status_code == 401
    assert (
        client.post("/api/annotate/projects/999999/retrain", HTTP_AUTHORIZATION=f"Bearer {admin_token}").status_code
        == 404
    )
    ann_token = api_token_create(user=annotator_user)
    r = client.get(f"/api/runs/{run_id}", HTTP_AUTHORIZATION=f"Bearer {ann_token}")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "queued" and body["progress"] == 0.0
    assert {"metrics", "error", "progress", "status"} <= set(body)
    plain_token = api_token_create(user=plain_user)
    assert client.get(f"/api/runs/{run_id}", HTTP_AUTHORIZATION=f"Bearer {plain_token}").status_code == 403
    r = client.get("/api/runs/999999", HTTP_AUTHORIZATION=f"Bearer {ann_token}")
    assert r.status_code == 404 and "detail" in json.loads(r.content)


def test_runs_page_polls_while_active(client, annotator_user, password, project):
    TrainingRun.objects.create(project=project, status="running", log="epoch 1 loss 0.5")
    client.login(username=annotator_user.username, password=password)
    html = client.get(reverse("annotate:runs")).content.decode()
    assert 'hx-trigger="every 2s"' in html
    frag = client.get(reverse("annotate:runs"), HTTP_HX_REQUEST="true").content.decode()
    assert frag.strip().startswith('<div id="runs-table"') and "<html" not in frag


def test_bad_admin_input_is_never_a_500(client, admin_user, password, project, registry):
    client.login(username=admin_user.username, password=password)
    review = reverse("annotate:review", kwargs={"pk": project.pk})
    assert client.post(review, {"item": "abc", "label": "positive"}).status_code == 302
    assert client.post(review, {"item": "999999", "label": "positive"}).status_code == 404
    item = Item.objects.filter(project=project).first()
    r = client.post(review, {"item": item.pk, "label": "nope"}, follow=True)
    assert r.status_code == 200 and b"unknown label" in r.content
    action = reverse("annotate:model_action", kwargs={"pk": project.pk})
    r = client.post(action, {"action": "promote", "version": "v9999"}, follow=True)
    assert r.status_code == 200 and b"no version" in r.content
    r = client.post(action, {"action": "rollback"}, follow=True)
    assert r.status_code == 200
    sim = reverse("annotate:simulate", kwargs={"pk": project.pk})
    assert client.post(sim, {"strategies": ["bogus"]}).status_code == 302 and not Simulation.objects.exists()
    imp = reverse("annotate:import", kwargs={"pk": project.pk})
    r = client.post(imp, {"path": "/definitely/not/here.csv"}, follow=True)
    assert b"does not exist" in r.content


# ------------------------------------------------------------------ review fixes
def test_label_page_has_a_button_for_every_label_beyond_nine(client, annotator_user, password):
    from tests.annotate.conftest import make_project

    labels = [f"lab{i}" for i in range(12)]
    project = make_project(labels=labels)
    client.login(username=annotator_user.username, password=password)
    html = client.get(reverse("annotate:label", kwargs={"pk": project.pk})).content.decode()
    for lab in labels:
        assert f'data-label="{lab}"' in html
    assert 'data-key="9"' in html and 'data-key="10"' not in html


@pytest.mark.parametrize("field,value", [("retrain_every", "-1"), ("min_per_label", "-3"), ("name", "x" * 201)])
def test_project_form_bad_numbers_and_long_name_are_400_not_500(client, admin_user, password, field, value):
    client.login(username=admin_user.username, password=password)
    data = {"name": "ok-name", "labels": "a,b", field: value}
    resp = client.post(reverse("annotate:project_create"), data)
    assert resp.status_code == 400
    assert not Project.objects.filter(name__in=["ok-name", "x" * 201]).exists()


def test_next_and_runs_ignore_non_ascii_digits(client, annotator_user, password, project):
    client.login(username=annotator_user.username, password=password)
    resp = client.get(reverse("annotate:next", kwargs={"pk": project.pk}), {"exclude": ["²", "3"]})
    assert resp.status_code == 200
    assert client.get(reverse("annotate:runs"), {"project": "²"}).status_code == 200


def test_out_of_range_ids_are_400_or_ignored_not_500(client, annotator_user, password, project):
    big = str(10**25)
    client.login(username=annotator_user.username, password=password)
    assert client.get(reverse("annotate:next", kwargs={"pk": project.pk}), {"exclude": [big]}).status_code == 200
    resp = client.post(
        reverse("annotate:submit", kwargs={"pk": project.pk}),
        {"item": big, "label": "positive"},
        HTTP_ACCEPT="application/json",
    )
    assert resp.status_code == 400 and resp.json()["ok"] is False
    assert client.get(reverse("annotate:runs"), {"project": big}).status_code == 200


def test_import_with_over_long_column_name_is_a_message_not_a_500(client, admin_user, password, project, tmp_path):
    src = tmp_path / "rows.csv"
    src.write_text("text,label\nhello,positive\n", encoding="utf-8")
    client.login(username=admin_user.username, password=password)
    resp = client.post(
        reverse("annotate:import", kwargs={"pk": project.pk}), {"path": str(src), "text_field": "t" * 101}
    )
    assert resp.status_code == 302
    assert not project.imports.exists()


def test_project_page_reads_the_project_stats_once(client, admin_user, password, project, monkeypatch):
    from annotate import selectors

    calls = []
    real = selectors.project_stats
    monkeypatch.setattr(selectors, "project_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    client.login(username=admin_user.username, password=password)
    assert client.get(reverse("annotate:project", kwargs={"pk": project.pk})).status_code == 200
    assert len(calls) == 1


def test_simulate_replays_each_strategy_once(client, admin_user, password, project):
    client.login(username=admin_user.username, password=password)
    url = reverse("annotate:simulate", kwargs={"pk": project.pk})
    assert client.post(url, {"strategies": ["entropy"] * 50 + ["margin"], "rounds": "x"}).status_code == 302
    assert Simulation.objects.get(project=project).config["strategies"] == ["entropy", "margin"]


def test_label_progress_matches_project_stats_without_the_registry(
    client, annotator_user, password, project, monkeypatch
):
    from annotate import selectors

    client.login(username=annotator_user.username, password=password)
    a = services.lease_next(project=project, user=annotator_user)
    services.label_submit(project=project, user=annotator_user, item_id=a.item_id, label="positive")
    stats = selectors.project_stats(project, annotator_user)
    nxt = services.lease_next(project=project, user=annotator_user)

    def no_registry():  # type: ignore[no-untyped-def]
        raise AssertionError("the label hot path reads the model registry")

    monkeypatch.setattr(selectors, "get_registry", no_registry)
    resp = client.post(
        reverse("annotate:submit", kwargs={"pk": project.pk}),
        {"item": nxt.item_id, "label": "negative"},
        HTTP_ACCEPT="application/json",
    )
    assert resp.status_code == 200
    progress = resp.json()["progress"]
    assert progress["done"] == stats["done"] + 1 and progress["total"] == stats["total"]
    assert progress["mine"] == 2 and progress["annotations"] == 2


def test_import_with_an_over_long_server_path_is_a_message_not_a_500(client, admin_user, password, project):
    client.login(username=admin_user.username, password=password)
    resp = client.post(reverse("annotate:import", kwargs={"pk": project.pk}), {"path": "/tmp/" + "a" * 5000})
    assert resp.status_code == 302 and not project.imports.exists()


def test_simulation_card_shows_progress_polls_and_then_the_chart_data(client, admin_user, password, project):
    """After "Run simulation" the card says queued/running with progress and polls itself; when the
    simulation succeeded it stops polling and carries the curves for the chart (no reload needed)."""
    client.login(username=admin_user.username, password=password)
    url = reverse("annotate:simulate", kwargs={"pk": project.pk})
    card_url = reverse("annotate:simulation", kwargs={"pk": project.pk})
    r = client.post(url, {"strategies": ["entropy"]}, HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert r.status_code == 200 and html.lstrip().startswith('<div class="card" id="simulation"')
    assert f'hx-get="{card_url}"' in html and "data-job-active" in html and "waiting for the worker" in html
    r = client.get(card_url)  # opened directly (not polled): the project page at the card, not a bare fragment
    assert (
        r.status_code == 302 and r["Location"] == reverse("annotate:project", kwargs={"pk": project.pk}) + "#simulation"
    )
    sim = Simulation.objects.get(project=project)
    Simulation.objects.filter(pk=sim.pk).update(status="running", progress=0.4)
    html = client.get(card_url, HTTP_HX_REQUEST="true").content.decode()
    assert "40% done" in html and "data-job-active" in html and "disabled" in html
    curves = {"random": {"labels": [10, 20], "f1": [0.5, 0.6]}, "entropy": {"labels": [10, 20], "f1": [0.5, 0.7]}}
    Simulation.objects.filter(pk=sim.pk).update(status="succeeded", progress=1.0, result={"curves": curves})
    html = client.get(card_url, HTTP_HX_REQUEST="true").content.decode()
    assert "hx-get" not in html and "data-job-active" not in html
    data = json.loads(html.split('<script id="sim-data" type="application/json">')[1].split("</script>")[0])
    assert data["curves"] == curves  # json_script for the chart
    # a failed simulation says why, and the previous chart stays
    client.post(url, {"strategies": ["margin"]}, HTTP_HX_REQUEST="true")
    Simulation.objects.filter(status="queued").update(status="failed", error="worker died")
    html = client.get(card_url, HTTP_HX_REQUEST="true").content.decode()
    assert "The last simulation failed: worker died" in html and '"entropy"' in html


def test_annotators_table_reads_in_words_and_three_digits(client, admin_user, annotator_user, password, project):
    for _ in range(3):
        lease = services.lease_next(project=project, user=annotator_user)
        assert lease is not None
        services.label_submit(project=project, user=annotator_user, item_id=lease.item_id, label="positive")
    client.login(username=admin_user.username, password=password)
    html = client.get(reverse("annotate:project", kwargs={"pk": project.pk})).content.decode()
    assert ">labels per hour</th>" in html and ">time per label</th>" in html and ">gold accuracy</th>" in html
    row = html[html.index(f"<td>{annotator_user.username}</td>") :].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("</td>")[0] for c in row.split("<td")[1:]]
    assert cells[1] == "3" and not cells[2].endswith(".0"), cells  # per hour: 3 digits, not "300.0"
    assert cells[2] != "—" and len(cells) == 6, cells  # per hour is in the cell after labels (a phone hides it)


def test_a_queued_run_does_not_claim_zero_labels(client, admin_user, password, project):
    run = TrainingRun.objects.create(project=project, status="queued")
    client.login(username=admin_user.username, password=password)
    html = client.get(reverse("annotate:run", kwargs={"pk": run.pk})).content.decode()
    assert "waiting for a worker: the labels are counted when it starts" in html
    assert "attempt 0" not in html and "0 training labels" not in html


def test_recent_runs_say_just_now_not_0_minutes_ago(client, admin_user, password, project):
    TrainingRun.objects.create(project=project, status="failed")
    client.login(username=admin_user.username, password=password)
    for url in (reverse("annotate:project", kwargs={"pk": project.pk}), reverse("annotate:runs")):
        html = client.get(url).content.decode()
        assert "0 minutes ago" not in html and "now" in html, url
