import math

import pytest
import torch

from flipd.schedules import VP, VE, Cosine, Discrete, RectifiedFlow

ALL = [VP(), Cosine(), VE(), RectifiedFlow(), Discrete(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0))]


def test_reference_vp_values():
    # method notes §4
    vp = VP()
    sigma = vp.sigma(torch.tensor([0.01, 0.05, 0.1, 0.3, 0.5]))
    assert sigma.tolist() == pytest.approx([0.045, 0.172, 0.322, 0.777, 0.960], abs=1.5e-3)
    assert torch.exp(vp.delta(0.05)).item() == pytest.approx(0.174, abs=1e-3)
    assert torch.exp(vp.delta(0.3)).item() == pytest.approx(1.23, abs=1e-2)
    assert (vp.psi(0.3) ** 2 + vp.sigma(0.3) ** 2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_inverse_conversions_round_trip(schedule):
    low = schedule.t_min + (0 if schedule.includes_t_min else 1e-3 * schedule.t_max)
    t = torch.linspace(low, 0.9 * schedule.t_max, 11, dtype=torch.float64)
    assert torch.allclose(schedule.t_from_sigma(schedule.sigma(t)), t, atol=1e-9 * schedule.t_max)
    assert torch.allclose(schedule.t_from_delta(schedule.delta(t)), t, atol=1e-9 * schedule.t_max)
    assert torch.allclose(schedule.delta(t), torch.log(schedule.sigma(t) / schedule.psi(t)))


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_derivatives_match_finite_differences(schedule):
    t = torch.tensor([0.2, 0.4], dtype=torch.float64) * schedule.t_max + 0.37
    h = 1e-6 * schedule.t_max
    dpsi, dsigma = schedule.derivatives(t)
    assert torch.allclose(dpsi, (schedule.psi(t + h) - schedule.psi(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)
    assert torch.allclose(dsigma, (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)


def test_discrete_matches_table_and_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = Discrete.from_scheduler(scheduler)
    steps = torch.tensor([0.0, 1.0, 500.0, 999.0], dtype=torch.float64)
    alpha_bar = scheduler.alphas_cumprod.double()[steps.long()]
    assert torch.allclose(schedule.psi(steps), alpha_bar.sqrt())
    assert torch.allclose(schedule.sigma(steps), (1 - alpha_bar).sqrt())
    # fractional steps interpolate delta linearly
    middle = schedule.delta(torch.tensor(10.25, dtype=torch.float64))
    expected = 0.75 * schedule.delta(10.0) + 0.25 * schedule.delta(11.0)
    assert middle.item() == pytest.approx(expected.item())
    assert schedule.t_min == 0 and schedule.t_max == 999


def test_closed_forms_of_simple_schedules():
    t = torch.tensor([0.1, 0.5], dtype=torch.float64)
    assert torch.allclose(RectifiedFlow().delta(t), torch.log(t / (1 - t)))
    assert torch.allclose(VE().sigma(t), t) and torch.allclose(VE().psi(t), torch.ones(2, dtype=torch.float64))
    cosine = Cosine()
    assert cosine.psi(1e-9).item() == pytest.approx(1.0, abs=1e-6)
    assert (cosine.psi(t) ** 2 + cosine.sigma(t) ** 2).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_check_t_rejects_out_of_range(schedule):
    with pytest.raises(ValueError, match="outside"):
        schedule.check_t(schedule.t_max * 1.01 + 1)
    with pytest.raises(ValueError, match="outside"):
        schedule.check_t(-1.0)
    with pytest.raises(ValueError, match="finite"):
        schedule.check_t(math.nan)


def test_bad_schedule_parameters():
    with pytest.raises(ValueError, match="decrease"):
        Discrete(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Discrete(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="not reached"):
        VP().t_from_sigma(2.0)


# --------------------------------------------------------------------------- conformance of every schedule


def test_every_schedule_kind_is_in_the_conformance_tests():
    """A new schedule registered in flipd.schedules.SCHEDULES is tested because it exists."""
    from flipd.schedules import SCHEDULES

    assert {type(schedule).__name__ for schedule in ALL} == set(SCHEDULES)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_config_round_trip(schedule):
    import json

    from flipd.schedules import Schedule

    config = json.loads(json.dumps(schedule.to_config()))
    rebuilt = Schedule.from_config(config)
    assert type(rebuilt) is type(schedule) and rebuilt == schedule and hash(rebuilt) == hash(schedule)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64) * schedule.t_max
    assert torch.equal(rebuilt.psi(t), schedule.psi(t)) and torch.equal(rebuilt.sigma(t), schedule.sigma(t))
    assert (rebuilt.t_min, rebuilt.t_max) == (schedule.t_min, schedule.t_max)


def test_schedules_with_other_arguments_differ():
    assert VP() != VP(beta_max=10) and VP() != Cosine() and VE() != VE(sigma_max=10)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"kind": "Linear"}, "Unknown schedule kind"),
        ({"beta_min": 0.1}, "needs a 'kind'"),
        ({"kind": "VP", "beta": 3}, "unknown beta"),
        ({"kind": "VP", "beta_min": "0.1"}, "must be a number"),
    ],
)
def test_bad_schedule_configs_name_the_field(config, message):
    from flipd.schedules import Schedule

    with pytest.raises(ValueError, match=message):
        Schedule.from_config(config)
