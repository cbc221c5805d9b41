"""slm.engine: the batched KV-cache decode loop (greedy == generate with requests joining mid-batch),
int8 conversion, cancel within one token, hot swap on promotion, no leaks after aborted streams."""

from __future__ import annotations

import threading
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

    model = tiny_model()
    x = torch.tensor([[1, 2, 3, 4]])
    before = model(x).logits
    conv1d_to_linear(model)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert torch.allclose(model(x).logits, before, atol=1e-5)
    q = apply_precision(tiny_model(), "int8", torch.device("cpu"))
    assert any("quantized" in type(m).__module__ for m in q.modules())
    rec = Recorder()
    core = EngineCore(EngineConfig(model=str(model_dir), precision="int8"), rec.emit)
    core.ensure_model()
    core.submit(GenRequest("q", tiny_tokenizer()(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=8)))
    while core.step():
        pass
    assert rec.end("q")["reason"] in ("length", "eos")


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
    core.step()  # one padded prefill for all three, then one decode step
    assert len(core.rows) == 3 and all(r.generated == 2 for r in core.rows)
    while core.step():
        pass
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        ref = reference(model, ids, do_sample=False, max_new_tokens=16, repetition_penalty=1.2)
        assert rec.end(str(i))["text"] == tok.decode(ref, skip_special_tokens=True)
