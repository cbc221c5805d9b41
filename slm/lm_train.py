"""Causal-LM training for GPT-2-family chat models (nanoGPT-sized loop, transformers models).

`train_causal_lm(model, tokenizer, train_texts, eval_texts, config)` tokenizes each text (+ EOS),
truncates to `max_length`, pads per batch (labels -100 on padding), and trains with AdamW, gradient
accumulation, linear warmup then cosine/linear decay, gradient clipping and — only on a GPU, through
`slm.device.amp_dtype` — bf16/fp16 autocast. It evaluates token-weighted loss and perplexity on the
held-out texts after every epoch, reports progress (epoch/step/loss/ETA) through a callback, keeps a
text log, and can stop at a wall-clock budget (`max_time_s`: the LR schedule then runs on time, so the
decay still completes).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from slm.device import amp_dtype, pick_device

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


def set_seed(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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


def _batches(examples: Sequence[list[int]], batch_size: int, rng: random.Random | None) -> list[list[list[int]]]:
    """Batches of similar length (less padding): shuffle, sort within chunks of 50 batches, shuffle batches."""
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[list[int]]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(examples[i]))
        batches += [[examples[i] for i in part[j : j + batch_size]] for j in range(0, len(part), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        from contextlib import nullcontext

        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_lm(
    model: Any,
    examples: Sequence[list[int]],
    *,
    batch_size: int = 32,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Token-weighted mean next-token loss and perplexity over `examples` (lists of ids)."""
    if not examples:
        return {}
    device = device or next(model.parameters()).device
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for batch in _batches(examples, batch_size, None):
        b = {k: v.to(device) for k, v in collate(batch, pad).items()}
        with _autocast(device, dtype):
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
    model.train(was_training)
    mean = total_loss / max(1, total_tokens)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "eval_tokens": float(total_tokens)}


def _lr_factor(progress: float, warmup: float, schedule: str, min_ratio: float) -> float:
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    p = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


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
    metrics: train_loss, eval_loss, perplexity (held-out), train_time_s, steps, tokens, device, dtype."""
    prev_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(model, tokenizer, train_texts, eval_texts, config, progress, log, should_stop)
    finally:
        torch.set_num_threads(prev_threads)


def _train(
    model: Any,
    tokenizer: Any,
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    config: LMTrainConfig,
    progress: Progress | None,
    log: Callable[[str], None] | None,
    should_stop: Callable[[], bool] | None,
) -> TrainResult:
    result = TrainResult(metrics={})

    def say(line: str) -> None:
        result.log.append(line)
        if log is not None:
            log(line)

    set_seed(config.seed)
    device = pick_device(config.device)
    dtype = amp_dtype(device) if config.precision == "auto" else None
    model.to(device)
    train_ex = encode_texts(tokenizer, train_texts, config.max_length)
    eval_ex = encode_texts(tokenizer, eval_texts, config.max_length)
    if not train_ex:
        raise ValueError("no training examples (all texts were empty)")
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.eos_token_id
    steps_per_epoch = math.ceil(math.ceil(len(train_ex) / config.batch_size) / config.grad_accum)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = config.warmup_ratio
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"train {len(train_ex)} texts / eval {len(eval_ex)}; {total_steps} steps "
        f"({steps_per_epoch}/epoch, batch {config.batch_size}x{config.grad_accum}); "
        f"{n_params / 1e6:.2f}M params; device {device} {dtype or 'fp32'}"
    )

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    rng = random.Random(config.seed)
    started = time.monotonic()
    step, tokens_seen, running, running_n = 0, 0, 0.0, 0
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    last_train_loss = float("nan")
    stopped_reason = "epochs"

    def frac_done() -> float:
        p = step / total_steps
        if config.max_time_s:
            p = max(p, (time.monotonic() - started) / config.max_time_s)
        return min(1.0, p)

    model.train()
    epoch = 0
    done = False
    while not done:
        epoch += 1
        batches = _batches(train_ex, config.batch_size, rng)
        micro = 0
        for i, batch in enumerate(batches):
            b = {k: v.to(device) for k, v in collate(batch, pad).items()}
            with _autocast(device, dtype):
                loss = model(**b).loss
            tokens_seen += int(b["attention_mask"].sum())
            running += float(loss.detach())
            running_n += 1
            loss = loss / config.grad_accum
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            micro += 1
            if micro % config.grad_accum != 0 and i != len(batches) - 1:
                continue
            factor = _lr_factor(frac_done(), warmup, config.schedule, config.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = config.lr * factor
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % config.log_every == 0 or step == total_steps:
                last_train_loss = running / max(1, running_n)
                running, running_n = 0.0, 0
                elapsed = time.monotonic() - started
                f = frac_done()
                info = {
                    "epoch": epoch,
                    "step": step,
                    "total_steps": total_steps,
                    "loss": last_train_loss,
                    "lr": config.lr * factor,
                    "elapsed_s": elapsed,
                    "eta_s": elapsed / f * (1 - f) if f > 0 else None,
                    "fraction": f,
                }
                result.history.append(info)
                say(f"epoch {epoch} step {step}/{total_steps} loss {last_train_loss:.4f} eta {info['eta_s'] or 0:.0f}s")
                if progress is not None:
                    progress(info)
            if step >= total_steps:
                done = True
            elif config.max_time_s and time.monotonic() - started >= config.max_time_s:
                done, stopped_reason = True, "time budget"
            elif should_stop is not None and should_stop():
                done, stopped_reason = True, "stopped"
            if done:
                break
        if running_n:
            last_train_loss = running / running_n
        if eval_ex:
            ev = evaluate_lm(model, eval_ex, batch_size=config.eval_batch_size, device=device, dtype=dtype)
            say(f"epoch {epoch} eval_loss {ev['eval_loss']:.4f} perplexity {ev['perplexity']:.2f}")
            result.history.append({"epoch": epoch, "step": step, **ev})
            if config.keep_best and (best is None or ev["eval_loss"] < best[0]):
                best = (ev["eval_loss"], {k: v.detach().clone() for k, v in model.state_dict().items()})
    train_time = time.monotonic() - started
    metrics: dict[str, Any] = {
        "train_loss": last_train_loss,
        "train_time_s": round(train_time, 2),
        "steps": step,
        "epochs_run": epoch,
        "train_tokens": tokens_seen,
        "train_texts": len(train_ex),
        "eval_texts": len(eval_ex),
        "params": n_params,
        "device": str(device),
        "dtype": str(dtype or torch.float32).removeprefix("torch."),
        "stopped": stopped_reason,
    }
    if best is not None:
        model.load_state_dict(best[1])
        metrics["eval_loss"] = best[0]
        metrics["perplexity"] = math.exp(min(best[0], 50.0))
    elif eval_ex:
        ev = evaluate_lm(model, eval_ex, batch_size=config.eval_batch_size, device=device, dtype=dtype)
        metrics.update(eval_loss=ev["eval_loss"], perplexity=ev["perplexity"])
    model.eval()
    say(
        f"done in {train_time:.1f}s ({stopped_reason}): train_loss {last_train_loss:.4f}"
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
