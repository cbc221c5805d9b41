import pytest

from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_login_shows_navigation(page, admin_user, password, artifacts_dir_session):
    login(page, admin_user.username, password)
    nav = page.locator("nav.nav")
    for label in ["Chat", "Playground", "Annotate", "Runs", "Admin"]:
        assert nav.get_by_role("link", name=label).is_visible(), label
    page.screenshot(path=str(artifacts_dir_session / "screenshots" / "home-desktop.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.click("label.nav-toggle-label")
    assert nav.get_by_role("link", name="Chat").is_visible()
    page.screenshot(path=str(artifacts_dir_session / "screenshots" / "home-phone.png"), full_page=True)
    assert page.js_errors == []


def test_plain_user_sees_no_admin_link(page, plain_user, password):
    login(page, plain_user.username, password)
    assert page.locator("nav.nav").get_by_role("link", name="Chat").is_visible()
    assert page.locator("nav.nav").get_by_role("link", name="Admin").count() == 0
