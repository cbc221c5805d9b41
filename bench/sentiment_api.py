"""Sentiment API throughput and p95 latency: our micro-batched service vs a bare transformers pipeline.

Both serve the SAME transformer classifier weights to C concurrent clients, each sending R requests of
one short text (batch load = many small concurrent requests):

  * pipeline   a bare `pipeline("text-classification")` called per request from each client thread
               (what a naive view does);
  * unbatched  our InferenceService with SENTIMENT_BATCH_SIZE=1 (isolates the effect of batching);
  * service    our InferenceService, micro-batched (requests within a few ms are predicted together);
  * api        POST /api/sentiment/predict through the full Django stack (middleware, ninja, bearer
               token auth, JSON) with the batched service behind it;
  * api-pipe   the same endpoint and stack with the bare pipeline called in each request thread.

The model: `--model DIR` (a `transformer`-family registry version: config.json + encoder/ + head) or, by
default, a freshly initialised character BERT of the default Chinese size (4 layers, 256 wide, ~3k-char
vocabulary) saved the same way; weights do not change speed. Our service loads it with the real
TransformerClassifier; the pipeline wraps the same encoder weights (AutoModelForSequenceClassification).

    .venv/bin/python bench/sentiment_api.py [--clients 16] [--requests 40] [--threads 2] [--device cpu]

Prints one table and the throughput ratios service/pipeline and api/api-pipe (target >= 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = [
    "这家酒店的服务非常好，房间干净，下次还会再来。",
    "送餐太慢了，饭菜都凉了，再也不会点这家。",
    "手机用了一个星期就坏了，客服也不理人，太失望了。",
    "物美价廉，包装精致，物流也很快，推荐购买！",
    "位置不错，就是隔音太差，晚上很吵。",
    "Absolutely loved it: friendly staff, spotless room and a great breakfast.",
    "The food arrived cold and the driver was rude. Never again.",
    "Battery died after two days and support never answered my emails.",
]


# ------------------------------------------------------------------------------------------ the model
def build_char_bert_version(out: Path, *, layers: int = 4, hidden: int = 256) -> Path:
    """A `transformer`-family classifier (char BERT, the default Chinese size) saved like a registry version."""
    from slm.classify.charbert import char_bert_classifier

    corpus = TEXTS + [chr(cp) * 2 for cp in range(0x4E00, 0x4E00 + 3000)]  # a realistic ~3k-char vocabulary
    clf = char_bert_classifier(
        corpus, ["negative", "positive"], num_layers=layers, hidden_size=hidden, min_freq=1, max_length=200
    )
    clf.save(out)
    (out / "metadata.json").write_text(json.dumps({"family": "transformer", "labels": clf.labels}))
    return out


def bare_pipeline(version_dir: Path, device: str) -> Any:
    """A bare transformers pipeline over the same encoder weights (a sequence-classification head on top)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    cfg = json.loads((version_dir / "config.json").read_text())
    enc = version_dir / "encoder"
    model = AutoModelForSequenceClassification.from_pretrained(enc, num_labels=len(cfg["labels"]))
    tok = AutoTokenizer.from_pretrained(enc)
    tok.model_max_length = int(cfg.get("max_length", 200))
    return pipeline("text-classification", model=model, tokenizer=tok, device=device, top_k=None)


class PipelineService:
    """Stands in for our InferenceService behind the API: the bare pipeline, called in the request thread."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        cfg = pipe.model.config
        self.labels = [str(cfg.id2label[i]) for i in range(len(cfg.id2label))]

    def predict(self, texts: list[str], model: str | None = None) -> Any:
        from sentiment.inference import PredictResult

        rows = self.pipe(list(texts), truncation=True)
        probs = np.array([[next(d["score"] for d in row if d["label"] == lab) for lab in self.labels] for row in rows])
        return PredictResult(ref="sentiment@pipeline", labels=self.labels, probs=probs)


# ------------------------------------------------------------------------------------------ load driver
def run_load(name: str, call: Callable[[str], Any], clients: int, requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(cid: int) -> None:
        mine: list[float] = []
        barrier.wait()
        for i in range(requests):
            text = TEXTS[(cid + i) % len(TEXTS)]
            t0 = time.perf_counter()
            try:
                call(text)
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # all threads of this process: robust to other load on the box
    lat = sorted(latencies)
    n = len(lat)
    return {
        "mode": name,
        "requests": n,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p95_ms": round(1000 * lat[min(n - 1, int(0.95 * n))], 1),
        "cpu_ms_per_req": round(1000 * cpu / max(1, n), 2),
    }


def register(reg: Any, model_dir: Path) -> Any:
    """Publishes model_dir as a live `sentiment` version of the registry."""
    import shutil

    def write(path: Path) -> None:
        for f in model_dir.iterdir():
            if f.name == "metadata.json":
                continue
            (shutil.copytree if f.is_dir() else shutil.copy)(f, path / f.name)

    meta = json.loads((model_dir / "metadata.json").read_text()) if (model_dir / "metadata.json").exists() else {}
    meta = {"family": meta.get("family", "transformer"), "labels": meta.get("labels", ["negative", "positive"])}
    mv = reg.create_version("sentiment", write, meta)
    reg.promote("sentiment", mv.version)
    return mv


def setup_django(tmp: Path, model_dir: Path) -> tuple[Any, str]:
    """A throwaway Django site (temp SQLite + registry) serving model_dir as the live sentiment version."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.base",
            "SLM_VAR_DIR": str(tmp / "var"),
            "SQLITE_PATH": str(tmp / "bench.sqlite3"),
            "SLM_REGISTRY_DIR": str(tmp / "registry"),
            "ALLOWED_HOSTS": "localhost",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import sentiment.inference as inference
    from slm.registry import Registry
    from slmsite.services import api_token_create, user_create

    register(Registry(tmp / "registry"), model_dir)
    user = user_create(username="bench", password="bench-password-1")
    return inference, api_token_create(user=user)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a transformer-family version dir (default: a fresh 4x256 char BERT)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=40, help="requests per client")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--wait-ms", type=float, default=3.0)
    ap.add_argument("--skip-api", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each mode is kept")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-sent-"))
    model_dir = args.model or build_char_bert_version(tmp / "char-bert")

    pipe = bare_pipeline(model_dir, args.device)
    pipe(TEXTS[0], truncation=True)  # warm-up

    from slm.registry import Registry

    reg = Registry(tmp / "registry")
    if args.skip_api:
        import sentiment.inference as inference

        register(reg, model_dir)
        token = ""
    else:
        inference, token = setup_django(tmp, model_dir)

    def loader(mv: Any) -> Any:  # the real predict interface (slm.classify.base.load_classifier)
        from slm.classify.transformer import TransformerClassifier

        return TransformerClassifier.load(mv.path, device=args.device)

    services = {
        "unbatched": inference.InferenceService(reg, "sentiment", loader=loader, batch_size=1, wait_ms=0),
        "service": inference.InferenceService(
            reg, "sentiment", loader=loader, batch_size=args.batch_size, wait_ms=args.wait_ms
        ),
    }
    modes: dict[str, Callable[[str], Any]] = {"pipeline": lambda t: pipe(t, truncation=True)}
    for mode, svc in services.items():
        svc.predict([TEXTS[0]])
        modes[mode] = lambda t, s=svc: s.predict([t])

    if not args.skip_api:
        from django.conf import settings
        from django.test import Client

        settings.SENTIMENT_BATCH_SIZE = args.batch_size
        settings.SENTIMENT_BATCH_WAIT_MS = args.wait_ms
        inference.reset_services()
        local = threading.local()

        def post(text: str) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = Client(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_HOST="localhost")
            r = client.post("/api/sentiment/predict", json.dumps({"texts": [text]}), content_type="application/json")
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.content[:200]!r}")

        post(TEXTS[0])
        services["api"] = inference.get_service()
        modes["api"] = post

        # The same endpoint with the bare pipeline called in each request thread instead of our service.
        import sentiment.api as sentiment_api

        pipe_service = PipelineService(pipe)
        ours = sentiment_api.get_service

        def post_pipeline(text: str) -> None:
            post(text)

        modes["api-pipe"] = post_pipeline
        switch = {"api": ours, "api-pipe": lambda: pipe_service}

    # The machine is shared: interleave the modes and keep each one's best run.
    best: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for mode, call in modes.items():
            if not args.skip_api and mode in switch:
                sentiment_api.get_service = switch[mode]  # type: ignore[assignment]
            svc = services.get(mode)
            before = (svc.batcher.texts, svc.batcher.batches) if svc else (0, 0)
            res = run_load(mode, call, args.clients, args.requests)
            if svc:
                texts, batches = svc.batcher.texts - before[0], svc.batcher.batches - before[1]
                res["avg_batch"] = round(texts / max(1, batches), 1)
            if mode not in best or res["req_per_s"] > best[mode]["req_per_s"]:
                best[mode] = res
    results = list(best.values())

    print(f"\nSentiment serving: {args.clients} concurrent clients x {args.requests} requests of 1 text, ")
    print(
        f"model {model_dir.name}, device {args.device}, torch threads {args.threads}, "
        f"best of {args.repeats} interleaved rounds, load avg {os.getloadavg()[0]:.1f}\n"
    )
    print(f"{'mode':<10} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'avg batch':>10} {'cpu ms/req':>11} {'errors':>7}")
    for r in results:
        print(
            f"{r['mode']:<10} {r['req_per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} "
            f"{r.get('avg_batch', 1):>10} {r['cpu_ms_per_req']:>11} {r['errors']:>7}"
        )
    by = {r["mode"]: r for r in results}
    ratio = by["service"]["req_per_s"] / by["pipeline"]["req_per_s"]
    print(f"\nthroughput service / pipeline: {ratio:.2f}x (target >= 2x)")
    if "api" in by:
        api_ratio = by["api"]["req_per_s"] / by["api-pipe"]["req_per_s"]
        print(f"throughput api / api-pipe:     {api_ratio:.2f}x (the same Django endpoint, bare pipeline behind it)")
        print(f"p95 latency api-pipe / api:    {by['api-pipe']['p95_ms'] / by['api']['p95_ms']:.2f}x")
    print(f"p95 latency pipeline / service: {by['pipeline']['p95_ms'] / by['service']['p95_ms']:.2f}x")
    cpu_ratio = by["pipeline"]["cpu_ms_per_req"] / by["service"]["cpu_ms_per_req"]
    print(f"CPU per request pipeline / service: {cpu_ratio:.2f}x (capacity on a dedicated machine; load-independent)")
    if "api" in by:
        cpu_api = by["api-pipe"]["cpu_ms_per_req"] / by["api"]["cpu_ms_per_req"]
        print(f"CPU per request api-pipe / api:     {cpu_api:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
