"""Chat serving: our engine vs a bare transformers baseline, in one run, same model and prompts.

  * baseline   a thread per request running fp32 `model.generate` (greedy) with `TextIteratorStreamer`
               (what a naive consumer does);
  * engine     slm.engine.Engine: one batched decode loop with a shared KV cache, requests joining and
               leaving between steps, in its own process (mode "process", int8 by default), i.e. the
               server path minus the WebSocket framing;
  * engine-thread  the same engine run in a thread of this process (to compare the two placements).

Model: GPT-2 124M shape (GPT2Config() defaults) with random weights (speed does not depend on them) and
the real GPT-2 tokenizer (built offline from openai-whisper's gpt2.tiktoken). EOS is disabled so every
stream produces exactly --new-tokens tokens. Measured: single-stream TTFT and tok/s, then 4 and 8
concurrent streams (aggregate tok/s, per-stream TTFT p50/p95), and the memory-bandwidth ceiling
(measured copy bandwidth / bytes of weights read per decode step) in the same run.

When the default trained chat model is in var/registry (registry:chat), int8 vs fp32 greedy agreement
and held-out perplexity are reported too (--quality-only runs just that part).

    .venv/bin/python bench/chat.py [--new-tokens 32] [--streams 1,4,8] [--precision int8] [--skip-thread]

The CPU here is shared by other jobs: numbers are noisy; ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PROMPTS = [
    "User: What is the capital of France?\nAgent:",
    "User: Tell me a short story about a robot who learns to paint.\nAgent:",
    "User: How do I make a good cup of coffee at home?\nAgent:",
    "User: Explain what a neural network is in simple words.\nAgent:",
    "User: What should I pack for a weekend hiking trip?\nAgent:",
    "User: Can you recommend a book about history?\nAgent:",
    "User: Why is the sky blue during the day?\nAgent:",
    "User: Give me three tips for learning a new language.\nAgent:",
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------ model
def build_model(directory: Path) -> tuple[Any, Any]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from slm.tokenizer_build import gpt2_tokenizer

    torch.manual_seed(0)
    tok = gpt2_tokenizer()
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.generation_config.eos_token_id = None  # fixed-length streams
    model.generation_config.pad_token_id = 50256
    model.config.eos_token_id = None
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model, tok


def bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best of `repeats` large copies on all cores: bytes read + written per second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return _copy_bandwidth(mb, repeats)
    finally:
        torch.set_num_threads(threads)


def _copy_bandwidth(mb: int, repeats: int) -> float:
    a = torch.empty(mb * 1024 * 1024 // 4, dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9


def weight_bytes(model: Any) -> int:
    """Bytes read per decode step: every matrix once (the LM head reads the tied embedding)."""
    total = 0
    for name, p in model.named_parameters():
        if "wte" in name:
            total += p.numel() * p.element_size()  # as the LM head matrix
        elif "wpe" not in name:
            total += p.numel() * p.element_size()
    return total


def int8_weight_bytes(fp32_bytes: int, model: Any) -> int:
    """Linear weights (incl. LM head) at 1 byte; layer norms/biases stay fp32 (negligible)."""
    n_matrix = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n)
    return n_matrix + (fp32_bytes - n_matrix * 4)


# ------------------------------------------------------------------------------------- baseline
def baseline_run(model: Any, tok: Any, n_streams: int, new_tokens: int) -> dict[str, Any]:
    from transformers import TextIteratorStreamer

    ttfts: list[float] = []
    counts: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        enc = tok(prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        t0 = time.perf_counter()
        kwargs = dict(
            **enc,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            streamer=streamer,
            pad_token_id=50256,
        )
        worker = threading.Thread(target=model.generate, kwargs=kwargs)
        worker.start()
        first = None
        for _chunk in streamer:
            if first is None:
                first = time.perf_counter() - t0
        worker.join()
        with lock:
            ttfts.append(first if first is not None else float("nan"))
            counts.append(new_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n_streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"streams": n_streams, "tokens": sum(counts), "wall": wall, "ttft": ttfts}


# --------------------------------------------------------------------------------------- engine
def engine_run(engine: Any, tok: Any, n_streams: int, new_tokens: int) -> dict[str, Any]:
    from slm.generation import ChatPrompt, GenerationParams

    params = GenerationParams(max_new_tokens=new_tokens, do_sample=False)
    done = threading.Event()  # callbacks run on the engine's event thread: never block there
    finished: list[int] = []
    ttfts: dict[int, float] = {}
    tokens: dict[int, int] = {}
    starts: dict[int, float] = {}

    def make_cb(i: int) -> Any:
        def cb(kind: str, data: dict[str, Any]) -> None:
            if kind == "token" and i not in ttfts:
                ttfts[i] = time.perf_counter() - starts[i]
            if kind in ("end", "error"):
                if kind == "error":
                    print("engine error:", data, file=sys.stderr)
                tokens[i] = data["usage"]["completion_tokens"] if kind == "end" else 0
                finished.append(i)
                if len(finished) == n_streams:
                    done.set()

        return cb

    t0 = time.perf_counter()
    for i in range(n_streams):
        text = PROMPTS[i % len(PROMPTS)]
        prompt = ChatPrompt(text, tok(text)["input_ids"], 0, 0)
        starts[i] = time.perf_counter()
        engine.submit(prompt, params, make_cb(i))
    if not done.wait(900):
        raise TimeoutError("engine streams did not finish")
    wall = time.perf_counter() - t0
    return {"streams": n_streams, "tokens": sum(tokens.values()), "wall": wall, "ttft": list(ttfts.values())}


def warm_engine(engine: Any, tok: Any) -> None:
    engine_run(engine, tok, 1, 2)


def row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    agg = r["tokens"] / r["wall"] if r["wall"] else 0.0
    single = r["streams"] == 1
    # single stream: decode speed excluding the first token's latency
    if single and r["tokens"] > 1:
        decode = (r["tokens"] - 1) / max(1e-9, r["wall"] - r["ttft"][0])
    else:
        decode = agg
    out = {
        "name": name,
        "streams": r["streams"],
        "agg_tok_s": agg,
        "decode_tok_s": decode,
        "ttft_p50_ms": pct(r["ttft"], 0.5) * 1000,
        "ttft_p95_ms": pct(r["ttft"], 0.95) * 1000,
    }
    print(
        f"  {name:<14} streams={r['streams']:<2} aggregate {agg:7.1f} tok/s   per-stream decode {decode:7.1f} tok/s"
        f"   TTFT p50 {out['ttft_p50_ms']:7.0f} ms  p95 {out['ttft_p95_ms']:7.0f} ms",
        flush=True,
    )
    return out


# -------------------------------------------------------------------------------------- quality
def quality(registry_dir: Path, max_texts: int, new_tokens: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm.chat_data import chatterbot_dialogues, format_dialogue, split_dialogues
    from slm.engine import apply_precision
    from slm.registry import Registry

    reg = Registry(registry_dir)
    mv = reg.live("chat") if (registry_dir / "chat").exists() else None
    if mv is None:
        print(f"\nquality: no live 'chat' model in {registry_dir} (run manage.py bootstrap_models); skipped")
        return
    cfg = mv.metadata.get("config", {})
    tok = AutoTokenizer.from_pretrained(mv.path)
    fp32 = AutoModelForCausalLM.from_pretrained(mv.path).eval()
    int8 = apply_precision(AutoModelForCausalLM.from_pretrained(mv.path).eval(), "int8", torch.device("cpu"))
    dialogues = chatterbot_dialogues(tuple(cfg.get("languages", ["english"])))
    if cfg.get("max_dialogues"):
        dialogues = dialogues[: cfg["max_dialogues"]]
    _, held = split_dialogues(dialogues, cfg.get("eval_fraction", 0.1), seed=cfg.get("train", {}).get("seed", 0))
    held = held[:max_texts]
    n_pos = fp32.config.n_positions

    def ppl(model: Any) -> float:
        nll, n = 0.0, 0
        with torch.inference_mode():
            for d in held:
                ids = tok(format_dialogue(d))["input_ids"][: n_pos - 1] + [tok.eos_token_id]
                x = torch.tensor([ids])
                loss = model(x, labels=x).loss.item()
                nll += loss * (len(ids) - 1)
                n += len(ids) - 1
        return float(torch.exp(torch.tensor(nll / n)))

    agree_tok, total_tok, exact = 0, 0, 0
    prompts = [f"User: {d[0]['content']}\nAgent:" for d in held]
    with torch.inference_mode():
        for p in prompts:
            x = tok(p, return_tensors="pt")
            kw = dict(do_sample=False, max_new_tokens=new_tokens, repetition_penalty=1.2, pad_token_id=tok.eos_token_id)
            a = fp32.generate(**x, **kw)[0, x["input_ids"].shape[1] :].tolist()
            b = int8.generate(**x, **kw)[0, x["input_ids"].shape[1] :].tolist()
            same = 0
            for s, t in zip(a, b, strict=False):
                if s != t:
                    break
                same += 1
            agree_tok += same
            total_tok += max(len(a), 1)
            exact += int(a == b)
    p32, p8 = ppl(fp32), ppl(int8)
    print(
        f"\nquality on {mv.ref} ({len(held)} held-out dialogues, greedy {new_tokens} tokens, repetition_penalty 1.2):"
    )
    print(f"  perplexity fp32 {p32:.2f}  int8 {p8:.2f}  (int8/fp32 {p8 / p32:.3f})")
    print(
        f"  greedy agreement int8 vs fp32: identical replies {exact}/{len(prompts)} ({exact / len(prompts):.0%}), "
        f"tokens before first divergence {agree_tok / total_tok:.0%}"
    )


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--precision", default="int8")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the baseline and the engine (0 = torch default). On the shared 2-core box, "
        "2 threads collapsed under load (GPT-2 124M int8 2 tok/s vs 30 with 1 thread), so both sides get 1",
    )
    ap.add_argument("--skip-thread", action="store_true", help="skip the engine-in-a-thread placement")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--quality-texts", type=int, default=60)
    ap.add_argument("--registry", default=str(ROOT / "var" / "registry"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    streams = [int(s) for s in args.streams.split(",")]
    print(f"cpu cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, load avg {os.getloadavg()}")
    if not args.quality_only:
        from slm.engine import Engine, EngineConfig

        with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
            d = Path(tmp)
            print("building GPT-2 124M (random weights)…", flush=True)
            model, tok = build_model(d)
            bw = bandwidth_gbs()
            wb = weight_bytes(model)
            wb8 = int8_weight_bytes(wb, model)
            print(
                f"memory bandwidth {bw:.1f} GB/s; weights read per step fp32 {wb / 1e6:.0f} MB, int8 ~{wb8 / 1e6:.0f} MB"
                f" -> ceiling {bw * 1e9 / wb:.1f} tok/s fp32, {bw * 1e9 / wb8:.1f} tok/s int8 (one stream)",
                flush=True,
            )
            results: dict[str, dict[int, dict[str, Any]]] = {"baseline": {}, "engine": {}, "engine-thread": {}}
            print(f"\nbaseline: thread per request, fp32 generate + TextIteratorStreamer, {args.new_tokens} new tokens")
            baseline_run(model, tok, 1, 2)  # warm-up
            for n in streams:
                results["baseline"][n] = row("baseline", baseline_run(model, tok, n, args.new_tokens))
            del model
            placements = [("engine", "process")] + ([] if args.skip_thread else [("engine-thread", "thread")])
            for name, mode in placements:
                cfg = EngineConfig(
                    model=str(d),
                    precision=args.precision,
                    max_batch=max(streams),
                    queue_size=64,
                    num_threads=args.threads or None,
                )
                engine = Engine(cfg, mode=mode)
                print(f"\n{name}: slm.engine mode={mode} precision={args.precision} (loading…)", flush=True)
                t = time.perf_counter()
                warm_engine(engine, tok)
                print(f"  ready in {time.perf_counter() - t:.1f}s", flush=True)
                for n in streams:
                    results[name][n] = row(name, engine_run(engine, tok, n, args.new_tokens))
                engine.close()
            print("\nratios (engine / baseline):")
            for n in streams:
                b, e = results["baseline"][n], results["engine"][n]
                line = f"  {n} stream(s): aggregate {e['agg_tok_s'] / b['agg_tok_s']:.2f}x"
                if n == 1:
                    line += f", single-stream decode {e['decode_tok_s'] / b['decode_tok_s']:.2f}x"
                line += f", TTFT p95 {e['ttft_p95_ms']:.0f} vs {b['ttft_p95_ms']:.0f} ms"
                if "engine-thread" in results and n in results["engine-thread"]:
                    th = results["engine-thread"][n]
                    line += f"; thread placement {th['agg_tok_s'] / e['agg_tok_s']:.2f}x of process"
                print(line)
            if 1 in results["engine"] and 4 in results["engine"]:
                single = results["engine"][1]["ttft_p50_ms"]
                print(
                    f"  engine TTFT p95 at 4 streams / single-user TTFT: {results['engine'][4]['ttft_p95_ms'] / single:.2f}x"
                )
            print(
                f"  engine single stream vs int8 ceiling: {results['engine'][1]['decode_tok_s'] / (bw * 1e9 / wb8):.0%}"
                if 1 in results["engine"]
                else ""
            )
    quality(Path(args.registry), args.quality_texts, args.new_tokens)


if __name__ == "__main__":
    main()
