"""A character-vocabulary BERT for Chinese, built offline (no pretrained Chinese weights ship in any
package here). The tokenizer is a BertTokenizerFast over a vocabulary of the most frequent training
characters plus ASCII letters/digits (with their '##' continuations, so English words split into
characters instead of becoming [UNK]); the model is a small randomly initialised BertModel that the
classifier trains end to end (mode "full")."""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_char_vocab(texts: Sequence[str], *, max_size: int = 6000, min_freq: int = 2) -> list[str]:
    """Specials, ASCII letters/digits (+ '##' forms), then the most frequent other characters."""
    ascii_chars = list(string.ascii_lowercase + string.digits)
    vocab = SPECIAL_TOKENS + ascii_chars + ["##" + c for c in ascii_chars]
    seen = set(vocab)
    counts = Counter(ch for t in texts for ch in t.lower() if not ch.isspace())
    for ch, n in counts.most_common():
        if len(vocab) >= max_size:
            break
        if n < min_freq:
            break
        if ch not in seen:
            vocab.append(ch)
            seen.add(ch)
    return vocab


def make_char_tokenizer(vocab: Sequence[str], *, model_max_length: int = 512) -> Any:
    from transformers import BertTokenizerFast  # transformers 5: the tokenizers-backed BertTokenizer

    return BertTokenizerFast(
        vocab={tok: i for i, tok in enumerate(vocab)},
        do_lower_case=True,
        tokenize_chinese_chars=True,
        model_max_length=model_max_length,
    )


def make_char_bert(
    vocab_size: int,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position: int = 256,
    dropout: float = 0.1,
    seed: int = 0,
) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        type_vocab_size=2,
    )
    return BertModel(config)


def char_bert_classifier(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    max_vocab: int = 6000,
    min_freq: int = 2,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    max_length: int = 200,
    pooling: str = "mean",
    dropout: float = 0.1,
    seed: int = 0,
) -> Any:
    """A fresh TransformerClassifier over a char BERT whose vocabulary comes from `texts`."""
    from slm.classify.transformer import TransformerClassifier

    vocab = build_char_vocab(texts, max_size=max_vocab, min_freq=min_freq)
    tokenizer = make_char_tokenizer(vocab, model_max_length=max_length)
    encoder = make_char_bert(
        len(vocab),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position=max(max_length, 8),
        dropout=dropout,
        seed=seed,
    )
    source = f"char-bert(L{num_layers},H{hidden_size},V{len(vocab)})"
    return TransformerClassifier(
        encoder, tokenizer, labels, pooling=pooling, dropout=dropout, max_length=max_length, encoder_source=source
    )
