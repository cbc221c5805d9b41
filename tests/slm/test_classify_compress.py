"""Compression as modes of the training loop: distillation (teacher soft labels + hard labels) and
pruning (attention heads removed, linear weights held at zero), on tiny char-BERT classifiers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.classify import prune
from slm.classify.base import load_classifier
from slm.classify.train import TrainConfig, classification_loss, train_transformer
from slm.classify.transformer import TransformerClassifier
from tests.slm.test_classify_transformer import LABELS, TEXTS, tiny

PROBE = ["很好 满意", "很差 失望", "great 好评", "awful 差评"]


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _four_heads(seed: int = 0) -> TransformerClassifier:
    from slm.classify.charbert import char_bert_classifier

    return char_bert_classifier(
        TEXTS, ["neg", "pos"], hidden_size=32, num_layers=2, num_heads=4, max_length=24, min_freq=1, seed=seed
    )


def test_distillation_loss_mixes_soft_and_hard_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    y = torch.tensor([0, 1])
    soft = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    ce = torch.nn.functional.cross_entropy(logits, y)
    cfg = TrainConfig(distill_alpha=0.25, distill_temperature=2.0)
    kd = torch.nn.functional.kl_div(torch.log_softmax(logits / 2, -1), soft, reduction="batchmean") * 4
    assert classification_loss(logits, y, soft, cfg) == pytest.approx(float(0.25 * kd + 0.75 * ce))
    assert classification_loss(logits, y, None, cfg) == pytest.approx(float(ce))
    with pytest.raises(ValueError, match="distill_alpha"):
        TrainConfig(distill_alpha=1.5)


def test_a_distilled_student_follows_its_teacher() -> None:
    """With alpha=1 the student learns only from the teacher: a teacher that swaps the labels yields a
    student that swaps them too; with alpha=0 the teacher is ignored (same weights as no teacher)."""
    cfg = dict(mode="full", epochs=6, lr=3e-3, batch_size=8, val_fraction=0.0, early_stopping_patience=0)
    swapped = np.array([[0.05, 0.95] if lab == "neg" else [0.95, 0.05] for lab in LABELS], dtype=np.float32)
    student = tiny()
    train_transformer(student, TEXTS, LABELS, TrainConfig(**cfg, distill_alpha=1.0), teacher_probs=swapped)
    assert student.predict(["很好 满意", "很差 失望"]) == ["neg", "pos"]
    plain, ignored = tiny(), tiny()
    train_transformer(plain, TEXTS, LABELS, TrainConfig(**cfg))
    train_transformer(ignored, TEXTS, LABELS, TrainConfig(**cfg, distill_alpha=0.0), teacher_probs=swapped)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(ignored.state_dict()[k], v, msg=k)
    with pytest.raises(ValueError, match="teacher probabilities have shape"):
        train_transformer(tiny(), TEXTS, LABELS, TrainConfig(**cfg), teacher_probs=swapped[:5])


def test_the_weakest_heads_are_chosen_and_every_layer_keeps_one() -> None:
    model = _four_heads()
    attn, _out = prune.attention_layers(model.encoder)[1]
    with torch.no_grad():  # head 2 of layer 1 carries (almost) nothing
        for name in ("query", "key", "value"):
            getattr(attn, name).weight[16:24] *= 1e-3
    assert prune.choose_heads(model.encoder, 1 / 8) == {1: [2]}
    heads = prune.choose_heads(model.encoder, 0.99)
    assert {layer: len(h) for layer, h in heads.items()} == {0: 3, 1: 3}


def test_head_pruning_shrinks_recovers_and_round_trips(tmp_path: Path) -> None:
    model = _four_heads()
    full = TrainConfig(mode="full", epochs=6, lr=3e-3, batch_size=8, early_stopping_patience=0)
    train_transformer(model, TEXTS, LABELS, full)
    n_before = sum(p.numel() for p in model.encoder.parameters())
    result = train_transformer(model, TEXTS, LABELS, TrainConfig(**{**full.to_dict(), "epochs": 3, "prune_heads": 0.5}))
    assert result.pruning["heads_total"] == 8 and result.pruning["heads_removed"] == 4
    widths = [a.query.out_features for a, _ in prune.attention_layers(model.encoder)]
    assert sum(widths) == 4 * 8 and min(widths) >= 8  # 4 heads of 8 dims left, at least one per layer
    assert sum(p.numel() for p in model.encoder.parameters()) < n_before
    assert model.predict(PROBE) == ["pos", "neg", "pos", "neg"]
    model.save(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"family": "transformer"}))
    assert json.loads((tmp_path / "config.json").read_text())["pruned_heads"] == [result.pruning["pruned_heads"]]
    loaded = load_classifier(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(PROBE), model.predict_proba(PROBE), atol=1e-6)


def test_weight_pruning_keeps_zeros_through_training_and_bakes_them(tmp_path: Path) -> None:
    from torch.nn.utils import prune as torch_prune

    model = tiny()
    cfg = TrainConfig(mode="full", epochs=4, lr=3e-3, batch_size=8, early_stopping_patience=0, prune_weights=0.4)
    result = train_transformer(model, TEXTS, LABELS, cfg)
    linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)
    assert result.pruning["weight_sparsity"] == pytest.approx(zeros) and zeros >= 0.39
    assert not any(torch_prune.is_pruned(m) for m in linears)  # plain weights, no masks left behind
    assert model.predict(["很好 满意", "很差 失望"]) == ["pos", "neg"]
    model.save(tmp_path)
    np.testing.assert_allclose(
        TransformerClassifier.load(tmp_path).predict_proba(PROBE), model.predict_proba(PROBE), atol=1e-6
    )
    with pytest.raises(ValueError, match="prune_weights"):
        TrainConfig(prune_weights=1.0)
