"""The one training loop (slm.training): schedule, optimizer groups, accumulation, early stopping,
callbacks and cancellation, on a tiny linear model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slm.training import (
    FitConfig,
    Runtime,
    build_optimizer,
    fit,
    length_grouped_batches,
    lr_factor,
    set_seed,
)

X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _model(seed: int = 0) -> nn.Module:
    set_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def _fit(model: nn.Module, *, batch: int, accum: int = 1, epochs: float = 3, **kw) -> object:
    gen = torch.Generator().manual_seed(1)

    def loss(m: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = m(X[idx])
        return nn.functional.cross_entropy(logits, Y[idx]), {"accuracy": float((logits.argmax(-1) == Y[idx]).sum())}

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": float(nn.functional.cross_entropy(m(X), Y))}

    callbacks = {k: kw.pop(k) for k in ("on_step", "on_epoch", "should_stop") if k in kw}
    cfg = FitConfig(epochs=epochs, lr=kw.pop("lr", 0.05), grad_accum=accum, warmup_ratio=0.0, **kw)
    return fit(
        model,
        batches=lambda _e: length_grouped_batches([0] * len(X), batch, gen, group=False),
        batches_per_epoch=math.ceil(len(X) / batch),
        loss=loss,
        config=cfg,
        runtime=Runtime("cpu", "auto"),
        evaluate=evaluate,
        **callbacks,
    )


def test_lr_schedule_shapes() -> None:
    assert lr_factor(0.0, 0.1, "linear") == pytest.approx(1e-3)  # warmup starts just above zero
    assert lr_factor(0.05, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, "linear") == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, "linear") == pytest.approx(0.0)
    assert lr_factor(1.0, 0.0, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(0.5, 0.0, "cosine") == pytest.approx(0.5)
    assert lr_factor(0.9, 0.1, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        FitConfig(epochs=1, lr=1.0, schedule="exp")


def test_optimizer_groups_skip_decay_on_biases_and_norms() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [torch.Size([2, 8])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # 2 biases + norm weight/bias
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), lr=1e-3, weight_decay=0.0)


def test_gradient_accumulation_equals_the_larger_batch() -> None:
    """batch 4 x 2 accumulation steps takes the same optimizer steps as batch 8 (no dropout)."""
    a, b = _model(), _model()
    gen_a = torch.Generator().manual_seed(5)
    gen_b = torch.Generator().manual_seed(5)
    plan_a = [length_grouped_batches([0] * 40, 8, gen_a, group=False) for _ in range(2)]
    split = [
        [half for big in epoch for half in (big[:4], big[4:])]
        for epoch in (length_grouped_batches([0] * 40, 8, gen_b, group=False) for _ in range(2))
    ]

    def run(model: nn.Module, plan: list, accum: int) -> object:
        return fit(
            model,
            batches=lambda e: plan[e - 1],
            batches_per_epoch=len(plan[0]),
            loss=lambda m, idx: (nn.functional.cross_entropy(m(X[idx]), Y[idx]), {}),
            config=FitConfig(epochs=2, lr=0.05, grad_accum=accum, max_grad_norm=0.5),
            runtime=Runtime("cpu"),
        )

    ra, rb = run(a, plan_a, 1), run(b, split, 2)
    assert ra.steps == rb.steps == 10
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)


def test_learns_reports_and_restores_the_best_epoch() -> None:
    steps: list[dict] = []
    epochs: list[dict] = []
    model = _model()
    r = _fit(model, batch=8, epochs=6, monitor="val_loss", on_step=steps.append, on_epoch=epochs.append)
    assert r.stopped == "epochs" and r.epochs_run == 6 and r.steps == 30
    assert r.curves["train_loss"][-1] < r.curves["train_loss"][0]
    assert r.curves["train_accuracy"][-1] > 0.8 and set(r.curves) >= {"epoch", "lr", "val_loss"}
    assert [s["step"] for s in steps] == list(range(1, 31)) and steps[-1]["fraction"] == 1.0
    assert {"epoch", "total_steps", "loss", "lr", "eta_s", "elapsed_s"} <= set(steps[0])
    assert [e["epoch"] for e in epochs] == list(range(1, 7)) and "eta_s" in epochs[0]
    best = min(range(6), key=lambda i: r.curves["val_loss"][i])
    assert r.best_epoch == best + 1 and r.best["val_loss"] == r.curves["val_loss"][best]
    with torch.no_grad():
        restored = float(nn.functional.cross_entropy(model(X), Y))
    assert restored == pytest.approx(r.curves["val_loss"][best], abs=1e-6)


def test_early_stopping_and_cancel() -> None:
    r = _fit(_model(), batch=8, epochs=20, monitor="val_loss", patience=2, min_delta=100.0)
    assert r.stopped == "early stopping" and r.epochs_run == 3 and r.best_epoch == 1
    calls = iter(range(1000))
    r = _fit(_model(), batch=8, epochs=20, should_stop=lambda: next(calls) >= 3)
    assert r.stopped == "stopped" and r.steps == 4
    r = _fit(_model(), batch=8, epochs=10_000, time_budget_s=0.2)
    assert r.stopped == "time budget" and r.steps < 50_000


def test_the_model_keeps_its_own_forward_after_training() -> None:
    model = _model()
    forward = model.forward
    _fit(model, batch=8, epochs=1)
    assert model.forward == forward and "_original_forward" not in model.__dict__


def test_same_seed_same_result() -> None:
    a, b = _model(3), _model(3)
    _fit(a, batch=8)
    _fit(b, batch=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_length_grouped_batches_cover_every_example_once() -> None:
    lengths = [5, 1, 9, 3, 7, 2, 8]
    plan = length_grouped_batches(lengths, 2, torch.Generator().manual_seed(0))
    assert sorted(i for b in plan for i in b.tolist()) == list(range(7))
    assert [b.tolist() for b in length_grouped_batches(lengths, 3)] == [[1, 5, 3], [0, 4, 6], [2]]


@pytest.mark.gpu
def test_mixed_precision_on_gpu() -> None:
    runtime = Runtime("cuda", "auto")
    assert runtime.dtype in (torch.bfloat16, torch.float16)
    model = _model()
    r = fit(
        model,
        batches=lambda _e: [torch.arange(0, 20), torch.arange(20, 40)],
        batches_per_epoch=2,
        loss=lambda m, idx: (nn.functional.cross_entropy(m(X[idx].cuda()), Y[idx].cuda()), {}),
        config=FitConfig(epochs=3, lr=0.05),
        runtime=runtime,
    )
    assert r.dtype == runtime.dtype and math.isfinite(r.curves["train_loss"][-1])
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
