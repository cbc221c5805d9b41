"""The JSON API (DESIGN §4). Each app contributes a ninja Router; auth is session or bearer token."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from ninja.errors import HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth

from slmsite.schemas import DocumentedAPI
from slmsite.services import api_token_authenticate


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = api_token_authenticate(raw=token)
        if user is not None:
            request.user = user
        return user


class LoggedInSession(SessionAuth):
    """Django session auth (with its CSRF check) — but a request with no logged-in session is simply not
    authenticated by it, so a client without credentials gets 401, not a confusing CSRF 403."""

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)


# Bearer first: a token client never needs CSRF (session auth checks CSRF before it looks at the session).
api = DocumentedAPI(title="slm API", version="1", docs_url="/docs", auth=[BearerToken(), LoggedInSession()])


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "payload"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


@api.exception_handler(ValidationError)
def _on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    """422 with a human "message" (plus ninja's usual "detail" list)."""
    return api.create_response(request, {"message": _validation_message(exc.errors), "detail": exc.errors}, status=422)


@api.exception_handler(HttpError)
def _on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return api.create_response(request, {"message": str(exc), "detail": str(exc)}, status=exc.status_code)


@csrf_exempt  # answers every method with the same 404; a POST without a CSRF token is no reason for an HTML 403
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under /api/ (e.g. an id that is not one): a JSON 404, not Django's HTML page."""
    msg = f"no such API endpoint: /api/{rest}"
    return api.create_response(request, {"message": msg, "detail": msg}, status=404)


@api.exception_handler(RequestDataTooBig)
def _on_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    msg = f"request body too large (limit {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes)"
    return api.create_response(request, {"message": msg, "detail": msg}, status=413)


api.add_router("/sentiment/", "sentiment.api.router")
api.add_router("/", "annotate.api.router")
