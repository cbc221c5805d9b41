"""slm's own int8 linear kernel for AVX2 CPUs (slm/cpu_int8.c), built with the system C compiler on first use.

On x86 CPUs without VNNI, oneDNN's int8 matmul repacks the weights on every call, which for the few rows
of a decode step costs more than reading fp32 weights (GPT-2 124M shape, 1 thread: 12 layers' matmuls at
one row 28 ms on oneDNN vs 25 ms fp32 vs 9.4 ms here; the 50k-row LM head 10.7 vs 4.9 ms; at 128 rows both
are the same). The C file is compiled once (`cc -O3 -mavx2`, about a second) into a per-user cache
directory ($SLM_KERNEL_DIR, else ~/.cache/slm/kernels, else a private temp directory) named after the
source's hash, and loaded with ctypes (which releases the GIL during the call). Where there is no compiler,
no AVX2, or the build fails, `load()` returns None and slm.precision keeps oneDNN. No torch C++ headers,
nothing deprecated.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import stat
import subprocess  # nosec B404 - runs the system C compiler on our own source file
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fPIC", "-shared"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def avx2() -> bool:
    try:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


def _private_dir(path: Path) -> Path | None:
    """`path`, created 0700 if missing; None unless it is a directory owned by us that no one else may write."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None
    return path


def cache_dir() -> Path | None:
    candidates = []
    if os.environ.get("SLM_KERNEL_DIR"):
        candidates.append(Path(os.environ["SLM_KERNEL_DIR"]))
    candidates.append(Path.home() / ".cache" / "slm" / "kernels")
    candidates.append(Path(tempfile.gettempdir()) / f"slm-kernels-{os.getuid()}")
    for c in candidates:
        got = _private_dir(c)
        if got is not None:
            return got
    return None


def _build() -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    directory = cache_dir()
    if cc is None or directory is None:
        log.info("int8 kernel: no C compiler or cache directory; using oneDNN")
        return None
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = directory / f"cpu_int8-{digest}.so"
    if target.exists():
        return target
    tmp = directory / f".{target.name}.{os.getpid()}.tmp"
    try:
        subprocess.run(  # nosec B603 - fixed argument list, our own source
            [cc, *FLAGS, "-o", str(tmp), str(SOURCE)], check=True, capture_output=True, timeout=120
        )
        os.replace(tmp, target)  # atomic: a concurrent build of the same source is harmless
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        log.warning("int8 kernel: build failed (%s %s); using oneDNN", exc, err.decode(errors="replace")[:500])
        tmp.unlink(missing_ok=True)
        return None
    return target


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None where it cannot be used here (see the module docstring)."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if not avx2():
            return None
        path = _build()
        if path is None:
            return None
        try:
            lib = ctypes.CDLL(str(path))
            if lib.slm_int8_abi() != 2:
                return None
        except (OSError, AttributeError) as exc:
            log.warning("int8 kernel: could not load %s: %s", path, exc)
            return None
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.slm_int8_quantize.restype = None
        lib.slm_int8_quantize.argtypes = [ptr, i64, i64, ptr, ptr]  # x, M, K, qbuf, scales
        lib.slm_int8_gemm.restype = None
        # qbuf, scales, M, K, w, wsum, wscale, bias, N, n_begin, n_end, y
        lib.slm_int8_gemm.argtypes = [ptr, ptr, i64, i64, ptr, ptr, ptr, ptr, i64, i64, i64, ptr]
        _lib = lib
        return _lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel (loading it on first use)."""
    return _lib if _lib is not None else load()


def quantize_rows(x: torch.Tensor, lib: ctypes.CDLL | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] fp32 -> (its rows as uint8 with zero point 128: trunc(x * 127 / amax + 128.5), and each
    row's scale amax / 127 [M]) in one pass; the same bits as the torch expression (abs, amax, div,
    addcmul, to(uint8): 3-14x slower, it is most of the oneDNN path's per-call overhead)."""
    lib = lib or library()
    if lib is None:
        raise RuntimeError("the slm int8 kernel is not available here")
    x = x.float().contiguous()
    m, k = x.shape
    qbuf = torch.empty(m, k, dtype=torch.uint8)
    scales = torch.empty(m, dtype=torch.float32)
    if m:
        lib.slm_int8_quantize(x.data_ptr(), m, k, qbuf.data_ptr(), scales.data_ptr())
    return qbuf, scales


PARALLEL_MACS = 4_000_000  # below this many multiply-adds a call stays on the calling thread
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != threads:
            if _pool is not None:
                _pool[1].shutdown(wait=False)
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="slm-int8"))
        return _pool[1]


def linear(
    x: torch.Tensor, weight: torch.Tensor, wsum: torch.Tensor, wscale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """x [M, K] fp32 -> [M, N] fp32; weight int8 [N, K] with |w| <= 63. With more than one torch thread,
    large products are split by output columns over that many threads (ctypes releases the GIL); the
    result is the same bit for bit however it is split."""
    lib = library()
    if lib is None:
        raise RuntimeError("the slm int8 kernel is not available here")
    m = x.shape[0]
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return out
    qbuf, scales = quantize_rows(x, lib)
    k = qbuf.shape[1]
    args = (qbuf.data_ptr(), scales.data_ptr(), m, k, weight.data_ptr(), wsum.data_ptr(), wscale.data_ptr())
    rest = (bias.data_ptr(), n)
    threads = min(torch.get_num_threads(), max(1, n // 64))
    if threads <= 1 or m * n * k < PARALLEL_MACS:
        lib.slm_int8_gemm(*args, *rest, 0, n, out.data_ptr())
        return out
    bounds = [round(n * i / threads / 64) * 64 for i in range(threads)] + [n]
    jobs = [
        _executor(threads).submit(lib.slm_int8_gemm, *args, *rest, lo, hi, out.data_ptr())
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]
    for job in jobs:
        job.result()
    return out
