"""Preprocessing pipeline and the data-quality report."""

from __future__ import annotations

from collections import Counter

from slm.text import (
    PreprocessConfig,
    augment_minority,
    clean_text,
    preprocess,
    strip_html,
    strip_special,
    tokenizer_is_uncased,
)


def test_strip_html_and_entities() -> None:
    assert strip_html("<p>好<b>评</b></p>&amp;ok").split() == ["好", "评", "&ok"]
    assert "alert" not in strip_html("<script>alert(1)</script>hi")
    assert strip_html("a < b and c > d") == "a < b and c > d"  # not markup


def test_strip_special_and_whitespace() -> None:
    assert strip_special("ＡＢＣ１２３") == "ABC123"
    assert strip_special("好\u200b评😀!!!!!!") == "好评!!!"
    assert clean_text("  a\t\tb \n c  ") == "a b c"


def test_lowercase_only_for_uncased_tokenizers() -> None:
    class Uncased:
        do_lower_case = True

    class Cased:
        name_or_path = "bert-base-chinese"

    assert tokenizer_is_uncased(Uncased()) and not tokenizer_is_uncased(Cased()) and not tokenizer_is_uncased(None)
    texts, _, rep = preprocess(["Hello World"], ["x"], tokenizer=Uncased())
    assert texts == ["hello world"] and rep.lowercased
    texts, _, rep = preprocess(["Hello World"], ["x"], tokenizer=Cased())
    assert texts == ["Hello World"] and not rep.lowercased
    assert preprocess(["Hello"], ["x"], PreprocessConfig(lowercase=True))[0] == ["hello"]


def test_preprocess_drops_and_reports() -> None:
    texts = [
        "很好很好",
        "很好很好",
        " 很好很好 ",
        "太差了啊",
        "太差了啊",
        "<br>",
        "ok",
        "两个都有",
        "两个都有",
        "Fine day",
    ]
    labels = ["pos", "pos", "pos", "neg", "neg", "pos", "pos", "pos", "neg", "pos"]
    out, out_labels, rep = preprocess(texts, labels, PreprocessConfig(min_chars=4, max_length=5))
    assert out == ["很好很好", "太差了啊", "Fine day"]
    assert out_labels == ["pos", "neg", "pos"]
    assert rep.n_input == 10 and rep.n_output == 3
    assert rep.empty_dropped == 1 and rep.too_short_dropped == 1
    assert rep.conflicting_texts == 1 and rep.conflicts_dropped == 2
    assert rep.duplicates_dropped == 3
    assert rep.label_counts == {"neg": 1, "pos": 2} and rep.label_balance == 0.5
    assert rep.length["max"] == 8 and rep.truncated == 1
    assert sum(rep.length_histogram["counts"]) == 3
    assert "3 kept" in rep.summary()


def test_preprocess_counts_tokens_with_a_tokenizer() -> None:
    def tok(batch, add_special_tokens=True, truncation=False):  # type: ignore[no-untyped-def]
        return {"input_ids": [[0, *range(len(t.split())), 1] for t in batch]}

    _, _, rep = preprocess(["a b c", "a b c d e f"], ["x", "y"], PreprocessConfig(max_length=6), tokenizer=tok)
    assert rep.length_unit == "tokens" and rep.truncated == 1


def test_preprocess_without_labels_only_dedupes() -> None:
    out, out_labels, rep = preprocess(["a", "a", "b"])
    assert out == ["a", "b"] and out_labels == [] and rep.duplicates_dropped == 1


def test_augment_minority() -> None:
    texts = [f"正面评论{i}号" for i in range(10)] + ["负面评论一号", "负面评论二号"]
    labels = ["pos"] * 10 + ["neg"] * 2
    out, out_labels, added = augment_minority(texts, labels, target_ratio=0.8, seed=1)
    assert added == 6 and Counter(out_labels) == {"pos": 10, "neg": 8}
    assert out[:12] == texts
    assert augment_minority(texts, labels, target_ratio=0.8, seed=1)[0] == out  # deterministic
