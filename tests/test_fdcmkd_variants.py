"""FD-CMKD's open questions as variants: learnable split, multi-band DFT, Haar wavelet bands."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from bench.methods.fdcmkd import (
    FDCMKDParams,
    LearnableCutoff,
    apply_spectral_masks,
    decompose,
    dft_band_masks,
    haar_bands,
    soft_split_masks,
)
from bench.train.resolve import RunSpec
from bench.train.run import run

X = torch.randn(5, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("remove_dc", [True, False])
@pytest.mark.parametrize("bands", [2, 3, 4, 8])
def test_dft_bands_reconstruct_exactly(bands, remove_dc):
    masks = dft_band_masks(64, bands, 0.5, dc_in_low=not remove_dc, dtype=torch.float64)
    parts = apply_spectral_masks(X, masks)
    target = X - X.mean(1, keepdim=True) if remove_dc else X
    assert len(parts) == bands and torch.allclose(sum(parts), target, atol=1e-12)
    assert torch.equal(torch.stack(masks).sum(0)[1:], torch.ones(32, dtype=torch.float64))  # a partition of the bins
    if bands == 2:  # the paper's split
        lo, hi = decompose(X, 0.5, remove_dc=remove_dc)
        assert torch.allclose(parts[0], lo) and torch.allclose(parts[1], hi)


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("remove_dc", [True, False])
def test_haar_bands_reconstruct_exactly(levels, remove_dc):
    parts = haar_bands(X, levels, remove_dc=remove_dc)
    target = X - X.mean(1, keepdim=True) if remove_dc else X
    assert len(parts) == levels + 1 and torch.allclose(sum(parts), target, atol=1e-12)
    # orthogonal decomposition: band energies add up
    assert float(sum((p_ ** 2).sum() for p_ in parts)) == pytest.approx(float((target ** 2).sum()), rel=1e-12)
    # one level by hand: approximation = pairwise means repeated, detail = the rest
    if levels == 1 and not remove_dc:
        means = (X[:, 0::2] + X[:, 1::2]) / 2
        assert torch.allclose(parts[0], means.repeat_interleave(2, dim=1))
    with pytest.raises(ValueError, match="divisible"):
        haar_bands(torch.randn(2, 12), 3)


def test_learnable_split_reconstructs_and_trains_its_cutoff():
    cut = LearnableCutoff(64, 0.5)
    assert float(cut.bins().detach()) == pytest.approx(16.5)
    lo, hi = soft_split_masks(64, cut.bins().double(), 2.0)
    parts = apply_spectral_masks(X, [lo, hi])
    assert torch.allclose(parts[0] + parts[1], X - X.mean(1, keepdim=True), atol=1e-12)
    # gradients reach the cut-off through the band losses
    (parts[0] ** 2).mean().backward()
    assert cut.theta.grad is not None and float(cut.theta.grad.abs()) > 0
    # soft mask is ~binary far from the cut-off
    assert float(lo[2]) > 0.99 and float(lo[30]) < 0.01 and float(lo[0]) == 0.0


def test_variant_params_are_validated():
    with pytest.raises(ValueError, match="soft two-band"):
        FDCMKDParams(split="learnable", bands=3).validate()
    with pytest.raises(ValueError, match="band_weights needs 3"):
        FDCMKDParams(bands=3, band_weights=(1.0, 1.0)).validate()


@pytest.mark.parametrize("sets", [
    {"split": "learnable"},
    {"bands": "4", "band_weights": "1,1,2,2"},
    {"decomp": "haar", "bands": "3"},
])
def test_variants_train_end_to_end(tmp_path, sets):
    rec = run(RunSpec("synthetic", "audio", "visual", "fdcmkd", 0, tiny({"fdcmkd": sets, "train": {"epochs": "2"}}),
                      str(tmp_path)))
    assert rec["status"] == "ok", rec.get("traceback")
    terms = rec["history"][-1]["terms"]
    if sets.get("split") == "learnable":
        learned = rec["extra"]["method"]["learned_cutoff_bins"]
        assert 0 < learned < 16 * 2 and learned != pytest.approx(8.5, abs=1e-9)  # D=32 (width 8): moved from its start
    elif "bands" in sets and sets.get("decomp") != "haar":
        assert {"band0", "band1", "band2", "band3", "ce_band3"} <= set(terms)
    else:
        assert {"band0", "band1", "band2"} <= set(terms)
