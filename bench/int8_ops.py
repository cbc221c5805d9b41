"""The int8 serving path's small ops against the plain torch expressions they replace, interleaved in one run
(GPT-2 124M shapes, 1 thread, medians of 15 rounds):

  * activation quantize: slm.cpu_int8.quantize_rows (one C pass, the same bits) vs abs / amax / div /
    addcmul / to(uint8), measured as 12 layers of oneDNN `Int8Linear` (the layers' four matmuls) each way;
  * GPT-2's tanh-GELU: slm.precision.SigmoidTanhGELU vs transformers' NewGELUActivation.

    .venv/bin/python bench/int8_ops.py [--rows 1,8,32,54,512]
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


if __name__ == "__main__":
    main()
