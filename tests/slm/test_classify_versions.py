"""Model-version metadata helpers."""

from __future__ import annotations

import pytest

from slm.classify.versions import build_metadata, normalize_languages


def test_languages_are_normalised_and_validated() -> None:
    assert normalize_languages("zh, EN ,zh") == ["zh", "en"]
    assert normalize_languages(["zh_TW", "yue", ""]) == ["zh-tw", "yue"]
    assert normalize_languages([]) == []
    for bad in ("chinese", "z", "zh-", "中文", "en-toolongregion"):
        with pytest.raises(ValueError, match="not a language code"):
            normalize_languages(bad)


def test_build_metadata_always_has_languages_and_training_data() -> None:
    meta = build_metadata(family="ngram", labels=["a", "b"], config={}, data_hash="h", metrics={})
    assert meta["languages"] == [] and meta["training_data"] == {}
    meta = build_metadata(
        family="ngram",
        labels=["a", "b"],
        config={},
        data_hash="h",
        metrics={},
        languages=["ZH"],
        training_data={"n": 1},
    )
    assert meta["languages"] == ["zh"] and meta["training_data"] == {"n": 1}
