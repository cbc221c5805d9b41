"""Playground, batch CSV, version list and model cards. Thin: parse, call a service/selector, render.

htmx requests get `{% partialdef %}` fragments; the same URLs render full pages without JS.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from sentiment import selectors, services
from sentiment.inference import InferenceError, PredictResult, get_service
from slm.registry import RegistryError
from slmsite import confirm
from slmsite.bootstrap import building
from slmsite.limits import TextLimitError, texts_check
from slmsite.promotion import promote_warning
from slmsite.registry import get_registry
from slmsite.roles import admin_required

TEMPLATE = "sentiment/playground.html"

EXAMPLES: list[dict[str, str]] = [
    {"lang": "zh", "text": "这家酒店的服务非常好，房间干净，下次还会再来。"},
    {"lang": "zh", "text": "送餐太慢了，饭菜都凉了，再也不会点这家。"},
    {"lang": "zh", "text": "手机用了一个星期就坏了，客服也不理人，太失望了。"},
    {"lang": "zh", "text": "物美价廉，包装精致，物流也很快，推荐购买！"},
    {"lang": "en", "text": "Absolutely loved it: friendly staff, spotless room and a great breakfast."},
    {"lang": "en", "text": "The food arrived cold and the driver was rude. Never again."},
    {"lang": "en", "text": "Battery died after two days and support never answered my emails."},
]


def _is_htmx(request: HttpRequest) -> bool:
    return bool(getattr(request, "htmx", False))


def _fix_url() -> str | None:
    try:
        return reverse("annotate:fix")
    except NoReverseMatch:
        return None


def _result_context(result: PredictResult, text: str) -> dict[str, Any]:
    pred = result.predictions(digits=4)[0]
    bars = [
        {"label": label, "p": p, "pct": round(100 * p, 1), "top": label == pred["label"]}
        for label, p in sorted(pred["probs"].items(), key=lambda kv: -kv[1])
    ]
    return {
        "text": text,
        "ref": result.ref,
        "family": str(result.metadata.get("family", "transformer")),
        "label": pred["label"],
        "score": pred["score"],
        "bars": bars,
        "labels": result.labels,
        "suggest": next((label for label in result.labels if label != pred["label"]), pred["label"]),
        "fix_url": _fix_url(),
        "lang_warning": selectors.language_mismatch(text, [str(x) for x in result.metadata.get("languages") or []]),
    }


def _classify(text: str, model: str | None) -> tuple[dict[str, Any] | None, str | None, int]:
    """(result context, error message, http status) for one text."""
    text = (text or "").strip()
    if not text:
        return None, "Type a text to classify.", 422
    try:
        texts_check([text], name=lambda _i: "The text")
    except TextLimitError as exc:
        return None, f"{exc}.", exc.status
    try:
        result = get_service().predict([text], model or None)
    except InferenceError as exc:
        if exc.status == 503 and not model:
            return None, selectors.unavailable_message(str(exc), page=True), exc.status
        return None, str(exc), exc.status
    return _result_context(result, text), None, 200


def _languages_context(live: dict[str, Any] | None) -> dict[str, Any]:
    """Examples, placeholder and notice that match the languages the live model was trained on."""
    languages = (live or {}).get("languages") or []
    codes = {code.split("-")[0] for code in languages}
    examples = [ex for ex in EXAMPLES if ex["lang"] in codes] if codes else EXAMPLES
    names = selectors.language_names(languages)
    return {
        "examples": examples or EXAMPLES,
        "languages": names,
        "placeholder": f"Type a review in {' or '.join(names)}…" if names else "Type a review…",
        "language_notice": (
            f"The live model was trained on {' and '.join(names)} text only; other languages get unreliable answers."
            if names and not codes >= {ex["lang"] for ex in EXAMPLES}
            else ""
        ),
    }


def _page_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    versions = selectors.version_list()
    live = next((v["version"] for v in versions if v["live"]), None)
    others = [v["version"] for v in versions if v["version"] != live]
    default_a = live or (versions[0]["version"] if versions else "")
    default_b = others[0] if others else default_a
    return {
        "default_a": default_a,
        "default_b": default_b,
        "versions": versions,
        "families": selectors.family_comparison(versions),
        "live": next((v for v in versions if v["live"]), None),
        **_languages_context(next((v for v in versions if v["live"]), None)),
        "building": building(get_registry(), settings.SENTIMENT_MODEL),
        "recent_batches": selectors.batch_recent(user=request.user),
        "max_chars": settings.SENTIMENT_MAX_TEXT_CHARS,
        "max_upload_mb": round(settings.SENTIMENT_MAX_UPLOAD_BYTES / (1024 * 1024), 1),
        "inline_rows": settings.SENTIMENT_INLINE_ROWS,
        **extra,
    }


@login_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """The page. `?text=...` (example links without JS) classifies right away."""
    text = request.GET.get("text", "")
    model = request.GET.get("model", "")
    ctx: dict[str, Any] = {"text": text, "model": model}
    status = 200
    if text:
        result, error, status = _classify(text, model)
        ctx.update({"result": result, "error": error})
    return render(request, TEMPLATE, _page_context(request, **ctx), status=status)


@login_required
@require_http_methods(["GET", "POST"])
def classify(request: HttpRequest) -> HttpResponse:
    data = request.POST if request.method == "POST" else request.GET
    text, model = data.get("text", ""), data.get("model", "")
    result, error, status = _classify(text, model)
    ctx = {"result": result, "error": error, "text": text, "model": model}
    if _is_htmx(request):
        return render(request, f"{TEMPLATE}#result", {**ctx, "fix_url": _fix_url()})
    return render(request, TEMPLATE, _page_context(request, **ctx), status=status)


@login_required
@require_http_methods(["GET", "POST"])
def compare(request: HttpRequest) -> HttpResponse:
    data = request.POST if request.method == "POST" else request.GET
    text = data.get("text", "")
    a, b = data.get("a", ""), data.get("b", "")
    sides = []
    status = 200
    for model in (a, b):
        result, error, st = _classify(text, model)
        status = max(status, st)
        sides.append({"model": model or "live", "result": result, "error": error})
    ctx = {"compare": sides, "compare_text": text, "a": a, "b": b}
    if _is_htmx(request):
        return render(request, f"{TEMPLATE}#compare", ctx)
    return render(request, TEMPLATE, _page_context(request, **ctx), status=status)


@login_required
@require_POST
def batch_upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    model = request.POST.get("model", "")
    error = None
    batch = None
    if upload is None:
        error = "Choose a CSV file with a 'text' column."
    else:
        try:
            batch = services.batch_submit(owner=request.user, upload=upload, model=model or None)
        except services.BatchInputError as exc:
            error = str(exc)
    if _is_htmx(request):
        return render(request, f"{TEMPLATE}#batch", {"batch": batch, "batch_error": error})
    if batch is not None:
        return redirect("sentiment:batch", batch_id=batch.pk)
    return render(request, TEMPLATE, _page_context(request, batch_error=error), status=422)


@login_required
@require_GET
def batch_detail(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.batch_for_user(batch_id=batch_id, user=request.user)
    if batch is None:
        raise Http404("no such batch")
    if _is_htmx(request):
        return render(request, f"{TEMPLATE}#batch", {"batch": batch})
    return render(request, "sentiment/batch.html", {"batch": batch})


@login_required
@require_GET
def batch_download(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.batch_for_user(batch_id=batch_id, user=request.user)
    if batch is None or not batch.result_file:
        raise Http404("no result file for this batch")
    stem = batch.filename.rsplit(".", 1)[0] or "batch"
    return FileResponse(
        batch.result_file.open("rb"),
        as_attachment=True,
        filename=f"{stem}-predictions.csv",
        content_type="text/csv; charset=utf-8",
    )


@login_required
@require_GET
def version_list(request: HttpRequest) -> HttpResponse:
    versions = selectors.version_list(warnings=True)
    return render(
        request,
        "sentiment/versions.html",
        {"versions": versions, "families": selectors.family_comparison(versions), "service": get_service().status()},
    )


@login_required
@require_GET
def version_detail(request: HttpRequest, version: str) -> HttpResponse:
    try:
        card = selectors.version_card(version)
    except RegistryError as exc:
        raise Http404(str(exc)) from exc
    versions = selectors.version_list()
    return render(
        request,
        "sentiment/version.html",
        {
            "card": card,
            "families": selectors.family_comparison(versions),
            "versions": versions,
            "promote_warning": ""
            if card["live"]
            else promote_warning(get_registry(), settings.SENTIMENT_MODEL, version),
        },
    )


@admin_required
@require_POST
def version_promote(request: HttpRequest, version: str) -> HttpResponse:
    warning = promote_warning(get_registry(), settings.SENTIMENT_MODEL, version)
    if warning and not confirm.confirmed(request):  # worse than the live version: ask first
        return confirm.ask(
            request,
            question=warning,
            action=f"Make {version} live",
            cancel_url=reverse("sentiment:version", kwargs={"version": version}),
        )
    try:
        mv = services.version_promote(version=version, user=request.user)
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("sentiment:versions")
    messages.success(request, f"{mv.ref} is live now.")
    return redirect("sentiment:version", version=mv.version)


@admin_required
@require_POST
def version_rollback(request: HttpRequest) -> HttpResponse:
    try:
        mv = services.version_rollback(user=request.user, version=request.POST.get("version") or None)
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("sentiment:versions")
    messages.success(request, f"Rolled back: {mv.ref} is live now.")
    return redirect("sentiment:version", version=mv.version)
