"""Models that compute their score by autograd inside (energy-based models, analytic log-densities).

The closed form: a Gaussian on a 2-dimensional subspace of R^5, whose smoothed density at time t
is N(0, psi²·U Uᵀ + sigma²·I). Its score is written as ``-∇E(y)`` with the energy
E(y) = ½·‖Uᵀy‖²/(psi² + sigma²) + ½·‖y − U Uᵀy‖²/sigma², differentiated inside the model with
``torch.autograd.grad(..., create_graph=True)``, and FLIPD is compared with
:meth:`flipd.analytic.GaussianMixture.exact_flipd` of the same Gaussian.
"""

from __future__ import annotations

import pytest
import torch

import flipd
from flipd.analytic import GaussianMixture
from flipd.schedules import VP

SCHEDULE = VP()
DIM, SUBSPACE_DIM = 5, 2
BASIS = torch.linalg.qr(torch.randn(DIM, SUBSPACE_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
GAUSSIAN = GaussianMixture(torch.zeros(1, DIM, dtype=torch.float64), [BASIS], [torch.ones(SUBSPACE_DIM, dtype=torch.float64)])
T0 = 0.02


def energy(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The smoothed Gaussian's energy −log p_t(y) + const, [N] for y [N, D]."""
    psi, sigma = SCHEDULE.psi(t.double())[:, None], SCHEDULE.sigma(t.double())[:, None]
    along = y @ BASIS
    across = y - along @ BASIS.T
    return 0.5 * (along.pow(2) / (psi**2 + sigma**2)).sum(1) + 0.5 * across.pow(2).sum(1) / sigma[:, 0] ** 2


def energy_score(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The score −∇E(y) by torch.autograd inside the model, as energy-based models write it."""
    with torch.enable_grad():
        y = y.requires_grad_(True)
        (gradient,) = torch.autograd.grad(energy(y, t).sum(), y, create_graph=True)
    return -gradient


def energy_score_without_graph(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same score, but its gradient is not kept differentiable (no create_graph)."""
    with torch.enable_grad():
        y = y.requires_grad_(True)
        (gradient,) = torch.autograd.grad(energy(y, t).sum(), y)
    return -gradient


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    return GAUSSIAN.sample(40, seed=1)[0]


@pytest.fixture(scope="module")
def exact(points) -> torch.Tensor:
    return GAUSSIAN.exact_flipd(points, T0, SCHEDULE)


def test_closed_form_is_what_the_energy_describes(points):
    """The energy's score equals the analytic score of the same Gaussian (guards the test itself)."""
    t = torch.full((points.shape[0],), T0, dtype=torch.float64)
    y = SCHEDULE.psi(t)[:, None] * points
    assert torch.allclose(energy_score(y.clone(), t), GAUSSIAN.score(y, t, SCHEDULE), atol=1e-10)


@pytest.mark.parametrize("mode", ["auto", "autograd"])
def test_exact_trace_of_an_autograd_model_matches_the_closed_form(points, exact, mode):
    result = flipd.estimate(energy_score, points, t0=T0, prediction="score", trace="exact", mode=mode)
    assert result.mode == "autograd"
    assert torch.allclose(result.lid, exact, atol=1e-8)
    assert (result.lid - SUBSPACE_DIM).abs().max() < 0.05  # and it is the subspace's dimension


def test_hutchinson_probes_of_an_autograd_model_match_an_analytic_model(points):
    """Same probes, same seed: the autograd model and the analytic model give the same estimates."""
    analytic = GAUSSIAN.as_model(SCHEDULE, prediction="score")
    for probes in (1, 8):
        options = dict(t0=T0, prediction="score", trace="hutchinson", n_probes=probes, seed=3)
        by_autograd = flipd.flipd(energy_score, points, mode="autograd", **options)
        assert torch.allclose(by_autograd, flipd.flipd(analytic, points, **options), atol=1e-8)
        assert torch.allclose(flipd.flipd(energy_score, points, **options), by_autograd, atol=1e-12)


def test_curves_and_the_knee_rule_run_on_an_autograd_model(points, exact):
    grid = torch.tensor([0.01, T0, 0.05], dtype=torch.float64)
    curves = flipd.flipd_curve(energy_score, points, grid, prediction="score", trace="exact")
    assert torch.allclose(curves[:, 1], exact, atol=1e-8)
    result = flipd.estimate(flipd.as_model(energy_score, prediction="score"), points[:8], t0="knee")
    assert result.mode == "autograd" and torch.isfinite(result.lid).all()


def test_gradients_flow_through_an_autograd_model(points):
    """differentiable=True: d(LID)/dx by double backward equals that of the analytic model."""
    analytic = GAUSSIAN.as_model(SCHEDULE, prediction="score")
    gradients = []
    for model in (energy_score, analytic):
        x = points[:10].clone().requires_grad_()
        lid = flipd.flipd(model, x, t0=T0, prediction="score", trace="exact", differentiable=True)
        gradients.append(torch.autograd.grad(lid.sum(), x)[0])
    assert gradients[1].abs().max() > 1e-6
    assert torch.allclose(gradients[0], gradients[1], atol=1e-8)


def test_torch_func_modes_name_the_autograd_mode(points):
    with pytest.raises(RuntimeError) as caught:
        flipd.flipd(energy_score, points, t0=T0, prediction="score", trace="exact", mode="reverse")
    assert "mode='autograd'" in "\n".join(getattr(caught.value, "__notes__", []))


def test_an_autograd_model_without_create_graph_is_told_how_to_fix_it(points):
    with pytest.raises(ValueError, match="create_graph=True"):
        flipd.flipd(energy_score_without_graph, points, t0=T0, prediction="score", trace="exact")


def test_a_broken_model_still_reports_its_own_failure(points):
    """Under "auto" a model that fails inside torch.func is retried with plain autograd; one that
    fails there too reports its own error, with the note about the batch."""

    def broken(y, t):
        raise KeyError("no such layer")

    with pytest.raises(KeyError, match="no such layer") as caught:
        flipd.flipd(broken, points, t0=T0, trace="exact")
    assert any("failed on a batch of shape" in note for note in caught.value.__notes__)
