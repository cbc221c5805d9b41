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


def reference(x: torch.Tensor, lin: Int8Linear) -> torch.Tensor:
    """The kernel's contract in plain torch: u8 rows (zero point 128) . int8 weights, exact in int64."""
    amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    q = torch.trunc(x * (127.0 / amax) + 128.5).clamp(0, 255).to(torch.int64)
    acc = (q - 128) @ lin.weight_int8.to(torch.int64).t()
    return lin.bias + acc.float() * lin.w_scale * (amax / 127.0)


@needs_kernel
@pytest.mark.parametrize(("k", "n"), [(64, 40), (96, 131), (70, 9), (768, 200)])
def test_kernel_matches_the_exact_integer_reference(k: int, n: int) -> None:
    torch.manual_seed(k + n)
    lin = torch.nn.Linear(k, n)
    q = Int8Linear(lin, backend="slm")
    assert q.weight_int8.abs().max() <= 63  # vpmaddubsw's pair sums must not saturate
    for m in (1, 3, 4, 5, 9):
        x = torch.randn(m, k) * 3
        got = q(x)
        assert torch.allclose(got, reference(x, q), rtol=1e-5, atol=1e-5), (m, k, n)
        assert (got - lin(x)).norm() / lin(x).norm() < 0.03  # and close to fp32


@needs_kernel
def test_a_rows_result_does_not_depend_on_the_other_rows() -> None:
    torch.manual_seed(0)
    q = Int8Linear(torch.nn.Linear(160, 70), backend="slm")
    x = torch.randn(11, 160)
    together = q(x)
    for i in range(11):  # 4-row blocks, leftovers, alone: bit for bit the same
        assert torch.equal(q(x[i : i + 1])[0], together[i])
    assert torch.equal(q(x[3:9]), together[3:9])
    assert torch.equal(q(x.view(1, 11, 160))[0], together)  # batch dims are flattened


@needs_kernel
def test_split_over_threads_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    q = Int8Linear(torch.nn.Linear(96, 300), backend="slm")
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
