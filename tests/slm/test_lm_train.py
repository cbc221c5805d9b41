"""Causal-LM training loop on tiny random GPT-2 models."""

import math

import pytest
import torch

from slm.chat_data import format_dialogue, turns_to_dialogue
from slm.lm_train import (
    LMTrainConfig,
    collate,
    encode_texts,
    evaluate_lm,
    new_gpt2_model,
    save_model,
    set_seed,
    train_causal_lm,
)
from slm.tokenizer_build import train_bpe_tokenizer

PAIRS = [
    ("hello", "hi there, how are you?"),
    ("what is your name?", "my name is agent."),
    ("do you like music?", "yes, I like jazz and rock."),
    ("good morning", "good morning to you too!"),
    ("how old are you?", "I am very young."),
    ("what can you do?", "I can chat with you."),
]
TEXTS = [format_dialogue(turns_to_dialogue(p)) for p in PAIRS] * 4


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def tiny(tok, **kw):
    return new_gpt2_model(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, dropout=0.0, **kw)


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        LMTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="schedule"):
        LMTrainConfig(schedule="exp")
    with pytest.raises(ValueError, match="unknown training option"):
        LMTrainConfig.from_dict({"epochz": 1})
    with pytest.raises(ValueError, match="grad_accum"):
        LMTrainConfig(grad_accum=0)
    assert LMTrainConfig.from_dict(LMTrainConfig(lr=1e-3).to_dict()).lr == 1e-3


def test_encode_and_collate_keep_eos_in_labels(tok):
    long = "User: a much longer text here with many words\nAgent: ok"
    assert len(encode_texts(tok, [long], max_length=8)[0]) == 8
    ex = encode_texts(tok, ["User: hello\nAgent: hi", long, ""], max_length=64)
    assert len(ex) == 2 and ex[0][-1] == tok.eos_token_id and len(ex[1]) > len(ex[0])
    b = collate(ex, pad_id=tok.eos_token_id)
    short = len(ex[0])
    assert b["labels"][0, short - 1] == tok.eos_token_id  # the real EOS is trained on
    assert (b["labels"][0, short:] == -100).all() and (b["attention_mask"][0, short:] == 0).all()


def test_training_reduces_held_out_loss(tok):
    model = tiny(tok)
    eval_texts = TEXTS[:6]
    before = evaluate_lm(model, encode_texts(tok, eval_texts, 64))
    seen: list[dict] = []
    cfg = LMTrainConfig(epochs=6, lr=5e-3, batch_size=4, grad_accum=2, warmup_ratio=0.1, log_every=2, num_threads=1)
    result = train_causal_lm(model, tok, TEXTS, eval_texts, cfg, progress=seen.append)
    m = result.metrics
    assert m["eval_loss"] < before["eval_loss"] - 1.0
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert m["steps"] == 6 * math.ceil(math.ceil(len(TEXTS) / 4) / 2)
    assert m["device"] == "cpu" and m["dtype"] == "float32"  # no fp16/bf16 on a CPU
    assert seen and {"epoch", "step", "total_steps", "loss", "eta_s", "fraction"} <= set(seen[0])
    assert seen[-1]["loss"] < seen[0]["loss"]
    assert any("eval_loss" in line for line in result.log)
    assert [h["eval_loss"] for h in result.history if "eval_loss" in h][-1] < before["eval_loss"]


def test_same_seed_same_weights(tok):
    cfg = LMTrainConfig(epochs=1, lr=1e-3, batch_size=8, seed=3)
    a, b = tiny(tok, seed=3), tiny(tok, seed=3)
    train_causal_lm(a, tok, TEXTS, [], cfg)
    train_causal_lm(b, tok, TEXTS, [], cfg)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb)


def test_time_budget_and_stop(tok):
    model = tiny(tok)
    r = train_causal_lm(model, tok, TEXTS, [], LMTrainConfig(epochs=1000, batch_size=2, max_time_s=0.3))
    assert r.metrics["stopped"] == "time budget" and r.metrics["steps"] < 1000 * len(TEXTS) // 2
    calls = iter(range(10**6))
    r = train_causal_lm(
        tiny(tok), tok, TEXTS, [], LMTrainConfig(epochs=50, batch_size=2), should_stop=lambda: next(calls) >= 2
    )
    assert r.metrics["stopped"] == "stopped" and r.metrics["steps"] == 3
    with pytest.raises(ValueError, match="no training examples"):
        train_causal_lm(tiny(tok), tok, [""], [], LMTrainConfig())


def test_save_model_is_safetensors_and_generates(tok, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    set_seed(0)
    model = tiny(tok)
    save_model(model, tok, tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    t2 = AutoTokenizer.from_pretrained(tmp_path)
    ids = t2("User: hello\nAgent:", return_tensors="pt").input_ids
    out = loaded.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 3


@pytest.mark.gpu
def test_mixed_precision_on_gpu(tok):
    model = tiny(tok)
    r = train_causal_lm(model, tok, TEXTS, TEXTS[:4], LMTrainConfig(epochs=1, batch_size=4, device="cuda"))
    assert r.metrics["dtype"] in {"bfloat16", "float16"} and math.isfinite(r.metrics["eval_loss"])
