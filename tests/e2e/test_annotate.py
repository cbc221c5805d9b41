"""Browser test of the closed loop: an annotator labels with the keyboard (number keys), undoes one and
relabels it; an admin presses Retrain, watches the run page update itself until the real RQ worker has
trained and promoted a new version, and the playground serves that version. Desktop and phone shots."""

from __future__ import annotations

import pytest

from slm.text import clean_text
from tests.annotate.conftest import NEG, POS, make_project
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def sync_orm_env():  # type: ignore[no-untyped-def]
    """DJANGO_ALLOW_ASYNC_UNSAFE for the rest of the (browser-tests-last) session, set before the DB fixtures
    so the transactional flush at teardown also runs with it (Playwright keeps a loop in this thread)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    mp.undo()


@pytest.fixture
def swapped_live_version():  # type: ignore[no-untyped-def]
    """A live tiny model with its labels swapped (wrong on purpose), so a retrain must beat it on gold."""
    from django.conf import settings

    from slm.classify.testing import make_tiny_version
    from slm.registry import Registry

    return make_tiny_version(
        Registry(settings.SLM_REGISTRY_DIR), name=settings.SENTIMENT_MODEL, labels=("positive", "negative")
    )


CLEAN_POS = {clean_text(t) for t in POS}


def _key_for(text: str) -> str:
    return "2" if text in CLEAN_POS else "1"  # labels: 1 negative, 2 positive


def test_keyboard_labelling_undo_then_admin_retrain_goes_live(
    sync_orm_env, live_stack, page, annotator_user, admin_user, password, swapped_live_version, artifacts_dir_session
):
    from annotate.models import Annotation, Item, TrainingRun

    shots = artifacts_dir_session / "screenshots"
    project = make_project(gold_fraction=0.35, guidelines="Label the **sentiment**. 中文和英文都有。")
    n_items = Item.objects.filter(project=project).count()
    login(page, annotator_user.username, password)
    page.goto(f"/annotate/p/{project.pk}/label/")
    text = page.locator("#a-text")
    text.wait_for()
    page.screenshot(path=str(shots / "annotate-label-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "annotate-label-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})

    labelled: list[str] = []
    undone = False
    for _ in range(n_items + 2):
        if page.locator("#a-empty").is_visible():
            break
        current = text.inner_text()
        page.keyboard.press(_key_for(current))
        labelled.append(current)
        page.wait_for_function(
            "t => document.getElementById('a-empty').hidden === false || document.getElementById('a-text').textContent !== t",
            arg=current,
        )
        if len(labelled) == 4 and not undone:
            page.keyboard.press("u")  # undo the 4th label: it comes back
            page.wait_for_function("t => document.getElementById('a-text').textContent === t", arg=current)
            assert "Undone" in page.locator("#a-status").inner_text()
            labelled.pop()
            undone = True
    page.locator("#a-empty").wait_for(state="visible")
    page.wait_for_function("document.getElementById('labeler').dataset.pending === '0'")  # every label sent
    assert undone
    assert page.js_errors == []
    anns = Annotation.objects.filter(project=project)
    saved = sorted(anns.values_list("item__text", flat=True))
    assert anns.count() == n_items == len(labelled) == len(set(labelled)), (
        sorted(labelled),
        saved,
        page.locator("#a-status").inner_text(),
    )
    assert set(anns.values_list("item_id", flat=True)) == set(
        Item.objects.filter(project=project).values_list("id", flat=True)
    )
    wrong = [
        a for a in anns.select_related("item") if a.label != ("positive" if a.item.text in CLEAN_POS else "negative")
    ]
    assert not wrong
    assert NEG  # the fixture data has both labels

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"/annotate/p/{project.pk}/label/")
    page.screenshot(path=str(shots / "annotate-label-phone-done.png"), full_page=True)
    page.goto("/annotate/")
    assert page.get_by_role("link", name="Start labelling").is_visible()
    page.screenshot(path=str(shots / "annotate-index-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})

    # the admin retrains
    page.context.clear_cookies()
    login(page, admin_user.username, password)
    page.goto(f"/annotate/p/{project.pk}/")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-throughput'))")
    precision = page.evaluate(
        "['chart-dist', 'chart-throughput'].map(id => Chart.getChart(document.getElementById(id)).options.scales.y.ticks.precision)"
    )
    assert precision == [0, 0]  # counts get whole-number ticks, not "0.2 items"
    page.screenshot(path=str(shots / "annotate-project-desktop.png"), full_page=True)
    page.click("[data-testid=retrain]")
    page.wait_for_url("**/annotate/runs/*/")
    page.locator("#run-badge", has_text="succeeded").wait_for(timeout=90_000)  # htmx polling, real worker
    run = TrainingRun.objects.get(project=project)
    assert run.promoted and run.version
    assert "promoted" in page.locator("#run-log").inner_text()
    page.screenshot(path=str(shots / "annotate-run-desktop.png"), full_page=True)
    page.goto("/annotate/runs/")
    assert page.locator(f"tr[data-run='{run.pk}'] .badge.succeeded").is_visible()
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "annotate-runs-phone.png"), full_page=True)
    page.goto(f"/annotate/p/{project.pk}/")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-learning'))")
    x = page.evaluate("Chart.getChart(document.getElementById('chart-learning')).options.scales.x")
    assert x["min"] == 0 and x["ticks"]["precision"] == 0  # one point at 14 labels: not an axis of 13.7 … 14.2
    page.screenshot(path=str(shots / "annotate-project-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 860})

    # the playground serves the new version without a restart
    page.goto("/sentiment/")
    assert f"sentiment@{run.version}" in page.locator(".s-head").inner_text()

    # versions page: compare, then roll back to the previous version; the playground follows
    page.goto(f"/annotate/p/{project.pk}/models/?a={run.parent_version}&b={run.version}")
    assert page.locator(".a-compare").is_visible()
    page.screenshot(path=str(shots / "annotate-versions-desktop.png"), full_page=True)
    page.locator(f"tr[data-version='{run.parent_version}'] button[value=rollback]").click()
    page.locator(f"tr[data-version='{run.parent_version}'] .badge.live").wait_for()
    page.goto("/sentiment/")
    assert f"sentiment@{run.parent_version}" in page.locator(".s-head").inner_text()
    page.goto(f"/annotate/p/{project.pk}/review/")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "annotate-review-phone.png"), full_page=True)
    assert page.js_errors == []


def test_admin_launches_simulation_and_sees_label_efficiency_curves(
    sync_orm_env, live_stack, page, admin_user, password, artifacts_dir_session
):
    from annotate.demo import create_demo_project
    from annotate.models import Simulation

    project, _ = create_demo_project(limit=300)
    login(page, admin_user.username, password)
    page.goto(f"/annotate/p/{project.pk}/")
    page.locator("#simulation").get_by_role("button", name="Run simulation").click()
    # no reload: the card says queued/running with progress at once, then draws the chart by itself
    page.locator("#simulation .a-sim-progress .badge").wait_for()
    assert page.locator("#simulation .a-sim-progress").inner_text().split()[0] in ("queued", "running")
    page.screenshot(path=str(artifacts_dir_session / "screenshots" / "annotate-dashboard-sim-running.png"))
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-sim'))", timeout=120_000
    )
    sim = Simulation.objects.get(project=project)
    assert sim.status == "succeeded", sim.error
    n = page.evaluate("Chart.getChart(document.getElementById('chart-sim')).data.datasets.length")
    assert n == 3  # random + entropy + margin
    assert page.locator("#simulation .a-sim-progress").count() == 0
    assert "random's final F1" in page.locator("#simulation").inner_text()
    page.screenshot(
        path=str(artifacts_dir_session / "screenshots" / "annotate-dashboard-sim-desktop.png"), full_page=True
    )
    assert page.js_errors == []


def test_labels_on_the_demo_project_promote_a_version_the_playground_serves(
    sync_orm_env, live_stack, page, annotator_user, admin_user, password, artifacts_dir_session
):
    """The honest demo loop: an annotator labels held-out book reviews by keyboard; after `retrain_every`
    labels the auto retrain adapts the live model (its base) on the worker, beats it on the demo's gold,
    goes live, and the playground serves it; the project page says why in words."""
    import time

    from django.conf import settings

    from annotate.demo import create_demo_project
    from annotate.models import Annotation, Item, TrainingRun
    from slm.classify.adapt import StoredRowsNgramClassifier, stored_record
    from slm.classify.ngram import NgramConfig
    from slm.classify.testing import tiny_dataset
    from slm.classify.versions import build_metadata, register_classifier
    from slm.registry import Registry

    # a live model with the default n-gram settings that knows ~20 generic reviews and no book reviews
    registry = Registry(settings.SLM_REGISTRY_DIR)
    texts, labels = tiny_dataset()
    model = StoredRowsNgramClassifier.train(texts, labels, NgramConfig(), label_order=["negative", "positive"])
    model.stored_rows = [{"text": t, "label": y, "weight": 1.0} for t, y in zip(texts, labels, strict=True)]
    meta = build_metadata(
        family="ngram", labels=model.labels, config={"family": "ngram", **NgramConfig().to_dict()},
        data_hash="tiny", metrics={}, description="tiny base", training_data=stored_record(model.stored_rows),
    )  # fmt: skip
    base = register_classifier(registry, settings.SENTIMENT_MODEL, model, meta, promote=True)
    project, _ = create_demo_project(limit=400)
    assert project.base == base.ref and project.retrain_from == "parent"
    answers = {
        text: gold or (meta or {}).get("source_label")
        for text, gold, meta in Item.objects.filter(project=project).values_list("text", "gold_label", "meta")
    }
    login(page, annotator_user.username, password)
    page.goto(f"/annotate/p/{project.pk}/label/")
    text = page.locator("#a-text")
    text.wait_for()
    deadline = time.monotonic() + 120
    while Annotation.objects.filter(project=project).count() < project.retrain_every + 2:
        assert time.monotonic() < deadline, "labelling took too long"
        current = text.inner_text()
        page.keyboard.press("2" if answers[current] == "positive" else "1")
        page.wait_for_function("t => document.getElementById('a-text').textContent !== t", arg=current)
    page.wait_for_function("() => document.getElementById('labeler').dataset.pending === '0'")
    deadline = time.monotonic() + 120
    while not TrainingRun.objects.filter(project=project, status__in=["succeeded", "failed"]).exists():
        assert time.monotonic() < deadline, "the auto retrain did not finish"
        time.sleep(0.5)
    run = TrainingRun.objects.get(project=project)
    assert run.trigger == "auto" and run.status == "succeeded", (run.error, run.log)
    assert run.parent_version == base.version and run.promoted, run.decision
    gold, before = run.metrics["gold"]["macro_f1"], run.metrics["live_gold"]["macro_f1"]
    assert gold > before and run.decision.startswith(f"promoted {run.version}: ")
    assert registry.live_version(settings.SENTIMENT_MODEL) == run.version
    page.goto("/sentiment/")
    assert f"{settings.SENTIMENT_MODEL}@{run.version}" in page.locator(".s-head").inner_text()
    page.context.clear_cookies()
    login(page, admin_user.username, password)
    page.goto(f"/annotate/p/{project.pk}/")
    assert run.decision in page.locator("#project-decision").inner_text()
    page.screenshot(path=str(artifacts_dir_session / "screenshots" / "annotate-demo-promoted.png"), full_page=True)
    assert page.js_errors == []
