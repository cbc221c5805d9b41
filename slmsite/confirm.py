"""Risky POST actions ask first. A form marked `data-confirm="<question>"` gets a dialog from app.js,
which adds `confirm=1` when the person agrees; without JavaScript the view answers with a page asking
the same question (its button re-posts the same fields with `confirm=1`)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm") == "1"


def ask(request: HttpRequest, *, question: str, action: str, cancel_url: str, danger: bool = True) -> HttpResponse:
    """The confirmation page for this POST (same URL, same fields, plus confirm=1)."""
    fields = [
        (key, value)
        for key in request.POST
        if key not in ("csrfmiddlewaretoken", "confirm")
        for value in request.POST.getlist(key)
    ]
    return render(
        request,
        "confirm.html",
        {"question": question, "action": action, "cancel_url": cancel_url, "fields": fields, "danger": danger},
    )
