"""Data-parallel training: the same run in 2 CPU processes (torchrun + accelerate, gloo) gives the
same model and metrics as in one, events reach the caller, a stop request ends it, failures explain."""

from __future__ import annotations

import pytest
import torch

from slm.classify.charbert import char_bert_classifier
from slm.classify.train import TrainConfig, train_transformer
from slm.training import launch
from tests.slm.test_classify_transformer import LABELS, TEXTS


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _tiny():  # type: ignore[no-untyped-def]
    # no dropout: one process and two then see the same numbers, not different random masks
    return char_bert_classifier(
        TEXTS, ["neg", "pos"], hidden_size=32, num_layers=1, num_heads=2, max_length=24, min_freq=1, dropout=0.0
    )


def test_two_processes_train_the_same_classifier_as_one() -> None:
    """Full mode (DDP over the whole model, sharded validation) with a pruned attention head (the
    launching side rebuilds the smaller encoder); the frozen mode's feature gather runs in
    tests/annotate/test_retrain_processes.py."""
    cfg = dict(mode="full", epochs=3, lr=3e-3, batch_size=8, early_stopping_patience=0, val_fraction=0.25, seed=1)
    cfg["prune_heads"] = 0.5
    one, two = _tiny(), _tiny()
    r1 = train_transformer(one, TEXTS, LABELS, TrainConfig(**cfg))
    rows: list[dict] = []
    messages: list[str] = []
    r2 = train_transformer(
        two,
        TEXTS,
        LABELS,
        TrainConfig(**cfg, processes=2),
        on_epoch=rows.append,
        progress=lambda m, _f: messages.append(m),
    )
    assert r2.timings["processes"] == 2 and r2.model is two and r2.pruning == r1.pruning
    assert two.pruned_heads == one.pruned_heads and r2.pruning["heads_removed"] == 1
    assert [r["epoch"] for r in rows] == [1, 2, 3] and any(m.startswith("epoch 3/3") for m in messages)
    assert (r2.n_train, r2.n_val, r2.epochs_run) == (r1.n_train, r1.n_val, r1.epochs_run)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, atol=2e-4, rtol=1e-3, msg=k)
    for key in ("accuracy", "macro_f1"):
        assert r2.val_metrics[key] == pytest.approx(r1.val_metrics[key], abs=1e-9)
    assert r2.curves["train_loss"] == pytest.approx(r1.curves["train_loss"], abs=1e-4)
    assert two.predict(["很好 满意", "很差 失望"]) == one.predict(["很好 满意", "很差 失望"])


def test_causal_lm_in_two_processes_matches_one_and_stops_on_request() -> None:
    from slm.chat_data import format_dialogue, turns_to_dialogue
    from slm.lm_train import LMTrainConfig, new_gpt2_model, train_causal_lm
    from slm.tokenizer_build import train_bpe_tokenizer

    texts = [format_dialogue(turns_to_dialogue(p)) for p in [("hi", "hello there"), ("how are you?", "fine")]] * 6
    tok = train_bpe_tokenizer(texts, vocab_size=300)

    def tiny():  # type: ignore[no-untyped-def]
        return new_gpt2_model(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, dropout=0.0, seed=2)

    cfg = dict(epochs=2, lr=5e-3, batch_size=4, log_every=1, seed=2)
    one, two = tiny(), tiny()
    r1 = train_causal_lm(one, tok, texts, texts[:4], LMTrainConfig(**cfg))
    seen: list[dict] = []
    lines: list[str] = []
    r2 = train_causal_lm(
        two, tok, texts, texts[:4], LMTrainConfig(**cfg, processes=2), progress=seen.append, log=lines.append
    )
    assert r2.metrics["processes"] == 2 and r2.metrics["steps"] == r1.metrics["steps"] == 6
    assert r2.metrics["eval_loss"] == pytest.approx(r1.metrics["eval_loss"], rel=1e-3)
    assert r2.metrics["train_tokens"] == r1.metrics["train_tokens"]
    assert [s["step"] for s in seen] == list(range(1, 7)) and any("eval_loss" in line for line in lines)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, atol=5e-4, rtol=1e-3, msg=k)
    # a stop request from the launching side ends the run cleanly (the weights still come back)
    stopped = train_causal_lm(
        tiny(), tok, texts, [], LMTrainConfig(**{**cfg, "epochs": 10_000}, processes=2), should_stop=lambda: True
    )
    assert stopped.metrics["stopped"] == "stopped" and stopped.metrics["steps"] < 30_000


def test_a_failing_process_raises_with_its_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
        launch("slm.no_such_module:main", tmp_path, 2, device="cpu")


def test_more_processes_than_gpus_is_refused(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="need 2 GPUs"):
        launch("slm.training:_main", tmp_path, 2, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_train_the_same_classifier_as_one() -> None:
    cfg = dict(mode="full", epochs=3, lr=3e-3, batch_size=8, early_stopping_patience=0, seed=1, precision="fp32")
    one, two = _tiny(), _tiny()
    r1 = train_transformer(one, TEXTS, LABELS, TrainConfig(**cfg, device="cuda"))
    r2 = train_transformer(two, TEXTS, LABELS, TrainConfig(**cfg, device="cuda", processes=2))
    assert r2.timings["processes"] == 2
    assert r2.val_metrics["accuracy"] == pytest.approx(r1.val_metrics["accuracy"])
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k].cpu(), v.cpu(), atol=1e-3, rtol=1e-3, msg=k)
