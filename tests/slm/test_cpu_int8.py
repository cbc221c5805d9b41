"""slm.cpu_int8: the AVX2 int8 linear kernel (exact integer dot products, a row's result independent of the
other rows, odd shapes) and its fallback to oneDNN where it cannot be built."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from slm import cpu_int8
from slm.precision import Int8Linear, int8_backend, onednn_int8_available

needs_kernel = pytest.mark.skipif(cpu_int8.load() is None, reason="no AVX2 or no C compiler here")
# every slm kernel this CPU runs: AVX2 always (with the library), AVX-512 VNNI where the CPU has it
KERNELS = ["avx2"] + (["vnni512"] if cpu_int8.vnni512() else [])
QMAX = {"avx2": 63, "vnni512": 127}  # vpmaddubsw's 16-bit pair sums need |w| <= 63; vpdpbusd sums into int32


def reference(x: torch.Tensor, lin: Int8Linear) -> torch.Tensor:
    """The kernel's contract in plain torch: u8 rows (zero point 128) . int8 weights, exact in int64."""
    amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    q = torch.trunc(x * (127.0 / amax) + 128.5).clamp(0, 255).to(torch.int64)
    acc = (q - 128) @ lin.int8_weight().to(torch.int64).t()
    return lin.bias + acc.float() * lin.w_scale * (amax / 127.0)


@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("k", "n"), [(64, 40), (96, 131), (70, 9), (768, 200), (5, 17), (771, 65)])
def test_kernel_matches_the_exact_integer_reference(k: int, n: int, kernel: str) -> None:
    torch.manual_seed(k + n)
    lin = torch.nn.Linear(k, n)
    q = Int8Linear(lin, backend="slm", kernel=kernel)
    assert q.int8_weight().abs().max() == QMAX[kernel]
    for m in (1, 3, 4, 5, 6, 7, 9, 13):
        x = torch.randn(m, k) * 3
        got = q(x)
        assert torch.allclose(got, reference(x, q), rtol=1e-5, atol=1e-5), (m, k, n)
        assert (got - lin(x)).norm() / lin(x).norm() < 0.03  # and close to fp32


@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_rows_result_does_not_depend_on_the_other_rows(kernel: str) -> None:
    torch.manual_seed(0)
    q = Int8Linear(torch.nn.Linear(160, 70), backend="slm", kernel=kernel)
    x = torch.randn(11, 160)
    together = q(x)
    for i in range(11):  # row blocks, leftovers, alone: bit for bit the same
        assert torch.equal(q(x[i : i + 1])[0], together[i])
    assert torch.equal(q(x[3:9]), together[3:9])
    assert torch.equal(q(x.view(1, 11, 160))[0], together)  # batch dims are flattened


@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
def test_split_over_threads_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch, kernel: str) -> None:
    torch.manual_seed(1)
    q = Int8Linear(torch.nn.Linear(96, 300), backend="slm", kernel=kernel)
    x = torch.randn(7, 96)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = q(x)
        monkeypatch.setattr(cpu_int8, "PARALLEL_MACS", 0)
        torch.set_num_threads(3)
        split = q(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, split)


def test_without_a_compiler_int8_falls_back_to_onednn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cpu_int8, "_tried", False)
    monkeypatch.setattr(cpu_int8, "_lib", None)
    monkeypatch.setenv("SLM_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("SLM_INT8_KERNEL", "slm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_int8.load() is None
        assert int8_backend() == "onednn"
        lin = torch.nn.Linear(64, 32)
        q = Int8Linear(lin)
    assert q.backend == "onednn"
    x = torch.randn(3, 64)
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.03


@needs_kernel
def test_kernel_is_built_once_into_a_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cpu_int8, "_tried", False)
    monkeypatch.setattr(cpu_int8, "_lib", None)
    cache = tmp_path / "kernels"
    monkeypatch.setenv("SLM_KERNEL_DIR", str(cache))
    assert cpu_int8.load() is not None
    built = list(cache.glob("cpu_int8-*.so"))
    assert len(built) == 1 and (cache.stat().st_mode & 0o077) == 0
    monkeypatch.setattr(cpu_int8, "_tried", False)
    monkeypatch.setattr(cpu_int8, "_lib", None)
    mtime = built[0].stat().st_mtime_ns
    assert cpu_int8.load() is not None and built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    # a cache directory others can write to is not trusted
    cache.chmod(0o777)
    assert cpu_int8._private_dir(cache) is None


def test_unknown_kernel_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_INT8_KERNEL", "fastest")
    with pytest.raises(ValueError, match="SLM_INT8_KERNEL"):
        int8_backend()


@needs_kernel
@pytest.mark.skipif(not onednn_int8_available(), reason="torch without oneDNN int8")
def test_onednn_path_quantizes_rows_in_one_pass_with_the_same_bits() -> None:
    """The oneDNN path's uint8 activations come from slm's one-pass C quantizer: the same bits as the torch
    expression it replaces, the same outputs (up to the epilogue's float order), rows still independent."""
    torch.manual_seed(3)
    for m, k in ((1, 768), (5, 70), (54, 3072)):
        x = torch.randn(m, k) * 2
        x[0, :2] = torch.tensor([0.0, 1e-30])
        amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        expected = torch.addcmul(torch.full((), 128.5), x, torch.div(torch.full((), 127.0), amax)).to(torch.uint8)
        q, scale = cpu_int8.quantize_rows(x)
        assert torch.equal(q, expected) and torch.allclose(scale, amax[:, 0] / 127.0, rtol=1e-6)
    lin = torch.nn.Linear(96, 50)
    q = Int8Linear(lin, backend="onednn", signed=False)
    assert q._c_quantize
    x = torch.randn(9, 96)
    fast = q(x)
    q._c_quantize = False
    slow = q(x)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)
    q._c_quantize = True
    for i in range(9):
        assert torch.equal(q(x[i : i + 1])[0], fast[i])
    assert q(torch.empty(0, 96)).shape == (0, 50)


@needs_kernel
def test_auto_picks_the_vnni_kernel_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AVX-512 VNNI CPUs slm's packed VNNI kernel beats oneDNN's int8 matmul at decode sizes (GPT-2 124M
    shape, 1 thread, the step's matmuls: 5.4 vs 12.5 ms at one row, 7.7 vs 13.9 ms at 8; bench/int8_ops.py)."""
    monkeypatch.setenv("SLM_INT8_KERNEL", "auto")
    lin = torch.nn.Linear(64, 32)
    if cpu_int8.vnni512():
        assert int8_backend() == "slm" and Int8Linear(lin).kernel == "vnni512"
    else:
        with pytest.raises(ValueError, match="cannot run here"):
            Int8Linear(lin, backend="slm", kernel="vnni512")
    monkeypatch.setenv("SLM_INT8_KERNEL", "onednn")
    assert Int8Linear(lin).kernel == "onednn"


def _position_major_cache(slots: int, window: int, kv_heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    from slm.batching import SlotCache

    cache = SlotCache(slots, window)
    keys, values = cache.layer(0, torch.empty(1, kv_heads, 1, d))
    assert cache.position_major and keys.shape == (slots, window, kv_heads, d)
    return keys, values


@needs_kernel
@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(4, 4, 16), (6, 2, 8), (3, 3, 72)])
def test_decode_attention_in_c_matches_sdpa_and_ignores_the_other_rows(heads: int, kv_heads: int, d: int) -> None:
    """Keys/values written with kv_write, then one query per request over its own positions (lengths not
    multiples of 4 or 8, grouped-query heads, head sizes 8..72): the same as SDPA within float rounding,
    and a row's output is bit for bit the same alone or in a batch."""
    torch.manual_seed(heads + d)
    slots, window = 5, 40
    keys, values = _position_major_cache(slots, window, kv_heads, d)
    lengths = {0: 1, 1: 7, 3: 33, 4: 40}
    for slot, n in lengths.items():  # written through the kernel, rows spread like the packed step's views
        packed = torch.randn(n, 3, kv_heads, d)
        cpu_int8.kv_write(
            keys, values, packed[:, 0], packed[:, 1], torch.full((n,), slot), torch.arange(n, dtype=torch.int64)
        )
        assert torch.equal(keys[slot, :n], packed[:, 0]) and torch.equal(values[slot, :n], packed[:, 1])
    rows = list(lengths)
    qkv = torch.randn(len(rows), 3, heads, d)
    query = qkv[:, 0]  # rows 3 * heads * d apart, like the packed step
    out = torch.empty(len(rows), heads, d)
    slot_t, len_t = torch.tensor(rows), torch.tensor([lengths[s] for s in rows])
    cpu_int8.attend_decode(query, keys, values, slot_t, len_t, 0.3, out)
    for i, slot in enumerate(rows):
        n = lengths[slot]
        k = keys[slot, :n].transpose(0, 1)[None]  # [1, kv_heads, n, d]
        v = values[slot, :n].transpose(0, 1)[None]
        ref = torch.nn.functional.scaled_dot_product_attention(
            query[i][None, :, None], k, v, scale=0.3, enable_gqa=heads != kv_heads
        )[0, :, 0]
        assert torch.allclose(out[i], ref, rtol=1e-5, atol=1e-5), slot
        alone = torch.empty(1, heads, d)
        cpu_int8.attend_decode(query[i : i + 1], keys, values, slot_t[i : i + 1], len_t[i : i + 1], 0.3, alone)
        assert torch.equal(alone[0], out[i])


@needs_kernel
def test_decode_attention_in_c_refuses_indexes_outside_the_cache() -> None:
    keys, values = _position_major_cache(2, 8, 2, 8)
    q, out = torch.randn(1, 2, 8), torch.empty(1, 2, 8)
    with pytest.raises(IndexError):
        cpu_int8.attend_decode(q, keys, values, torch.tensor([2]), torch.tensor([1]), 1.0, out)
    with pytest.raises(IndexError):
        cpu_int8.attend_decode(q, keys, values, torch.tensor([0]), torch.tensor([9]), 1.0, out)
    with pytest.raises(IndexError):
        cpu_int8.kv_write(keys, values, q, q, torch.tensor([0]), torch.tensor([8]))
    with pytest.raises(ValueError, match="int64"):  # the C side would read past a short or 32-bit index
        cpu_int8.kv_write(keys, values, q, q, torch.tensor([0], dtype=torch.int32), torch.tensor([1]))
    with pytest.raises(ValueError, match="entries"):
        cpu_int8.attend_decode(q, keys, values, torch.tensor([0]), torch.tensor([], dtype=torch.int64), 1.0, out)
    assert not keys.any()  # nothing written
    with pytest.raises(ValueError, match="multiple of 8"):
        k12, v12 = _position_major_cache(2, 8, 2, 12)
        cpu_int8.attend_decode(torch.randn(1, 2, 12), k12, v12, torch.tensor([0]), torch.tensor([1]), 1.0, out)


@needs_kernel
def test_argmax_in_c_is_torch_argmax() -> None:
    torch.manual_seed(5)
    x = torch.randn(50257)
    assert cpu_int8.argmax(x) == int(torch.argmax(x))
    x[[7, 40000]] = 99.0  # ties: the first
    assert cpu_int8.argmax(x) == 7 == int(torch.argmax(x))
    x[[30000, 50256]] = float("nan")  # a NaN counts as the largest, the first one wins
    assert cpu_int8.argmax(x) == 30000 == int(torch.argmax(x))
    for n in (1, 3, 9, 17):  # tails shorter than a vector
        y = torch.randn(n)
        assert cpu_int8.argmax(y) == int(torch.argmax(y))
    y = torch.randn(2, 20)[:, 3]  # not contiguous: torch's own
    assert cpu_int8.argmax(y) == int(torch.argmax(y))
    assert cpu_int8.argmax(torch.full((12,), float("-inf"))) == 0


@needs_kernel
def test_packed_weights_share_huge_page_regions_and_stay_aligned() -> None:
    """Small matrices are carved out of one 2 MB-aligned region (advised for transparent huge pages: decode
    streams every weight once per step), each on a 64-byte boundary; a big one gets its own region."""
    small = [cpu_int8.pack_vnni(torch.randint(-127, 128, (70, 33), dtype=torch.int8)) for _ in range(3)]
    assert all(p.data_ptr() % 64 == 0 for p in small)
    assert len({p.untyped_storage().data_ptr() for p in small}) <= 2  # one region (two if one filled up)
    a, b = small[0], small[1]
    if a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr():
        assert b.data_ptr() - a.data_ptr() == -(-a.numel() // 64) * 64  # back to back
    big = cpu_int8.pack_vnni(torch.zeros(4096, 4096, dtype=torch.int8))
    assert big.data_ptr() % cpu_int8.HUGE_PAGE == 0 and not big.any()


@needs_kernel
@pytest.mark.skipif(not cpu_int8.vnni512(), reason="the fused step runs on the AVX-512 VNNI kernel")
@pytest.mark.parametrize("threads", [1, 3])
def test_fused_layer_is_the_same_bits_as_its_steps_one_after_the_other(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Int8Linear.fused (LayerNorm -> int8 layer -> GELU -> + residual in one C call, the engine's GPT-2 step)
    equals CLayerNorm, the layer, CGELU and an add called one after the other (the model's own forward),
    bit for bit, alone and split over threads; LayerNorm in C is LayerNorm."""
    from slm.precision import CGELU, CLayerNorm

    torch.manual_seed(threads)
    ln = torch.nn.LayerNorm(72)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.2, 0.2)
    norm = CLayerNorm.from_module(ln)
    lin = Int8Linear(torch.nn.Linear(72, 130), backend="slm", kernel="vnni512")
    x = torch.randn(9, 72) * 3
    with torch.inference_mode():
        assert torch.allclose(norm(x), ln(x), rtol=1e-5, atol=1e-5)
        expected = CGELU()(lin(norm(x))) + (residual := torch.randn(9, 130))
        saved = torch.get_num_threads()
        try:
            if threads > 1:
                monkeypatch.setattr(cpu_int8, "PARALLEL_MACS", 0)
                torch.set_num_threads(threads)
            got = lin.fused(x, norm=norm, gelu=True, residual=residual.clone())
            plain = lin.fused(x)
        finally:
            torch.set_num_threads(saved)
    assert torch.equal(got, expected)
    assert torch.equal(plain, lin(x))
    with pytest.raises(ValueError, match="contiguous"):
        lin.fused(x.t().contiguous().t())


@needs_kernel
@pytest.mark.skipif(not cpu_int8.amx(), reason="no AMX here (or Linux did not grant the tile registers)")
def test_amx_tiles_give_the_vector_kernels_bits() -> None:
    """From 6 rows on, products go to AMX tiles (K a multiple of 64): the sums are exact either way and share
    the epilogue, so every row is bit for bit what the vector kernel gives, fused extras included."""
    from slm.precision import CLayerNorm

    torch.manual_seed(11)
    lin = Int8Linear(torch.nn.Linear(192, 150), backend="slm", kernel="vnni512")
    norm = CLayerNorm.from_module(torch.nn.LayerNorm(192))
    try:
        for m in (5, 6, 16, 17, 40):
            x = torch.randn(m, 192) * 2
            res = torch.randn(m, 150)
            with torch.inference_mode():
                cpu_int8.allow_amx(True)
                tiles = lin(x), lin.fused(x, norm=norm, gelu=True, residual=res.clone())
                cpu_int8.allow_amx(False)
                vector = lin(x), lin.fused(x, norm=norm, gelu=True, residual=res.clone())
            assert torch.equal(tiles[0], vector[0]) and torch.equal(tiles[1], vector[1]), m
            assert torch.allclose(tiles[0], reference(x, lin), rtol=1e-5, atol=1e-5)
    finally:
        cpu_int8.allow_amx(True)


def test_c_layernorm_and_gelu_fall_back_to_torch_without_avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLayerNorm / CGELU only call the AVX-512 C code where the CPU has it (elsewhere that code would be an
    illegal instruction); otherwise, and under autograd, torch computes them."""
    from transformers.activations import NewGELUActivation

    from slm.precision import CGELU, CLayerNorm, SigmoidTanhGELU

    ln = torch.nn.LayerNorm(40)
    norm = CLayerNorm.from_module(ln)
    x = torch.randn(3, 40)
    monkeypatch.setattr(cpu_int8, "vnni512", lambda: False)
    calls: list[str] = []
    lib = cpu_int8.library()
    if lib is not None:
        monkeypatch.setattr(cpu_int8, "_lib", _Spy(lib, calls))
    with torch.inference_mode():
        assert torch.equal(norm(x), ln(x))
        assert torch.equal(CGELU()(x), SigmoidTanhGELU()(x))
    assert calls == []
    g = x.clone().requires_grad_(True)
    CGELU()(g).sum().backward()  # autograd: torch's ops
    h = x.clone().requires_grad_(True)
    NewGELUActivation()(h).sum().backward()
    assert torch.allclose(g.grad, h.grad, rtol=1e-5, atol=1e-5)


class _Spy:
    """A kernel library stand-in that records which C functions were called."""

    def __init__(self, lib: object, calls: list[str]) -> None:
        self._lib, self._calls = lib, calls

    def __getattr__(self, name: str) -> object:
        self._calls.append(name)
        return getattr(self._lib, name)
