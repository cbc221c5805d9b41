"""Tokenizers for the chat model, built offline.

Two choices, both saved with `save_pretrained` and loaded back with `AutoTokenizer`:

* `gpt2_tokenizer()` — the real GPT-2 byte-level BPE converted from openai-whisper's `gpt2.tiktoken`
  (`slm.data.whisper_gpt2_tiktoken()`): a transformers `GPT2TokenizerFast` whose ids equal GPT-2's
  (checked against tiktoken's own encoder built from the same ranks). 50,257 ids.
* `train_bpe_tokenizer(texts, vocab_size)` — a small byte-level BPE trained on the corpus with the
  `tokenizers` library, same pre-tokenization and `<|endoftext|>` special token as GPT-2. With a tiny
  model the 50k-row embedding/LM head dominates the training step, so the default chat model uses this
  one (measured: see `chat/bootstrap.py`).

Both are byte-level, so every string (Chinese, emoji) round-trips and streaming decoders can hold back
incomplete UTF-8 sequences.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

EOS_TOKEN = "<|endoftext|>"
GPT2_EOS_ID = 50256
# GPT-2's pre-tokenization regex (the one `tokenizers`' ByteLevel(use_regex=True) applies).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (as in openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def load_tiktoken_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """{token bytes: rank} from a .tiktoken file (base64 token, space, rank per line)."""
    import base64

    if path is None:
        from slm.data import whisper_gpt2_tiktoken

        path = whisper_gpt2_tiktoken()
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tiktoken_encoding(path: str | Path | None = None) -> Any:
    """tiktoken's own GPT-2 encoder built from the same ranks file (the reference for our ids)."""
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2-local",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_ranks(path),
        special_tokens={EOS_TOKEN: GPT2_EOS_ID},
    )


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab and BPE merges equivalent to tiktoken's rank-ordered merging.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank. For every
    multi-byte token we emit each split into two known tokens as a merge, ordered by the rank of the
    merged token; the `tokenizers` BPE then picks the same merge as tiktoken at every step.
    """
    enc = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        if len(tok) < 2:
            continue
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None and rl < rank and rr < rank:
                merges.append((rank, rl, rr, left, right))
    merges.sort()
    return vocab, [(to_str(m[3]), to_str(m[4])) for m in merges]


@lru_cache(maxsize=2)
def _gpt2_vocab_merges(path: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    return _vocab_and_merges(load_tiktoken_ranks(path))


def gpt2_tokenizer(path: str | Path | None = None) -> Any:
    """The real GPT-2 tokenizer as a transformers `GPT2TokenizerFast`, converted from `gpt2.tiktoken`."""
    from transformers import GPT2TokenizerFast

    vocab, merges = _gpt2_vocab_merges(str(path) if path is not None else None)
    vocab = dict(vocab)
    vocab[EOS_TOKEN] = GPT2_EOS_ID
    tok = GPT2TokenizerFast(vocab=vocab, merges=list(merges), add_prefix_space=False)
    # tiktoken takes a whole pre-token that is itself a token without merging (same result, faster).
    backend = tok.backend_tokenizer
    if hasattr(backend.model, "ignore_merges"):
        backend.model.ignore_merges = True
    tok.model_max_length = 1024
    return tok


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, *, min_frequency: int = 2) -> Any:
    """A small byte-level BPE trained on `texts`: GPT-2's pre-tokenization, all 256 bytes in the
    alphabet (nothing is ever unknown), `<|endoftext|>` as id 0 and used for eos/bos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=1024,
    )


def build_tokenizer(kind: str, texts: Iterable[str] | None = None, *, vocab_size: int = 4096) -> Any:
    """'gpt2' -> the real GPT-2 tokenizer; 'bpe' -> a BPE of `vocab_size` trained on `texts`."""
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "bpe":
        if texts is None:
            raise ValueError("a trained BPE tokenizer needs texts")
        return train_bpe_tokenizer(texts, vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r} (use 'gpt2' or 'bpe')")
