"""Chat engine serving several models: what a second model costs, measured against one model in the same run.

  * one model     4 streams on model A (the reference);
  * two models    2 streams on A + 2 on B at once (one packed forward pass per model per step);
  * switch        with room for one model only (max_model_bytes): the first token of a request for B after A
                  served (B loaded, A unloaded) vs a request for B once it is loaded.

Models: two GPT-2 124M-shape models with random weights (speed does not depend on them), the real GPT-2
tokenizer, EOS disabled so every stream produces exactly --new-tokens tokens; the engine in its own
process (the server's mode). The CPU here is shared: ratios within one run are what count.

    .venv/bin/python bench/chat_models.py [--new-tokens 32] [--precision int8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chat import PROMPTS, build_model  # noqa: E402


def streams(views: list[Any], tok: Any, new_tokens: int) -> dict[str, float]:
    """One stream per view (views may repeat), all submitted at once; aggregate tok/s and TTFT."""
    from slm.generation import ChatPrompt, GenerationParams

    params = GenerationParams(max_new_tokens=new_tokens, do_sample=False)
    done = threading.Event()
    ttft: dict[int, float] = {}
    tokens: dict[int, int] = {}
    starts: dict[int, float] = {}
    lock = threading.Lock()

    def make_cb(i: int) -> Any:
        def cb(kind: str, data: dict[str, Any]) -> None:
            if kind == "token" and i not in ttft:
                ttft[i] = time.perf_counter() - starts[i]
            if kind in ("end", "error"):
                if kind == "error":
                    print("engine error:", data, file=sys.stderr)
                with lock:
                    tokens[i] = data["usage"]["completion_tokens"] if kind == "end" else 0
                    if len(tokens) == len(views):
                        done.set()

        return cb

    t0 = time.perf_counter()
    for i, view in enumerate(views):
        text = PROMPTS[i % len(PROMPTS)]
        starts[i] = time.perf_counter()
        view.submit(ChatPrompt(text, tok(text)["input_ids"], 0, 0), params, make_cb(i))
    if not done.wait(900):
        raise TimeoutError("streams did not finish")
    wall = time.perf_counter() - t0
    return {"tok_s": sum(tokens.values()) / wall, "ttft_ms": 1000 * max(ttft.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from slm.engine import Engine, EngineConfig, load_model

    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        _, tok = build_model(a)
        build_model(b)  # same shape (seed 0 again: the weights do not change the speed)
        one = load_model(EngineConfig(model=str(a), precision=args.precision)).nbytes
        print(f"model: GPT-2 124M shape, {args.precision}: {one / 2**20:.0f} MB in memory")
        both = Engine(EngineConfig(model=str(a), precision=args.precision, num_threads=1), mode="process")
        tight = Engine(
            EngineConfig(model=str(a), precision=args.precision, num_threads=1, max_model_bytes=int(1.5 * one)),
            mode="process",
        )
        rows: dict[str, list[float]] = {"one": [], "two": [], "switch": [], "loaded": []}
        try:
            va, vb = both.bind(str(a)), both.bind(str(b))
            streams([va, vb], tok, 2)  # warm: both loaded
            ta, tb = tight.bind(str(a)), tight.bind(str(b))
            streams([ta], tok, 2)
            for _ in range(args.repeats):
                rows["one"].append(streams([va, va, va, va], tok, args.new_tokens)["tok_s"])
                rows["two"].append(streams([va, va, vb, vb], tok, args.new_tokens)["tok_s"])
                streams([ta], tok, 2)  # A is loaded, B is not: the next request for B swaps
                rows["switch"].append(streams([tb], tok, 2)["ttft_ms"])
                rows["loaded"].append(streams([tb], tok, 2)["ttft_ms"])
        finally:
            both.close()
            tight.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"4 streams, one model:          {med['one']:.1f} tok/s")
    print(f"2 + 2 streams, two models:     {med['two']:.1f} tok/s  ({med['two'] / med['one']:.2f}x)")
    print(f"first token, model loaded:     {med['loaded']:.0f} ms")
    print(f"first token, LRU swap first:   {med['switch']:.0f} ms  (+{med['switch'] - med['loaded']:.0f} ms)")


if __name__ == "__main__":
    main()
