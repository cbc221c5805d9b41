"""The int8 serving path's small ops against the plain torch expressions they replace, interleaved in one run
(GPT-2 124M shapes, 1 thread, medians of 15 rounds):

  * activation quantize: slm.cpu_int8.quantize_rows (one C pass, the same bits) vs abs / amax / div /
    addcmul / to(uint8), measured as 12 layers of oneDNN `Int8Linear` (the layers' four matmuls) each way;
  * GPT-2's tanh-GELU: slm.precision.SigmoidTanhGELU vs transformers' NewGELUActivation;
  * the int8 matmul kernel: slm's (the one `SLM_INT8_KERNEL=auto` picks here: AVX-512 VNNI, with AMX tiles
    from 6 rows where the CPU has them, or AVX2) vs oneDNN's, over a whole decode step's matmuls (12 layers' four plus the 50k-row LM head, every matrix
    its own weights, so they come from memory as in a real step);
  * decode attention: slm's C kernel over the position-major slot cache vs SDPA over the head-major one
    (one call, the engine's single length group), 8 streams, every layer's cache its own.

    .venv/bin/python bench/int8_ops.py [--rows 1,8,32,54,512] [--contexts 16,64,256]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # qkv, proj, fc, out


def timed(fn: Callable[[], object], rounds: list[float]) -> None:
    t = time.perf_counter()
    fn()
    rounds.append((time.perf_counter() - t) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,8,32,54,512")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--contexts", default="16,64,256")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.activations import NewGELUActivation

    from slm import cpu_int8
    from slm.precision import Int8Linear, SigmoidTanhGELU, onednn_int8_available

    if cpu_int8.library() is None or not onednn_int8_available():
        print("needs slm's C kernel (AVX2 + a C compiler) and torch with oneDNN int8")
        return
    layers = [[Int8Linear(torch.nn.Linear(*s), backend="onednn", signed=False) for s in SHAPES] for _ in range(12)]

    def run_layers(xs: list[torch.Tensor], c_quantize: bool) -> None:
        for layer in layers:
            for lin, x in zip(layer, xs, strict=True):
                lin._c_quantize = c_quantize
                lin(x)

    fast_gelu, ref_gelu = SigmoidTanhGELU(), NewGELUActivation()
    print(
        f"{'rows':>5} | {'quantize: C':>12} {'torch':>9} {'ratio':>6} | {'GELU: ours':>11} {'transformers':>12} {'ratio':>6}"
    )
    with torch.inference_mode():
        for m in [int(v) for v in args.rows.split(",")]:
            xs = [torch.randn(m, s[0]) for s in SHAPES]
            h = torch.randn(m, 3072) * 3
            times: dict[str, list[float]] = {"c": [], "torch": [], "gelu": [], "gelu_ref": []}
            for _ in range(args.rounds):
                timed(lambda xs=xs: run_layers(xs, True), times["c"])
                timed(lambda xs=xs: run_layers(xs, False), times["torch"])
                timed(lambda h=h: [fast_gelu(h) for _ in range(12)], times["gelu"])
                timed(lambda h=h: [ref_gelu(h) for _ in range(12)], times["gelu_ref"])
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            print(
                f"{m:>5} | {med['c']:>9.2f} ms {med['torch']:>6.2f} ms {med['torch'] / med['c']:>5.2f}x |"
                f" {med['gelu']:>8.2f} ms {med['gelu_ref']:>9.2f} ms {med['gelu_ref'] / med['gelu']:>5.2f}x"
            )
        matmul_kernels(args)
        attention(args)


def matmul_kernels(args: argparse.Namespace) -> None:
    from slm import cpu_int8
    from slm.precision import Int8Linear

    kernel = ("vnni+amx" if cpu_int8.amx() else "vnni512") if cpu_int8.vnni512() else "avx2"
    shapes = SHAPES * 12 + [(768, 50257)]
    torch.manual_seed(0)
    ours = [Int8Linear(torch.nn.Linear(*s), backend="slm") for s in shapes]
    dnn = [Int8Linear(torch.nn.Linear(*s), backend="onednn", signed=False) for s in shapes]
    print(f"\n{'rows':>5} | matmuls of a step: slm {kernel:<8} {'oneDNN':>8} {'ratio':>6}")
    for m in [int(v) for v in args.rows.split(",")]:
        xs = {k: torch.randn(m, k) for k in (768, 3072)}
        times: dict[str, list[float]] = {"slm": [], "onednn": []}
        rounds = args.rounds if m <= 64 else 3
        for _ in range(rounds):
            timed(lambda xs=xs: [lin(xs[lin.in_features]) for lin in ours], times["slm"])
            timed(lambda xs=xs: [lin(xs[lin.in_features]) for lin in dnn], times["onednn"])
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"{m:>5} | {med['slm']:>28.2f} ms {med['onednn']:>6.2f} ms {med['onednn'] / med['slm']:>5.2f}x")


def attention(args: argparse.Namespace) -> None:
    import torch.nn.functional as F

    from slm import cpu_int8
    from slm.batching import SlotCache

    heads, d, streams, window = 12, 64, 8, 1024
    pm = SlotCache(streams, window)
    pm_layers = [pm.layer(i, torch.empty(1, heads, 1, d)) for i in range(12)]
    hm_layers = [tuple(torch.zeros(streams, heads, window, d) for _ in range(2)) for _ in range(12)]
    print(f"\n{'context':>7} | decode attention, 8 streams x 12 layers: C {'SDPA':>8} {'ratio':>6}")
    for n in [int(v) for v in args.contexts.split(",")]:
        for (pk, pv), (hk, hv) in zip(pm_layers, hm_layers, strict=True):
            k, v = torch.randn(streams, heads, n, d), torch.randn(streams, heads, n, d)
            hk[:, :, :n], hv[:, :, :n] = k, v
            pk[:, :n], pv[:, :n] = k.transpose(1, 2), v.transpose(1, 2)
        q, out = torch.randn(streams, heads, d), torch.empty(streams, heads, d)
        slots, lengths = torch.arange(streams), torch.full((streams,), n)

        def c_path(q: torch.Tensor = q, out: torch.Tensor = out, at: tuple = (slots, lengths)) -> None:
            for k, v in pm_layers:
                cpu_int8.attend_decode(q, k, v, *at, 0.125, out)

        def sdpa(q: torch.Tensor = q, n: int = n) -> None:
            for k, v in hm_layers:
                F.scaled_dot_product_attention(q[:, :, None], k[:, :, :n], v[:, :, :n], scale=0.125)

        times: dict[str, list[float]] = {"c": [], "sdpa": []}
        for _ in range(args.rounds):
            timed(c_path, times["c"])
            timed(sdpa, times["sdpa"])
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"{n:>7} | {med['c']:>30.2f} ms {med['sdpa']:>6.2f} ms {med['sdpa'] / med['c']:>5.2f}x")


if __name__ == "__main__":
    main()
