"""The chat bootstrap builder (tiny size in tests): registers a live GPT-2 version with metrics."""

import json

import pytest
from django.core.management import call_command

from chat.bootstrap import TINY_CONFIG, build_tiny_chat_version, default_config


@pytest.fixture
def tiny_size(settings):
    settings.CHAT_BOOTSTRAP_SIZE = "tiny"


def test_bootstrap_chat_is_idempotent(tiny_size, registry, capsys):
    call_command("bootstrap_models", "chat")
    assert registry.live_version("chat") == "v0001"
    call_command("bootstrap_models", "chat")
    assert "skipping" in capsys.readouterr().out
    assert [v.version for v in registry.versions("chat")] == ["v0001"]

    mv = registry.live("chat")
    meta = json.loads((mv.path / "metadata.json").read_text())
    assert meta["family"] == "gpt2" and meta["parent"] is None and len(meta["data_hash"]) == 64
    assert {"eval_loss", "perplexity", "train_time_s"} <= set(meta["metrics"])
    assert meta["metrics"]["perplexity"] > 1
    assert meta["config"]["n_layer"] == TINY_CONFIG.n_layer and meta["format"]["stop"] == ["User:"]
    assert (mv.path / "model.safetensors").exists() and not list(mv.path.glob("*.bin"))


def test_tiny_version_loads_and_generates(registry):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    mv = build_tiny_chat_version(registry)
    assert registry.live_version("chat") == mv.version
    tok = AutoTokenizer.from_pretrained(mv.path)
    model = GPT2LMHeadModel.from_pretrained(mv.path)
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    ids = tok("User: hello\nAgent:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(out[0], skip_special_tokens=True).startswith("User: hello\nAgent:")
    build_tiny_chat_version(registry, promote=False)
    assert registry.live_version("chat") == mv.version and len(registry.versions("chat")) == 2


def test_default_config_honours_budget(settings):
    settings.CHAT_BOOTSTRAP_SIZE = "default"
    settings.CHAT_BOOTSTRAP_MAX_TIME_S = 42
    cfg = default_config()
    assert cfg.train.max_time_s == 42 and cfg.tokenizer == "bpe" and cfg.n_positions == 256
    assert cfg.train.max_length == 256


def test_the_building_banner_says_how_long_in_minutes():
    from chat.bootstrap import progress_text

    assert progress_text(1, 6.8763, 203.0) == "epoch 1 · loss 6.88 · about 3 min left"
    assert progress_text(2, 5.1, 40.0) == "epoch 2 · loss 5.1 · under a minute left"
    assert progress_text(1, 6.0, None) == "epoch 1 · loss 6"
