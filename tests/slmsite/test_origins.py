"""The chat WebSocket accepts only pages of the site's own origin (scheme, host and port, from the Host
header) or of CSRF_TRUSTED_ORIGINS. Before, any port and scheme of an allowed host passed."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from slmsite.origins import parse_origin

pytestmark = [pytest.mark.django_db(transaction=True)]


async def _connects(origin: str | None, host: str = "127.0.0.1:8000", scheme: str = "ws", extra=()) -> bool:  # type: ignore[no-untyped-def]
    from slmsite.asgi import application

    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin is not None else [])
    comm = WebsocketCommunicator(application, "/ws/chat/", headers=[*headers, *extra])
    comm.scope["scheme"] = scheme
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    return connected


@pytest.fixture
def hosts(settings):  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com"]
    return settings


@pytest.mark.parametrize(
    "origin,ok",
    [
        ("http://127.0.0.1:8000", True),
        ("HTTP://127.0.0.1:8000", True),
        ("http://127.0.0.1:9999", False),  # another port of an allowed host
        ("https://127.0.0.1:8000", False),  # another scheme
        ("https://127.0.0.1:8001", False),
        ("http://localhost:8000", False),  # another allowed host than the one addressed
        ("http://evil.example:8000", False),
        ("https://app.example.com", True),  # trusted origin (a page served elsewhere)
        ("https://app.example.com:8443", False),
        ("null", False),
        (None, False),  # no Origin header at all
    ],
)
async def test_origin_must_match_scheme_host_and_port(hosts, origin, ok):
    assert await _connects(origin) is ok


async def test_the_request_host_must_be_allowed(hosts):
    assert not await _connects("http://evil.example:8000", host="evil.example:8000")


async def test_default_ports_and_tls(hosts):
    assert await _connects("http://example.com", host="example.com")
    assert await _connects("https://example.com", host="example.com", scheme="wss")
    assert not await _connects("http://example.com", host="example.com", scheme="wss")
    assert await _connects("https://example.com:443", host="example.com", scheme="wss")


async def test_tls_terminated_by_a_trusted_proxy(hosts):
    hosts.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proto = [(b"x-forwarded-proto", b"https")]
    assert await _connects("https://example.com", host="example.com", extra=proto)
    assert not await _connects("http://example.com", host="example.com", extra=proto)


def test_parse_origin():
    assert parse_origin("http://a.b") == ("http", "a.b", 80)
    assert parse_origin("https://A.b:8443") == ("https", "a.b", 8443)
    for bad in ("a.b", "ftp://a.b", "http://a.b/path", "http://u@a.b", "http://a.b:99999", "null", ""):
        assert parse_origin(bad) is None, bad
