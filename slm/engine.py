"""The chat serving engine: one owner of the model, one forward pass per step for every stream.

`EngineCore` runs the loop. Each step it takes commands (submit / cancel / shutdown), admits waiting
requests FIFO into free slots (up to `max_batch`), and runs ONE forward pass over a packed input
(`slm.batching`): the next token of every decoding stream, then chunks of the prompts still being
prefilled, in arrival order, up to `step_tokens` tokens. A long prompt is therefore prefilled over
several steps while the running streams keep getting a token per step, and prompts that arrive
together share steps. Attention keeps requests apart over a per-request slot KV cache. Each row is
sampled with its own `LogitsSampler`. Requests join and leave between steps; a cancel is seen before
the next step (mid-prefill too), so a stop costs at most one token. Between steps it also checks the
registry's live pointer and swaps to a newly promoted version once the running batch has drained (new
requests wait for the swap). Model handling (load, precision, the packed attention switch) is in
`load_model` / `slm.precision` / `slm.batching`, separate from scheduling.

`Engine` is the facade a server process uses: it keeps the bounded FIFO queue accounting (positions,
`EngineBusy`, one live stream per user key), tokenizes prompts, and runs the core either in its own
process (mode "process", a multiprocessing *spawn* child fed through queues; torch runs in that
child's main thread at full speed) or in a dedicated thread (mode "thread"; it sets
`torch.set_num_threads` for itself). Events come back through a callback per request:

    ("started", {"model": ref, "prompt_tokens": n})
    ("token", {"text": delta})
    ("end", {"reason": eos|length|stop|cancelled, "text": ..., "usage": {...}, "timing": {...}, "model": ref})
    ("error", {"code": ..., "message": ...})

Measured with bench/chat.py (GPT-2 124M shape, int8, 1 torch thread, 32 new tokens, shared 2-core CPU at
load ~10, so ratios within one run are what count): vs the previous engine (left-padded DynamicCache,
`quantize_dynamic`) 0.89x / 1.04x / 1.11x aggregate tok/s at 1 / 4 / 8 streams (oneDNN's int8 kernel is
slower than fbgemm's for a single row, faster from 4 rows up); TTFT p95 of 4 simultaneous users 220 ms
vs 450 ms; running streams lose 32% of their tok/s while a 512-token prompt is prefilled (96% before);
CTranslate2's int8 generator on the same weights is still ~1.7x faster per token. The process placement
isolates torch from the event loop's GIL and from crashes; `thread` mode stays for comparison
(CHAT_ENGINE_MODE). With 2 torch threads on the loaded box int8 decode collapsed (2 tok/s vs 30 with 1),
hence CHAT_ENGINE_THREADS=1 by default.

No Django in here.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from slm.batching import Chunk, SlotCache, StepPlan, enable_packed
from slm.generation import (
    ChatPrompt,
    GenerationParams,
    IncrementalDecoder,
    LogitsSampler,
    encode_prompt,
    format_chat_prompt,
    make_detokenizer,
)
from slm.precision import apply_precision, conv1d_to_linear  # noqa: F401 (conv1d_to_linear re-exported)

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]
IDLE_PREFILL_FACTOR = 8  # with no stream decoding, a step may prefill this many budgets' worth of prompt


class EngineError(RuntimeError):
    code = "engine_error"


class EngineBusy(EngineError):
    code = "busy"


class AlreadyStreaming(EngineError):
    code = "already_streaming"


class ModelUnavailable(EngineError):
    code = "model_unavailable"


@dataclass
class EngineConfig:
    model: str = "registry:chat"  # registry:<name>[@version] | local dir | hub id
    registry_root: str | None = None
    precision: str = "int8"  # fp32 | int8 | bf16 | fp16
    max_batch: int = 8
    queue_size: int = 32
    device: str = "auto"
    num_threads: int | None = None  # torch threads in the engine (None: leave as is)
    swap_check_s: float = 1.0  # how often the live pointer is re-read
    step_tokens: int = 32  # tokens per forward pass: one per decoding stream + prompt chunks (prefill)
    coalesce_s: float = 0.005  # from idle, requests arriving within this of each other share the first step


@dataclass
class GenRequest:
    id: str
    prompt_ids: list[int]
    params: GenerationParams
    prompt_text: str = ""
    model_ref: str = ""  # the tokenizer the ids came from; re-encoded if the engine runs another
    submitted: float = field(default_factory=time.perf_counter)


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedModel:
    ref: str
    model: Any
    tokenizer: Any
    n_positions: int
    eos_ids: set[int]
    device: torch.device
    min_step_s: float = 0.0  # version metadata serving.min_step_s: paces streaming (demos, browser tests)


def _registry(cfg: EngineConfig) -> Any:
    from slm.registry import Registry

    return Registry(cfg.registry_root) if cfg.registry_root else None


def resolve_ref(cfg: EngineConfig) -> tuple[str, Any]:
    """(display ref, ResolvedSource) for the configured source at this moment (live pointer read)."""
    from slm.loader import ModelNotAvailable, resolve_source

    try:
        src = resolve_source(cfg.model, registry=_registry(cfg))
    except ModelNotAvailable as exc:
        raise ModelUnavailable(str(exc)) from exc
    return src.ref, src


def load_tokenizer(cfg: EngineConfig) -> tuple[str, Any, int]:
    from transformers import AutoConfig, AutoTokenizer

    ref, src = resolve_ref(cfg)
    target = str(src.path) if src.path is not None else cfg.model
    try:
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
        conf = AutoConfig.from_pretrained(target, local_files_only=True)
    except OSError as exc:
        raise ModelUnavailable(f"could not load {ref}: {exc}") from exc
    return ref, tok, _n_positions(conf)


def _n_positions(conf: Any) -> int:
    return int(getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None) or 1024)


def load_model(cfg: EngineConfig) -> LoadedModel:
    """Loads the configured source (registry ref, directory or hub id from the local cache) for serving:
    eval mode, on the picked device, at the configured precision, with packed attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm.device import pick_device

    ref, src = resolve_ref(cfg)
    target = str(src.path) if src.path is not None else cfg.model
    device = pick_device(cfg.device)
    try:
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)
    except OSError as exc:
        raise ModelUnavailable(f"could not load {ref}: {exc}") from exc
    model.eval()
    model = enable_packed(apply_precision(model.to(device), cfg.precision, device))
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = tok.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    serving = (src.metadata or {}).get("serving") or {}
    pace = float(serving.get("min_step_s") or 0.0)
    return LoadedModel(ref, model, tok, _n_positions(model.config), eos_ids, device, pace)


# ------------------------------------------------------------------------------------------- core
@dataclass
class _Row:
    req: GenRequest
    ids: list[int]  # the prompt
    slot: int
    sampler: LogitsSampler
    decoder: IncrementalDecoder
    seen: torch.Tensor  # prompt + generated ids (repetition penalty)
    cached: int = 0  # tokens of this request in the KV cache
    last: int = -1  # the token to feed next (once prefilled)
    generated: int = 0
    t_admit: float = 0.0
    t_first: float = 0.0
    t_last: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)

    @property
    def prefilling(self) -> bool:
        return self.cached < len(self.ids)


class EngineCore:
    """The decode loop. Not thread-safe: one thread drives `run()` (or `step()` in tests).

    One `step()` = one forward pass over a packed input: a token of every decoding row first, then
    prompt chunks of rows still prefilling, in admission order, up to `cfg.step_tokens` tokens in all (at
    least a quarter of the budget always goes to prefill, so a full batch cannot starve it). With no row
    decoding, nothing is stalled by a long step: prompts get `IDLE_PREFILL_FACTOR` budgets at once."""

    def __init__(self, cfg: EngineConfig, emit: Callable[[str | None, str, dict[str, Any]], None]) -> None:
        self.cfg = cfg
        self.emit = emit
        self.loaded: LoadedModel | None = None
        self.waiting: deque[GenRequest] = deque()
        self.rows: list[_Row] = []  # admission order
        self.cache: SlotCache | None = None
        self.cancelled: set[str] = set()
        self._next_check = 0.0
        self._pending_ref: str | None = None
        self.steps = 0  # forward passes run

    # ---- model management
    def ensure_model(self) -> None:
        if self.loaded is None:
            self.loaded = load_model(self.cfg)
            self.emit(None, "model", {"model": self.loaded.ref})
            self._next_check = time.monotonic() + self.cfg.swap_check_s

    def preload(self) -> None:
        """Loads the model up front (engine start), so the first message does not wait for it; a
        failure here is reported to the first request instead."""
        try:
            self.ensure_model()
        except Exception as exc:
            log.warning("chat engine: model not loaded at start: %s", exc)

    def _watch_live(self, force: bool = False) -> None:
        """Notices a newly promoted version; swaps once no request is running on the old one. `force`
        re-reads the live pointer now (a waiting request was prepared for another version)."""
        now = time.monotonic()
        if self.loaded is None or (now < self._next_check and not force):
            if self._pending_ref is None:
                return
        else:
            self._next_check = now + self.cfg.swap_check_s
            if not self.cfg.model.startswith("registry:") or "@" in self.cfg.model:
                return
            try:
                ref, _ = resolve_ref(self.cfg)
            except ModelUnavailable:
                return
            self._pending_ref = ref if ref != self.loaded.ref else None
        if self._pending_ref is not None and not self.rows:
            old = self.loaded.ref if self.loaded else None
            try:
                new = load_model(self.cfg)
            except Exception as exc:  # keep serving the old version
                log.warning("chat engine: could not load %s: %s", self._pending_ref, exc)
                self._pending_ref = None
                return
            self.loaded, self._pending_ref = new, None
            log.info("chat engine: swapped %s -> %s", old, new.ref)
            self.emit(None, "model", {"model": new.ref})

    # ---- commands
    def submit(self, req: GenRequest) -> None:
        self.waiting.append(req)

    def cancel(self, req_id: str) -> None:
        self.cancelled.add(req_id)

    def _drop_cancelled(self) -> None:
        if not self.cancelled:
            return
        keep = deque()
        for req in self.waiting:
            if req.id in self.cancelled:
                self.emit(req.id, "end", self._end_payload(req, "cancelled", "", 0, 0, None, None))
            else:
                keep.append(req)
        self.waiting = keep
        gone = [r for r in self.rows if r.req.id in self.cancelled]
        for row in gone:
            self._finish(row, "cancelled")
        self._remove_rows(gone)
        self.cancelled.clear()

    # ---- results
    def _end_payload(
        self,
        req: GenRequest,
        reason: str,
        text: str,
        prompt_tokens: int,
        completion: int,
        ttft: float | None,
        tps: float | None,
    ) -> dict[str, Any]:
        return {
            "reason": reason,
            "text": text,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion},
            "timing": {"ttft_ms": ttft, "tokens_per_s": tps},
            "model": self.loaded.ref if self.loaded else "",
            "seed": req.params.seed,
        }

    def _finish(self, row: _Row, reason: str) -> None:
        tail = row.decoder.finish()
        if tail:
            self.emit(row.req.id, "token", {"text": tail})
        ttft = (row.t_first - row.req.submitted) * 1000 if row.t_first else None
        span = row.t_last - row.t_first
        tps = (row.generated - 1) / span if row.generated > 1 and span > 0 else None
        payload = self._end_payload(row.req, reason, row.decoder.text, row.prompt_tokens, row.generated, ttft, tps)
        self.emit(row.req.id, "end", payload)

    def _remove_rows(self, gone: list[_Row]) -> None:
        if not gone:
            return
        ids = {id(r) for r in gone}
        self.rows = [r for r in self.rows if id(r) not in ids]
        if not self.rows:
            self.cache = None  # idle: give the KV memory back

    # ---- scheduling
    def _admit(self) -> None:
        """Admits waiting requests FIFO into free slots; their prompts are prefilled by the next steps."""
        lm = self.loaded
        assert lm is not None
        used = {r.slot for r in self.rows}
        free = [s for s in range(self.cfg.max_batch) if s not in used]
        t_admit = time.perf_counter()
        while self.waiting and free and self._pending_ref is None:
            req = self.waiting.popleft()
            ids = req.prompt_ids
            if req.model_ref and req.model_ref != lm.ref and req.prompt_text:
                ids = encode_prompt(lm.tokenizer, req.prompt_text)
            if not ids or len(ids) >= lm.n_positions:
                self.emit(req.id, "error", {"code": "prompt_too_long", "message": "prompt does not fit the model"})
                continue
            self.emit(req.id, "started", {"model": lm.ref, "prompt_tokens": len(ids)})
            self.rows.append(
                _Row(
                    req=req,
                    ids=list(ids),
                    slot=free.pop(0),
                    sampler=LogitsSampler(req.params, device=lm.device),
                    decoder=make_detokenizer(lm.tokenizer, req.params.stop),
                    seen=torch.tensor(ids, dtype=torch.long, device=lm.device),
                    t_admit=t_admit,
                )
            )

    def _accept_token(self, row: _Row, logits: torch.Tensor) -> str | None:
        """Samples the row's next token, streams its text; returns a finish reason or None."""
        lm = self.loaded
        assert lm is not None
        tok = row.sampler.next_token(logits, row.seen)
        now = time.perf_counter()
        if not row.t_first:
            row.t_first = now
        if tok in lm.eos_ids:
            row.t_last = now
            return "eos"
        row.generated += 1
        row.t_last = now
        row.last = tok
        row.seen = torch.cat([row.seen, torch.tensor([tok], dtype=row.seen.dtype, device=row.seen.device)])
        delta = row.decoder.push(tok)
        if delta:
            self.emit(row.req.id, "token", {"text": delta})
        if row.decoder.stopped:
            return "stop"
        if row.generated >= row.req.params.max_new_tokens or row.cached + 1 >= lm.n_positions:
            return "length"
        return None

    def _forward_step(self) -> None:
        """One packed forward pass: a token per decoding row, then prompt chunks within the budget."""
        lm = self.loaded
        assert lm is not None
        decoding = [r for r in self.rows if not r.prefilling]
        tokens = [r.last for r in decoding]
        slots = [r.slot for r in decoding]
        positions = [r.cached for r in decoding]
        if decoding:  # the budget protects running streams: prefill gets what they leave (>= 1/4)
            budget = max(self.cfg.step_tokens - len(decoding), self.cfg.step_tokens // 4, 1)
        else:  # nobody waits on this step but the prompts themselves
            budget = max(self.cfg.step_tokens, 1) * IDLE_PREFILL_FACTOR
        chunks: list[tuple[_Row, Chunk]] = []
        for row in self.rows:
            if budget <= 0:
                break
            if not row.prefilling:
                continue
            n = min(budget, row.prompt_tokens - row.cached)
            chunks.append((row, Chunk(row.slot, len(tokens), n, row.cached)))
            tokens.extend(row.ids[row.cached : row.cached + n])
            slots.extend([row.slot] * n)
            positions.extend(range(row.cached, row.cached + n))
            budget -= n
        # logits: every decoding row, and each chunk that completes its prompt (its last position)
        sampling = list(decoding)
        keep = list(range(len(decoding)))
        for row, c in chunks:
            if row.cached + c.length == row.prompt_tokens:
                sampling.append(row)
                keep.append(c.start + c.length - 1)
        if self.cache is None:
            self.cache = SlotCache(self.cfg.max_batch, lm.n_positions)
        dev = lm.device
        plan = StepPlan(
            cache=self.cache,
            slots=torch.tensor(slots, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            dec_slots=[r.slot for r in decoding],
            dec_lengths=[r.cached + 1 for r in decoding],
            chunks=[c for _, c in chunks],
        )
        with torch.inference_mode():
            out = lm.model(
                input_ids=torch.tensor([tokens], dtype=torch.long, device=dev),
                position_ids=plan.positions[None],
                use_cache=False,
                logits_to_keep=torch.tensor(keep, dtype=torch.long, device=dev),
                slm_plan=plan,
            )
        logits = out.logits[0]
        for row in decoding:
            row.cached += 1
        for row, c in chunks:
            row.cached += c.length
        finished: list[_Row] = []
        for j, row in enumerate(sampling):
            reason = self._accept_token(row, logits[j])
            if reason:
                self._finish(row, reason)
                finished.append(row)
        self._remove_rows(finished)
        self.steps += 1

    def step(self) -> bool:
        """One scheduling round: cancels, swap check, admissions, one forward pass. True if work remains."""
        self._drop_cancelled()
        loaded_ref = self.loaded.ref if self.loaded else None
        self._watch_live(force=any(r.model_ref and r.model_ref != loaded_ref for r in self.waiting))
        if self.waiting and self._pending_ref is None:
            self._admit()
        if self.rows:
            self._forward_step()
        return bool(self.rows or self.waiting)

    def fail_all(self, code: str, message: str) -> None:
        for req in list(self.waiting):
            self.emit(req.id, "error", {"code": code, "message": message})
        self.waiting.clear()
        for row in self.rows:
            self.emit(row.req.id, "error", {"code": code, "message": message})
        self.rows, self.cache = [], None

    def run(
        self, inbox: Any, orphaned: Callable[[], bool] | None = None, flush: Callable[[], None] | None = None
    ) -> None:
        """Serves commands from `inbox` (a queue of tuples) until ("shutdown",) or, when idle,
        `orphaned()` says the owner is gone. `flush()` runs after every round (batched event delivery)."""
        last_step = 0.0
        while True:
            if flush is not None:
                flush()
            timeout: float | None = None
            if not (self.rows or self.waiting):
                if orphaned is not None and orphaned():
                    return
                timeout = self.cfg.swap_check_s
            elif self.loaded is not None and self.loaded.min_step_s:
                timeout = self.loaded.min_step_s - (time.perf_counter() - last_step)
            idle = not (self.rows or self.waiting)
            try:
                cmd = inbox.get(timeout=timeout) if timeout is not None and timeout > 0 else inbox.get_nowait()
            except queue.Empty:
                cmd = None
            # waking from idle: wait a moment for requests sent together, so they share the first step
            patience = self.cfg.coalesce_s if idle and cmd is not None else 0.0
            while cmd is not None:
                kind = cmd[0]
                if kind == "shutdown":
                    self.fail_all("model_unavailable", "the chat engine is shutting down")
                    return
                if kind == "submit":
                    self.submit(cmd[1])
                elif kind == "cancel":
                    self.cancel(cmd[1])
                try:
                    cmd = inbox.get(timeout=patience) if patience else inbox.get_nowait()
                except queue.Empty:
                    cmd = None
            if self.waiting and self.loaded is None:
                try:
                    self.ensure_model()
                except Exception as exc:
                    self.fail_all("model_unavailable", f"the chat model is not available: {exc}")
                    continue
            if self.loaded is None:
                continue
            if self.loaded.min_step_s and time.perf_counter() - last_step < self.loaded.min_step_s:
                continue
            last_step = time.perf_counter()
            try:
                self.step()
            except Exception as exc:  # never leave streams hanging
                log.exception("chat engine step failed")
                self.fail_all("model_unavailable", f"generation failed: {type(exc).__name__}: {exc}")


def _process_main(cfg: EngineConfig, inbox: Any, outbox: Any, parent_pid: int) -> None:
    """Entry point of the engine child process (spawn). Exits by itself if its parent dies."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    pending: list[tuple[str | None, str, dict[str, Any]]] = []

    def flush() -> None:  # one pipe write per engine round, not one per token
        if pending:
            outbox.put(list(pending))
            pending.clear()

    core = EngineCore(cfg, lambda rid, kind, data: pending.append((rid, kind, data)))
    core.preload()
    try:
        core.run(inbox, orphaned=lambda: os.getppid() != parent_pid, flush=flush)
    finally:
        flush()
        outbox.put([(None, "exited", {})])


# ------------------------------------------------------------------------------------------ facade
@dataclass
class _Ticket:
    callback: EventCallback
    user_key: str | None
    started: bool = False


class Engine:
    """Process-side handle on the engine: admission control, prompt building, event fan-out."""

    def __init__(self, cfg: EngineConfig, mode: str = "process") -> None:
        if mode not in ("process", "thread"):
            raise ValueError("engine mode must be 'process' or 'thread'")
        self.cfg = cfg
        self.mode = mode
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}
        self._users: dict[str, str] = {}
        self._tokenizers: dict[str, tuple[Any, int]] = {}
        self._started = False
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._proc: Any = None
        self._inbox: Any = None
        self._outbox: Any = None
        self.model_ref: str | None = None
        self.closed = False

    # ---- lifecycle
    def start(self) -> Engine:
        with self._lock:
            if self._started:
                return self
            self._started = True
            if self.mode == "thread":
                self._inbox = queue.Queue()

                def target() -> None:
                    if self.cfg.num_threads:
                        torch.set_num_threads(self.cfg.num_threads)
                    core = EngineCore(self.cfg, self._dispatch)
                    core.preload()
                    core.run(self._inbox)

                self._thread = threading.Thread(target=target, name="chat-engine", daemon=True)
                self._thread.start()
            else:
                ctx = mp.get_context("spawn")
                self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
                self._proc = ctx.Process(
                    target=_process_main,
                    args=(self.cfg, self._inbox, self._outbox, os.getpid()),
                    name="chat-engine",
                    daemon=True,
                )
                self._proc.start()
                self._reader = threading.Thread(target=self._read_events, name="chat-engine-events", daemon=True)
                self._reader.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        if not self._started or self.closed:
            return
        self.closed = True
        self._inbox.put(("shutdown",))
        if self._thread is not None:
            self._thread.join(timeout)
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(2)
            if self._reader is not None:
                self._outbox.put([(None, "exited", {})])
                self._reader.join(timeout)
            for q in (self._inbox, self._outbox):
                q.close()
                q.join_thread()

    def alive(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        if self._proc is not None:
            return self._proc.is_alive()
        return False

    # ---- events
    def _read_events(self) -> None:
        while True:
            try:
                batch = self._outbox.get(timeout=1.0)
            except queue.Empty:
                if self._proc is not None and not self._proc.is_alive():  # killed (OOM, signal)
                    self.closed = True
                    self._fail_all("model_unavailable", "the chat engine process died; it restarts on the next message")
                    return
                continue
            except (EOFError, OSError):
                return
            for rid, kind, data in batch:
                if rid is None and kind == "exited":
                    self._fail_all("model_unavailable", "the chat engine stopped")
                    return
                self._dispatch(rid, kind, data)

    def _fail_all(self, code: str, message: str) -> None:
        with self._lock:
            items = list(self._tickets.items())
        for rid, _ in items:
            self._dispatch(rid, "error", {"code": code, "message": message})

    def _dispatch(self, rid: str | None, kind: str, data: dict[str, Any]) -> None:
        if rid is None:
            if kind == "model":
                self.model_ref = data.get("model")
            return
        with self._lock:
            ticket = self._tickets.get(rid)
            if ticket is None:
                return
            if kind == "started":
                ticket.started = True
            if kind in ("end", "error"):
                self._tickets.pop(rid, None)
                if ticket.user_key is not None and self._users.get(ticket.user_key) == rid:
                    self._users.pop(ticket.user_key, None)
        try:
            ticket.callback(kind, data)
        except Exception:  # a consumer's bug must not kill the engine's event thread
            log.exception("chat engine callback failed")

    # ---- requests
    def tokenizer(self) -> tuple[str, Any, int]:
        """(ref, tokenizer, context window) of the version new requests will run on."""
        ref, _ = resolve_ref(self.cfg)
        cached = self._tokenizers.get(ref)
        if cached is None:
            _, tok, n_pos = load_tokenizer(self.cfg)
            self._tokenizers = {ref: (tok, n_pos)}
            cached = (tok, n_pos)
        return ref, cached[0], cached[1]

    def prepare(
        self, history: list[tuple[str, str]], user_text: str, params: GenerationParams
    ) -> tuple[str, ChatPrompt]:
        """Builds the dialogue prompt for the live model, dropping old turns; raises PromptTooLong.
        Room for max_new_tokens is reserved, but never more than half the window: a reply asked longer
        than the window allows ends with reason "length" at its edge instead of refusing every prompt."""
        ref, tok, n_pos = self.tokenizer()
        reserved = min(params.max_new_tokens, n_pos // 2)

        def encode(text: str) -> list[int]:
            return encode_prompt(tok, text)

        prompt = format_chat_prompt(
            history, user_text, encode, max(1, n_pos - reserved), window=n_pos, reserved=reserved
        )
        return ref, prompt

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = sum(1 for t in self._tickets.values() if t.started)
            pending = len(self._tickets) - running
        return {"running": running, "pending": pending, "queued": max(0, running + pending - self.cfg.max_batch)}

    def submit(
        self,
        prompt: ChatPrompt,
        params: GenerationParams,
        callback: EventCallback,
        *,
        user_key: str | None = None,
        model_ref: str = "",
    ) -> tuple[str, int]:
        """Queues a request; returns (request id, queue position: 0 = starts now). Raises EngineBusy
        when the wait queue is full and AlreadyStreaming when `user_key` has a live stream."""
        if self.closed:
            raise ModelUnavailable("the chat engine is stopped")
        self.start()
        rid = uuid.uuid4().hex
        with self._lock:
            if user_key is not None and user_key in self._users:
                raise AlreadyStreaming("you already have a reply streaming; stop it or wait for it to finish")
            total = len(self._tickets)
            position = max(0, total + 1 - self.cfg.max_batch)
            if position > self.cfg.queue_size:
                raise EngineBusy(f"the server is busy ({self.cfg.queue_size} requests waiting); try again shortly")
            self._tickets[rid] = _Ticket(callback, user_key)
            if user_key is not None:
                self._users[user_key] = rid
        req = GenRequest(rid, list(prompt.ids), params, prompt_text=prompt.text, model_ref=model_ref)
        self._inbox.put(("submit", req))
        return rid, position

    def cancel(self, rid: str) -> None:
        if self._started and not self.closed:
            self._inbox.put(("cancel", rid))

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._tickets)
