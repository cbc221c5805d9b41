"""slm.engine serving several local models: requests for two models in one engine (greedy == each model's
own `generate`), a memory bound with least-recently-used unloading that never unloads a model with live
streams, per-model live-pointer swaps, and the facade's per-model views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from slm.engine import Engine, EngineConfig, EngineCore, GenRequest, load_model
from slm.generation import GenerationParams
from tests.chat.tiny import add_tiny_chat_version, save_tiny, tiny_model, tiny_tokenizer
from tests.slm.test_engine import PROMPTS, Recorder, _submit, reference

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("model-a"), tmp_path_factory.mktemp("model-b")
    save_tiny(a, seed=0)
    save_tiny(b, seed=7, n_positions=96)
    return a, b


class Events(Recorder):
    """Also records the engine-wide events (model loaded / unloaded) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: list[tuple[str, str]] = []

    def emit(self, rid: str | None, kind: str, data: dict[str, Any]) -> None:
        if rid is None:
            self.engine.append((kind, str(data.get("source"))))
            return
        super().emit(rid, kind, data)


def _bytes_of(directory: Path) -> int:
    return load_model(EngineConfig(model=str(directory), precision="fp32")).nbytes


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_two_models_in_one_engine_each_greedy_equals_its_generate(
    two_models: tuple[Path, Path], precision: str
) -> None:
    torch.set_num_threads(1)
    a, b = (str(p) for p in two_models)
    tok = tiny_tokenizer()
    rec = Events()
    core = EngineCore(EngineConfig(model=a, precision=precision, step_tokens=8), rec.emit)
    params = GenerationParams(max_new_tokens=16, repetition_penalty=1.3)
    plan = [("a0", a, PROMPTS[0]), ("b0", b, PROMPTS[0]), ("a1", a, PROMPTS[1]), ("b1", b, PROMPTS[2])]
    for rid, source, prompt in plan:  # each joins while the others decode
        core.submit(GenRequest(rid, tok(prompt)["input_ids"], params, source=source if source != a else ""))
        core.step()
    assert {r.lm.source for r in core.rows} == {a, b}  # both models have streams at once
    while core.step():
        pass
    assert sorted(core.lanes) == sorted([a, b]) and core.rows == []
    for rid, source, prompt in plan:
        model = core.lanes[source].loaded.model  # the served model (int8: its quantized layers)
        ids = reference(model, tok(prompt)["input_ids"], do_sample=False, max_new_tokens=16, repetition_penalty=1.3)
        end = rec.end(rid)
        assert end["text"] == tok.decode(ids, skip_special_tokens=True), rid
        assert end["model"] == source
    if precision == "fp32":  # and the fp32 models are the saved ones, not each other
        for rid, source, prompt in plan:
            seed, n_pos = (0, 128) if source == a else (7, 96)
            ids = reference(
                tiny_model(seed, n_pos), tok(prompt)["input_ids"], do_sample=False, max_new_tokens=16,
                repetition_penalty=1.3,
            )  # fmt: skip
            assert rec.end(rid)["text"] == tok.decode(ids, skip_special_tokens=True), rid
        assert rec.end("a0")["text"] != rec.end("b0")["text"]


def test_memory_bound_unloads_the_least_recently_used_idle_model(tmp_path: Path) -> None:
    dirs = []
    for i in range(3):
        d = tmp_path / f"m{i}"
        save_tiny(d, seed=i)
        dirs.append(str(d))
    a, b, c = dirs
    one = _bytes_of(tmp_path / "m0")
    rec = Events()
    tok = tiny_tokenizer()
    # room for two models: a third unloads the least recently used one that has no stream
    core = EngineCore(EngineConfig(model=a, precision="fp32", max_model_bytes=int(2.5 * one)), rec.emit)
    params = GenerationParams(max_new_tokens=3)

    def run(rid: str, source: str) -> None:
        core.submit(GenRequest(rid, tok(PROMPTS[0])["input_ids"], params, source=source))
        while core.step():
            pass
        assert rec.end(rid)["model"] == source

    run("1", a)
    run("2", b)
    run("3", a)  # a is now more recently used than b
    assert list(core.lanes) == [b, a]
    run("4", c)
    assert list(core.lanes) == [a, c]  # b went, not a
    assert ("unloaded", b) in rec.engine and ("unloaded", a) not in rec.engine
    assert core.used_bytes() <= 2.5 * one


def test_a_model_with_live_streams_is_never_unloaded(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    save_tiny(a, seed=0)
    save_tiny(b, seed=1)
    one = _bytes_of(a)
    rec = Events()
    tok = tiny_tokenizer()
    core = EngineCore(EngineConfig(model=str(a), precision="fp32", max_model_bytes=int(1.5 * one)), rec.emit)
    core.submit(GenRequest("long", tok(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=20)))
    core.step()
    core.step()
    assert [r.req.id for r in core.rows] == ["long"]
    core.submit(GenRequest("other", tok(PROMPTS[1])["input_ids"], GenerationParams(max_new_tokens=3), source=str(b)))
    core.submit(GenRequest("behind", tok(PROMPTS[2])["input_ids"], GenerationParams(max_new_tokens=3)))
    steps = 0
    while any(r.req.id == "long" for r in core.rows):
        core.step()
        steps += 1
        if any(r.req.id == "long" for r in core.rows):  # a has a live stream: b waits, nothing unloads
            assert list(core.lanes) == [str(a)] and [r.id for r in core.waiting] == ["other", "behind"]
    assert steps > 3
    while core.step():
        pass
    assert rec.end("long")["reason"] in ("length", "eos")
    assert rec.end("other")["model"] == str(b) and rec.end("behind")["model"] == str(a)
    # FIFO: "behind" (for a) did not jump ahead of "other"; b was loaded after a's stream ended
    assert rec.engine == [("model", str(a)), ("unloaded", str(a)), ("model", str(b)), ("unloaded", str(b)),
                          ("model", str(a))]  # fmt: skip


def test_a_model_bigger_than_the_budget_still_loads_alone(two_models: tuple[Path, Path]) -> None:
    a, b = (str(p) for p in two_models)
    rec = Events()
    core = EngineCore(EngineConfig(model=a, precision="fp32", max_model_bytes=1), rec.emit)
    tok = tiny_tokenizer()
    for rid, source in (("x", a), ("y", b)):
        core.submit(GenRequest(rid, tok(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=2), source=source))
    while core.step():
        pass
    assert rec.end("x")["model"] == a and rec.end("y")["model"] == b and list(core.lanes) == [b]


def test_an_unloadable_model_fails_only_its_own_requests(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = (str(p) for p in two_models)
    rec = Events()
    core = EngineCore(EngineConfig(model=a, precision="fp32"), rec.emit)
    tok = tiny_tokenizer()
    missing = str(tmp_path / "nowhere")
    core.submit(GenRequest("bad", tok(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=2), source=missing))
    core.submit(GenRequest("good", tok(PROMPTS[0])["input_ids"], GenerationParams(max_new_tokens=2)))
    while core.step():
        pass
    kind, data = rec.events["bad"][-1]
    assert kind == "error" and data["code"] == "model_unavailable" and "does not exist" in data["message"]
    assert rec.end("good")["model"] == a


def test_engine_views_serve_two_registry_models_and_swap_each_on_promotion(tmp_path: Path) -> None:
    from slm.registry import Registry

    reg = Registry(tmp_path / "registry")
    chat1 = add_tiny_chat_version(reg, "chat", seed=0)
    other1 = add_tiny_chat_version(reg, "other", seed=3)
    engine = Engine(EngineConfig(registry_root=str(reg.root), precision="fp32", swap_check_s=0.05), mode="thread")
    chat, other = engine.bind(None), engine.bind("registry:other")
    rec = Recorder()
    greedy = GenerationParams(max_new_tokens=6, do_sample=False)
    try:

        def submit(view: Any, user: str) -> str:  # prepared for the version live now (as the consumer does)
            ref = view.prepare([], "hello", greedy)[0]
            return _submit(view, rec, PROMPTS[0], greedy, user=user, model_ref=ref)

        r1, r2 = submit(chat, "u1"), submit(other, "u2")
        assert rec.done[r1].wait(30) and rec.done[r2].wait(30)
        assert rec.end(r1)["model"] == chat1.ref and rec.end(r2)["model"] == other1.ref
        assert engine.models == {"registry:chat": chat1.ref, "registry:other": other1.ref}
        other2 = add_tiny_chat_version(reg, "other", seed=4)  # promoted: only "other" swaps
        r3, r4 = submit(other, "u2"), submit(chat, "u1")
        assert rec.done[r3].wait(30) and rec.done[r4].wait(30)
        assert rec.end(r3)["model"] == other2.ref and rec.end(r4)["model"] == chat1.ref
        assert rec.end(r4)["text"] == rec.end(r1)["text"]
        assert engine.models["registry:other"] == other2.ref and engine.model_ref == chat1.ref
    finally:
        engine.close()
