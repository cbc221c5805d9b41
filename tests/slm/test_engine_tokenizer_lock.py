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

    def slow_load(cfg, source=None):  # type: ignore[no-untyped-def]
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.2)
        return "m@v1", object(), 128

    monkeypatch.setattr(engine_mod, "load_tokenizer", slow_load)
    monkeypatch.setattr(engine_mod, "resolve_ref", lambda cfg, source=None: ("m@v1", None))
    eng = engine_mod.Engine(engine_mod.EngineConfig(model="unused"), mode="thread")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: eng.tokenizer(), range(8)))
    assert len(calls) == 1
    assert len({id(tok) for _, tok, _ in results}) == 1


RACE = """
import threading
from slm.engine import transformers_names
barrier = threading.Barrier(3)
errors = []
def load(*names):
    barrier.wait()
    try:
        transformers_names(*names)
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load, args=names) for names in
           (("AutoModelForCausalLM", "AutoTokenizer"), ("AutoConfig", "AutoTokenizer"), ("AutoConfig",))]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


def test_the_engine_imports_transformers_safely_from_several_threads():
    """transformers' lazy module raised "cannot import name 'AutoConfig'" when the engine thread (model) and a
    socket's thread (tokenizer) imported it at once in a fresh process; the engine serialises those imports."""
    import subprocess
    import sys

    from tests.stack import ROOT

    out = subprocess.run([sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
