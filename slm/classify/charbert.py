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
    svd_init: bool = False,
) -> Any:
    """A fresh TransformerClassifier over a char BERT whose vocabulary comes from `texts`
    (with `svd_init`, its character embeddings start from PPMI-SVD vectors of `texts`)."""
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
    if svd_init:
        import torch

        vectors = svd_char_embeddings(texts, vocab, hidden_size, seed=seed)
        with torch.no_grad():
            encoder.embeddings.word_embeddings.weight.copy_(torch.from_numpy(vectors))
    source = f"char-bert(L{num_layers},H{hidden_size},V{len(vocab)}{',svd' if svd_init else ''})"
    return TransformerClassifier(
        encoder, tokenizer, labels, pooling=pooling, dropout=dropout, max_length=max_length, encoder_source=source
    )


def svd_char_embeddings(texts: Sequence[str], vocab: Sequence[str], dim: int, *, window: int = 2, seed: int = 0) -> Any:
    """Character vectors from a PPMI-weighted co-occurrence matrix (window +-`window`) by truncated SVD.

    Seconds on the training texts, no labels: it gives a from-scratch encoder meaningful character
    embeddings to start from (a cheap stand-in for pretraining). Returns a (len(vocab), dim) float32
    array scaled to std 0.02 (BERT's init scale); specials and unseen characters get small noise.
    """
    import numpy as np
    import scipy.sparse as sp
    from sklearn.utils.extmath import randomized_svd

    index = {tok: i for i, tok in enumerate(vocab)}
    stream: list[int] = []
    for text in texts:  # texts joined with `window` separators so no pair crosses a text boundary
        stream.extend(index.get(ch, -1) for ch in text.lower() if not ch.isspace())
        stream.extend([-2] * window)
    arr = np.asarray(stream, dtype=np.int64)
    row_parts, col_parts = [], []
    for d in range(1, window + 1):
        a, b = arr[:-d], arr[d:]
        ok = (a >= 0) & (b >= 0)
        row_parts += [a[ok], b[ok]]
        col_parts += [b[ok], a[ok]]
    rows = np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(col_parts) if col_parts else np.zeros(0, dtype=np.int64)
    n = len(vocab)
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 0.02, size=(n, dim)).astype(np.float32)
    if not len(rows) or dim >= n - 1:
        return out
    counts = sp.coo_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, n)).tocsr()
    total = counts.sum()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    col_sum = np.asarray(counts.sum(axis=0)).ravel() ** 0.75
    col_sum = col_sum / col_sum.sum() * total
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * col_sum[coo.col] + 1e-12) + 1e-12)
    keep = pmi > 0
    ppmi = sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n, n))
    k = min(dim, n - 2)
    u, s, _ = randomized_svd(ppmi, n_components=k, n_iter=4, random_state=seed)
    vecs = u * np.sqrt(s)
    seen = row_sum > 0
    vecs = vecs / (vecs[seen].std() + 1e-12) * 0.02
    out[seen, :k] = vecs[seen].astype(np.float32)
    return out
