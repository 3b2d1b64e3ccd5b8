"""The rule of trace="auto": exact for vectors with D <= 256, Hutchinson for images of any size."""

from __future__ import annotations

import pytest
import torch

import flipd
from flipd.estimator import AUTO_EXACT_MAX_DIM, resolve_trace


@pytest.mark.parametrize(
    ("shape", "expected"),
    [(10, ("exact", 10)), ((256,), ("exact", 256)), ((257,), ("hutchinson", 4)),
     ((1, 4, 4), ("hutchinson", 4)), ((1, 16, 16), ("hutchinson", 4)), ((3, 64, 64), ("hutchinson", 4))],
)
def test_auto_is_exact_only_for_small_vectors(shape, expected):
    assert AUTO_EXACT_MAX_DIM == 256
    assert resolve_trace("auto", shape, 4) == expected
    assert resolve_trace("exact", shape, 4)[0] == "exact"  # an explicit choice is kept


def linear_image_model(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A score-like map of images [N, 1, 4, 4] with a known Jacobian trace (−16 · 0.5)."""
    return -0.5 * y


def test_images_get_hutchinson_probes_under_auto():
    images = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = flipd.estimate(linear_image_model, images, t0=0.05, prediction="score", n_probes=3, seed=2)
    assert result.trace == "hutchinson" and result.n_probes == 3
    hutchinson = flipd.flipd(linear_image_model, images, t0=0.05, prediction="score", trace="hutchinson", n_probes=3, seed=2)
    assert torch.equal(result.lid, hutchinson)
    # A multiple of the identity: every Rademacher probe gives the exact trace.
    exact = flipd.flipd(linear_image_model, images, t0=0.05, prediction="score", trace="exact")
    assert torch.allclose(result.lid, exact, atol=1e-10)
    curves = flipd.flipd_curve(linear_image_model, images, [0.02, 0.05], prediction="score", n_probes=3, seed=2)
    assert torch.equal(curves[:, 1], hutchinson)
