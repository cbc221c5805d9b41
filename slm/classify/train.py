"""Training for the transformer family: a config dataclass (TOML/YAML file or flags) and one loop.

Modes:
  * frozen (default, the seed's design): the encoder never changes, so its pooled features are
    computed ONCE (one encoder pass over train + validation) and the head trains on the cached
    tensors — 100 head epochs cost about one encoder pass. `train_frozen_uncached` is the seed's
    loop (encoder run on every batch of every epoch), kept as the reference for tests and bench.
  * full: encoder and head train end to end.
  * lora: low-rank adapters (peft) on the encoder's attention projections + the head; adapters are
    merged into the encoder when saved.

Our own loop, not the Trainer: the frozen cache is a tensor loop the Trainer cannot express, and for
full/lora the loop is ~100 lines with the same features (warmup schedule, clipping, accumulation,
autocast only where supported, early stopping, per-epoch curves, progress callbacks).
"""

from __future__ import annotations

import copy
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slm.classify.metrics import compute_metrics
from slm.classify.transformer import TransformerClassifier
from slm.device import amp_dtype, pick_device, supports_dtype

Progress = Callable[[str, float], None]
EpochCallback = Callable[[dict[str, Any]], None]
MODES = ("frozen", "full", "lora")


@dataclass
class TrainConfig:
    # what to train
    mode: str = "frozen"
    encoder: str = ""  # hub id, local dir or registry:<name>; "" = chosen by the caller
    pooling: str = "cls"
    head_hidden: int = 0
    dropout: float = 0.1
    max_length: int = 200
    # optimisation (the seed's hyperparameters are the defaults)
    lr: float = 5e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 100
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # linear | cosine | constant
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (mixed precision only where the device supports it)
    # validation and early stopping
    val_fraction: float = 0.1
    early_stopping_patience: int = 5  # epochs without improvement; 0 = off
    early_stopping_metric: str = "val_loss"  # val_loss | val_accuracy | val_macro_f1
    min_delta: float = 1e-4
    # lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    # runtime
    seed: int = 42
    device: str = "auto"
    num_threads: int = 0  # 0 = torch default
    feature_batch_size: int = 64
    eval_batch_size: int = 64
    length_bucketing: bool = True  # full/lora: batch texts of similar length together
    time_budget_s: float = 0.0  # 0 = none; otherwise stop after the epoch that crosses it
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError("precision must be auto, fp32, fp16 or bf16")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError("schedule must be linear, cosine or constant")
        if self.early_stopping_metric not in ("val_loss", "val_accuracy", "val_macro_f1"):
            raise ValueError("early_stopping_metric must be val_loss, val_accuracy or val_macro_f1")
        for name in ("batch_size", "epochs", "grad_accum", "max_length"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """A TOML (.toml) or YAML (.yaml/.yml) file; a [train] table is used when present."""
        data = load_config_file(path)
        data = data.get("train", data)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return data
    raise ValueError(f"{path}: config files are .toml, .yaml or .yml")


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    model: TransformerClassifier
    curves: dict[str, list[float]]
    val_metrics: dict[str, Any]
    timings: dict[str, float]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    n_train: int
    n_val: int
    config: TrainConfig


def split_validation(
    texts: Sequence[str], labels: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Stratified (train, val) split; classes with a single example stay in train."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(str(lab), []).append(i)
    tr: list[int] = []
    va: list[int] = []
    for lab in sorted(by_label):
        idx = np.array(by_label[lab])
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        n_val = min(max(n_val, 1 if fraction > 0 and len(idx) > 1 else 0), len(idx) - 1)
        va.extend(idx[:n_val].tolist())
        tr.extend(idx[n_val:].tolist())
    tr.sort()
    va.sort()
    return [texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in va], [labels[i] for i in va]


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = int(round(config.warmup_ratio * total_steps))
    if config.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    if config.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
    return get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))


def _optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr)


def _autocast_dtype(device: torch.device, config: TrainConfig) -> torch.dtype | None:
    if config.precision == "fp32":
        return None
    if config.precision == "auto":
        return amp_dtype(device)
    dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
    return dtype if supports_dtype(device, dtype) else None


class _EarlyStopper:
    def __init__(self, config: TrainConfig) -> None:
        self.metric = config.early_stopping_metric
        self.patience = config.early_stopping_patience
        self.min_delta = config.min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.bad = 0

    def update(self, epoch: int, row: dict[str, float]) -> tuple[bool, bool]:
        """Returns (improved, should_stop)."""
        value = row[self.metric]
        sign = 1.0 if self.metric == "val_loss" else -1.0
        improved = self.best is None or sign * (value - self.best) < -self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad = value, epoch, 0
        else:
            self.bad += 1
        return improved, bool(self.patience and self.bad >= self.patience)


def _eval_logits(logits: torch.Tensor, y: torch.Tensor, labels: Sequence[str]) -> dict[str, float]:
    """Per-epoch validation numbers, computed directly (sklearn's per-call overhead dominated the
    100-epoch cached head loop; tests check macro-F1 against compute_metrics)."""
    loss = nn.functional.cross_entropy(logits, y).item()
    n = len(labels)
    pred = logits.argmax(-1).numpy()
    true = y.numpy()
    cm = np.bincount(true * n + pred, minlength=n * n).reshape(n, n).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(n), where=denom > 0)
    return {"val_loss": loss, "val_accuracy": float(tp.sum() / max(len(true), 1)), "val_macro_f1": float(f1.mean())}


def _label_ids(model: TransformerClassifier, labels: Sequence[str]) -> torch.Tensor:
    index = {lab: i for i, lab in enumerate(model.labels)}
    unknown = sorted({str(x) for x in labels} - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {model.labels}")
    return torch.tensor([index[str(x)] for x in labels], dtype=torch.long)


def train_transformer(
    model: TransformerClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    config: TrainConfig | None = None,
    *,
    val_texts: Sequence[str] | None = None,
    val_labels: Sequence[str] | None = None,
    progress: Progress | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Trains `model` in place (mode from config) and returns it with curves and validation metrics.

    Without val_texts, `config.val_fraction` of the data is held out (stratified). The best epoch's
    weights (by the early-stopping metric) are restored at the end.
    """
    config = config or TrainConfig()
    report = progress or (lambda _m, _f: None)
    started = time.perf_counter()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    set_seed(config.seed)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if val_texts is None:
        if config.val_fraction > 0:
            texts, labels, val_texts, val_labels = split_validation(texts, labels, config.val_fraction, config.seed)
        else:
            val_texts, val_labels = [], []
    val_labels = list(val_labels or [])
    if not texts:
        raise ValueError("no training texts")
    y_train = _label_ids(model, labels)
    y_val = _label_ids(model, val_labels)
    device = pick_device(config.device)
    model.to(device)
    model.max_length = config.max_length
    model.mode = config.mode
    if config.mode == "frozen":
        return _train_frozen(
            model, list(texts), y_train, list(val_texts), y_val, config, device, report, on_epoch, started
        )
    return _train_end_to_end(
        model, list(texts), y_train, list(val_texts), y_val, config, device, report, on_epoch, started
    )


def _epoch_row(epoch: int, loss_sum: float, correct: int, n: int, lr: float) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": loss_sum / max(n, 1), "train_accuracy": correct / max(n, 1), "lr": lr}


def _finish_epoch(
    *,
    row: dict[str, Any],
    stopper: _EarlyStopper,
    curves: dict[str, list[float]],
    state: dict[str, Any],
    snapshot: Callable[[], Any],
    config: TrainConfig,
    started: float,
    train_started: float,
    report: Progress,
    on_epoch: EpochCallback | None,
    has_val: bool,
) -> bool:
    """Records the epoch, updates early stopping; returns True when training should stop."""
    for k, v in row.items():
        curves.setdefault(k, []).append(v)
    epoch = int(row["epoch"])
    stop = False
    if has_val:
        improved, stop = stopper.update(epoch, row)
        if improved:
            state["best"] = snapshot()
    else:
        stopper.best_epoch = epoch
        state["best"] = snapshot()
    elapsed = time.perf_counter() - train_started
    per_epoch = elapsed / epoch
    budget_hit = bool(config.time_budget_s and time.perf_counter() - started + per_epoch > config.time_budget_s)
    row = {
        **row,
        "epochs": config.epochs,
        "elapsed_s": round(elapsed, 2),
        "eta_s": round(per_epoch * (config.epochs - epoch), 1),
    }
    if on_epoch:
        on_epoch(row)
    msg = f"epoch {epoch}/{config.epochs} loss {row['train_loss']:.4f}"
    if has_val:
        msg += f" val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.3f}"
    report(msg, 0.1 + 0.85 * epoch / config.epochs)
    state["budget_hit"] = budget_hit
    return stop or budget_hit


def _train_result(
    *,
    model: TransformerClassifier,
    curves: dict[str, list[float]],
    val_metrics: dict[str, Any],
    stopper: _EarlyStopper,
    epochs_run: int,
    state: dict[str, Any],
    config: TrainConfig,
    n_train: int,
    n_val: int,
    started: float,
    train_started: float,
) -> TrainResult:
    """The TrainResult of a finished loop (head-on-features and end-to-end share it)."""
    now = time.perf_counter()
    return TrainResult(
        model=model,
        curves=curves,
        val_metrics=val_metrics,
        timings={"train_loop_s": round(now - train_started, 3), "total_s": round(now - started, 3)},
        best_epoch=stopper.best_epoch,
        epochs_run=epochs_run,
        stopped_early=epochs_run < config.epochs and not state.get("budget_hit", False),
        n_train=n_train,
        n_val=n_val,
        config=config,
    )


def _train_frozen(
    model: TransformerClassifier,
    texts: list[str],
    y: torch.Tensor,
    val_texts: list[str],
    y_val: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    report: Progress,
    on_epoch: EpochCallback | None,
    started: float,
) -> TrainResult:
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    report(f"encoding {len(texts) + len(val_texts)} texts once (frozen encoder)", 0.02)
    t0 = time.perf_counter()
    feats = model.features(texts, batch_size=config.feature_batch_size)
    val_feats = model.features(val_texts, batch_size=config.feature_batch_size) if val_texts else None
    t_features = time.perf_counter() - t0
    head_result = train_head_on_features(model, feats, y, val_feats, y_val, config, device, report, on_epoch, started)
    head_result.timings["features_s"] = round(t_features, 3)
    return head_result


def train_head_on_features(
    model: TransformerClassifier,
    feats: torch.Tensor,
    y: torch.Tensor,
    val_feats: torch.Tensor | None,
    y_val: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    report: Progress | None = None,
    on_epoch: EpochCallback | None = None,
    started: float | None = None,
) -> TrainResult:
    """The frozen-mode loop over cached features (public for the benchmark and the cache test)."""
    report = report or (lambda _m, _f: None)
    started = started if started is not None else time.perf_counter()
    head = model.head
    head.to(device)
    feats, y = feats.to(device), y.to(device)
    has_val = val_feats is not None and len(y_val) > 0
    optimizer = _optimizer(head, config)
    steps_per_epoch = math.ceil(math.ceil(len(y) / config.batch_size) / config.grad_accum)
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config.epochs)
    gen = torch.Generator().manual_seed(config.seed)
    stopper = _EarlyStopper(config)
    curves: dict[str, list[float]] = {}
    state: dict[str, Any] = {}
    train_started = time.perf_counter()
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        perm = torch.randperm(len(y), generator=gen)
        loss_sum, correct = 0.0, 0
        batches = [perm[i : i + config.batch_size] for i in range(0, len(perm), config.batch_size)]
        for b, idx in enumerate(batches):
            logits = head(feats[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            (loss / config.grad_accum).backward()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y[idx]).sum())
            if (b + 1) % config.grad_accum == 0 or b == len(batches) - 1:
                if config.max_grad_norm:
                    nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        row = _epoch_row(epoch, loss_sum, correct, len(y), scheduler.get_last_lr()[0])
        if has_val:
            head.eval()
            with torch.no_grad():
                row.update(_eval_logits(head(val_feats.to(device)).float().cpu(), y_val, model.labels))
        if _finish_epoch(
            row=row,
            stopper=stopper,
            curves=curves,
            state=state,
            snapshot=lambda: copy.deepcopy(head.state_dict()),
            config=config,
            started=started,
            train_started=train_started,
            report=report,
            on_epoch=on_epoch,
            has_val=has_val,
        ):
            break
    head.load_state_dict(state["best"])
    head.eval()
    val_metrics: dict[str, Any] = {}
    if has_val:
        with torch.no_grad():
            probs = torch.softmax(head(val_feats.to(device)).float(), -1).cpu().numpy()
        val_metrics = compute_metrics(y_val.numpy(), probs, labels=model.labels)
    return _train_result(
        model=model,
        curves=curves,
        val_metrics=val_metrics,
        stopper=stopper,
        epochs_run=epoch,
        state=state,
        config=config,
        n_train=len(y),
        n_val=len(y_val),
        started=started,
        train_started=train_started,
    )


def train_frozen_uncached(
    model: TransformerClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    config: TrainConfig,
    *,
    val_texts: Sequence[str] = (),
    val_labels: Sequence[str] = (),
) -> TrainResult:
    """The seed's loop: the frozen encoder runs on every batch of every epoch (reference only).

    Same batches, same schedule and same RNG stream as the cached loop, so the heads agree up to
    float rounding — the test and bench/sentiment.py compare the two.
    """
    started = time.perf_counter()
    set_seed(config.seed)
    device = pick_device(config.device)
    model.to(device)
    model.max_length = config.max_length
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.encoder.eval()
    docs = model.clean(texts)
    val_docs = model.clean(val_texts)
    y = _label_ids(model, labels)
    y_val = _label_ids(model, val_labels)
    head = model.head.to(device)
    optimizer = _optimizer(head, config)
    steps_per_epoch = math.ceil(math.ceil(len(y) / config.batch_size) / config.grad_accum)
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config.epochs)
    gen = torch.Generator().manual_seed(config.seed)
    stopper = _EarlyStopper(config)
    curves: dict[str, list[float]] = {}
    state: dict[str, Any] = {}
    has_val = len(y_val) > 0

    def encode(batch_docs: list[str]) -> torch.Tensor:
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in model.tokenize(batch_docs, cleaned=True).items()}
            return model.encode(**batch).float()

    epoch = 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        perm = torch.randperm(len(y), generator=gen)
        loss_sum, correct = 0.0, 0
        batches = [perm[i : i + config.batch_size] for i in range(0, len(perm), config.batch_size)]
        for b, idx in enumerate(batches):
            feats = encode([docs[i] for i in idx.tolist()])
            logits = head(feats)
            loss = nn.functional.cross_entropy(logits, y[idx].to(device))
            (loss / config.grad_accum).backward()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1).cpu() == y[idx]).sum())
            if (b + 1) % config.grad_accum == 0 or b == len(batches) - 1:
                if config.max_grad_norm:
                    nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        row = _epoch_row(epoch, loss_sum, correct, len(y), scheduler.get_last_lr()[0])
        if has_val:
            head.eval()
            with torch.no_grad():
                vf = torch.cat([encode(val_docs[i : i + 64]) for i in range(0, len(val_docs), 64)])
                row.update(_eval_logits(head(vf).float().cpu(), y_val, model.labels))
        if _finish_epoch(
            row=row,
            stopper=stopper,
            curves=curves,
            state=state,
            snapshot=lambda: copy.deepcopy(head.state_dict()),
            config=config,
            started=started,
            train_started=started,
            report=lambda _m, _f: None,
            on_epoch=None,
            has_val=has_val,
        ):
            break
    head.load_state_dict(state["best"])
    head.eval()
    now = time.perf_counter()
    return TrainResult(
        model=model,
        curves=curves,
        val_metrics={},
        timings={"total_s": round(now - started, 3)},
        best_epoch=stopper.best_epoch,
        epochs_run=epoch,
        stopped_early=epoch < config.epochs,
        n_train=len(y),
        n_val=len(y_val),
        config=config,
    )


def _lora_targets(encoder: nn.Module, config: TrainConfig) -> list[str]:
    if config.lora_target_modules:
        return list(config.lora_target_modules)
    names = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    for pair in (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"), ("c_attn",)):
        if all(p in names for p in pair):
            return list(pair)
    return sorted(names)


def _length_bucketed_batches(
    perm: torch.Tensor, enc: list[list[int]], config: TrainConfig, gen: torch.Generator
) -> list[torch.Tensor]:
    """Random batches; with length_bucketing, texts of similar length share a batch (less padding:
    ~2x faster on CPU) — sorted inside random chunks of 50 batches, then the batches are shuffled."""
    size = config.batch_size
    if not config.length_bucketing:
        return [perm[i : i + size] for i in range(0, len(perm), size)]
    chunk = size * 50
    batches: list[torch.Tensor] = []
    for c in range(0, len(perm), chunk):
        part = sorted(perm[c : c + chunk].tolist(), key=lambda i: len(enc[i]))
        batches.extend(torch.tensor(part[i : i + size]) for i in range(0, len(part), size))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def _collate(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def _train_end_to_end(
    model: TransformerClassifier,
    texts: list[str],
    y: torch.Tensor,
    val_texts: list[str],
    y_val: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    report: Progress,
    on_epoch: EpochCallback | None,
    started: float,
) -> TrainResult:
    if config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        for p in model.encoder.parameters():
            p.requires_grad_(False)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=_lora_targets(model.encoder, config),
        )
        model.encoder = get_peft_model(model.encoder, lora)
    else:
        for p in model.encoder.parameters():
            p.requires_grad_(True)
    model.to(device)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    report(f"tokenizing {len(texts)} texts", 0.02)
    enc = model.tokenizer(model.clean(texts), truncation=True, max_length=model.usable_length)["input_ids"]
    val_enc = (
        model.tokenizer(model.clean(val_texts), truncation=True, max_length=model.usable_length)["input_ids"]
        if val_texts
        else []
    )
    autocast = _autocast_dtype(device, config)
    scaler = torch.amp.GradScaler(device.type) if autocast == torch.float16 else None
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(math.ceil(len(y) / config.batch_size) / config.grad_accum)
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config.epochs)
    gen = torch.Generator().manual_seed(config.seed)
    stopper = _EarlyStopper(config)
    curves: dict[str, list[float]] = {}
    state: dict[str, Any] = {}
    has_val = len(y_val) > 0
    train_started = time.perf_counter()

    def run(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if autocast is not None:
            with torch.autocast(device.type, dtype=autocast):
                return model(**batch).float()
        return model(**batch).float()

    def trainable_state() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    epoch = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        loss_sum, correct = 0.0, 0
        batches = _length_bucketed_batches(perm, enc, config, gen)
        seen = 0
        for b, idx in enumerate(batches):
            if config.time_budget_s and b and time.perf_counter() - started > config.time_budget_s:
                batches = batches[:b]  # out of time: end this epoch early (then stop)
                break
            seen += len(idx)
            batch = _collate([enc[i] for i in idx.tolist()], pad_id, device)
            logits = run(batch)
            target = y[idx].to(device)
            loss = nn.functional.cross_entropy(logits, target)
            scaled = loss / config.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == target).sum())
            if (b + 1) % config.grad_accum == 0 or b == len(batches) - 1:
                if scaler:
                    scaler.unscale_(optimizer)
                if config.max_grad_norm:
                    nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        row = _epoch_row(epoch, loss_sum, correct, seen, scheduler.get_last_lr()[0])
        if has_val:
            model.eval()
            with torch.no_grad():
                order = sorted(range(len(val_enc)), key=lambda i: len(val_enc[i]))
                logits_val = torch.zeros(len(val_enc), len(model.labels))
                for s in range(0, len(order), config.eval_batch_size):
                    idx_v = order[s : s + config.eval_batch_size]
                    logits_val[idx_v] = run(_collate([val_enc[i] for i in idx_v], pad_id, device)).cpu()
            row.update(_eval_logits(logits_val, y_val, model.labels))
        if _finish_epoch(
            row=row,
            stopper=stopper,
            curves=curves,
            state=state,
            snapshot=trainable_state,
            config=config,
            started=started,
            train_started=train_started,
            report=report,
            on_epoch=on_epoch,
            has_val=has_val,
        ):
            break
    model.load_state_dict(state["best"])
    model.eval()
    val_metrics: dict[str, Any] = {}
    if has_val:
        probs = model.predict_proba(val_texts, batch_size=config.eval_batch_size)
        val_metrics = compute_metrics(y_val.numpy(), probs, labels=model.labels)
    return _train_result(
        model=model,
        curves=curves,
        val_metrics=val_metrics,
        stopper=stopper,
        epochs_run=epoch,
        state=state,
        config=config,
        n_train=len(y),
        n_val=len(y_val),
        started=started,
        train_started=train_started,
    )
