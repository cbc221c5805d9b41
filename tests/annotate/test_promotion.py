"""Promotion is visible and truthful: the policy's sentence for promote / keep / manual / no gold, and the
run page, runs list and dashboard saying it — with the live badge read from the registry pointer (after a
rollback a run no longer claims to be live)."""

from __future__ import annotations

import pytest
from django.utils.html import escape

from annotate import jobs, promotion, selectors, services
from annotate.models import TrainingRun
from slm.classify.testing import make_tiny_version
from tests.annotate.conftest import make_project
from tests.annotate.test_retrain import _label_all


def test_decide_promote_keep_manual_and_no_gold() -> None:
    d = promotion.decide(
        auto=True, version="v0002", new={"macro_f1": 0.8}, reference="v0001", reference_metrics={"macro_f1": 0.7},
        reference_is_live=True,
    )  # fmt: skip
    assert d == promotion.Decision(True, "promoted v0002: v0002's gold macro-F1 0.800 ≥ v0001's 0.700")
    d = promotion.decide(
        auto=True, version="v0002", new={"macro_f1": 0.548}, reference="v0001", reference_metrics={"macro_f1": 0.971},
        reference_is_live=True,
    )  # fmt: skip
    assert d == promotion.Decision(False, "kept v0001 live: v0002's gold macro-F1 0.548 < v0001's 0.971")
    d = promotion.decide(
        auto=True, version="v0005", new={"macro_f1": 0.82974}, reference="v0004",
        reference_metrics={"macro_f1": 0.83012}, reference_is_live=True,
    )  # fmt: skip
    assert d.text == "kept v0004 live: v0005's gold macro-F1 0.8297 < v0004's 0.8301"  # never "0.830 < 0.830"
    d = promotion.decide(
        auto=False, version="v0002", new={"macro_f1": 0.9}, reference="v0001", reference_metrics={"macro_f1": 0.7},
        reference_is_live=True,
    )  # fmt: skip
    assert not d.promote and d.text.startswith("kept v0001 live: this project promotes by hand (")
    d = promotion.decide(
        auto=True, version="v0002", new={}, reference="v0001", reference_metrics={}, reference_is_live=True
    )
    assert d == promotion.Decision(False, "kept v0001 live: cannot compare on gold (no gold items to score it on)")
    d = promotion.decide(
        auto=True, version="v0001", new={"macro_f1": 0.6}, reference="sentiment@v0003",
        reference_metrics={"macro_f1": 0.7}, reference_is_live=False,
    )  # fmt: skip
    assert not d.promote and d.text.startswith("not promoted (no live version; base sentiment@v0003)")
    d = promotion.decide(
        auto=True, version="v0001", new={}, reference=None, reference_metrics={}, reference_is_live=False
    )
    assert d.promote and d.text == "promoted v0001: nothing was live (no gold items to score it on)"


def test_run_decision_follows_the_live_pointer() -> None:
    kw = {"status": "succeeded", "version": "v0002"}
    assert (
        promotion.run_decision(**kw, decision="promoted v0002: x", promoted=True, live="v0002") == "promoted v0002: x"
    )
    assert promotion.run_decision(**kw, decision="promoted v0002: x", promoted=True, live="v0001") == (
        "promoted v0002: x; no longer live (v0001 is live now)"
    )
    assert promotion.run_decision(**kw, decision="kept v0001 live: y", promoted=False, live="v0002") == (
        "kept v0001 live: y; v0002 is live now"
    )
    assert promotion.run_decision(status="running", version="", decision="", promoted=False, live="v1") == (
        "running: no decision yet"
    )
    failed = promotion.run_decision(status="failed", version="", decision="", promoted=False, live="v1")
    assert failed.startswith("failed:") and "live model is unchanged" in failed


@pytest.mark.django_db(transaction=True)
def test_decision_text_after_keep_promote_and_rollback_on_the_pages(
    registry, admin_user, annotator_user, client, password, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    make_tiny_version(registry)  # a good live model: it scores 1.0 on this project's gold
    project = make_project(gold_fraction=0.35, retrain_from="scratch")  # 13 labels alone do worse
    _label_all(project, annotator_user)
    run = TrainingRun.objects.create(project=project)
    jobs.retrain_job(run.pk)
    run.refresh_from_db()
    new_f1, live_f1 = run.metrics["gold"]["macro_f1"], run.metrics["live_gold"]["macro_f1"]
    assert run.status == "succeeded" and new_f1 < live_f1 == 1.0 and run.metrics["live_version"] == "v0001"
    kept = f"kept v0001 live: v0002's gold macro-F1 {new_f1:.3f} < v0001's 1.000"
    assert run.decision == kept and not run.promoted and registry.live_version("sentiment") == "v0001"
    client.login(username=admin_user.username, password=password)
    page = client.get(f"/annotate/runs/{run.pk}/").content.decode()
    assert escape(kept) in page and 'class="badge live"' not in page
    assert escape(kept) in client.get(f"/annotate/p/{project.pk}/").content.decode()  # the dashboard says it too
    # the versions table shows the live version's gold figure the run measured, beside the new one's
    table = {v["version"]: v for v in selectors.versions(project)}
    assert table["v0001"]["gold_macro_f1"] == live_f1 and table["v0002"]["gold_macro_f1"] == pytest.approx(
        new_f1, abs=1e-4
    )
    assert "T" not in table["v0001"]["created_text"] and len(table["v0001"]["created_text"]) == 16
    # the confirmation for a hand promotion of the worse version (the figures the run recorded)
    v2 = next(v for v in selectors.versions(project) if v["version"] == "v0002")
    assert v2["promote_warning"].endswith("Make it live anyway?")
    resp = client.post(f"/annotate/p/{project.pk}/models/action", {"action": "promote", "version": "v0002"})
    assert resp.status_code == 200 and registry.live_version("sentiment") == "v0001"  # asks first
    with pytest.raises(promotion.WorseThanLive, match="Make it live anyway"):  # so does the service (API)
        services.version_promote(project=project, version="v0002")
    client.post(f"/annotate/p/{project.pk}/models/action", {"action": "promote", "version": "v0002", "confirm": "1"})
    assert registry.live_version("sentiment") == "v0002"
    run.refresh_from_db()
    assert (
        run.promoted
        and run.decision == f"{kept}; later promoted by hand by boss after confirming it scored worse on gold"
    )
    page = client.get(f"/annotate/runs/{run.pk}/").content.decode()
    assert 'class="badge live"' in page and "promoted by hand" in page
    services.version_rollback(project=project)
    assert registry.live_version("sentiment") == "v0001"
    page = client.get(f"/annotate/runs/{run.pk}/").content.decode()
    assert 'class="badge live"' not in page and "no longer live (v0001 is live now)" in page  # not "promoted · live"
    runs_page = client.get("/annotate/runs/").content.decode()
    assert "no longer live (v0001 is live now)" in runs_page
