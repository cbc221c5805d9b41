"""The text input limits, defined once (slmsite.limits) and applied the same way by the sentiment API,
the playground, batch uploads (which no longer cut long texts short) and the playground's "fix it"."""

from __future__ import annotations

import re

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from slmsite.limits import TextLimitError, texts_check


def test_texts_check_rules(settings) -> None:  # type: ignore[no-untyped-def]
    settings.SENTIMENT_MAX_TEXT_CHARS = 5
    texts_check(["abcde", "x"], max_texts=2)
    cases = [
        ([], {}, 422, "non-empty list"),
        (["a", "b", "c"], {"max_texts": 2}, 413, "too many texts: 3 (at most 2 per request)"),
        (["ok", "abcdef"], {}, 413, "texts[1] is too long: 6 characters (at most 5)"),
        (["ok", "  "], {}, 422, "texts[1] is empty"),
        (["abcdef"], {"name": lambda _i: "The text"}, 413, "The text is too long"),
    ]
    for texts, kwargs, status, message in cases:
        with pytest.raises(TextLimitError, match=re.escape(message)) as info:
            texts_check(texts, **kwargs)
        assert info.value.status == status
    texts_check(["", "abc"], allow_empty=True)


@pytest.mark.django_db
def test_batch_upload_rejects_a_too_long_text_instead_of_cutting_it(settings, django_user_model) -> None:  # type: ignore[no-untyped-def]
    from sentiment import services
    from sentiment.models import BatchPrediction

    settings.SENTIMENT_MAX_TEXT_CHARS = 10
    user = django_user_model.objects.create_user("u", password="pw-123456789")
    data = b"text\nshort\n\nthis one is far too long\n"
    with pytest.raises(services.BatchInputError, match="row 2's text is too long: 24 characters"):
        services.batch_create(owner=user, upload=SimpleUploadedFile("a.csv", data, content_type="text/csv"))
    assert not BatchPrediction.objects.exists()


@pytest.mark.django_db
def test_fix_it_uses_the_same_limit(settings, django_user_model) -> None:  # type: ignore[no-untyped-def]
    from annotate import services

    settings.SENTIMENT_MAX_TEXT_CHARS = 4
    user = django_user_model.objects.create_user("u", password="pw-123456789")
    with pytest.raises(ValidationError, match="the text is too long: 5 characters"):
        services.fix_submit(text="hello", label="positive", model_ref="sentiment@v0001", user=user)
