"""The test helper's `never_eos` model really never ends a reply early (browser tests rely on it)."""

from __future__ import annotations

import torch

from slm.engine import apply_precision
from tests.chat.tiny import tiny_model, tiny_tokenizer


def test_never_eos_model_never_samples_end_of_text_and_still_varies() -> None:
    tok = tiny_tokenizer()
    ids = tok("User: hello there\nAgent:", return_tensors="pt")["input_ids"]
    for precision in ("fp32", "int8"):
        model = apply_precision(tiny_model(never_eos=True), precision, torch.device("cpu"))
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0] / 0.6, -1)
        assert probs[:, tok.eos_token_id].max().item() < 1e-12
        assert probs.max().item() < 0.5  # the other tokens still get spread-out, sampled probabilities
    with torch.no_grad():
        plain = torch.softmax(tiny_model()(ids).logits[0] / 0.6, -1)
    assert plain[:, tok.eos_token_id].max().item() > 1e-4  # the default tiny model can end a reply
