"""Sockets that arrive together ask the engine for the tokenizer at once: it is loaded once, by one thread
(concurrent first imports of transformers raised ImportError in some threads and closed sockets with 1011)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from slm import engine as engine_mod


def test_concurrent_first_requests_load_the_tokenizer_once(monkeypatch):
    calls = []
    lock = threading.Lock()

    def slow_load(cfg):  # type: ignore[no-untyped-def]
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.2)
        return "m@v1", object(), 128

    monkeypatch.setattr(engine_mod, "load_tokenizer", slow_load)
    monkeypatch.setattr(engine_mod, "resolve_ref", lambda cfg: ("m@v1", None))
    eng = engine_mod.Engine(engine_mod.EngineConfig(model="unused"), mode="thread")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: eng.tokenizer(), range(8)))
    assert len(calls) == 1
    assert len({id(tok) for _, tok, _ in results}) == 1
