"""Serving precisions for a loaded causal LM: fp32, int8 (CPU), bf16 / fp16 (accelerators).

int8 is weight *and* activation int8, on plain int8 tensors, not the deprecated `torch.ao` quantized
tensors (`quantize_dynamic` warns in torch 2.13 that it will be removed). Weights are quantized once per
output channel (symmetric); each activation row gets its own scale at run time and the integer
accumulation is exact, so a row's result does not depend on the other rows of the batch: greedy replies
are the same alone or batched, and a seeded sample is reproducible whatever else runs.

Two kernels (`int8_backend()`, override with SLM_INT8_KERNEL=auto|slm|onednn):
  * "slm": slm/cpu_int8.c (see slm.cpu_int8), built with the system C compiler on first use, on x86 CPUs
    - with AVX-512 VNNI (kernel "vnni512": full 8-bit weights packed for vpdpbusd, 64 outputs x up to 6
      rows per tile, weights prefetched into L2 and on huge pages), and from 6 rows on AMX tiles where the
      CPU has them (the same packed weights, exact sums, the same epilogue: the same bits, so a row's
      result never depends on the batch). On a 2-core Xeon with AMX (bench/int8_ops.py, a decode step's
      matmuls from memory, 1 thread): 1.62x / 1.54x / 1.59x / 1.35x oneDNN's int8 matmul at 1 / 8 / 32 /
      512 rows;
    - with AVX2 but no VNNI (kernel "avx2": 7-bit weights for vpmaddubsw), where oneDNN's int8 matmul
      repacks the weights on every call (GPT-2 124M shape, 1 thread: a one-row decode step's matmuls
      14 ms vs 39 ms on oneDNN);
  * "onednn": oneDNN's int8 matmul (`torch.ops.onednn.qlinear_prepack` / `qlinear_pointwise`: the kernels
    torch's own x86 int8 path lowers to; VNNI/AMX where the CPU has them), elsewhere or as the fallback.
    Its uint8 activations are quantized by slm.cpu_int8.quantize_rows where that builds (one pass, the
    same bits as the torch ops; bench/int8_ops.py).

Measured on the GPT-2 124M shape, 1 thread (bench/chat.py and the README): see the engine docstring.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from slm import cpu_int8

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "bf16", "fp16")


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replaces GPT-2's `Conv1D` layers (a transposed Linear) by equivalent `nn.Linear`, in place."""
    from transformers.pytorch_utils import Conv1D

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                lin = nn.Linear(n_in, n_out, bias=True, device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    lin.bias.copy_(child.bias)
                setattr(module, name, lin)
    return model


def onednn_int8_available() -> bool:
    """True where oneDNN's int8 linear kernels exist (x86 / ARM builds of torch with oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.onednn, "qlinear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def int8_backend() -> str | None:
    """The int8 kernel used here: "slm" (AVX2 without VNNI, compiler present), "onednn", or None (none)."""
    choice = os.environ.get("SLM_INT8_KERNEL", "auto").lower()
    if choice not in ("auto", "slm", "onednn"):
        raise ValueError(f"SLM_INT8_KERNEL={choice!r} (auto | slm | onednn)")
    if choice == "slm" or (choice == "auto" and (_reduce_range() or cpu_int8.vnni512())):
        if cpu_int8.load() is not None:
            return "slm"
    return "onednn" if onednn_int8_available() else None


def int8_available() -> bool:
    """True where one of the int8 kernels can run."""
    return int8_backend() is not None


def _reduce_range() -> bool:
    """Without VNNI, x86 int8 dot products go through 16-bit intermediates that saturate; 7-bit weights
    keep them exact (what fbgemm's reduce_range did)."""
    try:
        return not torch.cpu._is_vnni_supported()
    except AttributeError:  # pragma: no cover - very old or non-x86 builds
        return False


def _signed_activations() -> bool:
    """int8 activations where the CPU has AMX (oneDNN's fastest kernel there); uint8 with zero point 128
    elsewhere (VNNI / AVX2 run u8 x s8 natively; an int8 source would fall back to a slow kernel)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover
        return False


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights (per output channel) and 8-bit activations (per row), on slm's kernel
    (`backend` "slm": AVX-512 VNNI where the CPU has it, else AVX2; `kernel` picks one for tests) or oneDNN
    (`backend`, default `int8_backend()`)."""

    def __init__(
        self,
        linear: nn.Linear,
        reduce_range: bool | None = None,
        signed: bool | None = None,
        backend: str | None = None,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.backend = backend or int8_backend() or "onednn"
        self.kernel = "onednn"
        if self.backend == "slm":
            if cpu_int8.library() is None:
                raise RuntimeError("the slm int8 kernel is not available here (SLM_INT8_KERNEL=onednn)")
            self.kernel = kernel or ("vnni512" if cpu_int8.vnni512() else "avx2")
            if self.kernel not in ("vnni512", "avx2") or (self.kernel == "vnni512" and not cpu_int8.vnni512()):
                raise ValueError(f"int8 kernel {self.kernel!r} cannot run here")
            if self.kernel == "avx2":
                reduce_range = True  # the AVX2 kernel's 16-bit pair sums need |w| <= 63
            else:
                reduce_range = False  # vpdpbusd sums into int32: full 8-bit weights
        qmax = 63 if (_reduce_range() if reduce_range is None else reduce_range) else 127
        scale = (w.abs().amax(dim=1) / qmax).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
        self.signed = _signed_activations() if signed is None else signed
        self.register_buffer("w_scale", scale, persistent=False)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias, persistent=False)
        if self.backend == "slm":
            self.register_buffer("w_sum", q.sum(dim=1, dtype=torch.int32), persistent=False)
            if self.kernel == "vnni512":
                self.register_buffer("weight_vnni", cpu_int8.pack_vnni(q), persistent=False)
                self._bind()
            else:
                self.register_buffer("weight_int8", q.contiguous(), persistent=False)
            return
        # uint8 activations are quantized in one pass by slm's C helper where it builds (same bits as the
        # torch expression below, a fraction of its per-call cost); int8 ones (AMX) keep the torch ops
        self._c_quantize = False
        if not self.signed:
            self._c_quantize = cpu_int8.library() is not None
        self.register_buffer("w_zero", torch.zeros(self.out_features, dtype=torch.long), persistent=False)
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(q, None), persistent=False)
        self._127 = torch.full((), 127.0)
        # uint8: x -> trunc(x * 127 / max|x| + 128.5) = round(...) + 128 (always >= 1: truncation rounds)
        self._offset = torch.full((), 128.5)
        self._zp = 0 if self.signed else 128

    def _bind(self) -> None:
        """The VNNI kernel's one-call fast path: the C function with the weights' pointers bound (a decode
        step makes ~50 of these calls; module attribute lookups and argument conversion were half of a
        small layer's cost). Re-bound whenever the buffers are replaced (`_apply`: .to(), .float(), ...)."""
        self._fast: tuple | None = None
        bufs = (self.weight_vnni, self.w_sum, self.w_scale, self.bias)
        dtypes = (torch.int8, torch.int32, torch.float32, torch.float32)
        if all(
            b.device.type == "cpu" and b.dtype == d and b.is_contiguous() for b, d in zip(bufs, dtypes, strict=True)
        ):
            lib = cpu_int8.library()
            ptrs = tuple(b.data_ptr() for b in bufs)
            self._fast = (lib.slm_int8_linear_vnni, (*ptrs, self.out_features, self.in_features))
            self._fused = (lib.slm_int8_linear_vnni_fused, (*ptrs, self.out_features, self.in_features))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        result = super()._apply(fn, recurse)
        if self.kernel == "vnni512":
            self._bind()
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "vnni512":
            return self._forward_vnni(x)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.kernel == "avx2":
            y = cpu_int8.linear(x2, self.weight_int8, self.w_sum, self.w_scale, self.bias)
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
        if self._c_quantize and x2.shape[0]:
            xq, row_scale = cpu_int8.quantize_rows(x2)  # row_scale = amax / 127
            amax, value = row_scale.unsqueeze(1), 1.0
        else:
            amax = x2.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)  # (vector_norm(inf) is 20x slower)
            inv = torch.div(self._127, amax)
            if self.signed:
                xq = torch.mul(x2, inv).round_().to(torch.int8)
            else:
                xq = torch.addcmul(self._offset, x2, inv).to(torch.uint8)
            value = 1.0 / 127.0
        # activation scale 1: the output is the exact integer dot product times the weight scale
        y = torch.ops.onednn.qlinear_pointwise(
            xq, 1.0, self._zp, self.packed, self.w_scale, self.w_zero, None, 1.0, 0, torch.float32, "none", [], ""
        )
        y = torch.addcmul(self.bias, y, amax, value=value)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _forward_vnni(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        x2 = x.reshape(-1, k)
        if x2.dtype != torch.float32 or not x2.is_contiguous():
            x2 = x2.float().contiguous()
        m = x2.shape[0]
        if self._fast is None:
            raise RuntimeError("Int8Linear's buffers left the CPU or changed dtype; quantize the model again")
        if m * n * k < cpu_int8.PARALLEL_MACS or torch.get_num_threads() == 1:
            out = torch.empty(m, n, dtype=torch.float32)
            fn, bound = self._fast
            if m and fn(*bound, x2.data_ptr(), m, out.data_ptr()) != 0:
                raise MemoryError(f"int8 linear: no memory for {m} x {k} activations")
        else:
            out = cpu_int8.linear_vnni(x2, self.weight_vnni, self.w_sum, self.w_scale, self.bias, n)
        if x.dim() == 2 and x.dtype == torch.float32:
            return out
        return out.reshape(*x.shape[:-1], n).to(x.dtype)

    def fused(
        self,
        x: torch.Tensor,
        norm: CLayerNorm | None = None,
        gelu: bool = False,
        residual: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """act(norm(x) . W^T + b) + residual in one C call (VNNI kernel; the engine's GPT-2 step): x [M, in]
        fp32 contiguous; the result is written into `residual` when given (the residual stream updated in
        place), else into `out` (a contiguous [M, out] fp32 scratch the caller reuses) or a new tensor. The
        same bits as `norm`, this layer, `CGELU` and an add called one after the other, which is what the
        model's own forward does."""
        n, k = self.out_features, self.in_features
        m = x.shape[0]
        if self._fast is None:
            raise RuntimeError("Int8Linear's buffers left the CPU or changed dtype; quantize the model again")
        if not (x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous() and x.shape[1] == k):
            raise ValueError("Int8Linear.fused needs contiguous fp32 [M, in] rows")
        if residual is not None and not (residual.shape == (m, n) and residual.is_contiguous()):
            raise ValueError("Int8Linear.fused: the residual must be a contiguous [M, out] fp32 tensor")
        if m * n * k >= cpu_int8.PARALLEL_MACS and torch.get_num_threads() > 1:  # threaded: the same steps apart
            y = self._forward_vnni(norm(x) if norm is not None else x)
            if gelu:
                y = CGELU()(y)
            return residual.add_(y) if residual is not None else y
        if residual is not None:
            out = residual
        elif out is None or out.shape != (m, n) or out.dtype != torch.float32 or not out.is_contiguous():
            out = torch.empty(m, n, dtype=torch.float32)
        if m:
            fn, bound = self._fused
            ln = (norm.weight.data_ptr(), norm.bias.data_ptr(), norm.eps) if norm is not None else (None, None, 0.0)
            res = residual.data_ptr() if residual is not None else None
            if fn(*bound, x.data_ptr(), m, out.data_ptr(), *ln, int(gelu), res) != 0:
                raise MemoryError(f"int8 linear: no memory for {m} x {k} activations")
        return out

    def int8_weight(self) -> torch.Tensor:
        """The int8 weights [out, in] (unpacked from the kernel's layout where it has one)."""
        if self.kernel == "vnni512":
            blocks, groups = self.weight_vnni.shape[:2]
            flat = self.weight_vnni.permute(0, 2, 1, 3).reshape(blocks * 64, groups * 4)
            return flat[: self.out_features, : self.in_features]
        if self.kernel == "avx2":
            return self.weight_int8
        raise AttributeError("oneDNN keeps its packed weights to itself")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


class SigmoidTanhGELU(nn.Module):
    """The tanh approximation of GELU (GPT-2's "gelu_new": 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))))
    written as x·sigmoid(2√(2/π)·(x + 0.044715·x³)): the same function (0.5·(1 + tanh z) = sigmoid 2z),
    within 5e-7 of transformers' module, on ops that are vectorized on this torch's CPU build where tanh
    is not (GPT-2 124M MLP width, 1 thread: 54 rows 0.19 vs 0.70 ms, 512 rows 2.1 vs 10.6 ms)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # training: no in-place ops on saved tensors
            return x * torch.sigmoid(_GELU_K * (x + 0.044715 * x * x * x))
        y = x * x
        return y.mul_(0.044715 * _GELU_K).add_(_GELU_K).mul_(x).sigmoid_().mul_(x)


def _c_rows(lib: object, x: torch.Tensor) -> bool:
    """True where `x` can go to the AVX-512 C kernels: built, this CPU has them, fp32 on the CPU, no grad."""
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return not (torch.is_grad_enabled() and x.requires_grad) and cpu_int8.vnni512()


class CLayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` computed by slm's C kernel (slm_layernorm) on contiguous fp32 CPU rows, so that the
    engine's fused GPT-2 step (LayerNorm inside the next int8 layer's call) and the model's own forward
    give the same bits; anything else goes to torch's."""

    @classmethod
    def from_module(cls, ln: nn.LayerNorm) -> CLayerNorm:
        new = cls(ln.normalized_shape, eps=ln.eps, elementwise_affine=True, device=ln.weight.device)
        with torch.no_grad():
            new.weight.copy_(ln.weight)
            new.bias.copy_(ln.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = cpu_int8.library()
        if not _c_rows(lib, x):
            return super().forward(x)
        x = x.contiguous()
        out = torch.empty_like(x)
        k = self.normalized_shape[-1]
        if x.numel():
            lib.slm_layernorm(
                x.data_ptr(), x.numel() // k, k, self.weight.data_ptr(), self.bias.data_ptr(), self.eps, out.data_ptr()
            )
        return out


class CGELU(nn.Module):
    """GPT-2's tanh-GELU by slm's C kernel (slm_gelu: the same function as `SigmoidTanhGELU`, the same bits
    as the fused int8 epilogue) on contiguous fp32 CPU tensors; torch's ops otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = cpu_int8.library()
        if not _c_rows(lib, x):
            return SigmoidTanhGELU()(x)
        x = x.contiguous()
        out = torch.empty_like(x)
        lib.slm_gelu(x.data_ptr(), x.numel(), out.data_ptr())
        return out


def _tanh_gelu_types() -> tuple[type, ...]:
    try:
        from transformers.activations import GELUTanh, NewGELUActivation
    except ImportError:  # pragma: no cover - other transformers versions
        return ()
    return (NewGELUActivation, GELUTanh)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Every `nn.Linear` (GPT-2's Conv1D first converted, the LM head included) -> `Int8Linear`, in place.
    The tied input embedding keeps its fp32 weights; the head gets its own int8 copy. tanh-GELU
    activations become `SigmoidTanhGELU` (the same function, faster on the CPU); the model's own
    `generate` and the engine's packed step then use the same one."""
    conv1d_to_linear(model)
    reduce = _reduce_range()
    backend = int8_backend()
    gelu = _tanh_gelu_types()
    # on the VNNI kernel LayerNorm and GELU run in C too, the same code the engine's fused step uses
    in_c = backend == "slm" and cpu_int8.vnni512()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child, reduce_range=reduce, backend=backend))
            elif gelu and isinstance(child, gelu):
                setattr(module, name, CGELU() if in_c else SigmoidTanhGELU())
            elif in_c and type(child) is nn.LayerNorm and child.elementwise_affine and child.bias is not None:
                setattr(module, name, CLayerNorm.from_module(child))
    return model


def apply_precision(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """Returns `model` (already on `device`, eval mode) converted for serving at `precision`."""
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({' | '.join(PRECISIONS)})")
    if precision == "fp32":
        return model
    if precision == "int8":
        if device.type != "cpu":
            log.info("int8 is a CPU path; %s keeps fp32 (use bf16 or fp16 there)", device.type)
            return model
        if not int8_available():
            log.warning("int8 needs torch built with oneDNN; serving fp32 instead")
            return model
        return quantize_int8(model)
    return model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
