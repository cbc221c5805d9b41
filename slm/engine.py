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

One engine serves several models: each request names its source (a registry ref, directory or hub id; ""
= the configured default). Every loaded model has its own KV cache and gets its own packed forward pass
per step; models stay loaded up to `max_model_bytes` of weights, and loading another first unloads the
least recently used models that have no running stream (never one that has). When that cannot make room,
the request waits at the head of the queue until the busy models drain.

`Engine` is the facade a server process uses: it keeps the bounded FIFO queue accounting (positions,
`EngineBusy`, one live stream per user key), tokenizes prompts, and runs the core either in its own
process (mode "process", a multiprocessing *spawn* child fed through queues; torch runs in that
child's main thread at full speed) or in a dedicated thread (mode "thread"; it sets
`torch.set_num_threads` for itself). Events come back through a callback per request:

    ("started", {"model": ref, "prompt_tokens": n})
    ("token", {"text": delta})
    ("end", {"reason": eos|length|stop|cancelled, "text": ..., "usage": {...}, "timing": {...}, "model": ref})
    ("error", {"code": ..., "message": ...})

Measured with bench/chat.py (GPT-2 124M shape, int8, 1 torch thread, 32 new tokens, 2 shared cores, so
ratios within one run are what count; the README has the rows). On an AVX2 CPU without VNNI: 39 / 64 /
108 tok/s at 1 / 4 / 8 streams, 1.06x / 0.99x / 0.79x CTranslate2's int8 generator on the same weights,
from slm's own int8 kernel (oneDNN repacked the weights on every call) and the lean GPT-2 step
(slm.batching.PackedGPT2). On a Xeon with AVX-512 VNNI / AMX: 80 / 245 / 384 tok/s, 0.87x / 0.90x / 0.90x
CTranslate2 (0.45x / 0.49x / 0.59x at the start of that work), from the VNNI kernel with its weights on
huge pages, the C decode attention over a position-major cache and the fused step; TTFT p95 of 4
simultaneous users 1.74x the single-user TTFT; running streams keep 76% of their pace while a 512-token
prompt is prefilled (prefill_share 0.35: on the AVX2 machine 0.2 / 0.5 / a chunk every step gave 80% /
63% / 33%). Decode is bound by memory bandwidth (every weight read once per step: one core streams ~15-21
GB/s there). The process placement isolates torch from the event loop's GIL and from crashes; `thread`
mode stays for comparison (CHAT_ENGINE_MODE). With 2 torch threads on a loaded 2-core box int8 decode
collapsed (2 tok/s vs 30 with 1), hence CHAT_ENGINE_THREADS=1 by default.

No Django in here.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from slm.batching import Chunk, PackedGPT2, SlotCache, StepPlan, enable_packed
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
TOKENIZERS_KEPT = 8  # tokenizers of recently used model versions the server process keeps
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
    model: str = "registry:chat"  # the default source: registry:<name>[@version] | local dir | hub id
    registry_root: str | None = None
    precision: str = "int8"  # fp32 | int8 | bf16 | fp16
    max_batch: int = 8  # streams decoding at once, all models together
    queue_size: int = 32
    device: str = "auto"
    num_threads: int | None = None  # torch threads in the engine (None: leave as is)
    swap_check_s: float = 1.0  # how often the live pointer is re-read
    step_tokens: int = 32  # most tokens per forward pass while streams decode: one per stream + prompt chunks
    prefill_share: float = 0.35  # prompt prefill time per unit of decode time while streams decode (inf: every step)
    coalesce_s: float = 0.005  # from idle, requests arriving within this of each other share the first step
    max_model_bytes: int = 0  # weights of the models kept loaded together (0: no bound); LRU idle ones go first
    preload: bool = True  # load `model` when the engine starts (else on its first request)


@dataclass
class GenRequest:
    id: str
    prompt_ids: list[int]
    params: GenerationParams
    prompt_text: str = ""
    model_ref: str = ""  # the tokenizer the ids came from; re-encoded if the engine runs another
    submitted: float = field(default_factory=time.perf_counter)
    source: str = ""  # the model to run (registry ref, directory or hub id); "" = the configured default


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
    source: str = ""  # what was asked for (e.g. "registry:chat"); `ref` is what it resolved to ("chat@v0002")
    nbytes: int = 0  # weights and buffers in memory, as loaded (after precision)
    packed: Any = None  # the lean packed step (PackedGPT2) where the architecture has one; else the model's forward


def _registry(cfg: EngineConfig) -> Any:
    from slm.registry import Registry

    return Registry(cfg.registry_root) if cfg.registry_root else None


def resolve_ref(cfg: EngineConfig, source: str | None = None) -> tuple[str, Any]:
    """(display ref, ResolvedSource) for `source` (default: the configured model) at this moment (live
    pointer read)."""
    from slm.loader import ModelNotAvailable, resolve_source

    try:
        src = resolve_source(source or cfg.model, registry=_registry(cfg))
    except ModelNotAvailable as exc:
        raise ModelUnavailable(str(exc)) from exc
    return src.ref, src


# transformers' lazy top-level module is not safe to import from two threads at once: the engine thread
# loading the model while a socket's thread loads the tokenizer got "cannot import name 'AutoConfig'".
_TRANSFORMERS_IMPORT = threading.Lock()


def transformers_names(*names: str) -> list[Any]:
    """The named transformers classes, imported under one process-wide lock."""
    with _TRANSFORMERS_IMPORT:
        import transformers

        return [getattr(transformers, name) for name in names]


def load_tokenizer(cfg: EngineConfig, source: str | None = None) -> tuple[str, Any, int]:
    AutoConfig, AutoTokenizer = transformers_names("AutoConfig", "AutoTokenizer")  # noqa: N806

    ref, src = resolve_ref(cfg, source)
    target = str(src.path) if src.path is not None else (source or cfg.model)
    try:
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
        conf = AutoConfig.from_pretrained(target, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    except OSError as exc:
        raise ModelUnavailable(f"could not load {ref}: {exc}") from exc
    return ref, tok, _n_positions(conf)


def _n_positions(conf: Any) -> int:
    return int(getattr(conf, "n_positions", None) or getattr(conf, "max_position_embeddings", None) or 1024)


# bytes in memory per byte of fp32 weights on disk, by serving precision (int8: weights 1/4, plus the
# fp32 embeddings and norms it keeps); an estimate used only to make room before a load
_PRECISION_SHARE = {"fp32": 1.0, "int8": 0.35, "bf16": 0.5, "fp16": 0.5}


def estimate_bytes(path: Any, precision: str) -> int:
    """Memory a model directory will take once loaded, from its weight files' sizes."""
    from pathlib import Path

    files = list(Path(path).glob("*.safetensors")) or list(Path(path).glob("*.bin"))
    return int(sum(f.stat().st_size for f in files) * _PRECISION_SHARE.get(precision, 1.0))


def model_bytes(model: Any) -> int:
    """Bytes held by a loaded model's parameters and buffers (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        try:
            total += t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):  # opaque prepacked tensors
            total += t.nbytes if hasattr(t, "nbytes") else 0
    return total


def load_model(cfg: EngineConfig, source: str | None = None) -> LoadedModel:
    """Loads `source` (default: the configured model; a registry ref, directory or hub id from the local
    cache) for serving: eval mode, on the picked device, at the configured precision, with packed attention."""
    AutoModelForCausalLM, AutoTokenizer = transformers_names("AutoModelForCausalLM", "AutoTokenizer")  # noqa: N806

    from slm.device import pick_device

    source = source or cfg.model
    ref, src = resolve_ref(cfg, source)
    target = str(src.path) if src.path is not None else source
    device = pick_device(cfg.device)
    try:
        tok = AutoTokenizer.from_pretrained(target, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
        model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
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
    return LoadedModel(
        ref,
        model,
        tok,
        _n_positions(model.config),
        eos_ids,
        device,
        pace,
        source=source,
        nbytes=model_bytes(model),
        packed=PackedGPT2.build(model),
    )


# ------------------------------------------------------------------------------------------- core
@dataclass
class _Row:
    req: GenRequest
    lm: LoadedModel  # the model this request runs on
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


@dataclass
class _Lane:
    """One loaded model: its KV cache and the live-pointer watch of its registry source."""

    loaded: LoadedModel
    cache: SlotCache | None = None
    pending_ref: str | None = None  # a newly promoted version, swapped in once the lane has no rows
    next_check: float = 0.0
    decode_step_s: float | None = None  # running average of its decode-only steps' durations
    prefill_credit: float = 0.0  # seconds prompts may still take from its decoding streams (< 0: owed)

    @property
    def source(self) -> str:
        return self.loaded.source


class _NoRoom(Exception):
    """Loading a model now would exceed max_model_bytes and every other loaded model has live streams."""


class EngineCore:
    """The decode loop. Not thread-safe: one thread drives `run()` (or `step()` in tests).

    One `step()` = one forward pass per model with requests running: a token of every decoding row
    first, then prompt chunks of rows still prefilling, in admission order, up to `cfg.step_tokens`
    tokens in all (at least one prompt token). While streams decode, prompts get such a chunk only within
    a time share: each decode-only step earns `cfg.prefill_share` of its duration for the waiting prompts,
    a step with a chunk spends what it took beyond a decode-only step (the running average), and a chunk
    goes in whenever the balance is not negative (so a new prompt gets one at once); a prompt whose rest
    fits in one step's chunk always goes in (short prompts are answered at once, their time still
    counted; the share holds back long prompts). Running streams
    thus keep about 1 / (1 + share) of their pace (0.35: 74%) while a long prompt comes in, in big chunks
    (a chunk costs far less per token than many small ones: fixed costs per step are the weight reads,
    the chunk's attention over its prefix and Python). With no row decoding, nothing is stalled by a long
    step: prompts get `IDLE_PREFILL_FACTOR` budgets at once.

    Several models (each request names its source; "" = `cfg.model`) are kept loaded together up to
    `cfg.max_model_bytes`; to load another, the least recently used models without running streams are
    unloaded. If that cannot make room (the others are all streaming), the request waits, and so does
    everything queued behind it (FIFO), so the busy models drain."""

    def __init__(self, cfg: EngineConfig, emit: Callable[[str | None, str, dict[str, Any]], None]) -> None:
        self.cfg = cfg
        self.emit = emit
        self.lanes: OrderedDict[str, _Lane] = OrderedDict()  # by source, least recently used first
        self.waiting: deque[GenRequest] = deque()
        self.rows: list[_Row] = []  # admission order
        self.cancelled: set[str] = set()
        self.steps = 0  # forward passes run
        self.clock: Callable[[], float] = time.perf_counter  # step durations (the prefill time share)

    # ---- the default model (what single-model callers and tests look at)
    @property
    def loaded(self) -> LoadedModel | None:
        lane = self.lanes.get(self.cfg.model)
        return lane.loaded if lane is not None else None

    @property
    def cache(self) -> SlotCache | None:
        lane = self.lanes.get(self.cfg.model)
        return lane.cache if lane is not None else None

    # ---- model management
    def _source(self, req: GenRequest) -> str:
        return req.source or self.cfg.model

    def _busy(self, source: str) -> bool:
        return any(r.lm.source == source for r in self.rows)

    def used_bytes(self) -> int:
        return sum(lane.loaded.nbytes for lane in self.lanes.values())

    def ensure_model(self, source: str | None = None) -> LoadedModel:
        """The model for `source` (default: the configured one), loaded (making room) if it is not."""
        source = source or self.cfg.model
        lane = self.lanes.get(source)
        if lane is None:
            lane = self._load_lane(source)
        self.lanes.move_to_end(source)
        return lane.loaded

    def _load_lane(self, source: str) -> _Lane:
        if self.cfg.max_model_bytes and self.lanes:
            _, src = resolve_ref(self.cfg, source)
            need = estimate_bytes(src.path, self.cfg.precision) if src.path is not None else 0
            if not self._make_room(need, keep=source):
                raise _NoRoom(source)
        loaded = load_model(self.cfg, source)
        lane = _Lane(loaded, next_check=time.monotonic() + self.cfg.swap_check_s)
        self.lanes[source] = lane
        log.info("chat engine: loaded %s (%s, %.1f MB)", loaded.ref, source, loaded.nbytes / 2**20)
        self.emit(None, "model", {"model": loaded.ref, "source": source, "bytes": loaded.nbytes})
        self._make_room(0, keep=source)  # the estimate was low: unload more idle models if that helps
        return lane

    def _make_room(self, need: int, *, keep: str) -> bool:
        """Unloads least recently used models without running streams until `need` more bytes fit in
        cfg.max_model_bytes. False (and nothing unloaded) when even that would not make the room while
        other models stay loaded; a model larger than the whole budget still loads once it is alone."""
        budget = self.cfg.max_model_bytes
        used = sum(lane.loaded.nbytes for src, lane in self.lanes.items() if src != keep)
        if not budget or used + need <= budget:
            return True
        waiting = {self._source(r) for r in self.waiting}
        idle = [src for src in self.lanes if src != keep and not self._busy(src)]
        idle.sort(key=lambda src: src in waiting)  # stable: LRU order, models nobody waits for first
        freeable = sum(self.lanes[src].loaded.nbytes for src in idle)
        if used - freeable + need > budget and len(idle) < sum(1 for src in self.lanes if src != keep):
            return False
        for src in idle:
            if used + need <= budget:
                break
            used -= self.lanes[src].loaded.nbytes
            self._unload(src)
        return True

    def _unload(self, source: str) -> None:
        lane = self.lanes.pop(source)
        log.info("chat engine: unloaded %s (least recently used)", lane.loaded.ref)
        self.emit(None, "unloaded", {"model": lane.loaded.ref, "source": source})
        lane.cache = None

    def preload(self) -> None:
        """Loads the default model up front (engine start), so the first message does not wait for it; a
        failure here is reported to the first request instead."""
        if not self.cfg.preload:
            return
        try:
            self.ensure_model()
        except Exception as exc:
            log.warning("chat engine: model not loaded at start: %s", exc)

    def _watch_live(self, force: set[str] | None = None) -> None:
        """Notices newly promoted versions of the loaded registry models; swaps a model once no request is
        running on its old version. `force`: sources whose live pointer is re-read now (a waiting request
        was prepared for another version)."""
        now = time.monotonic()
        for source, lane in list(self.lanes.items()):
            if (now >= lane.next_check or source in (force or ())) and source.startswith("registry:"):
                lane.next_check = now + self.cfg.swap_check_s
                if "@" in source:
                    continue
                try:
                    ref, _ = resolve_ref(self.cfg, source)
                except ModelUnavailable:
                    continue
                lane.pending_ref = ref if ref != lane.loaded.ref else None
            if lane.pending_ref is None or self._busy(source):
                continue
            old = lane.loaded.ref
            try:
                new = load_model(self.cfg, source)
            except Exception as exc:  # keep serving the old version
                log.warning("chat engine: could not load %s: %s", lane.pending_ref, exc)
                lane.pending_ref = None
                continue
            lane.loaded, lane.pending_ref, lane.cache = new, None, None
            log.info("chat engine: swapped %s -> %s", old, new.ref)
            self.emit(None, "model", {"model": new.ref, "source": source, "bytes": new.nbytes})

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
                lane = self.lanes.get(self._source(req))
                ref = lane.loaded.ref if lane is not None else ""
                self.emit(req.id, "end", self._end_payload(req, ref, "cancelled", "", 0, 0, None, None))
            else:
                keep.append(req)
        self.waiting = keep
        gone = [r for r in self.rows if r.req.id in self.cancelled]
        for row in gone:
            self._finish(row, "cancelled")
        self._remove_rows(gone)
        self.cancelled.clear()

    # ---- results
    @staticmethod
    def _end_payload(
        req: GenRequest,
        ref: str,
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
            "model": ref,
            "seed": req.params.seed,
        }

    def _finish(self, row: _Row, reason: str) -> None:
        tail = row.decoder.finish()
        if tail:
            self.emit(row.req.id, "token", {"text": tail})
        ttft = (row.t_first - row.req.submitted) * 1000 if row.t_first else None
        span = row.t_last - row.t_first
        tps = (row.generated - 1) / span if row.generated > 1 and span > 0 else None
        payload = self._end_payload(
            row.req, row.lm.ref, reason, row.decoder.text, row.prompt_tokens, row.generated, ttft, tps
        )
        self.emit(row.req.id, "end", payload)

    def _remove_rows(self, gone: list[_Row]) -> None:
        if not gone:
            return
        ids = {id(r) for r in gone}
        self.rows = [r for r in self.rows if id(r) not in ids]
        for source in {r.lm.source for r in gone}:
            lane = self.lanes.get(source)
            if lane is not None and not self._busy(source):
                lane.cache = None  # idle: give the KV memory back

    # ---- scheduling
    def _admit(self) -> None:
        """Admits waiting requests FIFO into free slots (loading their model if needed); their prompts
        are prefilled by the next steps. Stops at a request whose model must wait (a swap pending, or no
        room to load it)."""
        t_admit = time.perf_counter()
        while self.waiting and len(self.rows) < self.cfg.max_batch:
            req = self.waiting[0]
            source = self._source(req)
            lane = self.lanes.get(source)
            if lane is None:
                try:
                    self._load_lane(source)
                except _NoRoom:
                    return
                except Exception as exc:
                    self.waiting.popleft()
                    message = f"the chat model is not available: {exc}"
                    self.emit(req.id, "error", {"code": "model_unavailable", "message": message})
                    continue
                lane = self.lanes[source]
            if lane.pending_ref is not None:
                return
            self.waiting.popleft()
            self.lanes.move_to_end(source)
            lm = lane.loaded
            ids = req.prompt_ids
            if req.model_ref and req.model_ref != lm.ref and req.prompt_text:
                ids = encode_prompt(lm.tokenizer, req.prompt_text)
            if not ids or len(ids) >= lm.n_positions:
                self.emit(req.id, "error", {"code": "prompt_too_long", "message": "prompt does not fit the model"})
                continue
            used = {r.slot for r in self.rows if r.lm is lm}
            slot = next(s for s in range(self.cfg.max_batch) if s not in used)
            self.emit(req.id, "started", {"model": lm.ref, "prompt_tokens": len(ids)})
            self.rows.append(
                _Row(
                    req=req,
                    lm=lm,
                    ids=list(ids),
                    slot=slot,
                    sampler=LogitsSampler(req.params, device=lm.device),
                    decoder=make_detokenizer(lm.tokenizer, req.params.stop),
                    seen=torch.tensor(ids, dtype=torch.long, device=lm.device),
                    t_admit=t_admit,
                )
            )

    def _accept_token(self, row: _Row, logits: torch.Tensor) -> str | None:
        """Samples the row's next token, streams its text; returns a finish reason or None."""
        lm = row.lm
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

    def _forward_step(self, lane: _Lane) -> None:
        """One packed forward pass of one model: a token per decoding row, then prompt chunks within the
        budget."""
        lm = lane.loaded
        rows = [r for r in self.rows if r.lm is lm]
        decoding = [r for r in rows if not r.prefilling]
        tokens = [r.last for r in decoding]
        slots = [r.slot for r in decoding]
        positions = [r.cached for r in decoding]
        backlog = any(r.prefilling for r in rows)
        if decoding:  # prompts get a chunk only while their time share allows (see the class docstring)
            if not backlog:
                lane.prefill_credit = min(lane.prefill_credit, 0.0)  # time is never banked for later prompts
            share = self.cfg.prefill_share
            held = not (share == math.inf or lane.prefill_credit >= 0.0)
            budget = max(self.cfg.step_tokens - len(decoding), 1)
        else:  # nobody waits on this step but the prompts themselves
            held = False
            budget = max(self.cfg.step_tokens, 1) * IDLE_PREFILL_FACTOR
        chunks: list[tuple[_Row, Chunk]] = []
        for row in rows:
            if budget <= 0:
                break
            if not row.prefilling:
                continue
            if held and row.prompt_tokens - row.cached > budget:
                continue  # only prompts that finish in this step go in while the share is spent
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
        if lane.cache is None:
            lane.cache = SlotCache(self.cfg.max_batch, lm.n_positions)
        dev = lm.device
        plan = StepPlan(
            cache=lane.cache,
            slots=torch.tensor(slots, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            dec_slots=[r.slot for r in decoding],
            dec_lengths=[r.cached + 1 for r in decoding],
            chunks=[c for _, c in chunks],
        )
        input_ids = torch.tensor(tokens, dtype=torch.long, device=dev)
        keep_rows = torch.tensor(keep, dtype=torch.long, device=dev)
        started = self.clock()
        with torch.inference_mode():
            if lm.packed is not None:
                logits = lm.packed(input_ids, plan, keep_rows)
            else:
                out = lm.model(
                    input_ids=input_ids[None],
                    position_ids=plan.positions[None],
                    use_cache=False,
                    logits_to_keep=keep_rows,
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
        if decoding:
            self._account(lane, self.clock() - started, len(decoding), len(tokens), bool(chunks), backlog)

    def _account(self, lane: _Lane, elapsed: float, n_decoding: int, n_tokens: int, chunk: bool, backlog: bool) -> None:
        """Prefill time share: decode-only steps earn `prefill_share` of their duration while prompts wait;
        a step with a prompt chunk costs what it took beyond a decode-only step."""
        if chunk:
            base = lane.decode_step_s if lane.decode_step_s is not None else elapsed * n_decoding / n_tokens
            lane.prefill_credit -= max(elapsed - base, 0.0)
            return
        avg = lane.decode_step_s
        lane.decode_step_s = elapsed if avg is None else 0.8 * avg + 0.2 * elapsed
        if backlog:
            lane.prefill_credit += self.cfg.prefill_share * elapsed

    def step(self) -> bool:
        """One scheduling round: cancels, swap checks, admissions, one forward pass per model with running
        requests. True if work remains."""
        self._drop_cancelled()
        stale = set()
        for req in self.waiting:
            lane = self.lanes.get(self._source(req))
            if lane is not None and req.model_ref and req.model_ref != lane.loaded.ref:
                stale.add(lane.source)
        self._watch_live(force=stale)
        if self.waiting:
            self._admit()
        for lane in list(self.lanes.values()):
            if any(r.lm is lane.loaded for r in self.rows):
                self._forward_step(lane)
        return bool(self.rows or self.waiting)

    def pace_s(self) -> float:
        """The slowest pacing (version metadata serving.min_step_s) among the models running requests."""
        return max((r.lm.min_step_s for r in self.rows), default=0.0)

    def fail_all(self, code: str, message: str) -> None:
        for req in list(self.waiting):
            self.emit(req.id, "error", {"code": code, "message": message})
        self.waiting.clear()
        for row in self.rows:
            self.emit(row.req.id, "error", {"code": code, "message": message})
        self.rows = []
        for lane in self.lanes.values():
            lane.cache = None

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
            pace = self.pace_s()
            if not (self.rows or self.waiting):
                if orphaned is not None and orphaned():
                    return
                timeout = self.cfg.swap_check_s
            elif pace:
                timeout = pace - (time.perf_counter() - last_step)
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
            if not (self.rows or self.waiting or self.cancelled):
                if self.lanes:
                    self._watch_live()  # swap idle models too, so the next request starts on the new version
                continue
            pace = self.pace_s()
            if pace and time.perf_counter() - last_step < pace:
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
        self._tokenizers: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # by ref, a few recent ones
        self._tokenizer_lock = threading.Lock()
        self._views: dict[str, EngineView] = {}
        self._started = False
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._proc: Any = None
        self._inbox: Any = None
        self._outbox: Any = None
        self.model_ref: str | None = None  # the default model's loaded version
        self.models: dict[str, str] = {}  # source -> loaded version, for every model the engine holds now
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
            source = str(data.get("source") or self.cfg.model)
            if kind == "model":
                with self._lock:
                    self.models[source] = str(data.get("model"))
                if source == self.cfg.model:
                    self.model_ref = data.get("model")
            elif kind == "unloaded":
                with self._lock:
                    self.models.pop(source, None)
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
    def tokenizer(self, model: str | None = None) -> tuple[str, Any, int]:
        """(ref, tokenizer, context window) of the version new requests for `model` (a source; default
        the configured one) will run on."""
        ref, _ = resolve_ref(self.cfg, model)
        # One loader at a time: sockets arriving together used to import transformers concurrently (its lazy
        # module raised ImportError in some threads) and to load the tokenizer once each.
        with self._tokenizer_lock:
            cached = self._tokenizers.get(ref)
            if cached is None:
                _, tok, n_pos = load_tokenizer(self.cfg, model)
                cached = (tok, n_pos)
                self._tokenizers[ref] = cached
                while len(self._tokenizers) > TOKENIZERS_KEPT:
                    self._tokenizers.popitem(last=False)
            else:
                self._tokenizers.move_to_end(ref)
        return ref, cached[0], cached[1]

    def prepare(
        self, history: list[tuple[str, str]], user_text: str, params: GenerationParams, model: str | None = None
    ) -> tuple[str, ChatPrompt]:
        """Builds the dialogue prompt for the live version of `model` (default: the configured one), dropping
        old turns; raises PromptTooLong. Room for max_new_tokens is reserved, but never more than half the
        window: a reply asked longer than the window allows ends with reason "length" at its edge instead
        of refusing every prompt."""
        ref, tok, n_pos = self.tokenizer(model)
        reserved = min(params.max_new_tokens, n_pos // 2)

        def encode(text: str) -> list[int]:
            return encode_prompt(tok, text)

        prompt = format_chat_prompt(
            history, user_text, encode, max(1, n_pos - reserved), window=n_pos, reserved=reserved
        )
        return ref, prompt

    def bind(self, model: str | None) -> EngineView:
        """This engine as a backend for one model source (what the chat consumer holds per conversation);
        one view per source."""
        model = model or self.cfg.model
        with self._lock:
            view = self._views.get(model)
            if view is None:
                view = self._views[model] = EngineView(self, model)
        return view

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
        model: str | None = None,
    ) -> tuple[str, int]:
        """Queues a request for `model` (a source; default the configured one); returns (request id,
        queue position: 0 = starts now). Raises EngineBusy when the wait queue is full and AlreadyStreaming
        when `user_key` has a live stream."""
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
        req = GenRequest(
            rid, list(prompt.ids), params, prompt_text=prompt.text, model_ref=model_ref, source=model or ""
        )
        self._inbox.put(("submit", req))
        return rid, position

    def cancel(self, rid: str) -> None:
        if self._started and not self.closed:
            self._inbox.put(("cancel", rid))

    def active_ids(self) -> list[str]:
        with self._lock:
            return list(self._tickets)


class EngineView:
    """An `Engine` seen as the backend of one model: the face the chat consumer uses for every backend
    (prepare / submit / cancel / stats), with the model source filled in."""

    def __init__(self, engine: Engine, model: str) -> None:
        self.engine = engine
        self.model = model

    @property
    def closed(self) -> bool:
        return self.engine.closed

    def prepare(
        self, history: list[tuple[str, str]], user_text: str, params: GenerationParams
    ) -> tuple[str, ChatPrompt]:
        return self.engine.prepare(history, user_text, params, model=self.model)

    def submit(
        self,
        prompt: ChatPrompt,
        params: GenerationParams,
        callback: EventCallback,
        *,
        user_key: str | None = None,
        model_ref: str = "",
    ) -> tuple[str, int]:
        return self.engine.submit(prompt, params, callback, user_key=user_key, model_ref=model_ref, model=self.model)

    def cancel(self, rid: str) -> None:
        self.engine.cancel(rid)

    def stats(self) -> dict[str, int]:
        return self.engine.stats()
