"""One training loop for every model slm trains, built on Hugging Face accelerate.

Callers: `slm.classify.train` (a classifier head on cached encoder features — the frozen mode —,
frozen/full/LoRA classifiers end to end, distillation and pruning) and `slm.lm_train` (causal-LM
fine-tuning of the chat model). A caller describes its task with three functions — the batches of an
epoch (lists of example indices), the loss of one batch, and an evaluation — and `fit` owns the rest:

* seeding (`set_seed`, one function for the whole project),
* the optimizer (`build_optimizer`: AdamW, no weight decay on biases and norm weights),
* the learning-rate schedule (warmup, then linear/cosine/constant down to `min_lr_ratio`; on the
  clock instead of the step count when a time budget drives it),
* mixed precision where the device supports it (`slm.device` decides; accelerate's autocast and, for
  fp16, its gradient scaler), gradient accumulation and clipping,
* evaluation after every epoch with early stopping and the best weights restored at the end,
* callbacks for progress/ETA (`on_step`, `on_epoch`) and cancellation (`should_stop`),
* data parallelism: when this process is one of N started by `launch` (torchrun; gloo on CPU, NCCL on
  GPUs), each global batch is split across the processes and accelerate's DDP averages the gradients,
  so N processes take the same steps as one (up to float rounding and dropout masks).

Why not the transformers Trainer: the frozen mode trains a head on cached feature tensors for 100
epochs in about the time of one encoder pass; per-step overhead matters there and the Trainer's
dataloader/callback machinery costs more than the step itself. accelerate gives the device,
precision and DDP handling without owning the loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slm.device import amp_dtype, pick_device, supports_dtype
from slm.procs import die_with_parent

StepCallback = Callable[[dict[str, Any]], None]
EpochCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def set_seed(seed: int) -> None:
    """Seeds Python's `random`, numpy and torch (every device) — the one seed function."""
    from accelerate.utils import set_seed as accelerate_set_seed

    accelerate_set_seed(int(seed) % (2**32))


def build_optimizer(
    module: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norm weights (< 2 dims) get no weight decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_factor(progress: float, warmup: float, schedule: str, min_ratio: float = 0.0) -> float:
    """The LR multiplier at `progress` (0..1 of the run): linear warmup, then the schedule's decay."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    p = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision dtype for `precision` on `device`, or None for fp32 (always on a CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        return amp_dtype(device)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return dtype if supports_dtype(device, dtype) else None


def launched_processes() -> int:
    """How many processes this one trains with (WORLD_SIZE from torchrun/`launch`; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ------------------------------------------------------------------------------------------ runtime
class Runtime:
    """This process's accelerate state: device, mixed precision, rank and world size, collectives.

    In a plain process it is one device and `world == 1` (accelerate's shared state is reset, so a
    worker can train a CPU model after a GPU one). In a process started by `launch` accelerate joins
    the process group (gloo on CPU, NCCL on GPUs) and `shard`/`gather_rows`/`sum` span the group.
    """

    def __init__(self, device: str = "auto", precision: str = "auto") -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import DistributedDataParallelKwargs

        wanted = pick_device(device)
        distributed = launched_processes() > 1
        if not distributed:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
            if wanted.type == "cuda" and wanted.index is not None:
                torch.cuda.set_device(wanted)
        dtype = autocast_dtype(wanted, precision)
        mixed = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")  # type: ignore[arg-type]
        self.accelerator = Accelerator(
            cpu=wanted.type == "cpu",
            mixed_precision=mixed,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if distributed else None,
        )
        self.device: torch.device = self.accelerator.device
        self.dtype = dtype
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> Sequence[Any]:
        """This process's contiguous part of `items` (all of them in one process)."""
        if self.world == 1:
            return items
        per = math.ceil(len(items) / self.world)
        return items[self.rank * per : (self.rank + 1) * per]

    def gather_rows(self, part: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenates every process's `shard` result (rows in the original order) on every process."""
        if self.world == 1:
            return part
        per = math.ceil(total / self.world)
        padded = torch.zeros((per, *part.shape[1:]), dtype=part.dtype, device=self.device)
        padded[: len(part)] = part.to(self.device)
        return self.accelerator.gather(padded).cpu()[:total]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sums numbers across processes (the same dict back in one process)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        t = self.accelerator.reduce(t, reduction="sum")
        return dict(zip(keys, t.cpu().tolist(), strict=True))

    def autocast(self) -> Any:
        return self.accelerator.autocast() if self.dtype is not None else nullcontext()


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class FitConfig:
    epochs: float
    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    seed: int = 0
    time_budget_s: float = 0.0  # 0 = none; stops after the optimizer step that crosses it
    schedule_on_time: bool = False  # with a time budget, the LR schedule follows the clock
    monitor: str = ""  # metric of `evaluate` that early stopping and best-weights restore watch
    monitor_mode: str = "min"  # min | max
    patience: int = 0  # epochs without improvement before stopping; 0 = never
    min_delta: float = 0.0
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.monitor_mode not in ("min", "max"):
            raise ValueError("monitor_mode must be min or max")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")


@dataclass
class FitResult:
    curves: dict[str, list[float]]  # per epoch: epoch, train_loss, train_<stat>, lr, evaluation metrics
    best_epoch: int
    best: dict[str, float]  # the evaluation of the best (restored) epoch; {} without evaluation
    epochs_run: int
    steps: int
    stopped: str  # "epochs" | "early stopping" | "time budget" | "stopped"
    train_time_s: float
    device: torch.device
    dtype: torch.dtype | None
    processes: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class _Monitor:
    def __init__(self, config: FitConfig) -> None:
        self.config = config
        self.best: float | None = None
        self.best_epoch = 0
        self.bad = 0

    def update(self, epoch: int, value: float) -> tuple[bool, bool]:
        """Returns (improved, patience exhausted)."""
        sign = 1.0 if self.config.monitor_mode == "min" else -1.0
        improved = self.best is None or sign * (value - self.best) < -self.config.min_delta
        if improved:
            self.best, self.best_epoch, self.bad = value, epoch, 0
        else:
            self.bad += 1
        return improved, bool(self.config.patience and self.bad >= self.config.patience)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _split_global_batches(batches: list[Sequence[int]], world: int) -> list[Sequence[int]]:
    """With several processes every global batch needs >= 1 example per process: a short last batch
    joins the one before it."""
    if world == 1 or len(batches) < 2 or len(batches[-1]) >= world:
        return batches
    a, b = batches[-2], batches[-1]
    joined = torch.cat([a, b]) if isinstance(a, torch.Tensor) else [*a, *b]  # type: ignore[list-item]
    return [*batches[:-2], joined]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator | None = None, *, group: bool = True
) -> list[torch.Tensor]:
    """Batches of example indices. With a generator the order is random; with `group` texts of similar
    length share a batch (less padding: ~2x faster on CPU) — sorted inside random chunks of 50
    batches, then the batches are shuffled. Without a generator: in order (evaluation)."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if not group:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    chunk = batch_size * 50
    batches: list[torch.Tensor] = []
    for c in range(0, n, chunk):
        part = sorted(order[c : c + chunk].tolist(), key=lambda i: lengths[i])
        batches.extend(
            torch.tensor(part[i : i + batch_size], dtype=torch.long) for i in range(0, len(part), batch_size)
        )
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def _stop_reason(runtime: Runtime, budget_hit: bool, should_stop: StopCheck | None) -> str:
    """ "time budget", "stopped" (cancelled) or "epochs" (go on) — the same answer on every process."""
    cancel = not budget_hit and runtime.is_main and should_stop is not None and should_stop()
    if runtime.world > 1:
        flags = runtime.sum({"budget": float(budget_hit), "cancel": float(cancel)})
        budget_hit, cancel = flags["budget"] > 0, flags["cancel"] > 0
    return "time budget" if budget_hit else "stopped" if cancel else "epochs"


@contextmanager
def _train_mode(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.train()
    try:
        yield
    finally:
        module.train(was)


def fit(
    model: nn.Module,
    *,
    batches: Callable[[int], list[Sequence[int]]],
    batches_per_epoch: int,
    loss: Callable[[nn.Module, Sequence[int]], tuple[torch.Tensor, dict[str, float]]],
    config: FitConfig,
    runtime: Runtime,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    weight: Callable[[Sequence[int]], float] = len,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    clock_start: float | None = None,
) -> FitResult:
    """Trains `model`'s trainable parameters in place and returns the curves.

    batches(epoch) -> the epoch's global batches (example indices; the same on every process);
    loss(model, indices) -> (mean loss over those examples, {stat: sum over them}) — every stat is
    reported per example as `train_<stat>` in the epoch row; evaluate(model) -> metrics after each
    epoch (they must be the same on every process: use `runtime.sum`/`gather_rows`). weight(indices) is
    what the loss is a mean over (examples by default; tokens for a language model), so that the
    processes' shares of a batch add up to the one-process loss. on_step gets
    {epoch, step, total_steps, loss, lr, elapsed_s, eta_s, fraction} after every optimizer step,
    on_epoch the epoch row plus {epochs, elapsed_s, eta_s}; both only on the main process.
    should_stop() is polled after every optimizer step (main process) and ends the run cleanly.
    """
    set_seed(config.seed)  # the same dropout masks and batch order for the same seed, run after run
    started = time.perf_counter()
    clock = clock_start if clock_start is not None else started
    acc = runtime.accelerator
    model.to(runtime.device)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
    trainable = [p for p in model.parameters() if p.requires_grad]
    wrapped = acc.prepare(model)
    # accelerate's optimizer wrapper is needed for fp16 gradient scaling; without a scaler it only adds
    # per-step work (it re-probes installed packages on every step), which a 1 ms head step notices.
    scaled = acc.scaler is not None
    if scaled:
        optimizer = acc.prepare(optimizer)
    steps_per_epoch = math.ceil(max(1, batches_per_epoch) / config.grad_accum)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    budget = config.time_budget_s
    monitor = _Monitor(config)
    curves: dict[str, list[float]] = {}
    best_state: dict[str, torch.Tensor] | None = None
    best_eval: dict[str, float] = {}
    step, epoch, lr_now = 0, 0, config.lr
    stopped = "epochs"

    def fraction() -> float:
        f = step / total_steps
        if budget and config.schedule_on_time:
            f = max(f, (time.perf_counter() - clock) / budget)
        return min(1.0, f)

    def eta(f: float) -> float | None:
        elapsed = time.perf_counter() - started
        return elapsed / f * (1 - f) if f > 0 else None

    try:
        done = False
        while not done:
            epoch += 1
            sums: dict[str, float] = {"n": 0.0, "loss": 0.0}
            step_loss, step_n = 0.0, 0
            with _train_mode(model):
                plan = _split_global_batches(batches(epoch), runtime.world)
                for b, idx in enumerate(plan):
                    shard = runtime.shard(idx)
                    boundary = (b + 1) % config.grad_accum == 0 or b == len(plan) - 1
                    with nullcontext() if boundary else acc.no_sync(wrapped):
                        with runtime.autocast():
                            mean_loss, stats = loss(wrapped, shard)
                        # DDP averages gradients over processes: weight each shard by its share of the
                        # global batch so the step equals the one-process step on the whole batch.
                        share = weight(shard) / max(1e-12, weight(idx)) if runtime.world > 1 else 1.0
                        scale = share * runtime.world / config.grad_accum
                        acc.backward(mean_loss * scale)
                    value = float(mean_loss.detach())
                    sums["n"] += len(shard)
                    sums["loss"] += value * len(shard)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    step_loss += value
                    step_n += 1
                    if not boundary:
                        continue
                    lr_now = config.lr * lr_factor(
                        fraction(), config.warmup_ratio, config.schedule, config.min_lr_ratio
                    )
                    for g in optimizer.param_groups:
                        g["lr"] = lr_now
                    if config.max_grad_norm:
                        if scaled:  # unscales first
                            acc.clip_grad_norm_(trainable, config.max_grad_norm)
                        else:
                            nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    f = fraction()
                    if on_step is not None and runtime.is_main:
                        on_step(
                            {
                                "epoch": epoch,
                                "step": step,
                                "total_steps": total_steps,
                                "loss": step_loss / max(1, step_n),
                                "lr": lr_now,
                                "elapsed_s": time.perf_counter() - started,
                                "eta_s": eta(f),
                                "fraction": f,
                            }
                        )
                    step_loss, step_n = 0.0, 0
                    if step >= total_steps:
                        done = True
                    else:
                        over = bool(budget) and time.perf_counter() - clock >= budget
                        stopped = _stop_reason(runtime, over, should_stop)
                        done = stopped != "epochs"
                    if done:
                        break
            sums = runtime.sum(sums)
            n = max(1.0, sums.pop("n"))
            row: dict[str, Any] = {"epoch": epoch, "train_loss": sums.pop("loss") / n}
            row.update({f"train_{k}": v / n for k, v in sums.items()})
            row["lr"] = lr_now
            metrics: dict[str, float] = {}
            if evaluate is not None:
                model.eval()
                with torch.no_grad():
                    metrics = evaluate(model)
            row.update(metrics)
            for k, v in row.items():
                curves.setdefault(k, []).append(v)
            if config.monitor and config.monitor in metrics:
                improved, exhausted = monitor.update(epoch, float(metrics[config.monitor]))
                if improved:
                    best_eval = dict(metrics)
                    if config.keep_best:
                        best_state = _state(model)
                if exhausted and not done:
                    done, stopped = True, "early stopping"
            else:
                monitor.best_epoch, best_eval = epoch, dict(metrics)
            if on_epoch is not None and runtime.is_main:
                f = fraction()
                on_epoch(
                    {
                        **row,
                        "step": step,
                        "epochs": config.epochs,
                        "elapsed_s": round(time.perf_counter() - started, 2),
                        "eta_s": round(eta(f) or 0.0, 1),
                    }
                )
    finally:
        acc.unwrap_model(wrapped, keep_fp32_wrapper=False)  # drops accelerate's forward patch
        acc._models.clear()  # free_memory() without its gc.collect() (a second per run)
        acc._optimizers.clear()
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(
        curves=curves,
        best_epoch=monitor.best_epoch,
        best=best_eval,
        epochs_run=epoch,
        steps=step,
        stopped=stopped,
        train_time_s=time.perf_counter() - started,
        device=runtime.device,
        dtype=runtime.dtype,
        processes=runtime.world,
    )


# ------------------------------------------------------------------------------------------ processes
EVENT_PREFIX = "@slm-training "
Event = dict[str, Any]


def resolve_processes(value: int | None) -> int:
    """The number of training processes a config asks for (0/None = 1)."""
    n = int(value or 1)
    if n < 1:
        raise ValueError("processes must be >= 1")
    return n


def emit(event: Event) -> None:
    """From the main process of a launched run: hands an event (progress, epoch row, log line) to the
    launching process, which passes it to its callbacks."""
    import json

    if int(os.environ.get("RANK", "0")) == 0:
        print(EVENT_PREFIX + json.dumps(event, default=float), flush=True)


def stop_requested(workdir: str | os.PathLike[str]) -> Callable[[], bool]:
    """should_stop for a launched run: true once the launcher asked it to stop."""
    flag = os.path.join(os.fspath(workdir), "STOP")
    return lambda: os.path.exists(flag)


def launch(
    entry: str,
    workdir: str | os.PathLike[str],
    processes: int,
    *,
    device: str = "auto",
    on_event: Callable[[Event], None] | None = None,
    should_stop: StopCheck | None = None,
    timeout_s: float | None = None,
) -> None:
    """Runs `entry` ("module:function", called as function(workdir)) in `processes` processes started
    by torchrun on this machine, and waits for them. Each process trains with its share of every batch
    (see `fit`): gloo on CPU, NCCL with one GPU per process. Events the main process `emit`s reach
    `on_event` here, in the caller's thread; when `should_stop()` turns true the run is asked to stop
    (it then finishes cleanly). A failure raises RuntimeError with the end of the processes' log."""
    import json
    import queue
    import subprocess
    import sys
    import threading
    from pathlib import Path

    work = Path(workdir)
    target = pick_device(device)
    if target.type == "cuda" and processes > torch.cuda.device_count():
        raise ValueError(
            f"{processes} training processes need {processes} GPUs; this machine has {torch.cuda.device_count()}"
        )
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"multi-process training runs on CPUs or CUDA GPUs, not {target.type}")
    env = dict(os.environ)
    env["SLM_DEVICE"] = target.type
    env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // processes))  # this process's threads, shared
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "slm.training",
        entry,
        str(work),
    ]
    log_path = work / "processes.log"
    events: queue.Queue[Event | None] = queue.Queue()
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True, preexec_fn=die_with_parent
        )

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                if line.startswith(EVENT_PREFIX):
                    events.put(json.loads(line[len(EVENT_PREFIX) :]))
            events.put(None)

        reader = threading.Thread(target=read, name="training-events", daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            while True:
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    event = {}
                if event is None:
                    break
                if event and on_event is not None:
                    on_event(event)
                if should_stop is not None and not (work / "STOP").exists() and should_stop():
                    (work / "STOP").touch()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"training processes did not finish within {timeout_s:.0f}s")
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                _kill_group(proc.pid)
                proc.wait()
            reader.join(timeout=5)
    if rc != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"training in {processes} processes failed (exit {rc}):\n{tail}")


@contextmanager
def in_processes(
    entry: str,
    processes: int,
    spec: dict[str, Any],
    write_init: Callable[[Any], None],
    *,
    device: str = "auto",
    handlers: dict[str, Callable[[Event], None]] | None = None,
    should_stop: StopCheck | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A training run in `processes` processes, from the launching side: writes the model
    (`write_init(dir)`) and the JSON `spec` to a temporary directory, runs `entry` there with `launch`
    (events go to `handlers[event["kind"]]`), then yields (directory of the trained model, result).
    The worker side reads its inputs with `process_inputs` and writes with `process_outputs`."""
    import json
    import tempfile
    from pathlib import Path

    handlers = handlers or {}

    def on_event(event: Event) -> None:
        handler = handlers.get(str(event.get("kind")))
        if handler is not None:
            handler(event)

    with tempfile.TemporaryDirectory(prefix="slm-train-") as tmp:
        work = Path(tmp)
        write_init(work / "init")
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        launch(entry, work, processes, device=device, on_event=on_event, should_stop=should_stop)
        yield work / "out", json.loads((work / "result.json").read_text(encoding="utf-8"))


def process_inputs(workdir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """In a launched process: (directory of the initial model, the spec)."""
    import json
    from pathlib import Path

    work = Path(workdir)
    return work / "init", json.loads((work / "spec.json").read_text(encoding="utf-8"))


def process_outputs(workdir: str | os.PathLike[str], write_out: Callable[[Any], None], result: dict[str, Any]) -> None:
    """In a launched process: the main one saves the trained model and the result for the launcher."""
    import json
    from pathlib import Path

    if int(os.environ.get("RANK", "0")) != 0:
        return
    work = Path(workdir)
    write_out(work / "out")
    text = json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    (work / "result.json").write_text(text, encoding="utf-8")


def _kill_group(pid: int) -> None:
    import signal

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _main(argv: list[str]) -> None:
    """torchrun's entry in each process: `python -m slm.training module:function workdir`."""
    import importlib

    module, _, name = argv[0].partition(":")
    try:
        getattr(importlib.import_module(module), name)(argv[1])
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
