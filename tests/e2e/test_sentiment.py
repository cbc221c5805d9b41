"""Browser test of the sentiment playground: Chinese and English texts, an example link, a small CSV
(inline) and a bigger one (RQ job with progress), downloads, the model card; desktop and phone shots."""

from __future__ import annotations

import csv
import io

import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module", autouse=True)
def _sync_orm_beside_playwright():  # type: ignore[no-untyped-def]
    """Module-wide (so the transactional flush at each test's teardown is covered too): Playwright's sync
    API keeps an event loop running in this thread while the ORM calls here are sync."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    mp.undo()


@pytest.fixture
def tiny_live_version():  # type: ignore[no-untyped-def]
    """A real tiny n-gram version, live, in the registry the daphne/worker subprocesses use."""
    from django.conf import settings

    from slm.classify.testing import make_tiny_version
    from slm.registry import Registry

    return make_tiny_version(Registry(settings.SLM_REGISTRY_DIR), name=settings.SENTIMENT_MODEL)


def csv_payload(texts: list[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"])
    for i, t in enumerate(texts):
        w.writerow([i, t])
    return buf.getvalue().encode()


def classify(page, text: str) -> str:  # type: ignore[no-untyped-def]
    page.fill("#s-text", text)
    page.click("#classify-form button[type=submit]")
    label = page.locator("#result .s-label")
    label.wait_for()
    page.wait_for_function(
        "t => document.querySelector('#result .s-ref') && document.querySelector('#s-text').value === t", arg=text
    )
    return label.get_attribute("data-label") or ""


def test_playground_classifies_chinese_and_english_and_uploads_csv(
    live_stack, page, admin_user, password, artifacts_dir_session, tiny_live_version
):
    shots = artifacts_dir_session / "screenshots"
    login(page, admin_user.username, password)
    page.goto("/sentiment/")
    assert tiny_live_version.ref in page.locator(".s-head").inner_text()

    assert classify(page, "太好了，非常满意，推荐购买") == "positive"
    bars = page.locator("#result .s-bar-row")
    assert bars.count() == 2
    assert "%" in bars.first.inner_text()
    with page.expect_response(lambda r: "/sentiment/classify/" in r.url):
        page.fill("#s-text", "Awful service and the food was cold.")
        page.click("#classify-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#result .s-label')?.dataset.label === 'negative'")
    assert page.locator("#result .s-ref").inner_text().startswith(tiny_live_version.ref)
    page.locator("#result details.s-fix summary").click()
    page.screenshot(path=str(shots / "sentiment-playground-desktop.png"), full_page=True)
    fix_form = page.locator("#result form.s-fix-form")
    if fix_form.count():  # the annotate app is installed: the correction goes there and we come back
        assert fix_form.locator("select[name=label]").input_value() == "positive"
        fix_form.locator("button[type=submit]").click()
        page.wait_for_url("**/sentiment/")
        assert page.locator(".messages .msg").count() >= 1

    # an example link fills the box and classifies (htmx)
    example = page.locator("a.s-example[lang=zh]").first
    example.click()
    page.wait_for_function(
        "() => document.querySelector('#s-text').value.length > 0 && document.querySelector('#result .s-label')"
    )
    assert page.input_value("#s-text") == example.get_attribute("data-example")

    # small CSV: inline table + download
    texts = ["质量太差了，非常失望", "This is great, I love it!", "物流很快，包装完好"]
    page.set_input_files(
        "#batch-form input[name=file]", {"name": "reviews.csv", "mimeType": "text/csv", "buffer": csv_payload(texts)}
    )
    page.click("#batch-form button[type=submit]")
    page.locator("#batch-result a:has-text('Download CSV')").wait_for()
    rows = page.locator("#batch-result tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).locator(".badge").inner_text() == "negative"
    assert rows.nth(1).locator(".badge").inner_text() == "positive"
    with page.expect_download() as info:
        page.click("#batch-result a:has-text('Download CSV')")
    content = open(info.value.path(), encoding="utf-8-sig").read().splitlines()
    assert open(info.value.path(), "rb").read(3) == b"\xef\xbb\xbf"  # BOM: Excel reads it as UTF-8
    assert content[0] == "id,text,label,score,p_negative,p_positive"
    assert len(content) == 4

    # bigger CSV: runs on the RQ worker, progress polled by htmx until the table shows
    many = [f"{t} #{i}" for i in range(90) for t in ("非常好，很满意", "Awful, do not buy", "物流太慢")]
    page.set_input_files(
        "#batch-form input[name=file]", {"name": "big.csv", "mimeType": "text/csv", "buffer": csv_payload(many)}
    )
    page.click("#batch-form button[type=submit]")
    page.locator("#batch-result:has-text('big.csv')").wait_for()  # queued/running first, then the table
    page.locator("#batch-result:has-text('270 rows') a:has-text('Download CSV')").wait_for(timeout=60_000)
    assert page.locator("#batch-result tbody tr").count() == 200  # preview; the CSV has all rows

    # versions list, then the model card with charts
    page.goto("/sentiment/models/")
    row = page.locator("table.s-versions tr", has_text=tiny_live_version.version)
    assert "live" in row.inner_text()
    page.screenshot(path=str(shots / "sentiment-versions-desktop.png"), full_page=True)
    page.click(f"table.s-versions a:text-is('{tiny_live_version.version}')")
    page.wait_for_url(f"**/sentiment/models/{tiny_live_version.version}/")
    page.locator("#s-cm-chart").wait_for()
    page.wait_for_function("() => window.Chart && Object.keys(window.Chart.instances || {}).length >= 2")
    page.screenshot(path=str(shots / "sentiment-model-card-desktop.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "sentiment-model-card-phone.png"), full_page=True)
    page.goto("/sentiment/")
    assert classify(page, "这本书写得太好了，值得一读") == "positive"
    page.screenshot(path=str(shots / "sentiment-playground-phone.png"), full_page=True)
    assert page.js_errors == []


def test_browser_session_calls_the_api_with_csrf_under_daphne(
    live_stack, page, plain_user, password, tiny_live_version
):
    """Session auth from the browser (CSRF header from the cookie) on daphne; concurrent calls all succeed."""
    login(page, plain_user.username, password)
    page.goto("/sentiment/")
    result = page.evaluate(
        """async () => {
            const csrf = document.cookie.split("; ").find(c => c.startsWith("csrftoken=")).split("=")[1];
            const call = (texts, headers) => fetch("/api/sentiment/predict", {
                method: "POST", credentials: "same-origin",
                headers: {"Content-Type": "application/json", ...headers},
                body: JSON.stringify({texts})});
            const noCsrf = await call(["好"], {});
            const many = await Promise.all(Array.from({length: 12}, (_, i) =>
                call([i % 2 ? "太好了，非常满意" : "Awful service and the food was cold."], {"X-CSRFToken": csrf})
                    .then(async r => [r.status, await r.json()])));
            const bad = await call([], {"X-CSRFToken": csrf});
            return {noCsrf: noCsrf.status, many, bad: [bad.status, await bad.json()]};
        }"""
    )
    assert result["noCsrf"] == 403
    assert [status for status, _ in result["many"]] == [200] * 12
    labels = [body["predictions"][0]["label"] for _, body in result["many"]]
    assert labels == ["negative", "positive"] * 6
    assert all(body["model"] == tiny_live_version.ref for _, body in result["many"])
    assert result["bad"][0] == 422 and result["bad"][1]["message"]


def test_openapi_docs_render_in_the_browser(live_stack, page, plain_user, password, artifacts_dir_session):
    login(page, plain_user.username, password)
    page.goto("/api/docs")
    page.locator(".opblock-summary-path", has_text="/api/sentiment/predict").first.wait_for()
    assert page.locator(".opblock-summary-path", has_text="/api/sentiment/models").count() >= 1
    page.screenshot(path=str(artifacts_dir_session / "screenshots" / "api-docs.png"))
