"""The app's own "not found" page, also with DEBUG on: a deleted conversation, run or version that a
view reports with Http404, or a URL that matches nothing (a typo), shows a page in the app's layout, not
Django's technical 404 page: `make run` serves with DEBUG on, and the people who use it are not reading
the URL list ("You're seeing this error because you have DEBUG = True"). /api/ keeps its JSON 404s."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404 (DEBUG off) and the middleware below (DEBUG on)."""
    return render(request, "404.html", {"path": request.path}, status=404)


class NotFoundPageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 404
            and getattr(request, "resolver_match", None) is None  # no URL pattern matched
            and not request.path.startswith(("/api/", settings.STATIC_URL))
            and "text/html" in response.get("Content-Type", "")
        ):
            return not_found(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404) and not request.path.startswith("/api/"):
            return not_found(request, exception)
        return None
