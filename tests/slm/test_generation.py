"""slm.generation: parameter validation, sampling = transformers' processors, incremental decoding of
split multi-byte characters and stop strings, dialogue prompt truncation."""

from __future__ import annotations

import re

import pytest
import torch

from slm.generation import (
    GenerationParams,
    IncrementalDecoder,
    LogitsSampler,
    ParamError,
    PromptTooLong,
    encode_prompt,
    format_chat_prompt,
    is_wordpiece,
    make_decode,
    make_detokenizer,
    resolve_seed,
    validate_params,
)
from tests.chat.tiny import tiny_tokenizer
from tests.fakehub import chinese_bert_tokenizer

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


# ------------------------------------------------------------------ WordPiece (BertTokenizer) models
@pytest.fixture(scope="module")
def bert_tok(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The Chinese-character BertTokenizer of the fake uer/gpt2-chinese-cluecorpussmall."""
    return chinese_bert_tokenizer(tmp_path_factory.mktemp("bert-tok"))


def stream(tok, ids, stops=()):  # type: ignore[no-untyped-def]
    dec = make_detokenizer(tok, stops)
    deltas = []
    for i in ids:
        deltas.append(dec.push(i))
        if dec.stopped:
            break
    deltas.append(dec.finish())
    return dec, deltas


@pytest.mark.parametrize(
    "tokens",
    [
        ["你", "好", "，", "世", "界", "！"],
        ["hello", "world", "你", "好", "play", "##ing", "the", "##s", ".", "我", "是", "user", ":"],
        ["##s", "[UNK]", "你", "[SEP]", "好", "(", "a", ")", "is", "!", "！", "world"],
    ],
)
def test_wordpiece_streams_chinese_without_spaces_and_deltas_concatenate(bert_tok, tokens) -> None:  # type: ignore[no-untyped-def]
    ids = bert_tok.convert_tokens_to_ids(tokens)
    assert is_wordpiece(bert_tok) and ids.count(bert_tok.unk_token_id) == tokens.count("[UNK]")  # all in vocab
    whole = make_decode(bert_tok)(ids)
    dec, deltas = stream(bert_tok, ids)
    assert "".join(deltas) == whole == dec.text
    assert re.search("[\u4e00-\u9fff] | [\u4e00-\u9fff]", whole) is None  # no space next to a CJK character
    # and the tokenizer's own decode is what users complained about
    if tokens[:2] == ["你", "好"]:
        assert bert_tok.decode(ids) == "你 好 ， 世 界 ！" and whole == "你好，世界！"


def test_wordpiece_joining_rules(bert_tok) -> None:  # type: ignore[no-untyped-def]
    def text(*tokens: str) -> str:
        return make_decode(bert_tok)(bert_tok.convert_tokens_to_ids(list(tokens)))

    assert text("hello", "world", "你", "好") == "hello world你好"
    assert text("play", "##ing", "the", "##s", ".", "我") == "playing thes.我"
    assert text("user", ":", "你", "好", "agent", ":") == "user:你好agent:"
    assert text("(", "a", ")", "is") == "(a) is"
    assert text("[CLS]", "你", "[SEP]", "[PAD]") == "你"


def test_wordpiece_stop_strings_match_a_lowercasing_vocabulary(bert_tok) -> None:  # type: ignore[no-untyped-def]
    ids = bert_tok.convert_tokens_to_ids(["你", "好", "user", ":", "再", "见"])
    dec, deltas = stream(bert_tok, ids, ["User:"])
    assert dec.stopped and dec.text == "你好" == "".join(deltas)


def test_encode_prompt_adds_cls_only_at_the_start(bert_tok) -> None:  # type: ignore[no-untyped-def]
    text = "User: 你好\nAgent: 世界\nUser: 再见\nAgent:"
    ids = encode_prompt(bert_tok, text)
    assert ids[0] == bert_tok.cls_token_id and ids.count(bert_tok.cls_token_id) == 1
    assert bert_tok.sep_token_id not in ids and bert_tok.pad_token_id not in ids
    assert bert_tok(text)["input_ids"][-1] == bert_tok.sep_token_id  # what plain encoding would have ended with
    gpt2 = tiny_tokenizer()
    assert encode_prompt(gpt2, text) == gpt2(text)["input_ids"] and not is_wordpiece(gpt2)
