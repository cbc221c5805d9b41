"""Transformer family: tiny random char-BERT encoders, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.classify.base import load_classifier
from slm.classify.charbert import build_char_vocab, char_bert_classifier, make_char_tokenizer
from slm.classify.train import (
    TrainConfig,
    split_validation,
    train_frozen_uncached,
    train_transformer,
)
from slm.classify.transformer import TransformerClassifier

POS = [f"很好 好评 满意 great {i}" for i in range(24)]
NEG = [f"很差 差评 失望 awful {i}" for i in range(24)]
TEXTS = POS + NEG
LABELS = ["pos"] * 24 + ["neg"] * 24


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def tiny(pooling: str = "mean", seed: int = 0) -> TransformerClassifier:
    return char_bert_classifier(
        TEXTS,
        ["neg", "pos"],
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        max_length=24,
        pooling=pooling,
        seed=seed,
        min_freq=1,
    )


def test_char_tokenizer_splits_chinese_and_english() -> None:
    vocab = build_char_vocab(["很好 great"], min_freq=1)
    tok = make_char_tokenizer(vocab)
    assert tok.tokenize("很好 Great 12") == ["很", "好", "g", "##r", "##e", "##a", "##t", "1", "##2"]
    assert tok.tokenize("龘")[0] == "[UNK]"


def test_full_training_reduces_loss_and_learns() -> None:
    model = tiny()
    epochs: list[dict] = []
    messages: list[tuple[str, float]] = []
    result = train_transformer(
        model,
        TEXTS,
        LABELS,
        TrainConfig(mode="full", epochs=8, lr=2e-3, batch_size=8, early_stopping_patience=0),
        progress=lambda m, f: messages.append((m, f)),
        on_epoch=epochs.append,
    )
    loss = result.curves["train_loss"]
    assert loss[-1] < loss[0] * 0.7
    assert result.val_metrics["accuracy"] >= 0.9
    assert model.predict(["很好 满意", "很差 失望"]) == ["pos", "neg"]
    assert [e["epoch"] for e in epochs] == list(range(1, 9)) and "eta_s" in epochs[0]
    assert messages and 0 <= messages[-1][1] <= 1
    assert set(result.curves) >= {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}
    # warmup then linear decay
    lrs = result.curves["lr"]
    assert max(lrs) <= 2e-3 and lrs[-1] < lrs[1]


def test_early_stopping_stops() -> None:
    model = tiny()
    cfg = TrainConfig(epochs=50, lr=1e-3, early_stopping_patience=2, min_delta=100.0)
    result = train_transformer(model, TEXTS, LABELS, cfg)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_frozen_cache_gives_the_same_head_as_the_uncached_loop() -> None:
    cfg = TrainConfig(epochs=4, lr=5e-3, batch_size=8, val_fraction=0.0, early_stopping_patience=0, seed=3)
    cached = tiny(seed=1)
    uncached = tiny(seed=1)
    before = {k: v.clone() for k, v in uncached.encoder.state_dict().items()}
    r1 = train_transformer(cached, TEXTS, LABELS, cfg)
    r2 = train_frozen_uncached(uncached, TEXTS, LABELS, cfg)
    for (k, a), (_, b) in zip(cached.head.state_dict().items(), uncached.head.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=k)
    np.testing.assert_allclose(r1.curves["train_loss"], r2.curves["train_loss"], atol=1e-4)
    for k, v in uncached.encoder.state_dict().items():  # the encoder really stayed frozen
        torch.testing.assert_close(v, before[k])


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_training_continues_from_the_models_current_weights(mode: str, tmp_path: Path) -> None:
    """A parent version loaded to be warm-started keeps what it learned (head and encoder)."""
    parent = tiny()
    train_transformer(parent, TEXTS, LABELS, TrainConfig(mode="full", epochs=6, lr=2e-3, batch_size=8))
    parent.save(tmp_path)
    model = TransformerClassifier.load(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(mode=mode, epochs=1, lr=1e-7, warmup_ratio=0.0, batch_size=8, val_fraction=0.0)
    train_transformer(model, TEXTS, LABELS, cfg)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-4, rtol=0, msg=k)
    assert model.predict(["很好 满意", "很差 失望"]) == ["pos", "neg"]


def test_save_load_round_trip_identical(tmp_path: Path) -> None:
    model = tiny(pooling="cls")
    train_transformer(model, TEXTS, LABELS, TrainConfig(epochs=3, lr=5e-3))
    model.save(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"family": "transformer"}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["label2id"] == {"neg": 0, "pos": 1} and cfg["id2label"] == {"0": "neg", "1": "pos"}
    enc_cfg = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert enc_cfg["label2id"] == {"neg": 0, "pos": 1}
    assert (tmp_path / "encoder" / "model.safetensors").exists()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    loaded = load_classifier(tmp_path)
    probe = ["很好 great", "很差", "<b>awful</b> 失望", "x"]
    np.testing.assert_allclose(loaded.predict_proba(probe), model.predict_proba(probe), atol=1e-6)
    assert loaded.labels == ["neg", "pos"]


def test_lora_trains_and_saves_merged(tmp_path: Path) -> None:
    model = tiny()
    result = train_transformer(
        model, TEXTS, LABELS, TrainConfig(mode="lora", epochs=6, lr=5e-3, batch_size=8, early_stopping_patience=0)
    )
    assert result.curves["train_loss"][-1] < result.curves["train_loss"][0]
    trainable = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    probe = ["很好 great", "很差 awful"]
    expected = model.predict_proba(probe)
    model.save(tmp_path)
    loaded = TransformerClassifier.load(tmp_path)
    assert not hasattr(loaded.encoder, "peft_config")
    np.testing.assert_allclose(loaded.predict_proba(probe), expected, atol=1e-5)


def test_config_from_toml_yaml_and_errors(tmp_path: Path) -> None:
    assert TrainConfig().lr == 5e-4 and TrainConfig().batch_size == 32 and TrainConfig().max_length == 200
    assert TrainConfig().epochs == 100 and TrainConfig().weight_decay == 0.01 and TrainConfig().mode == "frozen"
    (tmp_path / "c.toml").write_text('[train]\nmode = "lora"\nlr = 1e-3\nepochs = 3\n')
    cfg = TrainConfig.from_file(tmp_path / "c.toml", epochs=5)
    assert (cfg.mode, cfg.lr, cfg.epochs) == ("lora", 1e-3, 5)
    (tmp_path / "c.yaml").write_text("mode: full\nbatch_size: 4\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").batch_size == 4
    (tmp_path / "bad.toml").write_text("lr = 1e-3\nlearning_rate = 2\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError):
        TrainConfig(mode="half")
    with pytest.raises(ValueError):
        train_transformer(tiny(), ["a"], ["other"], TrainConfig(epochs=1, val_fraction=0))


def test_split_validation_is_stratified() -> None:
    tr, ytr, va, yva = split_validation(TEXTS, LABELS, 0.25, seed=0)
    assert len(va) == 12 and yva.count("pos") == 6 and not set(tr) & set(va)


def test_epoch_metrics_match_sklearn() -> None:
    from slm.classify.metrics import compute_metrics
    from slm.classify.train import _eval_logits

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=gen)
    y = torch.randint(0, 3, (50,), generator=gen)
    row = _eval_logits(logits, y, ["a", "b", "c"])
    ref = compute_metrics(y.numpy(), torch.softmax(logits, -1).numpy(), labels=["a", "b", "c"])
    assert row["val_accuracy"] == pytest.approx(ref["accuracy"])
    assert row["val_macro_f1"] == pytest.approx(ref["macro_f1"])


def test_int8_copy_is_on_onednn_close_to_fp32_and_warning_free() -> None:
    """bench/sentiment.py's int8 row: every nn.Linear of a copy becomes slm.precision.Int8Linear (no deprecated
    torch.ao quantized tensors, no warnings); the original is untouched; probabilities stay close."""
    import warnings

    from torch import nn

    from slm.classify.export import quantize_int8
    from slm.precision import Int8Linear

    model = tiny().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_int8(model)
        fp = model.predict_proba(TEXTS)
        p8 = q.predict_proba(TEXTS)
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) >= 4
    assert any(isinstance(m, nn.Linear) for m in model.modules())
    assert np.abs(fp - p8).max() < 0.05 and (fp.argmax(1) == p8.argmax(1)).mean() >= 0.95
