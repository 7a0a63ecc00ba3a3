"""FD-CMKD pieces against independent computations (float64)."""

import math

import numpy as np
import pytest
import torch

from bench.methods.fdcmkd import (
    band_losses,
    decompose,
    fdcmkd_loss,
    frequency_masks,
    log_compress,
    log_mse,
    standardize,
)


@pytest.fixture(autouse=True)
def float64_default():
    """float64 for the oracles here, restored afterwards (a global default would leak into other tests)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _x(b=5, d=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64) * 3 + 1.5


def test_masks_at_ratio_half():
    low, high = frequency_masks(512, 0.5)
    assert low.shape == (257,)
    assert torch.equal(torch.nonzero(low).flatten(), torch.arange(1, 129))
    assert torch.equal(torch.nonzero(high).flatten(), torch.arange(129, 257))
    assert low[0] == 0 and high[0] == 0  # DC in neither band when Scale is on
    low_dc, _ = frequency_masks(512, 0.5, dc_in_low=True)
    assert low_dc[0] == 1 and int(low_dc.sum()) == 129
    l25, h25 = frequency_masks(512, 0.25)
    assert int(l25.sum()) == 64 and int(h25.sum()) == 192
    with pytest.raises(ValueError):
        frequency_masks(512, 1.0)


def test_split_reconstructs_input():
    x = _x()
    low, high = decompose(x, 0.5, remove_dc=False)
    assert torch.allclose(low + high, x, atol=1e-12)
    low, high = decompose(x, 0.5, remove_dc=True)
    assert torch.allclose(low + high + x.mean(1, keepdim=True), x, atol=1e-12)
    assert torch.allclose(low.mean(1), torch.zeros(5), atol=1e-12)
    assert torch.allclose(high.mean(1), torch.zeros(5), atol=1e-12)


def test_bands_hold_only_their_frequencies():
    d = 64
    n = torch.arange(d, dtype=torch.float64)
    slow = torch.cos(2 * math.pi * 3 * n / d)  # bin 3 -> low
    fast = torch.cos(2 * math.pi * 25 * n / d)  # bin 25 > 16 -> high
    low, high = decompose((slow + fast)[None], 0.5, remove_dc=True)
    assert torch.allclose(low[0], slow, atol=1e-12)
    assert torch.allclose(high[0], fast, atol=1e-12)


def test_decompose_matches_numpy_full_fft_with_abs_k_masks():
    x = _x(3, 128, seed=4)
    f = np.fft.fft(x.numpy(), axis=1)
    k = np.abs(np.fft.fftfreq(128, d=1 / 128))
    low_np = np.fft.ifft(f * ((k >= 1) & (k <= 32)), axis=1).real
    high_np = np.fft.ifft(f * (k > 32), axis=1).real
    low, high = decompose(x, 0.5, remove_dc=True)
    np.testing.assert_allclose(low.numpy(), low_np, atol=1e-12)
    np.testing.assert_allclose(high.numpy(), high_np, atol=1e-12)


def test_std_gives_zero_mean_unit_norm():
    s = standardize(_x())
    assert torch.allclose(s.mean(1), torch.zeros(5), atol=1e-14)
    assert torch.allclose(s.norm(dim=1), torch.ones(5), atol=1e-14)
    assert torch.isfinite(standardize(torch.ones(2, 8))).all()  # constant vector: clamped norm


def test_log_compress_values():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    expected = torch.tensor([-math.log(4), -math.log(1.5), 0.0, math.log(1.5), math.log(4)])
    assert torch.allclose(log_compress(x), expected, atol=1e-15)
    a, b = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    assert log_mse(a, b).item() == pytest.approx(((math.log(3)) ** 2 + (2 * math.log(2)) ** 2) / 2, abs=1e-14)


def test_log_mse_gradient_bounded_for_large_differences():
    for big in (10.0, 1e3, 1e6):
        a = torch.tensor([[big, -big]], requires_grad=True)
        b = torch.zeros(1, 2)
        log_mse(a, b).backward()
        g_log = a.grad.abs().max().item()
        a2 = a.detach().clone().requires_grad_(True)
        torch.nn.functional.mse_loss(a2, b).backward()
        g_mse = a2.grad.abs().max().item()
        # d/da (log(1+a))^2 / n = log(1+a)/(1+a): bounded by 1/e overall, -> 0 for large a
        assert g_log <= 1 / math.e + 1e-12
        assert g_mse == pytest.approx(big)
    assert g_log < 1e-4


def test_fdcmkd_loss_matches_hand_computation():
    xs, xt = _x(4, 64, 1), _x(4, 64, 2) * 5
    got = fdcmkd_loss(xs, xt, ratio=0.5, scale=True, log=True, lambda1=0.7, lambda2=2.0)
    # independent: numpy full FFT with |k| masks, Std, sigma, mean squared error
    def bands(x):
        f = np.fft.fft(x, axis=1)
        k = np.abs(np.fft.fftfreq(64, d=1 / 64))
        return np.fft.ifft(f * ((k >= 1) & (k <= 16)), axis=1).real, np.fft.ifft(f * (k > 16), axis=1).real

    def std(v):
        c = v - v.mean(1, keepdims=True)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    sig = lambda v: np.sign(v) * np.log1p(np.abs(v))  # noqa: E731
    sl, sh = bands(xs.numpy())
    tl, th = bands(xt.numpy())
    low = ((std(sl) - std(tl)) ** 2).mean()
    high = ((sig(std(sh)) - sig(std(th))) ** 2).mean()
    assert got["low"].item() == pytest.approx(0.7 * low, rel=1e-10, abs=1e-14)
    assert got["high"].item() == pytest.approx(2.0 * high, rel=1e-10, abs=1e-14)
    # no scale: raw bands (DC in low), plain MSE on high when log is off
    got2 = fdcmkd_loss(xs, xt, scale=False, log=False)
    ls, hs = decompose(xs, 0.5, remove_dc=False)
    lt, ht = decompose(xt, 0.5, remove_dc=False)
    assert got2["low"].item() == pytest.approx(((ls - lt) ** 2).mean().item(), rel=1e-12)
    assert got2["high"].item() == pytest.approx(((hs - ht) ** 2).mean().item(), rel=1e-12)


def test_fdcmkd_loss_zero_for_equal_and_scale_invariant():
    x = _x(3, 32, 9)
    out = fdcmkd_loss(x, x)
    assert out["low"].item() == pytest.approx(0, abs=1e-20) and out["high"].item() == pytest.approx(0, abs=1e-20)
    out = fdcmkd_loss(x, 7.0 * x + 3.0)  # Std removes offset and scale: the Table-1 motivation
    assert out["low"].item() < 1e-25 and out["high"].item() < 1e-25


def test_teacher_receives_no_gradient():
    xs = _x(2, 16, 1).requires_grad_(True)
    xt = _x(2, 16, 2).requires_grad_(True)
    sum(band_losses(*decompose(xs), *decompose(xt)).values()).backward()
    assert xs.grad is not None and xs.grad.abs().sum() > 0
    assert xt.grad is None
