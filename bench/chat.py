"""Chat serving: our engine vs plain references, in one run, same model and prompts.

  * baseline       a thread per request running fp32 `model.generate` (greedy) with `TextIteratorStreamer`
                   (what a naive consumer does);
  * engine         slm.engine.Engine: one packed forward pass per step for every stream (chunked prefill
                   within a token budget, int8 on oneDNN by default), in its own process (mode "process"),
                   i.e. the server path minus the WebSocket framing;
  * engine-thread  the same engine run in a thread of this process (--thread);
  * ctranslate2    CTranslate2's int8 generator on the same weights (converted here, 1 thread, all streams
                   in one generate_batch), when the package is installed (requirements-bench.txt);
  * engine-before  another copy of slm/engine.py (--compare FILE, e.g. the previous commit's), run
                   interleaved with ours, scenario by scenario.

Model: GPT-2 124M shape (GPT2Config() defaults) with random weights (speed does not depend on them) and
the real GPT-2 tokenizer (built offline from openai-whisper's gpt2.tiktoken). EOS is disabled so every
stream produces exactly --new-tokens tokens. Measured: single-stream TTFT and tok/s, then 4 and 8
concurrent streams (aggregate tok/s, per-stream TTFT p50/p95); "prefill under load": 4 streams decoding
while a 512-token prompt arrives (their tok/s during its prefill vs just before, and its TTFT); the
memory-bandwidth ceiling (measured copy bandwidth / bytes of weights read per decode step).
--repeats N runs every scenario N times (engines interleaved) and keeps the median.

When the default trained chat model is in var/registry (registry:chat), int8 vs fp32 greedy agreement
and held-out perplexity are reported too (--quality-only runs just that part).

    .venv/bin/python bench/chat.py [--new-tokens 32] [--streams 1,4,8] [--precision int8] [--repeats 3]
        [--compare /tmp/engine_before.py] [--device cuda --precision bf16]

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


def cpu_seconds(engine: Any = None) -> float:
    """CPU time used so far by the engine's own process (process mode) or by this process: on a shared
    machine CPU time per token is steadier than wall time (it ignores time spent waiting for a core)."""
    proc = getattr(engine, "_proc", None)
    if proc is not None and proc.pid:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return time.process_time()


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


def bandwidth_gbs(device: str = "cpu", mb: int = 256, repeats: int = 5) -> float:
    """Best of `repeats` large copies (on all cores for the CPU): bytes read + written per second."""
    if device != "cpu":
        return _copy_bandwidth(mb * 4, repeats, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return _copy_bandwidth(mb, repeats, device)
    finally:
        torch.set_num_threads(threads)


def _copy_bandwidth(mb: int, repeats: int, device: str) -> float:
    a = torch.empty(mb * 1024 * 1024 // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"streams": n_streams, "tokens": sum(counts), "wall": wall, "ttft": ttfts, "cpu": cpu_seconds() - c0}


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

    c0 = cpu_seconds(engine)
    t0 = time.perf_counter()
    for i in range(n_streams):
        text = PROMPTS[i % len(PROMPTS)]
        prompt = ChatPrompt(text, tok(text)["input_ids"], 0, 0)
        starts[i] = time.perf_counter()
        engine.submit(prompt, params, make_cb(i))
    if not done.wait(900):
        raise TimeoutError("engine streams did not finish")
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(engine) - c0
    return {
        "streams": n_streams,
        "tokens": sum(tokens.values()),
        "wall": wall,
        "ttft": list(ttfts.values()),
        "cpu": cpu,
    }


def warm_engine(engine: Any, tok: Any) -> None:
    engine_run(engine, tok, 1, 2)


def long_prompt_ids(tok: Any, n: int) -> list[int]:
    ids: list[int] = []
    i = 0
    while len(ids) < n:
        ids += tok(PROMPTS[i % len(PROMPTS)].replace("\nAgent:", " ") + "\n")["input_ids"]
        i += 1
    return ids[: n - 2] + tok("\nAgent:")["input_ids"][-2:]


def prefill_under_load(engine: Any, tok: Any, n_streams: int = 4, long_tokens: int = 512) -> dict[str, Any]:
    """`n_streams` streams decode; once steady, a `long_tokens` prompt arrives. Their aggregate tok/s while
    it is prefilled (submission -> its first token) vs while they decoded alone just before."""
    from slm.generation import ChatPrompt, GenerationParams

    stamps: dict[int, list[float]] = {i: [] for i in range(n_streams)}
    ended = threading.Event()
    first = threading.Event()
    long_first: list[float] = []
    n_end: list[int] = []

    def make_cb(i: int) -> Any:
        def cb(kind: str, data: dict[str, Any]) -> None:
            if kind == "token":
                stamps[i].append(time.perf_counter())
            elif kind in ("end", "error"):
                n_end.append(i)
                if len(n_end) == n_streams:
                    ended.set()

        return cb

    def long_cb(kind: str, data: dict[str, Any]) -> None:
        if kind == "token" and not long_first:
            long_first.append(time.perf_counter())
            first.set()
        elif kind in ("end", "error"):
            if kind == "error":
                print("engine error:", data, file=sys.stderr)
            first.set()

    ids = []
    for i in range(n_streams):
        text = PROMPTS[i % len(PROMPTS)]
        rid, _ = engine.submit(
            ChatPrompt(text, tok(text)["input_ids"], 0, 0), GenerationParams(max_new_tokens=400), make_cb(i)
        )
        ids.append(rid)
    deadline = time.perf_counter() + 300

    def wait_tokens(n: int) -> None:
        while min(len(v) for v in stamps.values()) < n and time.perf_counter() < deadline:
            time.sleep(0.005)

    wait_tokens(8)  # all streams decoding: the "before" window starts
    t_steady = time.perf_counter()
    wait_tokens(40)
    long_ids = long_prompt_ids(tok, long_tokens)
    t_submit = time.perf_counter()
    engine.submit(ChatPrompt(tok.decode(long_ids), long_ids, 0, 0), GenerationParams(max_new_tokens=2), long_cb)
    first.wait(300)
    t_first = long_first[0] if long_first else time.perf_counter()
    at_first = min(len(v) for v in stamps.values())
    wait_tokens(at_first + 32)  # the "after" window: as many tokens as "before" (the streams' contexts grew)
    t_after = time.perf_counter()
    span = t_first - t_submit
    during = sum(1 for v in stamps.values() for t in v if t_submit < t <= t_first)
    before = sum(1 for v in stamps.values() for t in v if t_steady < t <= t_submit)
    after = sum(1 for v in stamps.values() for t in v if t_first < t <= t_after)
    for rid in ids:
        engine.cancel(rid)
    ended.wait(120)
    rate_during = during / span if span > 0 else float("nan")
    rate_before = before / (t_submit - t_steady)
    rate_after = after / (t_after - t_first) if t_after > t_first else float("nan")
    return {
        "ttft_ms": span * 1000,
        "rate_before": rate_before,
        "rate_after": rate_after,
        # decode slows as contexts grow: the pace without the prompt is taken between before and after
        "rate_base": (rate_before + rate_after) / 2,
        "rate_during": rate_during,
    }


def prefill_row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    drop = 1 - r["rate_during"] / r["rate_base"] if r["rate_base"] else float("nan")
    drop_before = 1 - r["rate_during"] / r["rate_before"] if r["rate_before"] else float("nan")
    print(
        f"  {name:<14} 4 streams + 512-token prompt: their tok/s {r['rate_before']:6.1f} before / "
        f"{r['rate_after']:6.1f} after -> {r['rate_during']:6.1f} during its prefill (drop {drop:4.0%} vs the "
        f"mean of before and after, {drop_before:4.0%} vs before); its TTFT {r['ttft_ms']:6.0f} ms",
        flush=True,
    )
    return {**r, "drop": drop, "drop_before": drop_before}


# ------------------------------------------------------------------------------------ ctranslate2
def ctranslate2_generator(model_dir: Path, out_dir: Path) -> Any:
    """CTranslate2's int8 generator converted from the same weights, or None when not installed."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        TransformersConverter(str(model_dir)).convert(str(out_dir), quantization="int8", force=True)
    return ctranslate2.Generator(str(out_dir), device="cpu", compute_type="int8", intra_threads=1, inter_threads=1)


def ctranslate2_run(gen: Any, tok: Any, n_streams: int, new_tokens: int) -> dict[str, Any]:
    """All streams in one generate_batch (CTranslate2's own batching), TTFT from its per-token callback."""
    prompts = [tok.convert_ids_to_tokens(tok(PROMPTS[i % len(PROMPTS)])["input_ids"]) for i in range(n_streams)]
    ttft: dict[int, float] = {}
    c0 = cpu_seconds()
    t0 = time.perf_counter()

    def callback(step: Any) -> bool:
        if step.batch_id not in ttft:
            ttft[step.batch_id] = time.perf_counter() - t0
        return False

    results = gen.generate_batch(
        prompts,
        max_length=new_tokens,
        min_length=new_tokens,
        sampling_topk=1,
        include_prompt_in_result=False,
        callback=callback,
    )
    wall = time.perf_counter() - t0
    tokens = sum(len(r.sequences_ids[0]) for r in results)
    cpu = cpu_seconds() - c0
    return {"streams": n_streams, "tokens": tokens, "wall": wall, "ttft": list(ttft.values()), "cpu": cpu}


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
        "cpu_ms_tok": r["cpu"] * 1000 / max(1, r["tokens"]),
    }
    print(
        f"  {name:<14} streams={r['streams']:<2} aggregate {agg:7.1f} tok/s   per-stream decode {decode:7.1f} tok/s"
        f"   TTFT p50 {out['ttft_p50_ms']:7.0f} ms  p95 {out['ttft_p95_ms']:7.0f} ms   CPU {out['cpu_ms_tok']:5.1f} ms/token",
        flush=True,
    )
    return out


# -------------------------------------------------------------------------------------- quality
def quality(registry_dir: Path, max_texts: int, new_tokens: int, variants: dict[str, Any]) -> None:
    """int8 vs fp32 on the trained default chat model; `variants`: name -> apply_precision function."""
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm.chat_data import chatterbot_dialogues, format_dialogue, split_dialogues
    from slm.registry import Registry

    reg = Registry(registry_dir)
    mv = reg.live("chat") if (registry_dir / "chat").exists() else None
    if mv is None:
        print(f"\nquality: no live 'chat' model in {registry_dir} (run manage.py bootstrap_models); skipped")
        return
    cfg = mv.metadata.get("config", {})
    tok = AutoTokenizer.from_pretrained(mv.path)
    fp32 = AutoModelForCausalLM.from_pretrained(mv.path).eval()
    dialogues = chatterbot_dialogues(tuple(cfg.get("languages", ["english"])))
    if cfg.get("max_dialogues"):
        dialogues = dialogues[: cfg["max_dialogues"]]
    _, held = split_dialogues(dialogues, cfg.get("eval_fraction", 0.1), seed=cfg.get("train", {}).get("seed", 0))
    held = held[:max_texts]
    n_pos = fp32.config.n_positions
    prompts = [f"User: {d[0]['content']}\nAgent:" for d in held]
    kw = dict(do_sample=False, max_new_tokens=new_tokens, repetition_penalty=1.2, pad_token_id=tok.eos_token_id)

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

    def replies(model: Any) -> list[list[int]]:
        out = []
        with torch.inference_mode():
            for p in prompts:
                x = tok(p, return_tensors="pt")
                out.append(model.generate(**x, **kw)[0, x["input_ids"].shape[1] :].tolist())
        return out

    ref, p32 = replies(fp32), ppl(fp32)
    print(
        f"\nquality on {mv.ref} ({len(held)} held-out dialogues, greedy {new_tokens} tokens, repetition_penalty 1.2):"
    )
    print(f"  perplexity fp32 {p32:.2f}")
    for name, apply in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the old path's deprecation warnings were reported above
            model = apply(AutoModelForCausalLM.from_pretrained(mv.path).eval(), "int8", torch.device("cpu"))
        got, p8 = replies(model), ppl(model)
        exact = sum(a == b for a, b in zip(ref, got, strict=True))
        agree = total = 0
        for a, b in zip(ref, got, strict=True):
            same = 0
            for s, t in zip(a, b, strict=False):
                if s != t:
                    break
                same += 1
            agree += same
            total += max(len(a), 1)
        print(
            f"  {name:<12} perplexity {p8:.2f} (x{p8 / p32:.3f} of fp32); greedy identical to fp32 on "
            f"{exact}/{len(prompts)} prompts ({exact / len(prompts):.0%}), tokens before first divergence {agree / total:.0%}"
        )


# ------------------------------------------------------------------------------------------ main
def load_compare(path: str) -> Any:
    """Imports another copy of slm/engine.py under its file name (importable by the spawned child too)."""
    import importlib

    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))
    return importlib.import_module(file.stem)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median aggregate tok/s (its TTFTs with it)."""
    runs = sorted(runs, key=lambda r: r["tokens"] / r["wall"])
    return runs[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--precision", default="int8", help="engine precision: int8 | fp32 (CPU), bf16 | fp16 (GPU)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the bf16 GPU figures: --device cuda --precision bf16)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the baseline and the engine (0 = torch default). On the shared 2-core box, "
        "2 threads collapsed under load (GPT-2 124M int8 2 tok/s vs 30 with 1 thread), so both sides get 1",
    )
    ap.add_argument(
        "--step-tokens", type=int, default=None, help="engine token budget per step (default: EngineConfig's)"
    )
    ap.add_argument(
        "--prefill-share",
        default="",
        help="engine prefill time share while streams decode (default: EngineConfig's; inf = a chunk every "
        "step); a comma list runs only the prefill-under-load scenario once per value (interleaved)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per scenario (median kept)")
    ap.add_argument("--compare", default="", help="another slm/engine.py copy to run interleaved as engine-before")
    ap.add_argument("--thread", action="store_true", help="also run the engine in a thread of this process")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-prefill", action="store_true", help="skip the 512-token prompt under load scenario")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--quality-texts", type=int, default=60)
    ap.add_argument("--registry", default=str(ROOT / "var" / "registry"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    streams = [int(s) for s in args.streams.split(",")]
    before = load_compare(args.compare) if args.compare else None
    print(f"cpu cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, load avg {os.getloadavg()}")
    if args.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(0)}")
    if not args.quality_only:
        run_speed(args, streams, before)
    from slm.engine import apply_precision

    variants = {"int8": apply_precision}
    if before is not None:
        variants["int8-before"] = before.apply_precision
    if args.device == "cpu":
        quality(Path(args.registry), args.quality_texts, args.new_tokens, variants)


def run_speed(args: Any, streams: list[int], before: Any) -> None:
    from slm.engine import Engine, EngineConfig

    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        d = Path(tmp) / "model"
        print("building GPT-2 124M (random weights)…", flush=True)
        model, tok = build_model(d)
        bw = bandwidth_gbs(args.device)
        wb = weight_bytes(model)
        step_bytes = {"int8": int8_weight_bytes(wb, model), "bf16": wb // 2, "fp16": wb // 2}.get(args.precision, wb)
        ceiling = bw * 1e9 / step_bytes
        print(
            f"memory bandwidth {bw:.1f} GB/s ({args.device}); weights read per step fp32 {wb / 1e6:.0f} MB, "
            f"{args.precision} ~{step_bytes / 1e6:.0f} MB -> ceiling {bw * 1e9 / wb:.1f} tok/s fp32, "
            f"{ceiling:.1f} tok/s {args.precision} (one stream)",
            flush=True,
        )
        results: dict[str, dict[Any, dict[str, Any]]] = {}
        if not args.skip_baseline:
            base_model = model.to(args.device)
            print(f"\nbaseline: thread per request, fp32 generate + TextIteratorStreamer, {args.new_tokens} new tokens")
            baseline_run(base_model, tok, 1, 2)  # warm-up
            results["baseline"] = {}
            for n in streams:
                results["baseline"][n] = row(
                    "baseline",
                    median_row([baseline_run(base_model, tok, n, args.new_tokens) for _ in range(args.repeats)]),
                )
            del base_model
        del model
        gen = ctranslate2_generator(d, Path(tmp) / "ct2") if args.device == "cpu" else None
        if gen is None and args.device == "cpu":
            print("\nctranslate2: not installed (pip install -r requirements-bench.txt); row skipped")
        engines: dict[str, Any] = {}
        common = dict(
            model=str(d),
            precision=args.precision,
            device=args.device,
            max_batch=max(streams + [5]),
            queue_size=64,
            num_threads=args.threads or None,
        )
        extra: dict[str, Any] = {} if args.step_tokens is None else {"step_tokens": args.step_tokens}
        sweep = [float(v) for v in args.prefill_share.split(",") if v.strip()]
        if len(sweep) > 1:
            prefill_sweep(args, common, extra, sweep, tok)
            return
        if sweep:
            extra["prefill_share"] = sweep[0]
        cfg = EngineConfig(**common, **extra)
        engines["engine"] = Engine(cfg, mode="process")
        if args.thread:
            engines["engine-thread"] = Engine(cfg, mode="thread")
        if before is not None:
            engines["engine-before"] = before.Engine(before.EngineConfig(**common), mode="process")
        print(f"\nengines: precision={args.precision} device={args.device} (loading…)", flush=True)
        for name, engine in engines.items():
            t = time.perf_counter()
            warm_engine(engine, tok)
            print(f"  {name} ready in {time.perf_counter() - t:.1f}s", flush=True)
        try:
            for n in streams:
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
                ct_runs: list[dict[str, Any]] = []
                for _ in range(args.repeats):  # interleaved: every engine once per round
                    for name, engine in engines.items():
                        runs[name].append(engine_run(engine, tok, n, args.new_tokens))
                    if gen is not None:
                        ct_runs.append(ctranslate2_run(gen, tok, n, args.new_tokens))
                for name in engines:
                    results.setdefault(name, {})[n] = row(name, median_row(runs[name]))
                if ct_runs:
                    results.setdefault("ctranslate2", {})[n] = row("ctranslate2", median_row(ct_runs))
            if not args.skip_prefill:
                print("\nprefill under load:")
                for _ in range(args.repeats):
                    for name, engine in engines.items():
                        results[name].setdefault("prefill", []).append(prefill_under_load(engine, tok))
                for name in engines:
                    got = sorted(results[name]["prefill"], key=lambda r: r["rate_during"] / r["rate_base"])
                    results[name]["prefill"] = prefill_row(name, got[len(got) // 2])
        finally:
            for engine in engines.values():
                engine.close()
        report(results, streams, ceiling, args.precision)


def prefill_sweep(args: Any, common: dict[str, Any], extra: dict[str, Any], values: list[float], tok: Any) -> None:
    """The prefill-under-load scenario once per prefill_share value, engines interleaved round by round."""
    from slm.engine import Engine, EngineConfig

    engines = {v: Engine(EngineConfig(**common, **extra, prefill_share=v), mode="process") for v in values}
    for engine in engines.values():
        warm_engine(engine, tok)
    got: dict[float, list[dict[str, Any]]] = {v: [] for v in values}
    try:
        print(f"\nprefill under load, by prefill_share (load avg {os.getloadavg()[0]:.1f}):")
        for _ in range(args.repeats):
            for v, engine in engines.items():
                got[v].append(prefill_under_load(engine, tok))
        for v in values:
            runs = sorted(got[v], key=lambda r: r["rate_during"] / r["rate_base"])
            prefill_row(f"share={v:g}", runs[len(runs) // 2])
    finally:
        for engine in engines.values():
            engine.close()


def report(results: dict[str, dict[Any, dict[str, Any]]], streams: list[int], ceiling: float, precision: str) -> None:
    eng = results["engine"]
    print("\nratios: aggregate tok/s of the engine / the other; in brackets the other's CPU ms per token / ours")
    for n in streams:
        parts = [f"  {n} stream(s): engine {eng[n]['agg_tok_s']:.1f} tok/s"]
        for other in ("baseline", "ctranslate2", "engine-before", "engine-thread"):
            if other in results and n in results[other]:
                o = results[other][n]
                parts.append(
                    f"{eng[n]['agg_tok_s'] / o['agg_tok_s']:.2f}x {other} (CPU per token {o['cpu_ms_tok'] / eng[n]['cpu_ms_tok']:.2f}x)"
                )
        print(", ".join(parts))
    if 1 in eng and 4 in eng:
        for name in ("engine", "engine-before", "ctranslate2"):
            if name in results and 1 in results[name] and 4 in results[name]:
                r = results[name]
                print(
                    f"  {name}: TTFT p95 at 4 streams {r[4]['ttft_p95_ms']:.0f} ms / single-user {r[1]['ttft_p50_ms']:.0f} ms"
                    f" = {r[4]['ttft_p95_ms'] / r[1]['ttft_p50_ms']:.2f}x (target <= 2x)"
                )
    for name in ("engine", "engine-before"):
        if name in results and "prefill" in results[name]:
            r = results[name]["prefill"]
            print(
                f"  {name}: decode tok/s drop while a 512-token prompt is prefilled {r['drop']:.0%} (vs before only "
                f"{r['drop_before']:.0%}; target < 30%), its TTFT {r['ttft_ms']:.0f} ms"
            )
    if 1 in eng:
        print(
            f"  engine single stream vs the {precision} memory-bandwidth ceiling ({ceiling:.1f} tok/s): {eng[1]['decode_tok_s'] / ceiling:.0%}"
        )


if __name__ == "__main__":
    main()
