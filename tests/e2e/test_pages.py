"""Every page of the app at desktop (1280x800) and phone (390x844) width: nothing sticks out sideways
(the page never scrolls horizontally at 390 px), no script errors, and a screenshot of each is kept in
test-artifacts/screenshots/pages/ for people to look at."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("sync_orm_module")]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Tables that scroll sideways inside their card (fine on a phone; at desktop width a column is hidden).
HIDDEN_COLUMNS_JS = """() => Array.from(document.querySelectorAll('.table-wrap'))
  .filter(w => w.scrollWidth > w.clientWidth + 1)
  .map(w => (w.closest('.card')?.querySelector('h2')?.textContent || '?') + ' +' + (w.scrollWidth - w.clientWidth))"""

# What sticks out past the right edge of the viewport and is not inside something that scrolls itself.
OVERFLOW_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const out = [];
  const scrolls = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (/(auto|scroll|hidden|clip)/.test(s.overflowX) && p.getBoundingClientRect().right <= vw + 1) return true;
    }
    return false;
  };
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= vw + 1 || scrolls(el)) continue;
    const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
      (el.classList.length ? "." + Array.from(el.classList).join(".") : "");
    out.push(`${name} right=${Math.round(r.right)}`);
    if (out.length > 8) break;
  }
  return {scrollWidth: document.documentElement.scrollWidth, viewport: vw, culprits: out};
}"""


@pytest.fixture
def world(live_stack, admin_user) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Enough data that every page has something in it: long conversation titles, a long unbroken reply,
    two sentiment versions, a project with items, labels, a finished run and a batch prediction."""
    from django.conf import settings
    from django.utils import timezone

    from annotate import services as annotate_services
    from annotate.models import TrainingRun
    from chat import services as chat_services
    from sentiment.models import BatchPrediction
    from slm.classify.testing import make_tiny_version
    from slm.registry import Registry
    from tests.annotate.conftest import make_project
    from tests.chat.tiny import add_tiny_chat_version

    registry = Registry(settings.SLM_REGISTRY_DIR)
    add_tiny_chat_version(registry)
    old = make_tiny_version(registry, name=settings.SENTIMENT_MODEL)
    live = make_tiny_version(registry, name=settings.SENTIMENT_MODEL)
    conv = None
    for i in range(9):
        conv, _, agent = chat_services.exchange_start(
            owner=admin_user,
            conversation=None,
            prompt=f"conversation number {i} with a rather long first message that becomes its title",
            params={"max_new_tokens": 64, "temperature": 0.6, "do_sample": True, "stop": ["User:"]},
            seed=7,
            model_ref="chat@v0001",
            queued=False,
        )
        chat_services.message_finish(
            message_id=agent.pk,
            text="averyveryverylongwordwithoutanyspaces" * 4 + " 很长的中文回复没有空格" * 6,
            reason="length",
            prompt_tokens=20,
            completion_tokens=64,
            ttft_ms=12.0,
            tokens_per_s=40.0,
        )
    project = make_project(gold_fraction=0.3, guidelines="Label the **sentiment** of each review.")
    for _ in range(3):  # the annotators table has a row (its κ column is the last one)
        lease = annotate_services.lease_next(project=project, user=admin_user)
        annotate_services.label_submit(
            project=project, user=admin_user, item_id=lease.item_id, label=project.labels[0], seconds=2.0
        )
    run = TrainingRun.objects.create(
        project=project,
        status=TrainingRun.Status.SUCCEEDED,
        progress=1.0,
        n_train=14,
        n_gold=6,
        parent_version=old.version,
        version=live.version,
        promoted=True,
        decision="promoted: the new version scored gold macro-F1 0.829 on 6 gold items, above the live version's "
        "0.476 (promotion needs a higher gold macro-F1)",
        metrics={
            "gold": {"accuracy": 0.8333, "macro_f1": 0.8285714},
            "live_gold": {"accuracy": 0.5, "macro_f1": 0.4761904},
        },
        log="loading labels\ntraining ngram on 14 labels\nscored on 6 gold items\npromoted",
        finished_at=timezone.now(),
    )
    batch = BatchPrediction.objects.create(
        owner=admin_user,
        filename="reviews-with-a-long-file-name-2026.csv",
        status=BatchPrediction.Status.SUCCEEDED,
        total=2,
        done=2,
        model_ref=live.ref,
        labels=["negative", "positive"],
        label_counts={"negative": 1, "positive": 1},
        preview=[
            {"text": "质量太差了" * 20, "label": "negative", "score": 0.91},
            {"text": "great" * 40, "label": "positive", "score": 0.88},
        ],
    )
    return {"conv": conv, "project": project, "run": run, "live": live, "old": old, "batch": batch}


def _pages(w: dict[str, Any]) -> list[tuple[str, str]]:
    p = w["project"].pk
    return [
        ("home", "/"),
        ("chat-new", "/chat/"),
        ("chat-conversation", f"/chat/c/{w['conv'].pk}/"),
        ("sentiment-playground", "/sentiment/"),
        ("sentiment-versions", "/sentiment/models/"),
        ("sentiment-card", f"/sentiment/models/{w['live'].version}/"),
        ("sentiment-batch", f"/sentiment/batch/{w['batch'].pk}/"),
        ("annotate-index", "/annotate/"),
        ("annotate-new", "/annotate/new/"),
        ("annotate-project", f"/annotate/p/{p}/"),
        ("annotate-label", f"/annotate/p/{p}/label/"),
        ("annotate-review", f"/annotate/p/{p}/review/"),
        ("annotate-versions", f"/annotate/p/{p}/models/?a={w['old'].version}&b={w['live'].version}"),
        ("runs", "/annotate/runs/"),
        ("run", f"/annotate/runs/{w['run'].pk}/"),
        ("not-found", "/chat/c/999999/"),
        ("unknown-url", "/no-such-page/"),  # the app's 404 page too, not Django's URL list
    ]


def test_no_page_scrolls_sideways_at_phone_width(page, world, admin_user, password, artifacts_dir_session):  # type: ignore[no-untyped-def]
    shots = artifacts_dir_session / "screenshots" / "pages"
    shots.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(DESKTOP)
    page.goto("/accounts/login/")
    page.screenshot(path=str(shots / "login-1280.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.reload()
    page.screenshot(path=str(shots / "login-390.png"), full_page=True)
    problems = {}
    m = page.evaluate(OVERFLOW_JS)
    if m["scrollWidth"] > m["viewport"] or m["culprits"]:
        problems["login"] = m
    login(page, admin_user.username, password)
    for name, url in _pages(world):
        for size in (DESKTOP, PHONE):
            page.set_viewport_size(size)
            page.goto(url)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(shots / f"{name}-{size['width']}.png"), full_page=True)
            m = page.evaluate(OVERFLOW_JS)
            if m["scrollWidth"] > m["viewport"] or m["culprits"]:
                problems[f"{name}@{size['width']}"] = m
            if size == DESKTOP and (hidden := page.evaluate(HIDDEN_COLUMNS_JS)):
                problems[f"{name}@{size['width']} tables"] = hidden
    assert not problems, problems
    # the runs list on a phone: the decision sentence is read in full, not cut off inside a sideways scroller
    page.set_viewport_size(PHONE)
    page.goto("/annotate/runs/")
    fit = page.evaluate("""() => {
      const td = document.querySelector('.a-decision-row td'), wrap = td.closest('.table-wrap');
      return {text: td.textContent.trim(), right: td.getBoundingClientRect().right,
              vw: document.documentElement.clientWidth, hidden: wrap.scrollWidth - wrap.clientWidth};
    }""")
    assert fit["text"].startswith("promoted:") and fit["right"] <= fit["vw"] and fit["hidden"] <= 1, fit
    # and in the project's narrow "Recent runs" card (desktop too) it gets the card's width, not a fourth of it
    for size in (PHONE, DESKTOP):
        page.set_viewport_size(size)
        page.goto(f"/annotate/p/{world['project'].pk}/")
        share = page.evaluate("""() => {
          const td = document.querySelector('.a-recent-why');
          return td.getBoundingClientRect().width / td.closest('.card').clientWidth;
        }""")
        assert share > 0.8, (size, share)
        # its annotators table keeps gold accuracy and κ in view on a phone too (speed columns drop out)
        cols = page.evaluate("""() => {
          const w = document.querySelector('.a-wide .table-wrap');
          return {hidden: w.scrollWidth - w.clientWidth, heads: Array.from(w.querySelectorAll('th'))
            .filter(th => th.getBoundingClientRect().width > 0).map(th => th.textContent)};
        }""")
        assert cols["hidden"] <= 1 and cols["heads"][-2:] == ["gold accuracy", "κ with others"], (size, cols)
    assert page.js_errors == []
    # the version tables stack into "label  value" cards on a phone: every column in view, none scrolled off,
    # labels on one side and values on the other (no label overlapping the next line)
    page.set_viewport_size(PHONE)
    for url in ("/sentiment/models/", f"/annotate/p/{world['project'].pk}/models/"):
        page.goto(url)
        stacked = page.evaluate("""() => Array.from(document.querySelectorAll('table.stack-phone')).map(t => {
          const wrap = t.closest('.table-wrap') || t.parentElement;
          const cells = Array.from(t.querySelectorAll('tbody tr:first-child td[data-label]'));
          const value = cells.map(td => td.firstElementChild.getBoundingClientRect());
          const tops = cells.map(td => td.getBoundingClientRect());
          return {hidden: wrap.scrollWidth - wrap.clientWidth, cells: cells.length,
                  right: Math.max(...value.map(r => r.right)), vw: document.documentElement.clientWidth,
                  ordered: tops.every((r, i) => i === 0 || r.top >= tops[i - 1].bottom - 1),
                  headHidden: t.tHead.getBoundingClientRect().height <= 1};
        })""")
        assert stacked, url
        for t in stacked:
            assert t["hidden"] <= 1 and t["cells"] >= 6 and t["right"] <= t["vw"], (url, t)
            assert t["ordered"] and t["headHidden"], (url, t)
