"""WebSocket origin check by scheme, host and port.

channels' AllowedHostsOriginValidator compares only the host of the Origin header with ALLOWED_HOSTS, so a
page served from any port or scheme of an allowed host (http://127.0.0.1:9999, https://127.0.0.1:8001) could
open the chat socket with the user's cookies. Here a browser's Origin must be the origin the request itself
was addressed to — the scheme of the connection (or the proxy's X-Forwarded-Proto where
SECURE_PROXY_SSL_HEADER trusts it) with the Host header, whose host must be in ALLOWED_HOSTS — or one of
CSRF_TRUSTED_ORIGINS (full origins, for a page served from another host). A missing Origin is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, the port made explicit; None if it is not one."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.username:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def parse_origin(value: str) -> tuple[str, str, int] | None:
    scheme, sep, rest = value.strip().partition("://")
    return _origin(scheme, rest) if sep else None


def request_origin(scope: dict[str, Any], headers: dict[bytes, bytes]) -> tuple[str, str, int] | None:
    """The origin this WebSocket request was addressed to, from its Host header (None if not allowed)."""
    host = headers.get(b"host", b"").decode("latin-1")
    if settings.USE_X_FORWARDED_HOST and b"x-forwarded-host" in headers:
        host = headers[b"x-forwarded-host"].decode("latin-1").split(",")[0].strip()
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") == "wss"
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, value = proxy
        wanted = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        if wanted in headers:
            secure = headers[wanted].decode("latin-1").split(",")[0].strip() == value
    return _origin("https" if secure else "http", host)


def origin_allowed(origin: str | None, scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    wanted = parse_origin(origin) if origin else None
    if wanted is None:
        return False
    if wanted == request_origin(scope, headers):
        return True
    trusted: Iterable[str] = settings.CSRF_TRUSTED_ORIGINS
    return any(wanted == parse_origin(item) for item in trusted if "*" not in item)


class SameOriginValidator:
    """ASGI middleware: a WebSocket whose Origin is not the site's own origin (or a trusted one) is denied."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator is for WebSocket connections only")
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin")
        if origin_allowed(origin.decode("latin-1") if origin is not None else None, scope, headers):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
