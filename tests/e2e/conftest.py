"""Browser-test harness: a live daphne + RQ worker on a free port against the test database, driven by
Playwright with Debian's /usr/bin/chromium (never a downloaded browser). Screenshots go to
test-artifacts/screenshots (git-ignored, kept by CI as artifacts)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]

pytestmark = pytest.mark.e2e


@dataclass
class LiveStack:
    url: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]
    log_dir: Path


def _db_env() -> dict[str, str]:
    from django.db import connection

    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return {"SQLITE_PATH": str(sd["NAME"])}
    user = sd.get("USER") or ""
    pw = f":{sd['PASSWORD']}" if sd.get("PASSWORD") else ""
    host = sd.get("HOST") or "127.0.0.1"
    port = sd.get("PORT") or 5432
    return {"DATABASE_URL": f"postgres://{user}{pw}@{host}:{port}/{sd['NAME']}"}


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, artifacts_dir_session) -> Iterator[LiveStack]:  # type: ignore[no-untyped-def]
    from django.conf import settings

    port = free_port()
    with django_db_blocker.unblock():
        env = {
            **os.environ,
            **_db_env(),
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.test",
            "REDIS_URL": settings.REDIS_URL,
            "SLM_TEST_VAR_DIR": str(settings.TEST_VAR_DIR),
            "SLM_REGISTRY_DIR": str(settings.SLM_REGISTRY_DIR),
            "SLM_TEST_REDIS_CHANNELS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    log_dir = artifacts_dir_session / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    daphne_log = open(log_dir / "daphne.log", "wb")
    worker_log = open(log_dir / "worker.log", "wb")
    procs["daphne"] = subprocess.Popen(
        [sys.executable, "-m", "slmsite.server", "-b", "127.0.0.1", "-p", str(port), "slmsite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=daphne_log,
        stderr=subprocess.STDOUT,
    )
    procs["worker"] = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "gpu", "default", "--with-scheduler"],
        cwd=ROOT,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if procs["daphne"].poll() is not None:
            raise RuntimeError(f"daphne exited: {(log_dir / 'daphne.log').read_text()[-2000:]}")
        try:
            with urlopen(url + "/accounts/login/", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    try:
        wait_until(up, 60, "daphne to answer")
        yield LiveStack(url=url, env=env, procs=procs, log_dir=log_dir)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        daphne_log.close()
        worker_log.close()


@pytest.fixture(scope="module")
def sync_orm_module() -> Iterator[None]:
    """DJANGO_ALLOW_ASYNC_UNSAFE for a whole test module (module scope: set before the function-scoped
    database fixtures, so the transactional flush at each test's teardown is covered too): Playwright's
    sync API keeps an event loop running in this thread while the ORM calls of the tests are sync."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def artifacts_dir_session() -> Path:
    path = Path(os.environ.get("SLM_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    (path / "screenshots").mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make system-deps)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread for as long as the browser lives;
    # the ORM calls of e2e fixtures and tests (and pytest-django's flushes) are sync. tests/conftest.py runs
    # browser tests last, so this window covers nothing else.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield b
            b.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_stack, artifacts_dir_session, request):  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=live_stack.url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    name = request.node.name.replace("/", "_")
    try:
        pg.screenshot(path=str(artifacts_dir_session / "screenshots" / f"{name}-final.png"), full_page=True)
    except Exception:
        pass
    context.close()


def login(page, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def send_message(page, text: str, *, max_new_tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Sends `text` from the chat page with Enter: max new tokens set, no stop strings."""
    if not page.locator("#chat-params").evaluate("el => el.open"):
        page.click("#chat-params summary")
    page.fill("#p-max_new_tokens", str(max_new_tokens))
    page.fill("#p-stop", "")
    page.locator("#chat-input").fill(text)
    page.locator("#chat-input").press("Enter")


def wait_until_done(page, timeout: float = 90_000) -> None:  # type: ignore[no-untyped-def]
    """Waits until the status line says the reply is done (the engine may still be starting: a long default)."""
    page.wait_for_function(
        "() => document.getElementById('chat-status').textContent.startsWith('Done')", timeout=timeout
    )
