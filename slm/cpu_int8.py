"""slm's own CPU kernels (slm/cpu_int8.c), built with the system C compiler on first use: the int8 linear
layer (AVX2, and AVX-512 VNNI where the CPU has it: `vnni512()`), the engine's KV cache writes and decode
attention over its position-major slot cache (`kv_write`, `attend_decode`), and the greedy pick (`argmax`).

On x86 CPUs without VNNI, oneDNN's int8 matmul repacks the weights on every call, which for the few rows
of a decode step costs more than reading fp32 weights (GPT-2 124M shape, 1 thread: 12 layers' matmuls at
one row 28 ms on oneDNN vs 25 ms fp32 vs 9.4 ms here; the 50k-row LM head 10.7 vs 4.9 ms; at 128 rows both
are the same). On CPUs with AVX-512 VNNI the packed VNNI kernel beats oneDNN's int8 matmul at decode sizes
(see slm.precision). The C file is compiled once (`cc -O3 -mavx2`, about a second; the AVX-512 functions
carry their own target attribute and run only where `vnni512()` says so) into a per-user cache
directory ($SLM_KERNEL_DIR, else ~/.cache/slm/kernels, else a private temp directory) named after the
source's hash, and loaded with ctypes (which releases the GIL during the call). Where there is no compiler,
no AVX2, or the build fails, `load()` returns None and slm.precision keeps oneDNN. No torch C++ headers,
nothing deprecated.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import mmap
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
            [cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"], check=True, capture_output=True, timeout=120
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
            if lib.slm_int8_abi() != 8:
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
        lib.slm_int8_quantize_ld.restype = None
        lib.slm_int8_quantize_ld.argtypes = [ptr, i64, i64, i64, ptr, ptr]  # x, M, K, ldq, qbuf, scales
        lib.slm_int8_vnni512.restype = ctypes.c_int
        lib.slm_int8_pack_vnni.restype = None
        lib.slm_int8_pack_vnni.argtypes = [ptr, i64, i64, ptr]  # w, N, K, wp
        lib.slm_int8_gemm_vnni.restype = None
        # q, ldq, xscale, M, K, wp, wsum, wscale, bias, N, n_begin, n_end, y
        lib.slm_int8_gemm_vnni.argtypes = [ptr, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, i64, i64, i64, ptr]
        lib.slm_int8_linear_vnni.restype = ctypes.c_int
        # wp, wsum, wscale, bias, N, K, x, M, y
        lib.slm_int8_linear_vnni.argtypes = [ptr, ptr, ptr, ptr, i64, i64, ptr, i64, ptr]
        lib.slm_attend_decode.restype = ctypes.c_int
        # q, ldq, k cache, v cache, slots in cache, window, slots, lengths, n, heads, kv heads, D, scale, out, ldo
        lib.slm_attend_decode.argtypes = [
            ptr, i64, ptr, ptr, i64, i64, ptr, ptr, i64, i64, i64, i64, ctypes.c_float, ptr, i64
        ]  # fmt: skip
        f32 = ctypes.c_float
        lib.slm_int8_linear_vnni_fused.restype = ctypes.c_int
        # wp, wsum, wscale, bias, N, K, x, M, y, gamma, beta, eps, act, res
        lib.slm_int8_linear_vnni_fused.argtypes = [
            ptr, ptr, ptr, ptr, i64, i64, ptr, i64, ptr, ptr, ptr, f32, ctypes.c_int, ptr
        ]  # fmt: skip
        lib.slm_layernorm.restype = None
        lib.slm_layernorm.argtypes = [ptr, i64, i64, ptr, ptr, f32, ptr]  # x, M, K, gamma, beta, eps, y
        lib.slm_gelu.restype = None
        lib.slm_gelu.argtypes = [ptr, i64, ptr]  # x, n, y
        lib.slm_int8_amx.restype = ctypes.c_int
        lib.slm_int8_allow_amx.restype = None
        lib.slm_int8_allow_amx.argtypes = [ctypes.c_int]
        lib.slm_int8_allow_amx(0 if os.environ.get("SLM_INT8_AMX", "1") == "0" else 1)
        lib.slm_argmax.restype = ctypes.c_int64
        lib.slm_argmax.argtypes = [ptr, i64]
        lib.slm_kv_write.restype = ctypes.c_int
        # k cache, v cache, slots in cache, window, floats per position, key, ldk, value, ldv, slots, positions, M
        lib.slm_kv_write.argtypes = [ptr, ptr, i64, i64, i64, ptr, i64, ptr, i64, ptr, ptr, i64]
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


def _split_columns(gemm: object, args: tuple, n: int, threads: int, out: torch.Tensor) -> None:
    """Runs gemm(*args, n_begin, n_end, out) over `threads` column ranges (multiples of 64) at once."""
    bounds = [round(n * i / threads / 64) * 64 for i in range(threads)] + [n]
    jobs = [
        _executor(threads).submit(gemm, *args, lo, hi, out.data_ptr())  # type: ignore[arg-type]
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]
    for job in jobs:
        job.result()


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
    _split_columns(lib.slm_int8_gemm, (*args, *rest), n, threads, out)
    return out


def vnni512() -> bool:
    """True where the AVX-512 VNNI kernel runs (the CPU has avx512f, avx512bw and avx512_vnni)."""
    lib = library()
    return lib is not None and bool(lib.slm_int8_vnni512())


HUGE_PAGE = 2 << 20
ARENA_CHUNK = 32 << 20


def _huge_region(nbytes: int) -> torch.Tensor:
    """`nbytes` (rounded up to 2 MB) of zeroed memory on a 2 MB boundary, advised for transparent huge pages
    (Linux; elsewhere, or with THP off, ordinary pages). Decode reads every weight once per step, and with
    4 KB pages one core streamed 15 GB/s here against 21 GB/s with 2 MB pages (TLB misses on every page)."""
    size = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    # private: THP applies to private anonymous memory (a shared mapping is shmem, which it skips); the
    # slack before the boundary is never touched, never committed
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    mm = mmap.mmap(-1, size + HUGE_PAGE, flags=flags) if flags else mmap.mmap(-1, size + HUGE_PAGE)
    base = torch.frombuffer(mm, dtype=torch.uint8)
    off = -base.data_ptr() % HUGE_PAGE
    try:
        mm.madvise(mmap.MADV_HUGEPAGE, off, size)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not Linux, or THP unsupported
        pass
    return base[off : off + size]


class _Arena:
    """Bump allocator of packed weights in huge-page regions, so a model's many small matrices (GPT-2's
    768x768 projections are 576 KB) share 2 MB pages. A region is freed once no weight in it is alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._region: torch.Tensor | None = None
        self._used = 0

    def take(self, nbytes: int) -> torch.Tensor:
        """A zeroed uint8 tensor of `nbytes`, 64-byte aligned."""
        step = -(-nbytes // 64) * 64
        if step > ARENA_CHUNK // 4:
            return _huge_region(nbytes)[:nbytes]
        with self._lock:
            if self._region is None or self._used + step > self._region.numel():
                self._region, self._used = _huge_region(ARENA_CHUNK), 0
            out = self._region[self._used : self._used + nbytes]
            self._used += step
            return out


_arena = _Arena()


def amx() -> bool:
    """True where the VNNI kernel hands products of 6+ rows to AMX tiles (the CPU has AMX-INT8, Linux granted
    the tile registers, SLM_INT8_AMX is not 0). The sums are exact either way: the same bits as without."""
    lib = library()
    return lib is not None and bool(lib.slm_int8_vnni512()) and bool(lib.slm_int8_amx())


def allow_amx(allowed: bool) -> None:
    """Turns the AMX path on or off for this process (tests; SLM_INT8_AMX=0 at start does the same)."""
    lib = library()
    if lib is not None:
        lib.slm_int8_allow_amx(1 if allowed else 0)


def pack_vnni(weight: torch.Tensor) -> torch.Tensor:
    """int8 weights [N, K] -> the VNNI kernel's layout [ceil(N/64), ceil(K/4), 64, 4] (zero padded), in
    huge-page memory."""
    lib = library()
    if lib is None:
        raise RuntimeError("the slm int8 kernel is not available here")
    w = weight.to(torch.int8).contiguous()
    n, k = w.shape
    shape = ((n + 63) // 64, (k + 3) // 4, 64, 4)
    packed = _arena.take(math.prod(shape)).view(torch.int8).view(shape)
    lib.slm_int8_pack_vnni(w.data_ptr(), n, k, packed.data_ptr())
    return packed


def linear_vnni(
    x: torch.Tensor, packed: torch.Tensor, wsum: torch.Tensor, wscale: torch.Tensor, bias: torch.Tensor, n: int
) -> torch.Tensor:
    """x [M, K] fp32 -> [M, n] fp32 on the AVX-512 VNNI kernel; `packed` from `pack_vnni` (|w| <= 127).
    Split over torch's threads like `linear`, with the same bits however it is split."""
    lib = library()
    if lib is None:
        raise RuntimeError("the slm int8 kernel is not available here")
    x = x.float().contiguous()
    m, k = x.shape
    out = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return out
    threads = min(torch.get_num_threads(), max(1, n // 64))
    if threads <= 1 or m * n * k < PARALLEL_MACS:  # one C call: quantize and multiply
        w = (packed.data_ptr(), wsum.data_ptr(), wscale.data_ptr(), bias.data_ptr(), n, k)
        if lib.slm_int8_linear_vnni(*w, x.data_ptr(), m, out.data_ptr()) != 0:
            raise MemoryError(f"int8 linear: no memory for {m} x {k} activations")
        return out
    ldq = (k + 3) // 4 * 4
    qbuf = torch.zeros(m, ldq, dtype=torch.uint8) if ldq != k else torch.empty(m, k, dtype=torch.uint8)
    scales = torch.empty(m, dtype=torch.float32)
    lib.slm_int8_quantize_ld(x.data_ptr(), m, k, ldq, qbuf.data_ptr(), scales.data_ptr())
    args = (qbuf.data_ptr(), ldq, scales.data_ptr(), m, k, packed.data_ptr(), wsum.data_ptr(), wscale.data_ptr())
    rest = (bias.data_ptr(), n)
    _split_columns(lib.slm_int8_gemm_vnni, (*args, *rest), n, threads, out)
    return out


def _check_cache(keys: torch.Tensor, values: torch.Tensor) -> None:
    if not (keys.is_contiguous() and values.is_contiguous() and keys.shape == values.shape):
        raise ValueError("the caches must be contiguous [slots, window, kv_heads, D] tensors of one shape")
    if keys.dtype != torch.float32 or values.dtype != torch.float32 or keys.shape[-1] % 8:
        raise ValueError("the C attention needs fp32 caches and a head size that is a multiple of 8")


def _index(t: torch.Tensor, n: int, what: str) -> None:
    """The C side reads n int64s from t: anything else would read past it."""
    if t.dtype != torch.int64 or t.device.type != "cpu" or not t.is_contiguous() or t.shape != (n,):
        raise ValueError(f"{what} must be a contiguous int64 CPU tensor of {n} entries")


def _rows(t: torch.Tensor) -> int:
    """Row stride of [n, heads, D] whose heads and dims are packed (else ValueError)."""
    n, heads, d = t.shape
    if t.dtype != torch.float32 or t.stride(2) != 1 or t.stride(1) != d:
        raise ValueError("the C attention needs fp32 [n, heads, D] tensors with heads and dims packed")
    return t.stride(0)


def kv_write(
    keys: torch.Tensor,
    values: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slots: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Stores the step's new key/value rows ([M, kv_heads, D]) at (slots[r], positions[r]) of the
    position-major caches [slots, window, kv_heads, D] (see slm_kv_write in cpu_int8.c)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the slm kernels are not available here")
    _check_cache(keys, values)
    n_slots, window, kv_heads, d = keys.shape
    if key.shape[1:] != (kv_heads, d) or value.shape != key.shape:
        raise ValueError("kv_write: key/value rows do not match the cache")
    _index(slots, key.shape[0], "slots")
    _index(positions, key.shape[0], "positions")
    rc = lib.slm_kv_write(
        keys.data_ptr(), values.data_ptr(), n_slots, window, kv_heads * d, key.data_ptr(), _rows(key),
        value.data_ptr(), _rows(value), slots.data_ptr(), positions.data_ptr(), key.shape[0],
    )  # fmt: skip
    if rc != 0:
        raise IndexError("kv_write: a slot or position outside the cache")


def attend_decode(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> None:
    """Decode attention in C, in place into `out` (see slm_attend_decode in cpu_int8.c): query/out [n, heads,
    D] fp32, rows any distance apart, heads and dims packed; keys/values the position-major caches [slots,
    window, kv_heads, D]; slots / lengths int64 [n] (lengths count the new token)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the slm kernels are not available here")
    _check_cache(keys, values)
    n, heads, d = query.shape
    n_slots, window, kv_heads, _ = keys.shape
    if d != keys.shape[-1] or heads % kv_heads or out.shape != query.shape:
        raise ValueError("attend_decode: query, out and caches do not match")
    _index(slots, n, "slots")
    _index(lengths, n, "lengths")
    rc = lib.slm_attend_decode(
        query.data_ptr(), _rows(query), keys.data_ptr(), values.data_ptr(), n_slots, window,
        slots.data_ptr(), lengths.data_ptr(), n, heads, kv_heads, d, scale, out.data_ptr(), _rows(out),
    )  # fmt: skip
    if rc == -2:
        raise IndexError("attend_decode: a slot or length outside the cache")
    if rc != 0:
        raise MemoryError("attend_decode: no memory for the attention scores")


def argmax(x: torch.Tensor) -> int:
    """torch.argmax(x) of a 1-D tensor as an int (the first largest; a NaN counts as the largest), in C for
    contiguous fp32 CPU tensors where the kernels are built (~10 us vs ~80 for GPT-2's vocabulary)."""
    lib = _lib if _lib is not None else (load() if not _tried else None)
    if lib is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 1 or not x.is_contiguous():
        return int(torch.argmax(x).item())
    return int(lib.slm_argmax(x.data_ptr(), x.shape[0]))
