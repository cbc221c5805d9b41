"""The labeling JSON API (DESIGN §4) end to end through Redis and an RQ worker: create a project, import
items (some gold), take items with `next` (which never reveals gold), label them, retrain, read the run's
decision, promote and roll back — with the 403/409/422/204 answers on the way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from annotate.models import Annotation, Item, Project
from slm.classify.testing import make_tiny_version
from slm.text import clean_text
from slmsite.services import api_token_create
from tests.annotate.conftest import NEG, POS

TRUTH = {clean_text(t): "positive" for t in POS} | {clean_text(t): "negative" for t in NEG}
GOLD = POS[:3] + NEG[:3]
POOL = POS[3:] + NEG[3:]


def _client(user: Any) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {api_token_create(user=user)}")


def _post(c: Client, url: str, body: Any) -> Any:
    return c.post(url, data=json.dumps(body), content_type="application/json")


@pytest.mark.django_db(transaction=True)
def test_labeling_api_end_to_end_through_redis_and_a_worker(
    registry, admin_user, annotator_user, plain_user, run_worker
):
    live0 = make_tiny_version(registry, labels=("positive", "negative"))  # wrong on purpose: a retrain beats it
    admin, ann, plain = _client(admin_user), _client(annotator_user), _client(plain_user)
    base = "/api/annotate/projects"

    # create: admin only; unknown strategy / label set / base are 422 with a message
    spec = {"name": "api", "labels": ["negative", "positive"], "strategy": "margin", "retrain_from": "scratch"}
    assert _post(ann, base, spec).status_code == 403
    assert _post(plain, base, spec).status_code == 403
    r = _post(admin, base, {**spec, "strategy": "nope"})
    assert r.status_code == 422 and "unknown query strategy" in r.json()["message"]
    r = _post(admin, base, {**spec, "labels": ["only"]})
    assert r.status_code == 422 and "two distinct labels" in r.json()["message"]
    r = _post(admin, base, {**spec, "base": "nosuchmodel@v0009"})
    assert r.status_code == 422 and "unknown base" in r.json()["message"]
    r = _post(admin, base, {**spec, "labels": ["a", "b"], "retrain_from": "parent"})  # the API's default
    assert r.status_code == 422 and "differs from the base" in r.json()["message"]
    r = _post(admin, base, spec)
    assert r.status_code == 201, r.content
    project = r.json()
    pid = project["id"]
    assert project["base"] == live0.ref and project["model"] == "sentiment" and project["live_version"] == "v0001"
    assert project["items"] == 0 and project["labels"] == ["negative", "positive"]

    # import: admin only; a gold item needs a label; unknown labels refused; nothing added by a bad call
    items_url = f"{base}/{pid}/items"
    good = [{"text": t, "label": TRUTH[clean_text(t)], "gold": True} for t in GOLD] + [{"text": t} for t in POOL]
    assert _post(ann, items_url, {"items": good}).status_code == 403
    r = _post(admin, items_url, {"items": [*good, {"text": "没有标签的金标准", "gold": True}]})
    assert r.status_code == 422 and "gold item needs a label" in r.json()["message"]
    r = _post(admin, items_url, {"items": [{"text": "x y z", "label": "meh"}]})
    assert r.status_code == 422 and "unknown label" in r.json()["message"]
    assert not Item.objects.filter(project_id=pid).exists()
    r = _post(admin, items_url, {"items": good + [{"text": POOL[0]}]})
    assert r.status_code == 201 and r.json() == {"created": 20, "duplicates": 1, "empty": 0, "gold": 6}
    assert _post(admin, items_url, {"items": [{"text": "t"}] * 10_001}).status_code == 422  # the cap
    run_worker()  # the import queued a pool refresh: suggestions come from the live model
    assert ann.get(f"{base}/{pid}").json()["pool_version"] == "v0001"
    assert not Item.objects.filter(project_id=pid, is_gold=False, pred_label="").exists()

    # next + labels: the annotator labels everything; `next` never says which items are gold
    next_url, label_url = f"{base}/{pid}/next", f"{base}/{pid}/labels"
    assert plain.get(next_url).status_code == 403
    seen_gold = 0
    first: dict[str, Any] | None = None
    while True:
        r = ann.get(next_url)
        if r.status_code == 204:
            break
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"item"} and set(body["item"]) == {"id", "text", "suggestion"}
        assert "gold" not in json.dumps(body)
        item = body["item"]
        assert ann.get(next_url).json()["item"]["id"] == item["id"]  # the lease holds until labelled
        seen_gold += Item.objects.get(pk=item["id"]).is_gold
        if first is None:
            first = item
            assert set(item["suggestion"]) == {"label", "score"} and 0.5 <= item["suggestion"]["score"] <= 1
            r = _post(ann, label_url, {"item": item["id"], "label": "meh"})
            assert r.status_code == 422 and "unknown label" in r.json()["message"]
            other = Item.objects.filter(project_id=pid).exclude(pk=item["id"]).first()
            assert _post(ann, label_url, {"item": other.pk, "label": "positive"}).status_code == 409  # not leased
            assert _post(plain, label_url, {"item": item["id"], "label": "positive"}).status_code == 403
        r = _post(ann, label_url, {"item": item["id"], "label": TRUTH[item["text"]]})
        assert r.status_code == 201 and r.json()["item"] == item["id"]
        assert _post(ann, label_url, {"item": item["id"], "label": "positive"}).status_code == 409  # labelled already
    assert seen_gold == 6 and Annotation.objects.filter(project_id=pid).count() == 20

    # list / detail
    listed = ann.get(base).json()
    assert [p["id"] for p in listed] == [pid] and listed[0]["labelled"] == 14 and listed[0]["gold"] == 6
    assert plain.get(base).status_code == 403

    # retrain through the worker; the run says in words why its version went live
    assert _post(ann, f"{base}/{pid}/retrain", {}).status_code == 403
    r = _post(admin, f"{base}/{pid}/retrain", {})
    assert r.status_code == 202
    run_id = r.json()["run"]
    assert ann.get(f"/api/runs/{run_id}").json()["status"] == "queued"
    run_worker()
    run = ann.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "succeeded", run["error"]
    assert run["version"] == "v0002" and run["promoted"] and run["live"] and run["error"] == ""
    new_f1, old_f1 = run["metrics"]["gold"]["macro_f1"], run["metrics"]["live_gold"]["macro_f1"]
    assert new_f1 > old_f1
    assert run["decision"] == f"promoted v0002: v0002's gold macro-F1 {new_f1:.3f} ≥ v0001's {old_f1:.3f}"
    detail = ann.get(f"{base}/{pid}").json()
    assert detail["live_version"] == "v0002" and detail["runs"][0]["id"] == run_id

    # roll back and promote by API: the decision follows the registry pointer
    assert _post(ann, f"{base}/{pid}/rollback", {}).status_code == 403
    assert _post(admin, f"{base}/{pid}/rollback", {}).json() == {"live": "sentiment@v0001"}
    run = ann.get(f"/api/runs/{run_id}").json()
    assert not run["live"] and run["decision"].endswith("; no longer live (v0001 is live now)")
    r = _post(admin, f"{base}/{pid}/promote", {"version": "v0002"})
    assert r.status_code == 200 and r.json() == {"live": "sentiment@v0002"}
    assert _post(admin, f"{base}/{pid}/promote", {"version": "v0099"}).status_code == 404
    # v0001 scored worse on this project's gold: promoting it needs a confirmation
    r = _post(admin, f"{base}/{pid}/promote", {"version": "v0001"})
    assert r.status_code == 409 and "Make it live anyway?" in r.json()["message"]
    r = _post(admin, f"{base}/{pid}/promote", {"version": "v0001", "confirm": True})
    assert r.status_code == 200 and registry.live_version("sentiment") == "v0001"
    assert Project.objects.get(pk=pid).model_name == "sentiment"


@pytest.mark.django_db
def test_api_answers_for_missing_objects_and_no_credentials(client, admin_user):
    admin = _client(admin_user)
    assert admin.get("/api/annotate/projects/99999").status_code == 404
    assert admin.get("/api/annotate/projects/99999/next").status_code == 404
    assert _post(admin, "/api/annotate/projects/99999/items", {"items": []}).status_code == 404
    assert client.get("/api/annotate/projects").status_code == 401
    r = _post(admin, "/api/annotate/projects", {"name": "x"})  # labels missing
    assert r.status_code == 422 and "labels" in r.json()["message"]


def test_openapi_documents_the_labeling_api(client, admin_user, password):  # type: ignore[no-untyped-def]
    client.login(username=admin_user.username, password=password)
    schema = client.get("/api/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/api/annotate/projects", "post"),
        ("/api/annotate/projects", "get"),
        ("/api/annotate/projects/{project_id}", "get"),
        ("/api/annotate/projects/{project_id}/items", "post"),
        ("/api/annotate/projects/{project_id}/next", "get"),
        ("/api/annotate/projects/{project_id}/labels", "post"),
        ("/api/annotate/projects/{project_id}/retrain", "post"),
        ("/api/annotate/projects/{project_id}/promote", "post"),
        ("/api/runs/{run_id}", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert {"201", "409", "422", "403"} <= set(paths["/api/annotate/projects/{project_id}/labels"]["post"]["responses"])
    assert "204" in paths["/api/annotate/projects/{project_id}/next"]["get"]["responses"]
