"""Input limits of the text endpoints, in one place: the sentiment API, the playground, batch uploads
and the playground's "fix it" (which adds the text to an annotate project) all check texts here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.conf import settings


class TextLimitError(ValueError):
    """Texts outside the sentiment input limits; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def texts_check(
    texts: Sequence[str],
    *,
    max_texts: int | None = None,
    allow_empty: bool = False,
    name: Callable[[int], str] = lambda i: f"texts[{i}]",
) -> None:
    """The sentiment input limits, in one place for the API, the playground and batch uploads: at most
    `max_texts` texts per call (413), none longer than SENTIMENT_MAX_TEXT_CHARS characters (413, never
    cut short), none empty unless `allow_empty` (422). Raises TextLimitError naming the text."""
    if not texts and not allow_empty:
        raise TextLimitError(422, "texts must be a non-empty list of strings")
    if max_texts is not None and len(texts) > max_texts:
        raise TextLimitError(413, f"too many texts: {len(texts):,} (at most {max_texts:,} per request)")
    limit = settings.SENTIMENT_MAX_TEXT_CHARS
    for i, text in enumerate(texts):
        if len(text) > limit:
            raise TextLimitError(413, f"{name(i)} is too long: {len(text):,} characters (at most {limit:,})")
        if not allow_empty and not text.strip():
            raise TextLimitError(422, f"{name(i)} is empty")
