"""The JSON API (DESIGN §4). Each app contributes a ninja Router; auth is session or bearer token."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.security import HttpBearer, django_auth

from slmsite.services import api_token_authenticate


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = api_token_authenticate(raw=token)
        if user is not None:
            request.user = user
        return user


api = NinjaAPI(title="slm API", version="1", docs_url="/docs", auth=[django_auth, BearerToken()])

api.add_router("/sentiment/", "sentiment.api.router")
api.add_router("/", "annotate.api.router")
