"""The plateau rule (flipd.plateau), the denoising check behind it (flipd.reliability), and
t0="plateau" / "knee" / "auto" of flipd.estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flipd
from flipd.noise import PLATEAU_DELTA_RANGE, PLATEAU_GRID_POINTS, NoiseLevelError
from flipd.plateau import stretch_flatness
from flipd.reliability import denoising_calibration, reliable_levels
from flipd.schedules import VE, VP, Cosine


@pytest.fixture(scope="module")
def mixture(three_flat_gaussians):
    """A perfect model of three flat Gaussians of dimensions 1, 3 and 6 in R^10 (conftest.py)."""
    return three_flat_gaussians


def test_the_plateau_grid_is_even_in_log_sigma_for_every_schedule():
    for schedule in (VP(), Cosine(), VE()):
        grid = flipd.plateau_grid(schedule)
        deltas = schedule.delta(grid)
        assert torch.allclose(deltas[1:] - deltas[:-1], torch.full((grid.numel() - 1,), float(deltas[1] - deltas[0]), dtype=torch.float64), atol=1e-6)
    reference = flipd.plateau_grid()
    assert reference.numel() == PLATEAU_GRID_POINTS
    assert float(VP().delta(reference[0])) == pytest.approx(PLATEAU_DELTA_RANGE[0])
    # the fixed levels the rule is judged against lie inside its grid
    assert float(reference[0]) < 0.01 and float(reference[-1]) > 0.1


def test_a_perfect_model_plateaus_at_the_true_lid(mixture):
    model, x, true = mixture
    result = flipd.estimate(model.as_model(VP()), x, t0="plateau", prediction="score")
    assert bool(result.found.all())
    assert float((result.lid.double() - true).abs().max()) < 0.1
    assert float(result.flatness.max()) < 0.05
    # the chosen t0 is a level of the grid, with sigma and delta filled in
    grid = flipd.plateau_grid()
    assert torch.isin(result.t0, grid).all()
    assert torch.allclose(result.sigma, VP().sigma(result.t0))


@pytest.mark.parametrize("schedule, prediction", [(Cosine(), "v_prediction"), (VE(), "sample")])
def test_the_plateau_is_the_same_under_other_schedules(mixture, schedule, prediction):
    model, x, true = mixture
    result = flipd.estimate(model.as_model(schedule, prediction), x[:60], t0="plateau", schedule=schedule,
                            prediction=prediction)
    assert bool(result.found.all())
    assert float((result.lid.double() - true[:60]).abs().max()) < 0.1


def test_plateau_of_the_curve_equals_t0_plateau(mixture):
    model, x, _ = mixture
    network = model.as_model(VP())
    grid = flipd.plateau_grid()
    curve = flipd.flipd_curve(network, x[:40], grid, prediction="score")
    calibration = denoising_calibration(network, x[:40], grid, schedule=VP(), prediction="score", seed=0,
                                        indices=torch.arange(40))
    chosen = flipd.plateau(curve, grid, reliable=reliable_levels(calibration))
    result = flipd.estimate(network, x[:40], t0="plateau", prediction="score")
    assert torch.allclose(chosen.lid.to(result.lid), result.lid)
    assert torch.equal(chosen.t0, result.t0) and torch.equal(chosen.found, result.found)


def test_a_perfect_denoiser_is_calibrated_at_small_noise(mixture):
    model, x, _ = mixture
    grid = flipd.plateau_grid()
    calibration = denoising_calibration(model.as_model(VP()), x, grid, schedule=VP(), prediction="score", seed=3,
                                        indices=torch.arange(x.shape[0]))
    assert calibration.shape == (x.shape[0], grid.numel())
    small = grid < 0.05
    # the identity holds for the typical point at small noise (within 0.05 for 95% of them; points
    # far out in a Gaussian's tail are predicted a part of the tangent noise) and on average
    assert float(calibration[:, small].abs().quantile(0.95)) < 0.05
    assert abs(float(calibration.mean())) < 0.05


def test_a_miscalibrated_denoiser_is_flagged(mixture):
    """A network that predicts only half of the noise (its score is half the true one)."""
    model, x, _ = mixture
    network = model.as_model(VP())
    grid = flipd.plateau_grid()
    calibration = denoising_calibration(lambda y, t: 0.5 * network(y, t), x[:50], grid, schedule=VP(),
                                        prediction="score", seed=0, indices=torch.arange(50))
    # eps_hat = c · eps* with c = 1/2: E[eps_hat·(eps_hat − eps)] / E‖eps_hat‖² = (c − 1)/c = −1 on
    # average (for one point and four draws, between about −1.2 and −0.65)
    small = calibration[:, grid < 0.05]
    assert float(small.mean()) == pytest.approx(-1.0, abs=0.1) and float(small.max()) < -0.5
    assert not reliable_levels(calibration).any()
    with pytest.warns(RuntimeWarning, match="plateau rule found no scale for 50 of 50 points"):
        result = flipd.estimate(lambda y, t: 0.5 * network(y, t), x[:50], t0="plateau", prediction="score")
    assert not bool(result.found.any())


def test_calibration_depends_only_on_the_seed_and_index(mixture):
    model, x, _ = mixture
    network, grid = model.as_model(VP()), flipd.plateau_grid()[:4]
    whole = denoising_calibration(network, x[:20], grid, schedule=VP(), prediction="score", seed=5,
                                  indices=torch.arange(20))
    part = denoising_calibration(network, x[10:20], grid, schedule=VP(), prediction="score", seed=5,
                                 indices=torch.arange(10, 20), batch_size=3)
    assert torch.allclose(whole[10:], part)


def synthetic_curve(delta: np.ndarray, level: float, ambient: float) -> np.ndarray:
    """Falling from near D at the smallest levels to a plateau at ``level``, then to 0."""
    fall = 1 / (1 + np.exp(-4 * (delta + 3.0)))
    rise = 1 / (1 + np.exp(-4 * (delta + 0.4)))
    return ambient - (ambient - level) * fall - level * rise


def test_synthetic_curves_read_their_plateau():
    grid = flipd.plateau_grid()
    delta = VP().delta(grid).numpy()
    curves = np.stack([synthetic_curve(delta, level, 20.0) for level in (2.0, 5.0, 11.0)])
    result = flipd.plateau(torch.from_numpy(curves), grid)
    assert result.found.all()
    assert np.allclose(result.lid.numpy(), [2.0, 5.0, 11.0], atol=0.25)
    middle = grid[np.argmin(np.abs(delta - (-1.7)))]  # between the fall and the rise
    assert np.allclose(np.log(result.t0.numpy()), math.log(float(middle)), atol=0.6)


def test_a_curve_without_a_plateau_is_flagged_not_set_to_d():
    grid = flipd.plateau_grid()
    delta = VP().delta(grid).numpy()
    steep = torch.from_numpy(np.exp(-1.5 * delta)[None])  # falls by a factor e^1.5 per unit log sigma
    result = flipd.plateau(steep, grid)
    assert not bool(result.found[0])
    assert float(result.flatness[0]) == pytest.approx(1.5, rel=0.05)
    assert float(result.lid[0]) < float(steep.max())


def test_unreliable_levels_are_left_out():
    grid = flipd.plateau_grid()
    delta = VP().delta(grid).numpy()
    curve = synthetic_curve(delta, 3.0, 10.0)
    curve[:8] = 10.0  # a flat stretch at D where the model does not denoise reliably
    reliable = np.ones((1, grid.numel()), dtype=bool)
    reliable[0, :8] = False
    result = flipd.plateau(torch.from_numpy(curve[None]), grid, reliable=reliable)
    assert float(result.lid[0]) == pytest.approx(3.0, abs=0.3)
    assert float(flipd.plateau(torch.from_numpy(curve[None]), grid).lid[0]) == pytest.approx(10.0)


def test_stretch_flatness_is_the_relative_slope_and_sees_bumps():
    delta = np.linspace(-3, 0, 13)
    curve = np.stack([2.0 + 0.5 * delta, np.full(13, 0.2), 5.0 - (delta + 1.5) ** 2])
    flatness, level = stretch_flatness(curve, delta, 5)
    assert flatness.shape == (3, 9)
    assert np.allclose(flatness[0], 0.5 / np.maximum(level[0], 1.0))
    assert np.allclose(flatness[1], 0.0) and np.allclose(level[1], 0.2)
    # at the top of the bump a fitted slope is 0; the range is not
    top = int(np.argmax(level[2]))
    assert flatness[2, top] > 0.05


def test_plateau_input_errors():
    grid = flipd.plateau_grid()
    with pytest.raises(ValueError, match="shape"):
        flipd.plateau(torch.zeros(2, 3), grid)
    with pytest.raises(ValueError, match="width"):
        flipd.plateau(torch.zeros(1, grid.numel()), grid, width=1)
    with pytest.raises(ValueError, match="increasing"):
        flipd.plateau(torch.zeros(1, 6), torch.tensor([0.1, 0.05, 0.2, 0.3, 0.4, 0.5]))
    with pytest.raises(ValueError, match="reliable"):
        flipd.plateau(torch.zeros(1, grid.numel()), grid, reliable=np.ones((1, 3), dtype=bool))
    with pytest.raises(NoiseLevelError, match="plateau"):
        flipd.plateau_grid(VP(beta_min=0.001, beta_max=0.002))  # reaches delta -3.25 at most


def test_t0_rules_by_name(mixture):
    model, x, _ = mixture
    network = model.as_model(VP())
    auto = flipd.estimate(network, x[:30], t0="knee", prediction="score")
    knee = flipd.estimate(network, x[:30], t0="knee", prediction="score")
    assert torch.equal(auto.lid, knee.lid) and torch.equal(auto.found, knee.found)
    assert knee.flatness is None
    assert flipd.estimate(network, x[:5], t0=0.05, prediction="score").found is None
    with pytest.raises(ValueError, match="'auto', 'knee', 'plateau'"):
        flipd.estimate(network, x[:5], t0="flat", prediction="score")
    with pytest.raises(ValueError, match="plateau"):
        flipd.estimate(network, x[:5], t0="plateau", sigma=0.1, prediction="score")


def test_points_without_a_knee_are_flagged_and_warned_about():
    """A score -t·y/sigma² gives FLIPD = D·(1 - t) at x = 0, a straight line in t: no knee, so
    the knee rule reports D, as the reference rule does, but says so."""
    schedule = VP()

    def shrinking(y, t):
        t = t.double()
        return (-t / schedule.sigma(t) ** 2).to(y)[:, None] * y

    with pytest.warns(RuntimeWarning, match="knee rule found no scale for 4 of 4 points"):
        result = flipd.estimate(shrinking, torch.zeros(4, 6), t0="knee", prediction="score")
    assert not bool(result.found.any())
    assert torch.all(result.lid == 6) and torch.isnan(result.t0).all()


def test_a_flat_curve_from_a_miscalibrated_model_is_flagged_not_set_to_d():
    """A score -y/(2 sigma²) gives FLIPD = D/2 at every level at x = 0, but predicts half the
    noise (calibration -1): the flat stretch is reported, flagged as not reliable."""
    schedule = VP()

    def half_shrinking(y, t):
        return -0.5 * y / schedule.sigma(t.double()).to(y)[:, None] ** 2

    with pytest.warns(RuntimeWarning, match="plateau rule found no scale for 4 of 4 points"):
        plateau = flipd.estimate(half_shrinking, torch.zeros(4, 6), t0="plateau", prediction="score")
    assert not bool(plateau.found.any())
    assert torch.allclose(plateau.lid, torch.full((4,), 3.0)) and float(plateau.flatness.max()) < 1e-6
