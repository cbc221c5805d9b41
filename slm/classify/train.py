"""Training the transformer classifier family: a config dataclass (TOML/YAML file or flags) and its modes,
all running on the one loop in `slm.training` (accelerate: device, mixed precision, DDP).

Modes:
  * frozen (default, the seed's design): the encoder never changes, so its pooled features are
    computed ONCE (one encoder pass over train + validation, split across processes when there are
    several) and the head trains on the cached tensors — 100 head epochs cost about one encoder pass.
    `train_frozen_uncached` is the seed's loop (encoder run on every batch of every epoch), kept as
    the reference for tests and bench/sentiment.py; it runs on the same loop with the same batches.
  * full: encoder and head train end to end.
  * lora: low-rank adapters (peft) on the encoder's attention projections + the head; adapters are
    merged into the encoder when saved.

A model that was already trained (e.g. a parent version loaded to be warm-started) continues from its
current encoder and head weights. With `teacher` probabilities the loss mixes the teacher's
temperature-softened distribution with the hard labels (distillation).
"""

from __future__ import annotations

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
from slm.training import (
    FitConfig,
    Runtime,
    emit,
    fit,
    in_processes,
    launched_processes,
    length_grouped_batches,
    process_inputs,
    process_outputs,
    set_seed,
    stop_requested,
)

Progress = Callable[[str, float], None]
EpochCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]
MODES = ("frozen", "full", "lora")
__all__ = ["TrainConfig", "TrainResult", "set_seed", "split_validation", "train_transformer"]


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
    # pruning before training (the training then recovers what was lost): fraction of attention heads
    # removed (structured, by magnitude) and fraction of encoder linear weights held at zero
    prune_heads: float = 0.0
    prune_weights: float = 0.0
    # distillation (when teacher probabilities are given): loss = alpha * T^2 * KL + (1 - alpha) * CE
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    # runtime
    processes: int = 1  # data-parallel processes (torchrun + accelerate: gloo on CPU, NCCL on GPUs)
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
        if int(self.processes) < 1:
            raise ValueError("processes must be >= 1")
        for name in ("prune_heads", "prune_weights"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError("distill_alpha must be in [0, 1]")
        if self.distill_temperature <= 0:
            raise ValueError("distill_temperature must be > 0")

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
    stopped: str = "epochs"  # epochs | early stopping | time budget | stopped
    pruning: dict[str, Any] = field(default_factory=dict)  # heads removed / weight sparsity, when pruned


def split_indices(labels: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (train, val) row indices; classes with a single example stay in train."""
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
    return sorted(tr), sorted(va)


def split_validation(
    texts: Sequence[str], labels: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Stratified (train texts, train labels, val texts, val labels)."""
    tr, va = split_indices(labels, fraction, seed)
    return [texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in va], [labels[i] for i in va]


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
    should_stop: StopCheck | None = None,
    teacher_probs: np.ndarray | None = None,
) -> TrainResult:
    """Trains `model` in place (mode from config) and returns it with curves and validation metrics.

    Without val_texts, `config.val_fraction` of the data is held out (stratified). The best epoch's
    weights (by the early-stopping metric) are restored at the end. `teacher_probs` (n_texts, labels
    in the model's order) turns on distillation: soft targets from a teacher mixed with the labels.
    """
    config = config or TrainConfig()
    report = progress or (lambda _m, _f: None)
    started = time.perf_counter()
    if config.num_threads and launched_processes() == 1:  # launched processes share the threads out
        torch.set_num_threads(config.num_threads)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if config.processes > 1 and launched_processes() == 1:
        return _train_in_processes(
            model, texts, labels, val_texts, val_labels, teacher_probs, config, report, on_epoch, should_stop, started
        )
    soft = _soft_targets(teacher_probs, len(texts), len(model.labels), config)
    if val_texts is None:
        if config.val_fraction > 0:
            tr, va = split_indices(labels, config.val_fraction, config.seed)
            val_texts, val_labels = [texts[i] for i in va], [labels[i] for i in va]
            texts, labels = [texts[i] for i in tr], [labels[i] for i in tr]
            soft = soft[tr] if soft is not None else None
        else:
            val_texts, val_labels = [], []
    val_labels = list(val_labels or [])
    if not texts:
        raise ValueError("no training texts")
    y_train = _label_ids(model, labels)
    y_val = _label_ids(model, val_labels)
    set_seed(config.seed)
    runtime = Runtime(config.device, config.precision)
    model.to(runtime.device)
    model.max_length = config.max_length
    model.mode = config.mode
    job = _Job(model, list(texts), y_train, list(val_texts), y_val, config, runtime, report, on_epoch, should_stop)
    job.started, job.soft = started, soft
    return _with_pruning(job, _train_frozen if config.mode == "frozen" else _train_end_to_end)


@dataclass
class _Job:
    """One classifier training run: the model, the data (label ids), the settings and the callbacks."""

    model: TransformerClassifier
    texts: list[str]
    y: torch.Tensor
    val_texts: list[str]
    y_val: torch.Tensor
    config: TrainConfig
    runtime: Runtime
    report: Progress
    on_epoch: EpochCallback | None = None
    should_stop: StopCheck | None = None
    started: float = field(default_factory=time.perf_counter)
    soft: torch.Tensor | None = None


def _with_pruning(job: _Job, train: Callable[[_Job], TrainResult]) -> TrainResult:
    """Prunes the encoder as the config asks (heads removed, weights masked), trains, bakes the masks."""
    from slm.classify import prune

    config, encoder = job.config, job.model.encoder
    heads: prune.PrunedHeads = {}
    before = prune.count_heads(encoder) if config.prune_heads else 0
    if config.prune_heads:
        heads = prune.choose_heads(encoder, config.prune_heads)
        prune.remove_heads(encoder, heads)
        job.model.pruned_heads.append(heads)
        job.report(f"pruned {sum(map(len, heads.values()))} of {before} attention heads", 0.01)
    masked = prune.mask_weights(encoder, config.prune_weights) if config.prune_weights else []
    result = train(job)
    sparsity = prune.bake_masks(masked) if masked else None
    after = prune.count_heads(job.model.encoder) if config.prune_heads else 0
    result.pruning = prune.summary(before, after, heads, sparsity)
    return result


RESULT_FIELDS = (
    "curves",
    "val_metrics",
    "timings",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "n_train",
    "n_val",
    "stopped",
    "pruning",
)


def _train_in_processes(
    model: TransformerClassifier,
    texts: Sequence[str],
    labels: Sequence[str],
    val_texts: Sequence[str] | None,
    val_labels: Sequence[str] | None,
    teacher_probs: np.ndarray | None,
    config: TrainConfig,
    report: Progress,
    on_epoch: EpochCallback | None,
    should_stop: StopCheck | None,
    started: float,
) -> TrainResult:
    """train_transformer across `config.processes` processes; the trained weights come back into `model`."""
    spec = {
        "texts": list(texts),
        "labels": [str(x) for x in labels],
        "val_texts": list(val_texts) if val_texts is not None else None,
        "val_labels": [str(x) for x in val_labels] if val_labels is not None else None,
        "teacher_probs": np.asarray(teacher_probs).tolist() if teacher_probs is not None else None,
        "config": config.to_dict(),
    }
    handlers = {
        "progress": lambda e: report(e["message"], e["fraction"]),
        "epoch": lambda e: on_epoch(e["row"]) if on_epoch else None,
    }
    with in_processes(
        "slm.classify.train:_process_main",
        config.processes,
        spec,
        model.save,
        device=config.device,
        handlers=handlers,
        should_stop=should_stop,
    ) as (out, result):
        trained = TransformerClassifier.load(out, device=None)
    model.replay_pruning(trained.pruned_heads[len(model.pruned_heads) :])
    model.load_state_dict(trained.state_dict())
    model.mode, model.max_length = trained.mode, trained.max_length
    model.eval()
    result["timings"] = {**result["timings"], "total_s": round(time.perf_counter() - started, 3)}
    return TrainResult(model=model, config=config, **{k: result[k] for k in RESULT_FIELDS})


def _process_main(workdir: str) -> None:
    """One of the processes `_train_in_processes` starts (via slm.training.launch)."""
    init, spec = process_inputs(workdir)
    model = TransformerClassifier.load(init, device=None)
    probs = spec["teacher_probs"]
    result = train_transformer(
        model,
        spec["texts"],
        spec["labels"],
        TrainConfig.from_dict(spec["config"]),
        val_texts=spec["val_texts"],
        val_labels=spec["val_labels"],
        progress=lambda m, f: emit({"kind": "progress", "message": m, "fraction": f}),
        on_epoch=lambda row: emit({"kind": "epoch", "row": row}),
        should_stop=stop_requested(workdir),
        teacher_probs=np.asarray(probs, dtype=np.float32) if probs is not None else None,
    )
    result.timings["processes"] = launched_processes()
    process_outputs(workdir, model.save, {k: getattr(result, k) for k in RESULT_FIELDS})


def _soft_targets(teacher_probs: np.ndarray | None, n: int, n_labels: int, config: TrainConfig) -> torch.Tensor | None:
    """The teacher's distribution softened by the temperature: softmax(log p / T)."""
    if teacher_probs is None:
        return None
    probs = torch.as_tensor(np.asarray(teacher_probs, dtype=np.float32))
    if probs.shape != (n, n_labels):
        raise ValueError(f"teacher probabilities have shape {tuple(probs.shape)}, expected {(n, n_labels)}")
    return torch.softmax(torch.log(probs.clamp_min(1e-8)) / config.distill_temperature, dim=-1)


def classification_loss(
    logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None, config: TrainConfig
) -> torch.Tensor:
    """Cross-entropy on the labels; with soft targets, mixed with T²·KL(teacher_T || student_T)."""
    ce = nn.functional.cross_entropy(logits, target)
    if soft is None:
        return ce
    t = config.distill_temperature
    kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, -1), soft, reduction="batchmean") * t * t
    return config.distill_alpha * kd + (1 - config.distill_alpha) * ce


def _fit_classifier(
    module: nn.Module,
    job: _Job,
    *,
    batches: Callable[[int], list[Any]],
    logits_of: Callable[[nn.Module, Any], torch.Tensor],
    val_logits: Callable[[nn.Module], torch.Tensor] | None,
) -> TrainResult:
    """Runs the loop for every classifier mode: the epoch rows, early stopping on the validation
    metric, progress messages; returns the result with the restored model's validation metrics."""
    config, model, runtime, y_val = job.config, job.model, job.runtime, job.y_val
    y_dev = job.y.to(runtime.device)
    soft_dev = job.soft.to(runtime.device) if job.soft is not None else None

    def loss(m: nn.Module, idx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits_of(m, idx).float()
        target = y_dev[idx]
        out = classification_loss(logits, target, soft_dev[idx] if soft_dev is not None else None, config)
        return out, {"accuracy": float((logits.argmax(-1) == target).sum())}

    def evaluate(m: nn.Module) -> dict[str, float]:
        assert val_logits is not None
        return _eval_logits(val_logits(m).float().cpu(), y_val, model.labels)

    def epoch_done(row: dict[str, Any]) -> None:
        if job.on_epoch:
            job.on_epoch(row)
        msg = f"epoch {row['epoch']}/{config.epochs} loss {row['train_loss']:.4f}"
        if "val_loss" in row:
            msg += f" val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.3f}"
        job.report(msg, 0.1 + 0.85 * min(1.0, row["epoch"] / config.epochs))

    has_val = val_logits is not None and len(y_val) > 0
    fr = fit(
        module,
        batches=batches,
        batches_per_epoch=-(-len(job.y) // config.batch_size),
        loss=loss,
        config=FitConfig(
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            grad_accum=config.grad_accum,
            max_grad_norm=config.max_grad_norm,
            warmup_ratio=config.warmup_ratio,
            schedule=config.schedule,
            seed=config.seed,
            time_budget_s=config.time_budget_s,
            monitor=config.early_stopping_metric if has_val else "",
            monitor_mode="min" if config.early_stopping_metric == "val_loss" else "max",
            patience=config.early_stopping_patience,
            min_delta=config.min_delta,
        ),
        runtime=runtime,
        evaluate=evaluate if has_val else None,
        on_epoch=epoch_done,
        should_stop=job.should_stop,
        clock_start=job.started,
    )
    module.eval()
    val_metrics: dict[str, Any] = {}
    if has_val:
        assert val_logits is not None
        with torch.no_grad():
            probs = torch.softmax(val_logits(module).float(), -1).cpu().numpy()
        val_metrics = compute_metrics(y_val.numpy(), probs, labels=model.labels)
    return TrainResult(
        model=model,
        curves=fr.curves,
        val_metrics=val_metrics,
        timings={"train_loop_s": round(fr.train_time_s, 3), "total_s": round(time.perf_counter() - job.started, 3)},
        best_epoch=fr.best_epoch,
        epochs_run=fr.epochs_run,
        stopped_early=fr.stopped == "early stopping",
        n_train=len(job.y),
        n_val=len(y_val),
        config=config,
        stopped=fr.stopped,
    )


def _head_batches(n: int, config: TrainConfig) -> Callable[[int], list[torch.Tensor]]:
    """The head loops' batches: a seeded permutation per epoch (cached and uncached loops share it)."""
    gen = torch.Generator().manual_seed(config.seed)
    return lambda _epoch: length_grouped_batches([0] * n, config.batch_size, gen, group=False)


def _train_frozen(job: _Job) -> TrainResult:
    model, config, runtime = job.model, job.config, job.runtime
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    job.report(f"encoding {len(job.texts) + len(job.val_texts)} texts once (frozen encoder)", 0.02)
    t0 = time.perf_counter()

    def features(texts: list[str]) -> torch.Tensor:  # each process encodes its share
        part = model.features(runtime.shard(texts), batch_size=config.feature_batch_size)
        return runtime.gather_rows(part, len(texts))

    feats = features(job.texts)
    val_feats = features(job.val_texts) if job.val_texts else None
    t_features = time.perf_counter() - t0
    result = _head_on_features(job, feats, val_feats)
    result.timings["features_s"] = round(t_features, 3)
    return result


def _head_on_features(job: _Job, feats: torch.Tensor, val_feats: torch.Tensor | None) -> TrainResult:
    feats = feats.to(job.runtime.device)
    val_dev = val_feats.to(job.runtime.device) if val_feats is not None else None
    return _fit_classifier(
        job.model.head,
        job,
        batches=_head_batches(len(job.y), job.config),
        logits_of=lambda head, idx: head(feats[idx]),
        val_logits=(lambda head: head(val_dev)) if val_dev is not None else None,
    )


def train_head_on_features(
    model: TransformerClassifier,
    feats: torch.Tensor,
    y: torch.Tensor,
    val_feats: torch.Tensor | None,
    y_val: torch.Tensor,
    config: TrainConfig,
    device: torch.device | None = None,
    report: Progress | None = None,
    on_epoch: EpochCallback | None = None,
    started: float | None = None,
) -> TrainResult:
    """The frozen-mode loop over cached features (public for the benchmark and the cache test)."""
    runtime = Runtime(str(device) if device is not None else config.device, config.precision)
    job = _Job(model, [], y, [], y_val, config, runtime, report or (lambda _m, _f: None), on_epoch)
    job.started = started if started is not None else job.started
    return _head_on_features(job, feats, val_feats)


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

    Same loop, batches, schedule and RNG stream as the cached path, so the heads agree up to float
    rounding — the test and bench/sentiment.py compare the two.
    """
    set_seed(config.seed)
    runtime = Runtime(config.device, config.precision)
    model.to(runtime.device)
    model.max_length = config.max_length
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    model.encoder.eval()
    y, y_val = _label_ids(model, labels), _label_ids(model, val_labels)
    job = _Job(model, model.clean(texts), y, model.clean(val_texts), y_val, config, runtime, lambda _m, _f: None)

    def encode(batch_docs: list[str]) -> torch.Tensor:
        with torch.no_grad():
            batch = {k: v.to(runtime.device) for k, v in model.tokenize(batch_docs, cleaned=True).items()}
            return model.encode(**batch).float()

    def val_logits(head: nn.Module) -> torch.Tensor:
        docs = job.val_texts
        return head(torch.cat([encode(docs[i : i + 64]) for i in range(0, len(docs), 64)]))

    return _fit_classifier(
        model.head,
        job,
        batches=_head_batches(len(y), config),
        logits_of=lambda head, idx: head(encode([job.texts[i] for i in idx.tolist()])),
        val_logits=val_logits if job.val_texts else None,
    )


def _lora_targets(encoder: nn.Module, config: TrainConfig) -> list[str]:
    if config.lora_target_modules:
        return list(config.lora_target_modules)
    names = {n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}
    for pair in (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"), ("c_attn",)):
        if all(p in names for p in pair):
            return list(pair)
    return sorted(names)


def _collate(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def _train_end_to_end(job: _Job) -> TrainResult:
    model, config, runtime = job.model, job.config, job.runtime
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
    device = runtime.device
    model.to(device)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    job.report(f"tokenizing {len(job.texts)} texts", 0.02)

    def tokenize(texts: list[str]) -> list[list[int]]:
        return model.tokenizer(model.clean(texts), truncation=True, max_length=model.usable_length)["input_ids"]

    enc = tokenize(job.texts)
    val_enc = tokenize(job.val_texts) if job.val_texts else []
    lengths = [len(e) for e in enc]
    gen = torch.Generator().manual_seed(config.seed)

    def val_logits(m: nn.Module) -> torch.Tensor:
        order = sorted(range(len(val_enc)), key=lambda i: len(val_enc[i]))
        mine = list(runtime.shard(order))
        part = torch.zeros(len(mine), len(model.labels))
        for s in range(0, len(mine), config.eval_batch_size):
            rows = mine[s : s + config.eval_batch_size]
            with runtime.autocast():
                part[s : s + len(rows)] = m(**_collate([val_enc[i] for i in rows], pad_id, device)).float().cpu()
        logits = torch.zeros(len(val_enc), len(model.labels))
        logits[order] = runtime.gather_rows(part, len(order)).float()
        return logits

    return _fit_classifier(
        model,
        job,
        batches=lambda _epoch: length_grouped_batches(lengths, config.batch_size, gen, group=config.length_bucketing),
        logits_of=lambda m, idx: m(**_collate([enc[i] for i in idx.tolist()], pad_id, device)),
        val_logits=val_logits if val_enc else None,
    )
