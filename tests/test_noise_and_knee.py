"""One home for noise levels (flipd.noise) and one knee rule for every schedule."""

from __future__ import annotations

import math

import pytest
import torch

import flipd
from flipd.analytic import GaussianMixture
from flipd.noise import (
    DEFAULT_REFERENCE_T0,
    REFERENCE_SCHEDULE,
    NoiseLevelError,
    curve_times,
    default_noise_level,
    resolve_time,
    resolve_times,
    to_reference_time,
)
from flipd.schedules import VE, VP, Cosine, Discrete, RectifiedFlow

DISCRETE = Discrete(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
#: One (schedule, prediction) per schedule kind; each prediction type appears at least once.
SCHEDULES = [
    (VP(), "epsilon"),
    (Cosine(), "v_prediction"),
    (DISCRETE, "epsilon"),
    (VE(), "sample"),
    (RectifiedFlow(), "flow_velocity"),
]
IDS = ["VP", "Cosine", "Discrete", "VE", "RectifiedFlow"]


@pytest.fixture(scope="module")
def mixture():
    mixture = GaussianMixture.random([2, 4, 8], ambient_dim=10, seed=0)
    x, _ = mixture.sample(200, seed=1)
    return mixture, x.double()


@pytest.mark.parametrize("schedule, prediction", SCHEDULES, ids=IDS)
def test_the_default_noise_level_is_the_same_smoothing_under_every_schedule(schedule, prediction):
    times = resolve_times(3, schedule)
    assert times.shape == (3,)
    assert torch.allclose(schedule.delta(times), REFERENCE_SCHEDULE.delta(DEFAULT_REFERENCE_T0).expand(3), atol=1e-9)
    assert resolve_time(schedule) == pytest.approx(float(times[0]))
    assert default_noise_level(VP()) == {"t0": 0.05}


def test_noise_level_errors_name_the_problem():
    with pytest.raises(NoiseLevelError, match="at most once"):
        resolve_times(2, VP(), t0=0.1, sigma=0.2)
    with pytest.raises(NoiseLevelError, match="positive"):
        resolve_times(2, VP(), sigma=-1.0)
    with pytest.raises(NoiseLevelError, match=r"shape \[N\] = \[2\]"):
        resolve_times(2, VP(), t0=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="outside"):
        resolve_times(2, VP(), t0=1.5)
    with pytest.raises(NoiseLevelError, match="steps"):
        curve_times(VP(), steps=2)


@pytest.mark.parametrize("schedule, prediction", SCHEDULES, ids=IDS)
def test_knee_grid_is_the_reference_grid_carried_through_delta(schedule, prediction):
    grid = flipd.knee_grid(schedule)
    reference = flipd.knee_grid()
    assert grid.dtype == torch.float64 and (grid[1:] > grid[:-1]).all()
    assert torch.allclose(to_reference_time(schedule, grid), reference, atol=1e-9)
    assert reference.tolist() == [t for t in torch.linspace(0, 1, 50, dtype=torch.float64).tolist() if 0.05 < t < 0.5]


@pytest.mark.parametrize("schedule, prediction", SCHEDULES, ids=IDS)
def test_knee_of_the_curve_equals_t0_auto(mixture, schedule, prediction):
    """flipd.knee(flipd_curve(model, x, grid), grid) is what estimate(t0="knee") picks, per point."""
    gaussians, x = mixture
    model = gaussians.as_model(schedule, prediction=prediction)
    grid = flipd.knee_grid(schedule)
    curve = flipd.flipd_curve(model, x, grid, schedule=schedule, prediction=prediction, trace="exact")
    found = flipd.knee(curve, grid, schedule=schedule, ambient_dim=10)
    auto = flipd.estimate(model, x, t0="knee", schedule=schedule, prediction=prediction, trace="exact")
    assert found.found.any()
    assert torch.equal(found.lid.to(auto.lid), auto.lid)
    assert torch.allclose(found.t0, auto.t0, equal_nan=True)
    assert torch.allclose(auto.sigma[found.found], schedule.sigma(auto.t0[found.found]))


def test_every_schedule_picks_the_same_knee_for_the_same_smoothing(mixture):
    """A perfect model's FLIPD depends on the noise level only through delta, and the knee is
    found on the reference-time axis, so every schedule gives the same knees (up to rounding)."""
    gaussians, x = mixture
    results = {}
    for (schedule, prediction), name in zip(SCHEDULES, IDS):
        model = gaussians.as_model(schedule, prediction=prediction)
        results[name] = flipd.estimate(model, x, t0="knee", schedule=schedule, prediction=prediction, trace="exact")
    reference = results["VP"]
    for name, result in results.items():
        assert torch.allclose(result.lid, reference.lid, atol=1e-6), name
        assert torch.allclose(result.delta, reference.delta, atol=1e-6, equal_nan=True), name


def test_curve_job_knees_equal_t0_auto(mixture):
    from flipd.jobs.curve import compute_curves

    gaussians, x = mixture
    schedule = RectifiedFlow()
    model = flipd.as_model(gaussians.as_model(schedule, prediction="flow_velocity"), schedule=schedule,
                           prediction="flow_velocity")
    curves = compute_curves(model, x[:60], curve_times(schedule), trace="exact")
    auto = flipd.estimate(model, x[:60], t0="knee", trace="exact")
    found = torch.from_numpy(curves.knee_found)
    assert found.any()
    # The curve job's default grid holds the knee grid's levels (and more outside the window).
    assert torch.allclose(torch.from_numpy(curves.knee_lid)[found], auto.lid[found].double(), atol=1e-6)
    assert torch.allclose(to_reference_time(schedule, torch.from_numpy(curves.knee_t0)[found]),
                          to_reference_time(schedule, auto.t0[found]), atol=1e-9)


def test_knee_without_a_schedule_reads_reference_times():
    grid = flipd.knee_grid()
    curve = 10 - 8 * (1 - torch.exp(-grid / 0.08))  # falls, then flattens
    found = flipd.knee(curve, grid)
    assert bool(found.found[0]) and 0.05 < float(found.t0[0]) < 0.5
    assert math.isclose(float(flipd.knee(curve, grid, schedule=VP()).t0[0]), float(found.t0[0]))
