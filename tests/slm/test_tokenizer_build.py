"""Tokenizers: the converted GPT-2 BPE gives tiktoken's exact ids; the corpus BPE round-trips any text."""

import pytest
from transformers import AutoTokenizer

from slm.tokenizer_build import (
    EOS_TOKEN,
    GPT2_EOS_ID,
    build_tokenizer,
    gpt2_tokenizer,
    tiktoken_encoding,
    train_bpe_tokenizer,
)

SAMPLES = [
    "Hello world",
    " Hello world",
    "User: hello\nAgent: hi there!",
    "It's 12345 don't   three spaces\n\n\ttab 'll 've",
    "你好，世界 🎉 emoji 👍🏽 and naïve café — “quotes”",
    "    leading spaces and trailing   ",
    "x" * 300,
]


@pytest.fixture(scope="module")
def gpt2_tok():
    return gpt2_tokenizer()


def test_gpt2_ids_equal_tiktoken(gpt2_tok):
    enc = tiktoken_encoding()
    for text in SAMPLES:
        ids = gpt2_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == enc.encode(text), text
        assert gpt2_tok.decode(ids) == text
    # GPT-2's well-known ids
    assert gpt2_tok("Hello world")["input_ids"] == [15496, 995]
    assert gpt2_tok.eos_token == EOS_TOKEN and gpt2_tok.eos_token_id == GPT2_EOS_ID and len(gpt2_tok) == 50257
    assert gpt2_tok("a<|endoftext|>")["input_ids"][-1] == GPT2_EOS_ID


def test_gpt2_tokenizer_saves_and_loads(gpt2_tok, tmp_path):
    gpt2_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    enc = tiktoken_encoding()
    for text in SAMPLES[:5]:
        assert loaded(text)["input_ids"] == enc.encode(text)


def test_trained_bpe_round_trips_any_text(tmp_path):
    corpus = ["User: hello there\nAgent: hi, how are you?", "User: 你好\nAgent: 你好！"] * 20
    tok = train_bpe_tokenizer(corpus, vocab_size=300)
    assert len(tok) <= 300 and tok.eos_token == EOS_TOKEN and tok.convert_tokens_to_ids(EOS_TOKEN) == tok.eos_token_id
    for text in [*SAMPLES, "unseen words: zebra quixotic 😀"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert len(tok("hello there")["input_ids"]) < len("hello there")  # merges learned
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("你好 there")["input_ids"] == tok("你好 there")["input_ids"]


def test_build_tokenizer_errors():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="needs texts"):
        build_tokenizer("bpe")
