"""Causal-LM training for GPT-2-family chat models (transformers models) on the one loop in
`slm.training`.

`train_causal_lm(model, tokenizer, train_texts, eval_texts, config)` tokenizes each text (+ EOS),
truncates to `max_length`, pads per batch (labels -100 on padding), and trains with AdamW, gradient
accumulation, linear warmup then cosine/linear decay, gradient clipping and — only on a GPU, through
`slm.device.amp_dtype` — bf16/fp16 autocast. It evaluates token-weighted loss and perplexity on the
held-out texts after every epoch, reports progress (epoch/step/loss/ETA) through a callback, keeps a
text log, and can stop at a wall-clock budget (`max_time_s`: the LR schedule then runs on time, so the
decay still completes) or when `should_stop()` says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from slm import training
from slm.training import Runtime, set_seed

__all__ = ["LMTrainConfig", "TrainResult", "evaluate_lm", "new_gpt2_model", "set_seed", "train_causal_lm"]

Progress = Callable[[dict[str, Any]], None]


@dataclass
class LMTrainConfig:
    epochs: float = 3.0
    lr: float = 5e-4
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    eval_batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 on a GPU, fp32 elsewhere) | fp32
    max_time_s: float | None = None  # wall-clock budget; None = run all epochs
    keep_best: bool = True  # restore the weights of the epoch with the lowest eval loss
    num_threads: int | None = None  # torch CPU threads (None = leave as is)
    log_every: int = 10  # optimizer steps between progress reports
    processes: int = 1  # data-parallel processes (torchrun + accelerate: gloo on CPU, NCCL on GPUs)

    def __post_init__(self) -> None:
        if self.epochs <= 0:
            raise ValueError("epochs must be > 0")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.batch_size < 1 or self.grad_accum < 1 or self.eval_batch_size < 1:
            raise ValueError("batch_size, eval_batch_size and grad_accum must be >= 1")
        if not 2 <= self.max_length <= 4096:
            raise ValueError("max_length must be in 2..4096")
        if self.schedule not in {"cosine", "linear", "constant"}:
            raise ValueError(f"unknown schedule {self.schedule!r} (cosine, linear, constant)")
        if self.precision not in {"auto", "fp32"}:
            raise ValueError(f"unknown precision {self.precision!r} (auto, fp32)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if int(self.processes) < 1:
            raise ValueError("processes must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMTrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def new_gpt2_model(
    tokenizer: Any,
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_positions: int = 256,
    dropout: float = 0.1,
    seed: int = 0,
) -> Any:
    """A freshly initialised GPT2LMHeadModel sized for `tokenizer` (EOS doubles as BOS and pad)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    set_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = eos
    return model


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int, *, add_eos: bool = True) -> list[list[int]]:
    """Token ids per text (+ EOS), truncated to max_length; empty texts are dropped."""
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    for ids in enc:
        ids = list(ids) + ([eos] if add_eos and eos is not None else [])
        ids = ids[:max_length]
        if len(ids) >= 2:
            out.append(ids)
    return out


def collate(examples: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on padding (so a real EOS equal to pad still counts)."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        t = torch.tensor(e, dtype=torch.long)
        ids[i, : len(e)] = t
        mask[i, : len(e)] = 1
        labels[i, : len(e)] = t
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _batches(examples: Sequence[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Evaluation batches of similar length, in order."""
    plan = training.length_grouped_batches([len(e) for e in examples], batch_size)
    return [[examples[i] for i in idx.tolist()] for idx in plan]


@torch.no_grad()
def evaluate_lm(
    model: Any,
    examples: Sequence[list[int]],
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Token-weighted mean next-token loss and perplexity over `examples` (lists of ids); with a
    multi-process `runtime` each process scores its share and the sums are combined."""
    if not examples:
        return {}
    device = runtime.device if runtime is not None else device or next(model.parameters()).device
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    mine = list(runtime.shard(examples)) if runtime is not None else list(examples)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    for batch in _batches(mine, batch_size):
        b = {k: v.to(device) for k, v in collate(batch, pad).items()}
        with runtime.autocast() if runtime is not None else autocast:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = b["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total_loss += float(loss)
        total_tokens += int((shift_labels != -100).sum())
    if runtime is not None:
        sums = runtime.sum({"loss": total_loss, "tokens": float(total_tokens)})
        total_loss, total_tokens = sums["loss"], int(sums["tokens"])
    model.train(was_training)
    mean = total_loss / max(1, total_tokens)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "eval_tokens": float(total_tokens)}


@dataclass
class _Run:
    """The arguments of one train_causal_lm call."""

    model: Any
    tokenizer: Any
    train_texts: Sequence[str]
    eval_texts: Sequence[str]
    config: LMTrainConfig
    progress: Progress | None
    log: Callable[[str], None] | None
    should_stop: Callable[[], bool] | None


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    config: LMTrainConfig,
    *,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Trains `model` in place on `train_texts` (already formatted, EOS is appended here) and returns
    metrics: train_loss, eval_loss, perplexity (held-out), train_time_s, steps, tokens, device, dtype.
    With `config.processes` > 1 the run is split over that many processes (the weights come back here)."""
    if config.processes > 1 and training.launched_processes() == 1:
        return _train_in_processes(_Run(model, tokenizer, train_texts, eval_texts, config, progress, log, should_stop))
    prev_threads = torch.get_num_threads()
    if config.num_threads and training.launched_processes() == 1:  # launched processes share the threads out
        torch.set_num_threads(config.num_threads)
    try:
        return _train(_Run(model, tokenizer, train_texts, eval_texts, config, progress, log, should_stop))
    finally:
        torch.set_num_threads(prev_threads)


def _train_in_processes(run: _Run) -> TrainResult:
    from transformers import AutoModelForCausalLM

    model, tokenizer, train_texts, eval_texts = run.model, run.tokenizer, run.train_texts, run.eval_texts
    config, progress, log, should_stop = run.config, run.progress, run.log, run.should_stop
    lines: list[str] = []

    def on_log(event: dict[str, Any]) -> None:
        lines.append(event["line"])
        if log is not None:
            log(event["line"])

    handlers = {"progress": lambda e: progress(e["info"]) if progress else None, "log": on_log}
    spec = {"train_texts": list(train_texts), "eval_texts": list(eval_texts), "config": config.to_dict()}
    with training.in_processes(
        "slm.lm_train:_process_main",
        config.processes,
        spec,
        lambda directory: save_model(model, tokenizer, directory),
        device=config.device,
        handlers=handlers,
        should_stop=should_stop,
    ) as (out, result):
        trained = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    model.load_state_dict(trained.state_dict())
    model.eval()
    return TrainResult(metrics=result["metrics"], history=result["history"], log=lines or result["log"])


def _process_main(workdir: str) -> None:
    """One of the processes `_train_in_processes` starts (via slm.training.launch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    init, spec = training.process_inputs(workdir)
    model = AutoModelForCausalLM.from_pretrained(init, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    tokenizer = AutoTokenizer.from_pretrained(init, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    result = train_causal_lm(
        model,
        tokenizer,
        spec["train_texts"],
        spec["eval_texts"],
        LMTrainConfig.from_dict(spec["config"]),
        progress=lambda info: training.emit({"kind": "progress", "info": info}),
        log=lambda line: training.emit({"kind": "log", "line": line}),
        should_stop=training.stop_requested(workdir),
    )
    out = {"metrics": result.metrics, "history": result.history, "log": result.log}
    training.process_outputs(workdir, lambda directory: save_model(model, tokenizer, directory), out)


def _train(run: _Run) -> TrainResult:
    model, tokenizer, train_texts, eval_texts = run.model, run.tokenizer, run.train_texts, run.eval_texts
    config, progress, log, should_stop = run.config, run.progress, run.log, run.should_stop
    result = TrainResult(metrics={})

    def say(line: str) -> None:
        result.log.append(line)
        if log is not None:
            log(line)

    set_seed(config.seed)
    runtime = Runtime(config.device, config.precision)
    device, dtype = runtime.device, runtime.dtype
    model.to(device)
    train_ex = encode_texts(tokenizer, train_texts, config.max_length)
    eval_ex = encode_texts(tokenizer, eval_texts, config.max_length)
    if not train_ex:
        raise ValueError("no training examples (all texts were empty)")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.eos_token_id
    n_batches = math.ceil(len(train_ex) / config.batch_size)
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"train {len(train_ex)} texts / eval {len(eval_ex)}; {total_steps} steps "
        f"({steps_per_epoch}/epoch, batch {config.batch_size}x{config.grad_accum}); "
        f"{n_params / 1e6:.2f}M params; device {device} {dtype or 'fp32'}"
        + (f"; {runtime.world} processes" if runtime.world > 1 else "")
    )
    gen = torch.Generator().manual_seed(config.seed)
    lengths = [len(e) for e in train_ex]
    tokens = {"seen": 0.0}
    running: list[float] = []
    last = {"train_loss": float("nan")}

    def loss(m: Any, idx: Any) -> tuple[torch.Tensor, dict[str, float]]:
        b = {k: v.to(device) for k, v in collate([train_ex[i] for i in idx.tolist()], pad).items()}
        tokens["seen"] += float(b["attention_mask"].sum())
        return m(**b).loss, {}

    def on_step(info: dict[str, Any]) -> None:
        running.append(info["loss"])
        if info["step"] % config.log_every and info["step"] != info["total_steps"]:
            return
        last["train_loss"] = sum(running) / len(running)
        running.clear()
        info = {**info, "loss": last["train_loss"]}
        result.history.append(info)
        say(
            f"epoch {info['epoch']} step {info['step']}/{total_steps} loss {info['loss']:.4f} eta {info['eta_s'] or 0:.0f}s"
        )
        if progress is not None:
            progress(info)

    def on_epoch(row: dict[str, Any]) -> None:
        if running:
            last["train_loss"] = sum(running) / len(running)
        if "eval_loss" in row:
            ev = {k: row[k] for k in ("eval_loss", "perplexity", "eval_tokens")}
            say(f"epoch {row['epoch']} eval_loss {ev['eval_loss']:.4f} perplexity {ev['perplexity']:.2f}")
            result.history.append({"epoch": row["epoch"], "step": row["step"], **ev})

    def evaluate(m: Any) -> dict[str, float]:
        return evaluate_lm(m, eval_ex, batch_size=config.eval_batch_size, runtime=runtime)

    fr = training.fit(
        model,
        batches=lambda _epoch: training.length_grouped_batches(lengths, config.batch_size, gen),
        batches_per_epoch=n_batches,
        loss=loss,
        config=training.FitConfig(
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(0.9, 0.95),
            grad_accum=config.grad_accum,
            max_grad_norm=config.max_grad_norm,
            warmup_ratio=config.warmup_ratio,
            schedule=config.schedule,
            min_lr_ratio=config.min_lr_ratio,
            seed=config.seed,
            time_budget_s=config.max_time_s or 0.0,
            schedule_on_time=True,
            monitor="eval_loss" if eval_ex else "",
            keep_best=config.keep_best,
        ),
        runtime=runtime,
        evaluate=evaluate if eval_ex else None,
        weight=lambda idx: sum(lengths[i] - 1 for i in idx),  # the loss is a mean over predicted tokens
        on_step=on_step,
        on_epoch=on_epoch,
        should_stop=should_stop,
    )
    stopped = fr.stopped
    metrics: dict[str, Any] = {
        "train_loss": last["train_loss"],
        "train_time_s": round(fr.train_time_s, 2),
        "steps": fr.steps,
        "epochs_run": fr.epochs_run,
        "train_tokens": int(runtime.sum({"t": tokens["seen"]})["t"]),
        "train_texts": len(train_ex),
        "eval_texts": len(eval_ex),
        "params": n_params,
        "device": str(device),
        "dtype": str(dtype or torch.float32).removeprefix("torch."),
        "stopped": stopped,
    }
    if runtime.world > 1:
        metrics["processes"] = runtime.world
    if eval_ex:
        ev = fr.best if config.keep_best else {k: v[-1] for k, v in fr.curves.items()}
        metrics.update(eval_loss=ev["eval_loss"], perplexity=ev["perplexity"])
    model.eval()
    say(
        f"done in {fr.train_time_s:.1f}s ({stopped}): train_loss {last['train_loss']:.4f}"
        + (f", eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['perplexity']:.2f}" if eval_ex else "")
    )
    result.metrics = metrics
    return result


def save_model(model: Any, tokenizer: Any, directory: str | Path) -> None:
    """`save_pretrained` (safetensors) for model, generation config and tokenizer, on CPU."""
    directory = Path(directory)
    model.to("cpu")
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
