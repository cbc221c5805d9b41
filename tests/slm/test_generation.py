"""slm.generation: parameter validation, sampling = transformers' processors, incremental decoding of
split multi-byte characters and stop strings, dialogue prompt truncation."""

from __future__ import annotations

import pytest
import torch

from slm.generation import (
    GenerationParams,
    IncrementalDecoder,
    LogitsSampler,
    ParamError,
    PromptTooLong,
    format_chat_prompt,
    make_decode,
    resolve_seed,
    validate_params,
)
from tests.chat.tiny import tiny_tokenizer

DEFAULTS = {
    "max_new_tokens": 64,
    "temperature": 0.6,
    "top_k": 40,
    "top_p": 0.9,
    "repetition_penalty": 1.2,
    "do_sample": True,
    "seed": None,
    "stop": ["User:"],
}


def test_validate_params_merges_defaults_and_checks_limits() -> None:
    p = validate_params({"temperature": 1, "seed": 7, "stop": "END"}, DEFAULTS)
    assert p.temperature == 1.0 and p.max_new_tokens == 64 and p.seed == 7 and p.stop == ("END",)
    assert validate_params(None, DEFAULTS).stop == ("User:",)
    assert validate_params({"do_sample": False}, DEFAULTS).greedy
    for bad, words in [
        ({"temperature": 6}, "temperature"),
        ({"max_new_tokens": 1.5}, "whole"),
        ({"max_new_tokens": 10_000}, "max_new_tokens"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_k": True}, "top_k"),
        ({"seed": "x"}, "seed"),
        ({"stop": [None]}, "stop"),
        ({"stop": ["y" * 65]}, "64"),
        ({"nope": 1}, "unknown"),
    ]:
        with pytest.raises(ParamError, match=words):
            validate_params(bad, DEFAULTS)
    with pytest.raises(ParamError):
        validate_params([1], DEFAULTS)


def test_null_params_take_the_defaults() -> None:
    """null used to mean the dataclass default (temperature 1.0, no stop) or an error (do_sample)."""
    nulls = {name: None for name in DEFAULTS}
    assert validate_params(nulls, DEFAULTS) == validate_params({}, DEFAULTS)
    assert validate_params({"temperature": None}, DEFAULTS).temperature == DEFAULTS["temperature"]
    assert validate_params({"stop": None}, DEFAULTS).stop == ("User:",)


def test_resolve_seed_only_for_sampling() -> None:
    assert resolve_seed(GenerationParams(do_sample=False)).seed is None
    seeded = resolve_seed(GenerationParams(do_sample=True, temperature=0.7))
    assert isinstance(seeded.seed, int)
    assert resolve_seed(GenerationParams(do_sample=True, seed=3)).seed == 3


def test_processing_matches_transformers_processors() -> None:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(200)
    seen = torch.tensor([3, 5, 5, 17, 150])
    params = GenerationParams(do_sample=True, temperature=0.7, top_k=30, top_p=0.8, repetition_penalty=1.3, seed=1)
    ours = LogitsSampler(params).process(logits, seen)
    ref = logits[None].clone()
    for proc in (
        RepetitionPenaltyLogitsProcessor(1.3),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(30),
        TopPLogitsWarper(0.8),
    ):
        ref = proc(seen[None], ref)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref[0]))
    finite = ~torch.isinf(ours)
    assert torch.allclose(ours[finite], ref[0][finite])


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(100)
    params = GenerationParams(do_sample=True, temperature=1.0, seed=42)
    a = [LogitsSampler(params).next_token(logits, torch.tensor([], dtype=torch.long)) for _ in range(3)]
    s = LogitsSampler(params)
    b = [s.next_token(logits, torch.tensor([], dtype=torch.long)) for _ in range(20)]
    assert len(set(a)) == 1 and b[0] == a[0] and len(set(b)) > 1


@pytest.mark.parametrize("text", ["你好，世界！很高兴见到你。", "party 😀🎉👍 time", "mixed 中文 and emoji 🚀 ok"])
def test_incremental_decoder_never_splits_characters(text: str) -> None:
    tok = tiny_tokenizer()
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    dec = IncrementalDecoder(make_decode(tok))
    deltas = [dec.push(i) for i in ids]
    tail = dec.finish()
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) + tail == text == dec.text
    assert tail == ""
    assert "" in deltas  # some tokens carried only part of a character and were held back


def test_stop_string_is_cut_and_never_streamed() -> None:
    tok = tiny_tokenizer()
    text = "sure thing\nUser: next question"
    dec = IncrementalDecoder(make_decode(tok), ["User:"])
    out = []
    for i in tok(text)["input_ids"]:
        out.append(dec.push(i))
        if dec.stopped:
            break
    out.append(dec.finish())
    assert dec.stopped and dec.text == "sure thing\n" == "".join(out)


def test_partial_stop_prefix_is_flushed_at_the_end() -> None:
    tok = tiny_tokenizer()
    dec = IncrementalDecoder(make_decode(tok), ["User:"])
    deltas = [dec.push(i) for i in tok("hello Us")["input_ids"]]
    assert "".join(deltas) == "hello "  # "Us" might start "User:": held back
    assert dec.finish() == "Us" and dec.text == "hello Us" and not dec.stopped


def test_format_chat_prompt_drops_oldest_turns() -> None:
    def encode(text: str) -> list[int]:
        return list(range(len(text.split())))

    history = [("user", "one two three"), ("agent", "four five"), ("user", "six"), ("agent", "seven  eight")]
    full = format_chat_prompt(history, "hi there", encode, 100)
    assert full.text == "User: one two three\nAgent: four five\nUser: six\nAgent: seven eight\nUser: hi there\nAgent:"
    assert full.turns_dropped == 0
    cut = format_chat_prompt(history, "hi there", encode, 9)
    assert cut.text == "User: six\nAgent: seven eight\nUser: hi there\nAgent:" and cut.turns_dropped == 2
    with pytest.raises(PromptTooLong, match="at most 3"):
        format_chat_prompt(history, "a much longer new message", encode, 3)


def test_prompt_too_long_says_how_much_and_what_to_do() -> None:
    def encode(text: str) -> list[int]:
        return list(range(len(text.split())))

    words = " ".join(["word"] * 30)  # "User: <30 words>\nAgent:" = 32 "tokens"
    with pytest.raises(PromptTooLong) as info:
        format_chat_prompt([], words, encode, 20, window=40, reserved=20)
    exc = info.value
    assert (exc.tokens, exc.limit) == (32, 20)
    assert str(exc) == (
        "Your message is too long for this model: it is 32 tokens and at most 20 tokens fit (the model reads "
        "40 tokens at a time and keeps 20 of them for the reply). Shorten it by about 12 tokens (roughly 56 "
        "characters), or set “Max new tokens” to 8 or less."
    )
    assert exc.excess_chars == 56  # 12/32 of the 149 characters, rounded up
    # when a shorter reply cannot help, it does not suggest it; character budgets say characters
    with pytest.raises(PromptTooLong, match=r"Shorten it by about 27 tokens \(roughly 126 characters\)\.$"):
        format_chat_prompt([], words, encode, 5, window=10, reserved=5)
    with pytest.raises(PromptTooLong, match=r"it is 5 characters and at most 3 characters fit\. Shorten it by about 2"):
        format_chat_prompt([], "abcde", lambda t: [0] * 5, 3, unit="characters")
