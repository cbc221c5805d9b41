"""Tiny chat models for the generation/engine/chat tests: a random 2-layer GPT-2 and a byte-level BPE
trained in-process on a few strings (no download). Byte-level means Chinese and emoji are split
across tokens, exactly what the streaming decoder must handle."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from slm.registry import ModelVersion, Registry

TRAIN_TEXTS = [
    "User: hello there\nAgent: hi! how are you today?",
    "User: what is your name?\nAgent: I am a small chat model.",
    "User: tell me a joke\nAgent: why did the chicken cross the road?",
    "User: 你好\nAgent: 你好！很高兴见到你。",
    "User: emoji please\nAgent: sure 😀🎉👍",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    from slm.tokenizer_build import train_bpe_tokenizer

    return train_bpe_tokenizer(TRAIN_TEXTS, vocab_size=300, min_frequency=2)


def tiny_model(seed: int = 0, n_positions: int = 128, never_eos: bool = False) -> Any:
    """A random 2-layer GPT-2. `never_eos`: the end-of-text token can never be sampled, so every reply
    runs to its length limit (browser tests that need a reply of a known length, e.g. to reload in the
    middle of it, would otherwise fail whenever the random weights pick EOS early)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=len(tok),
        n_positions=n_positions,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = tok.eos_token_id
    if never_eos:
        _forbid_token(model, tok.eos_token_id)
    return model


def _forbid_token(model: Any, token_id: int) -> None:
    """Makes `token_id`'s logit about -20 whatever the input (the others stay near 0): the final layer
    norm pins hidden unit 0 to 100 (weight 0, bias 100); unit 0 of the tied embedding is 0 for every token
    but this one, whose row is -0.2 there and 0 elsewhere. The token is only ever fed as padding, which
    the attention mask hides. Small weights keep int8 quantisation of the tied head accurate."""
    import torch

    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 100.0
        wte = model.transformer.wte.weight
        wte[:, 0] = 0.0
        wte[token_id].zero_()
        wte[token_id, 0] = -0.2


def save_tiny(directory: Path, seed: int = 0, n_positions: int = 128, never_eos: bool = False) -> None:
    tiny_model(seed, n_positions, never_eos).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)


def add_tiny_chat_version(
    registry: Registry,
    name: str = "chat",
    seed: int = 0,
    promote: bool = True,
    n_positions: int = 128,
    serving: dict[str, Any] | None = None,
    never_eos: bool = False,
) -> ModelVersion:
    meta: dict[str, Any] = {"family": "gpt2", "metrics": {}, "tiny": True}
    if serving:
        meta["serving"] = serving
    mv = registry.create_version(name, lambda d: save_tiny(d, seed, n_positions, never_eos), meta)
    if promote:
        registry.promote(name, mv.version)
    return mv
