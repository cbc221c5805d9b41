"""Sentiment JSON API (DESIGN §4), mounted at /api/sentiment/.

POST /api/sentiment/predict  {"texts": [...], "model": "<version or omitted>"}
  -> {"model": "name@version", "predictions": [{"label", "score", "probs": {label: p}}]}
GET  /api/sentiment/models   -> the versions with metrics and which one is live.

Every bad input is a 4xx JSON body with a "message"; no live model is a 503.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from ninja import Field, Router, Schema
from pydantic import ConfigDict

from sentiment import selectors
from sentiment.inference import InferenceError, get_service
from slmsite.limits import TextLimitError, texts_check
from slmsite.schemas import ErrorOut

router = Router(tags=["sentiment"])


class PredictIn(Schema):
    # The example /api/docs fills in: it must succeed as shown (no made-up "string" model version).
    model_config = ConfigDict(
        json_schema_extra={"example": {"texts": ["这家酒店的服务非常好，下次还会再来。", "送餐太慢了，饭菜都凉了。"]}}
    )

    # The view checks these (with its own messages: 422 empty, 413 too many/too long); the schema states them
    # so that clients and schemathesis know an empty list or a blank text is refused.
    texts: list[str] = Field(
        ...,
        description="Texts to classify (1 to SENTIMENT_MAX_TEXTS, each non-blank, at most SENTIMENT_MAX_TEXT_CHARS).",
        json_schema_extra={"minItems": 1, "items": {"type": "string", "pattern": "\\S"}},
    )
    model: str | None = Field(
        None,
        description="A version ('v0003' or 'sentiment@v0003'); omitted or 'live' = the live version.",
        examples=["live"],
    )


class PredictionOut(Schema):
    label: str
    score: float
    probs: dict[str, float]


class PredictOut(Schema):
    model: str = Field(..., description="name@version that produced the predictions")
    predictions: list[PredictionOut]


class VersionOut(Schema):
    version: str
    ref: str
    family: str
    labels: list[str]
    live: bool
    created: str | None = None
    parent: str | None = None
    data_hash: str | None = None
    metrics: dict[str, Any]
    languages: list[str] = Field(
        default_factory=list,
        description="ISO 639-1 codes of the languages the version was trained on; [] = not recorded.",
    )


class ModelsOut(Schema):
    name: str
    live: str | None
    versions: list[VersionOut]


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"message": message, "detail": message}


@router.post(
    "/predict",
    response={200: PredictOut, 404: ErrorOut, 413: ErrorOut, 422: ErrorOut, 503: ErrorOut},
    summary="Classify texts",
)
def predict(request: HttpRequest, payload: PredictIn) -> Any:
    texts = payload.texts
    try:
        texts_check(texts, max_texts=settings.SENTIMENT_MAX_TEXTS)
    except TextLimitError as exc:
        return _error(exc.status, str(exc))
    try:
        result = get_service().predict(texts, payload.model)
    except InferenceError as exc:
        return _error(
            exc.status, selectors.unavailable_message(str(exc)) if exc.status == 503 and not payload.model else str(exc)
        )
    return 200, {"model": result.ref, "predictions": result.predictions()}


@router.get("/models", response={200: ModelsOut}, summary="Versions with metrics and the live one")
def models(request: HttpRequest) -> Any:
    return selectors.models_overview()
