"""Dialogue data: formatting, validation of ultrachat-shaped JSONL, bundled conversations, split."""

import json

import pytest

from slm.chat_data import (
    DialogueFormatError,
    chatterbot_dialogues,
    format_dialogue,
    format_prompt,
    load_jsonl_dialogues,
    normalize_dialogue,
    split_dialogues,
    turns_to_dialogue,
    write_jsonl_dialogues,
)


def test_format_dialogue_and_prompt():
    d = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "how are\nyou?"},
        {"role": "assistant", "content": "fine."},
    ]
    d = normalize_dialogue(d)
    assert (
        format_dialogue(d, "<|endoftext|>") == "User: hello\nAgent: hi!\nUser: how are you?\nAgent: fine.<|endoftext|>"
    )
    assert format_prompt(d[:2], "and  you?") == "User: hello\nAgent: hi!\nUser: and you?\nAgent:"
    assert format_prompt([], "你好") == "User: 你好\nAgent:"


def test_normalize_dialogue_cleans_and_rejects():
    d = normalize_dialogue(
        [
            {"role": "system", "content": "be nice"},
            {"role": "assistant", "content": "orphan"},
            {"role": "user", "content": "a"},
            {"role": "human", "content": "b"},
            {"role": "gpt", "content": "c"},
            {"role": "user", "content": "dangling"},
        ]
    )
    assert d == [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]
    with pytest.raises(DialogueFormatError, match="unknown role"):
        normalize_dialogue([{"role": "robot", "content": "x"}])
    with pytest.raises(DialogueFormatError, match="needs a user turn"):
        normalize_dialogue([{"role": "user", "content": "only me"}])
    with pytest.raises(DialogueFormatError, match="must be a list"):
        normalize_dialogue("nope")  # type: ignore[arg-type]
    assert turns_to_dialogue(["q", "a", "q2"]) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_load_jsonl(tmp_path):
    good = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "prompt_id": "x",
    }
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(good["messages"]) + "\n", encoding="utf-8")
    assert len(load_jsonl_dialogues(path)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DialogueFormatError, match="line 2: not valid JSON"):
        load_jsonl_dialogues(bad)
    assert len(load_jsonl_dialogues(bad, skip_invalid=True)) == 1
    with pytest.raises(DialogueFormatError, match="does not exist"):
        load_jsonl_dialogues(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DialogueFormatError, match="no usable"):
        load_jsonl_dialogues(empty)
    out = write_jsonl_dialogues(load_jsonl_dialogues(path), tmp_path / "round.jsonl")
    assert load_jsonl_dialogues(out) == load_jsonl_dialogues(path)


def test_bundled_chatterbot_dialogues():
    en = chatterbot_dialogues(["english"])
    zh = chatterbot_dialogues(["chinese"])
    assert len(en) > 1500 and len(zh) > 300
    assert all(d[0]["role"] == "user" and d[-1]["role"] == "assistant" for d in en + zh)


def test_split_is_deterministic_without_duplicate_leakage():
    dialogues = [turns_to_dialogue([f"q{i % 30}", f"a{i % 30}"]) for i in range(100)]
    train, held = split_dialogues(dialogues, 0.2, seed=1)
    assert (train, held) == split_dialogues(dialogues, 0.2, seed=1)
    assert len(train) + len(held) == 100 and held
    assert not {json.dumps(d) for d in train} & {json.dumps(d) for d in held}
    assert split_dialogues(dialogues, 0.0)[1] == []
