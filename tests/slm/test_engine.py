"""slm.engine: the batched KV-cache decode loop (greedy == generate with requests joining mid-batch),
int8 conversion, cancel within one token, hot swap on promotion, no leaks after aborted streams."""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from slm.engine import Engine, EngineConfig, EngineCore, GenRequest, apply_precision, conv1d_to_linear
from slm.generation import ChatPrompt, GenerationParams
from tests.chat.tiny import add_tiny_chat_version, save_tiny, tiny_model, tiny_tokenizer

PROMPTS = [
    "User: hello there\nAgent:",
    "User: 你好\nAgent:",
    "User: a longer prompt with emoji 😀 and more words\nAgent:",
]


def reference(model: Any, ids: list[int], **kw: Any) -> list[int]:
    tok = tiny_tokenizer()
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        pad_token_id=tok.eos_token_id,
        **kw,
    )[0, len(ids) :].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


class Recorder:
    def __init__(self) -> None:
        self.events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.done: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def emit(self, rid: str | None, kind: str, data: dict[str, Any]) -> None:
        if rid is None:
            return
        with self.lock:
            self.events.setdefault(rid, []).append((kind, data))
            done = self.done.setdefault(rid, threading.Event())
        if kind in ("end", "error"):
            done.set()

    def callback(self, rid_box: list[str], known: threading.Event) -> Any:
        def cb(kind: str, data: dict[str, Any]) -> None:
            known.wait(10)  # the id is known right after submit returns
            self.emit(rid_box[0], kind, data)

        return cb

    def end(self, rid: str) -> dict[str, Any]:
        return next(d for k, d in self.events[rid] if k == "end")

    def tokens(self, rid: str) -> str:
        return "".join(d["text"] for k, d in self.events[rid] if k == "token")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-chat")
    save_tiny(d)
    return d


def test_batched_greedy_equals_generate_with_joins(model_dir: Path) -> None:
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_model()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32"), rec.emit)
    core.ensure_model()
    assert core.loaded.packed is not None  # GPT-2 runs the lean packed step
    params = GenerationParams(max_new_tokens=24, repetition_penalty=1.3)
    for i, prompt in enumerate(PROMPTS):  # each joins a batch already decoding
        core.submit(GenRequest(str(i), tok(prompt)["input_ids"], params))
        core.step()
        core.step()
    assert core.steps >= 4 and len(core.rows) == 3  # three rows decoded together
    while core.step():
        pass
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        ref = reference(model, ids, do_sample=False, max_new_tokens=24, repetition_penalty=1.3)
        end = rec.end(str(i))
        assert end["text"] == tok.decode(ref, skip_special_tokens=True) == rec.tokens(str(i))
        assert end["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(ref)}
    assert core.cache is None and core.rows == []


def test_without_slm_kernels_the_cache_and_attention_fall_back_to_torch(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where slm's C kernels cannot be built (no compiler, no AVX2), the position-major CPU cache is written
    and read with torch ops and SDPA: the same greedy replies as `generate`, batched and with joins."""
    from slm import cpu_int8
    from slm.batching import StepPlan

    monkeypatch.setattr(cpu_int8, "_lib", None)
    monkeypatch.setattr(cpu_int8, "_tried", True)
    seen: list[bool] = []
    original = StepPlan._in_c

    def spy(self: StepPlan, *args: Any) -> bool:
        seen.append(original(self, *args))
        return seen[-1]

    monkeypatch.setattr(StepPlan, "_in_c", spy)
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_model()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32"), rec.emit)
    params = GenerationParams(max_new_tokens=12, repetition_penalty=1.3)
    for i, prompt in enumerate(PROMPTS):
        core.submit(GenRequest(str(i), tok(prompt)["input_ids"], params))
        core.step()
    while core.step():
        pass
    assert seen and not any(seen) and core.cache is None
    for i, prompt in enumerate(PROMPTS):
        ref = reference(model, tok(prompt)["input_ids"], do_sample=False, max_new_tokens=12, repetition_penalty=1.3)
        assert rec.end(str(i))["text"] == tok.decode(ref, skip_special_tokens=True)


def test_cancel_lands_before_the_next_token(model_dir: Path) -> None:
    tok = tiny_tokenizer()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32"), rec.emit)
    core.ensure_model()
    core.submit(GenRequest("a", tok(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=50)))
    core.submit(GenRequest("b", tok(PROMPTS[1])["input_ids"], GenerationParams(max_new_tokens=50)))
    for _ in range(3):
        core.step()
    produced = core.rows[0].generated
    core.cancel("a")
    core.step()
    end = rec.end("a")
    assert end["reason"] == "cancelled" and end["usage"]["completion_tokens"] == produced
    assert [r.req.id for r in core.rows] == ["b"]  # the other stream goes on
    # a cancel of a request still waiting never starts it
    core.submit(GenRequest("c", tok(PROMPTS[2])["input_ids"], GenerationParams(max_new_tokens=5)))
    core.cancel("c")
    core.step()
    assert rec.end("c")["usage"]["completion_tokens"] == 0


def test_int8_converts_conv1d_and_still_generates(model_dir: Path) -> None:
    from transformers.pytorch_utils import Conv1D

    from slm.precision import Int8Linear

    model = tiny_model()
    x = torch.tensor([[1, 2, 3, 4]])
    before = model(x).logits
    conv1d_to_linear(model)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert torch.allclose(model(x).logits, before, atol=1e-5)
    q = apply_precision(tiny_model(), "int8", torch.device("cpu"))
    assert not any(type(m) is torch.nn.Linear for m in q.modules())  # every matmul, the LM head too
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 2 * 4 + 1
    after = q(x).logits
    assert (after - before).norm() / before.norm() < 0.05  # int8 stays close to fp32
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="int8"), rec.emit)
    core.ensure_model()
    core.submit(GenRequest("q", tiny_tokenizer()(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=8)))
    while core.step():
        pass
    assert rec.end("q")["reason"] in ("length", "eos")


def test_int8_serves_tanh_gelu_as_the_same_function_on_faster_ops() -> None:
    """int8 serving swaps GPT-2's tanh-GELU for x·sigmoid(2z) (the same function, vectorized ops): within
    5e-7 of transformers' module with and without autograd, never touching its input; fp32 keeps the
    model's own module (its greedy reply must equal a fresh model's `generate`)."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from slm import cpu_int8
    from slm.precision import CGELU, SigmoidTanhGELU

    x = torch.randn(7, 300) * 4
    x[0, :3] = torch.tensor([0.0, -30.0, 30.0])
    x[1, :4] = torch.tensor([-200.0, 200.0, 1e-30, -1e-30])
    kept = x.clone()
    fast = SigmoidTanhGELU()
    for ref in (NewGELUActivation(), GELUTanh()):
        assert torch.allclose(fast(x), ref(x), rtol=1e-6, atol=1e-6)
        with torch.inference_mode():  # on AVX-512 VNNI CPUs: in C (the fused int8 step's own GELU)
            assert torch.allclose(CGELU()(x), ref(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(x, kept)
    g = x.clone().requires_grad_(True)
    fast(g).sum().backward()  # training-safe: no in-place op on a tensor autograd saved
    h = x.clone().requires_grad_(True)
    NewGELUActivation()(h).sum().backward()
    assert torch.allclose(g.grad, h.grad, rtol=1e-5, atol=1e-5)
    q = apply_precision(tiny_model(), "int8", torch.device("cpu"))
    assert not any(isinstance(m, NewGELUActivation) for m in q.modules())
    served = CGELU if cpu_int8.vnni512() else SigmoidTanhGELU
    assert sum(isinstance(m, served) for m in q.modules()) == 2  # one per layer
    f = apply_precision(tiny_model(), "fp32", torch.device("cpu"))
    assert sum(isinstance(m, NewGELUActivation) for m in f.modules()) == 2


def test_int8_batched_greedy_equals_int8_generate(model_dir: Path) -> None:
    """Activations are quantized per row and the int8 matmul is exact, so a reply does not depend on what
    else is in the batch: the batched, chunked int8 engine matches `generate` on the same int8 model."""
    tok = tiny_tokenizer()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="int8", step_tokens=6), rec.emit)
    core.ensure_model()
    params = GenerationParams(max_new_tokens=20, repetition_penalty=1.2)
    for i, prompt in enumerate(PROMPTS):
        core.submit(GenRequest(str(i), tok(prompt)["input_ids"], params))
        core.step()
    while core.step():
        pass
    model = core.loaded.model
    for i, prompt in enumerate(PROMPTS):
        ref = reference(model, tok(prompt)["input_ids"], do_sample=False, max_new_tokens=20, repetition_penalty=1.2)
        assert rec.end(str(i))["text"] == tok.decode(ref, skip_special_tokens=True)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_lean_gpt2_step_equals_the_models_own_packed_forward(model_dir: Path, precision: str) -> None:
    """The lean GPT-2 step (PackedGPT2) and the model's own forward with the packed attention (the path
    other architectures take) produce the same logits, through chunked prefill and joins mid-prefill."""
    from slm.batching import PackedGPT2

    tok = tiny_tokenizer()
    params = GenerationParams(max_new_tokens=10, repetition_penalty=1.3)
    prompts = {"short": tok(PROMPTS[0])["input_ids"], "long": _long_prompt(tok, 40), "mid": _long_prompt(tok, 17)}
    logits: dict[bool, list[torch.Tensor]] = {}
    for lean in (True, False):
        cfg = EngineConfig(model=str(model_dir), precision=precision, step_tokens=8, prefill_share=math.inf)
        core = EngineCore(cfg, Recorder().emit)  # a chunk every step: the same steps on both paths
        lm = core.ensure_model()
        assert isinstance(lm.packed, PackedGPT2)
        seen = logits[lean] = []
        if lean:
            step = lm.packed

            def spy(*args: Any, _step: Any = step, seen: list[torch.Tensor] = seen) -> torch.Tensor:
                out = _step(*args)
                seen.append(out)
                return out

            lm.packed = spy
        else:
            lm.packed = None
            forward = lm.model.forward

            def spy_model(*args: Any, _forward: Any = forward, seen: list[torch.Tensor] = seen, **kwargs: Any) -> Any:
                out = _forward(*args, **kwargs)
                seen.append(out.logits[0])
                return out

            lm.model.forward = spy_model
        core.submit(GenRequest("short", prompts["short"], params))
        core.step()
        core.submit(GenRequest("long", prompts["long"], params))
        core.step()
        core.submit(GenRequest("mid", prompts["mid"], params))  # joins while "long" is mid-prefill
        while core.step():
            pass
    assert len(logits[True]) == len(logits[False]) > 10
    for a, b in zip(logits[True], logits[False], strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_engine_start_raises_no_warnings(model_dir: Path) -> None:
    """Loading and serving at every CPU precision stays clear of deprecated torch APIs (quantize_dynamic and
    quantized tensors warn in torch 2.13 that they will be removed)."""
    tok = tiny_tokenizer()
    for precision in ("int8", "fp32"):
        rec = Recorder()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            core = EngineCore(EngineConfig(model=str(model_dir), precision=precision), rec.emit)
            core.ensure_model()
            core.submit(GenRequest("w", tok(PROMPTS[2])["input_ids"], GenerationParams(max_new_tokens=3)))
            while core.step():
                pass
        assert rec.end("w")["reason"] in ("length", "eos"), precision


def _long_prompt(tok: Any, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tok("User: tell me a joke about the chicken and the road, 你好 😀\n")["input_ids"]
    return ids[: n - 2] + tok("Agent:")["input_ids"][:2]


def test_chunked_prefill_greedy_equals_generate_with_joins_mid_prefill(model_dir: Path) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32", step_tokens=8), rec.emit)
    core.ensure_model()
    assert core.loaded.packed is not None
    params = GenerationParams(max_new_tokens=12, repetition_penalty=1.3)
    prompts = {"long": _long_prompt(tok, 50), "short": tok(PROMPTS[0])["input_ids"], "mid": _long_prompt(tok, 20)}
    core.submit(GenRequest("short", prompts["short"], params))
    core.step()
    core.step()  # "short" is decoding
    core.submit(GenRequest("long", prompts["long"], params))
    core.step()
    long_row = next(r for r in core.rows if r.req.id == "long")
    assert 0 < long_row.cached < len(prompts["long"])  # prefilled in chunks...
    core.submit(GenRequest("mid", prompts["mid"], params))  # ...and another request joins mid-prefill
    core.step()
    assert all(r.prefilling for r in core.rows if r.req.id in ("long", "mid"))
    while core.step():
        pass
    for rid, ids in prompts.items():
        ref = reference(model, ids, do_sample=False, max_new_tokens=12, repetition_penalty=1.3)
        end = rec.end(rid)
        assert end["text"] == tok.decode(ref, skip_special_tokens=True) == rec.tokens(rid), rid
        assert end["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(ref)}
    assert core.cache is None and core.rows == []


def test_prefill_never_stalls_decoding_streams_and_keeps_the_budget(model_dir: Path) -> None:
    tok = tiny_tokenizer()
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), precision="fp32", step_tokens=8, prefill_share=math.inf)
    core = EngineCore(cfg, rec.emit)  # share inf: a prompt chunk every step
    core.ensure_model()
    for i in range(3):
        core.submit(GenRequest(f"d{i}", tok(PROMPTS[0])["input_ids"][:5], GenerationParams(max_new_tokens=60)))
    core.step()  # nobody decodes yet: the three 5-token prompts go in one step (8x the budget when idle)
    assert core.steps == 1 and all(not r.prefilling and r.generated == 1 for r in core.rows)
    core.submit(GenRequest("long", _long_prompt(tok, 60), GenerationParams(max_new_tokens=4)))
    sizes = []
    while any(r.prefilling for r in core.rows) or core.waiting:
        before = {r.req.id: r.generated for r in core.rows if r.req.id != "long"}
        cached = sum(r.cached for r in core.rows if r.req.id == "long")
        core.step()
        after = {r.req.id: r.generated for r in core.rows if r.req.id != "long"}
        assert all(after[k] == before[k] + 1 for k in before)  # a token for every stream each step
        sizes.append(sum(r.cached for r in core.rows if r.req.id == "long") - cached)
    assert sizes[:-1] == [5] * (len(sizes) - 1) and 1 <= sizes[-1] <= 5  # 8 - 3 decoding = 5 prompt tokens
    while core.step():
        pass
    assert rec.end("long")["usage"]["completion_tokens"] == 4


def test_prefill_takes_its_time_share_from_decoding_streams(model_dir: Path) -> None:
    """While streams decode, prompt chunks get `prefill_share` of the decode time: with decode-only steps
    of 1 s and chunk steps of 2 s (1 s extra) and a share of 0.5, a chunk goes in every third step; a new
    prompt gets its first chunk at once, and time is not banked while no prompt waits."""
    tok = tiny_tokenizer()
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), precision="fp32", step_tokens=8, prefill_share=0.5)
    core = EngineCore(cfg, rec.emit)
    core.ensure_model()
    account = core._account

    def fake_durations(lane: Any, elapsed: float, n_decoding: int, n_tokens: int, chunk: bool, backlog: bool) -> None:
        account(lane, 2.0 if chunk else 1.0, n_decoding, n_tokens, chunk, backlog)  # the step's "duration"

    core._account = fake_durations  # type: ignore[method-assign]
    for i in range(2):
        core.submit(GenRequest(f"d{i}", tok(PROMPTS[0])["input_ids"][:5], GenerationParams(max_new_tokens=80)))
    for _ in range(10):  # decode-only steps with nothing waiting: no credit piles up
        core.step()
    lane = next(iter(core.lanes.values()))
    assert lane.prefill_credit == 0.0 and lane.decode_step_s == pytest.approx(1.0)
    core.submit(GenRequest("long", _long_prompt(tok, 60), GenerationParams(max_new_tokens=2)))
    pattern = []
    while any(r.prefilling for r in core.rows) or core.waiting:
        cached = sum(r.cached for r in core.rows if r.req.id == "long")
        core.step()
        pattern.append(sum(r.cached for r in core.rows if r.req.id == "long") - cached)
    assert pattern[:7] == [6, 0, 0, 6, 0, 0, 6]  # first chunk at once, then 1 s extra per 2 x 0.5 s earned
    assert lane.prefill_credit < 0  # ... and the share is spent now: yet a short prompt goes in at once
    core.submit(GenRequest("late", _long_prompt(tok, 60), GenerationParams(max_new_tokens=2)))
    core.submit(GenRequest("short", tok(PROMPTS[0])["input_ids"][:5], GenerationParams(max_new_tokens=2)))
    core.step()
    assert lane.prefill_credit < 0
    short = next(r for r in core.rows if r.req.id == "short")
    late = next(r for r in core.rows if r.req.id == "late")
    assert not short.prefilling and late.cached == 0  # the long one still waits for its share
    while core.step():
        pass
    assert rec.end("long")["reason"] in ("length", "eos")


def test_cancel_during_chunked_prefill_lands_within_one_step(model_dir: Path) -> None:
    tok = tiny_tokenizer()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32", step_tokens=8), rec.emit)
    core.ensure_model()
    core.submit(GenRequest("a", tok(PROMPTS[1])["input_ids"], GenerationParams(max_new_tokens=50)))
    core.submit(GenRequest("long", _long_prompt(tok, 80), GenerationParams(max_new_tokens=5)))
    for _ in range(3):
        core.step()
    row = next(r for r in core.rows if r.req.id == "long")
    assert row.prefilling and row.cached > 0
    core.cancel("long")
    core.step()
    end = rec.end("long")
    assert end["reason"] == "cancelled" and end["usage"]["completion_tokens"] == 0 and rec.tokens("long") == ""
    assert [r.req.id for r in core.rows] == ["a"]  # the other stream goes on, the slot is free again
    core.submit(GenRequest("b", tok(PROMPTS[2])["input_ids"], GenerationParams(max_new_tokens=3)))
    while core.step():
        pass
    assert rec.end("b")["reason"] in ("length", "eos") and rec.end("a")["reason"] in ("length", "eos")


def _submit(
    engine: Engine, rec: Recorder, text: str, params: GenerationParams, user: str | None = None, model_ref: str = ""
) -> str:
    tok = tiny_tokenizer()
    box: list[str] = []
    known = threading.Event()
    prompt = ChatPrompt(text, tok(text)["input_ids"], 0, 0)
    rid, _ = engine.submit(prompt, params, rec.callback(box, known), user_key=user, model_ref=model_ref)
    box.append(rid)
    rec.done.setdefault(rid, threading.Event())
    known.set()
    return rid


def test_hot_swap_to_promoted_version_without_restart(tmp_path: Path) -> None:
    from slm.registry import Registry

    reg = Registry(tmp_path / "registry")
    v1 = add_tiny_chat_version(reg, seed=0)
    engine = Engine(EngineConfig(registry_root=str(reg.root), precision="fp32", swap_check_s=0.05), mode="thread")
    rec = Recorder()
    try:
        rid = _submit(engine, rec, PROMPTS[0], GenerationParams(max_new_tokens=4))
        assert rec.done[rid].wait(30)
        assert rec.end(rid)["model"] == v1.ref
        v2 = add_tiny_chat_version(reg, seed=1)  # promoted: the engine picks it up between steps
        assert engine.prepare([], "hello", GenerationParams(max_new_tokens=4))[0] == v2.ref
        rid2 = _submit(engine, rec, PROMPTS[0], GenerationParams(max_new_tokens=4), model_ref=v2.ref)
        assert rec.done[rid2].wait(30)
        assert rec.end(rid2)["model"] == v2.ref
        assert [d for k, d in rec.events[rid2] if k == "started"][0]["model"] == v2.ref
    finally:
        engine.close()
    assert not engine.alive()


def test_hundred_aborted_streams_leave_nothing_behind(model_dir: Path) -> None:
    def engine_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("chat-")]

    assert engine_threads() == []
    engine = Engine(EngineConfig(model=str(model_dir), precision="fp32", max_batch=8, queue_size=200), mode="thread")
    rec = Recorder()
    try:
        ids = []
        for i in range(100):
            rid = _submit(engine, rec, PROMPTS[i % 3], GenerationParams(max_new_tokens=200), user=f"u{i}")
            ids.append(rid)
            if i % 2:
                engine.cancel(rid)  # cancelled while queued or right after starting
        for rid in ids[::2]:
            engine.cancel(rid)
        for rid in ids:
            assert rec.done[rid].wait(60), rid
        reasons = {rec.end(rid)["reason"] for rid in ids}
        assert "cancelled" in reasons
        assert engine.active_ids() == [] and engine.stats() == {"running": 0, "pending": 0, "queued": 0}
        assert engine._users == {}  # every user may stream again
        assert engine_threads() == ["chat-engine"]  # just the engine thread, no thread per stream
    finally:
        engine.close()
    assert engine_threads() == []


@pytest.mark.slow
def test_process_mode_streams_and_exits_cleanly(model_dir: Path) -> None:
    import multiprocessing as mp

    engine = Engine(EngineConfig(model=str(model_dir), precision="int8", num_threads=1), mode="process")
    rec = Recorder()
    try:
        rid = _submit(engine, rec, PROMPTS[1], GenerationParams(max_new_tokens=10), user="p")
        assert rec.done[rid].wait(120)
        end = rec.end(rid)
        assert end["reason"] in ("length", "eos") and rec.tokens(rid) == end["text"]
        assert engine.alive()
    finally:
        engine.close()
    assert not engine.alive() and mp.active_children() == []


def test_requests_arriving_together_share_one_prefill(model_dir: Path) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32"), rec.emit)
    core.ensure_model()
    params = GenerationParams(max_new_tokens=16, repetition_penalty=1.2)
    for i, prompt in enumerate(PROMPTS):
        core.submit(GenRequest(str(i), tok(prompt)["input_ids"], params))
    core.step()  # one forward pass prefills all three and samples their first tokens
    assert core.steps == 1 and len(core.rows) == 3 and all(r.generated == 1 for r in core.rows)
    core.step()  # the next decodes all three together
    assert core.steps == 2 and all(r.generated == 2 for r in core.rows)
    while core.step():
        pass
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        ref = reference(model, ids, do_sample=False, max_new_tokens=16, repetition_penalty=1.2)
        assert rec.end(str(i))["text"] == tok.decode(ref, skip_special_tokens=True)


@pytest.mark.gpu
def test_gpu_bf16_batched_greedy_equals_generate(model_dir: Path) -> None:
    tok = tiny_tokenizer()
    rec = Recorder()
    cfg = EngineConfig(model=str(model_dir), precision="bf16", device="cuda", step_tokens=8)
    core = EngineCore(cfg, rec.emit)
    core.ensure_model()
    assert core.loaded.device.type == "cuda" and next(core.loaded.model.parameters()).dtype == torch.bfloat16
    params = GenerationParams(max_new_tokens=16)
    prompts = [tok(p)["input_ids"] for p in PROMPTS] + [_long_prompt(tok, 40)]
    for i, ids in enumerate(prompts):
        core.submit(GenRequest(str(i), ids, params))
        core.step()
    while core.step():
        pass
    model = core.loaded.model
    for i, ids in enumerate(prompts):
        x = torch.tensor([ids], device="cuda")
        out = model.generate(
            x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=16, pad_token_id=tok.eos_token_id
        )[0, len(ids) :].tolist()
        ref = out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out
        assert rec.end(str(i))["text"] == tok.decode(ref, skip_special_tokens=True), i


def test_requests_sent_together_from_idle_share_the_first_step(model_dir: Path) -> None:
    """Waking from idle, the engine waits `coalesce_s` for more commands before its first step: a second
    request that is only just behind the first is prefilled with it instead of a step later."""
    import queue as queue_mod

    tok = tiny_tokenizer()
    params = GenerationParams(max_new_tokens=2)

    class Inbox:  # the second submit is "in flight": only a waiting get() sees it
        def __init__(self) -> None:
            self.items = [
                ("submit", GenRequest("a", tok(PROMPTS[0])["input_ids"], params)),
                ("submit", GenRequest("b", tok(PROMPTS[1])["input_ids"], params)),
            ]
            self.gets = 0

        def get(self, timeout: float | None = None) -> tuple[Any, ...]:
            self.gets += 1
            if self.items and (self.gets == 1 or (timeout or 0) > 0):
                return self.items.pop(0)
            if self.gets > 50:
                return ("shutdown",)
            raise queue_mod.Empty

        def get_nowait(self) -> tuple[Any, ...]:
            return self.get(0)

    order: list[tuple[str | None, str]] = []
    core = EngineCore(EngineConfig(model=str(model_dir), precision="fp32"), lambda r, k, d: order.append((r, k)))
    core.ensure_model()
    core.run(Inbox())
    started = [r for r, k in order if k == "started"]
    first_token = next(i for i, (_, k) in enumerate(order) if k in ("token", "end"))
    assert started == ["a", "b"] and order.index(("b", "started")) < first_token
