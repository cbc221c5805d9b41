"""Device and dtype selection, in one place: cuda > mps > cpu."""

from __future__ import annotations

import os

import torch


def pick_device(preference: str | None = None) -> torch.device:
    """Returns the best available device, or the one asked for ("auto", "cpu", "cuda", "cuda:1", "mps").

    An explicit device that is not available raises a clear error instead of silently falling back.
    """
    pref = (preference or os.environ.get("SLM_DEVICE") or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"SLM_DEVICE={pref!r} but CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"SLM_DEVICE={pref!r} but MPS is not available on this machine")
    return device


def supports_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether mixed precision in `dtype` is worth using on `device` (fp16/bf16 only on accelerators)."""
    if dtype == torch.float32:
        return True
    if device.type == "cuda":
        if dtype == torch.bfloat16:
            return bool(torch.cuda.is_bf16_supported())
        return dtype == torch.float16
    if device.type == "mps":
        return dtype == torch.float16
    return False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype to train with on this device, or None for plain fp32 (CPU)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if supports_dtype(device, torch.bfloat16) else torch.float16
