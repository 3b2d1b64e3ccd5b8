"""FLIPD against closed-form truth, and the estimator's numerical machinery."""

import math

import pytest
import torch
from torch import nn

import flipd
from flipd.analytic import GaussianMixture
from flipd.schedules import VE, VP, Cosine, Discrete, RectifiedFlow

DDPM = Discrete(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
SCHEDULES = {
    "vp": (VP(), 0.05),
    "cosine": (Cosine(), 0.05),
    "discrete": (DDPM, 20.5),
    "ve": (VE(), 0.2),
    "rectified_flow": (RectifiedFlow(), 0.15),
}


def closed_form_gaussian(x, covariance, psi, sigma):
    """method notes §10: FLIPD of N(0, Σ) smoothed at (psi, sigma), from Σ's eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(0)
    smoothed = psi**2 * eigenvalues + sigma**2
    projections = x @ eigenvectors
    return (psi**2 * eigenvalues / smoothed).sum() + sigma**2 * psi**2 * (projections**2 / smoothed**2).sum(1)


@pytest.fixture(scope="module")
def gaussian():
    generator = torch.Generator().manual_seed(3)
    dim, d = 6, 3
    basis = torch.linalg.qr(torch.randn(dim, d, generator=generator, dtype=torch.float64))[0]
    variances = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    model = GaussianMixture(torch.zeros(1, dim, dtype=torch.float64), [basis], [variances], off_variance=1e-3)
    covariance = basis @ torch.diag(variances) @ basis.T + 1e-3 * (torch.eye(dim, dtype=torch.float64) - basis @ basis.T)
    x = torch.randn(40, dim, generator=generator, dtype=torch.float64)
    return model, covariance, x


@pytest.mark.parametrize("prediction", flipd.PREDICTIONS)
@pytest.mark.parametrize("name", SCHEDULES)
def test_matches_closed_form_for_every_schedule_and_prediction(gaussian, name, prediction):
    model, covariance, x = gaussian
    schedule, t0 = SCHEDULES[name]
    network = model.as_model(schedule, prediction)
    lid = flipd.flipd(network, x, t0=t0, schedule=schedule, prediction=prediction, trace="exact")
    t = torch.tensor(t0, dtype=torch.float64)
    truth = closed_form_gaussian(x, covariance, schedule.psi(t), schedule.sigma(t))
    assert torch.allclose(lid, truth, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_mixture_matches_its_closed_form(name):
    schedule, t0 = SCHEDULES[name]
    mixture = GaussianMixture.random([2, 4, 8], 10, separation=3.0, off_variance=1e-2, seed=1)
    x, _ = mixture.sample(64, seed=2)
    for prediction in ("epsilon", "v_prediction"):
        lid = flipd.flipd(mixture.as_model(schedule, prediction), x, t0=t0, schedule=schedule, prediction=prediction)
        assert torch.allclose(lid, mixture.exact_flipd(x, t0, schedule), rtol=1e-4)


def test_noise_level_can_be_named_by_sigma_or_delta():
    mixture = GaussianMixture.random([2, 5], 8, seed=0)
    x, _ = mixture.sample(16, seed=0)
    schedule = VP()
    model = mixture.as_model(schedule, "epsilon")
    by_t = flipd.flipd(model, x, t0=0.1)
    by_sigma = flipd.flipd(model, x, sigma=schedule.sigma(0.1).item())
    by_delta = flipd.flipd(model, x, delta=schedule.delta(0.1).item())
    assert torch.allclose(by_t, by_sigma, rtol=1e-6) and torch.allclose(by_t, by_delta, rtol=1e-6)
    # the same delta under another schedule is the same smoothing, hence the same FLIPD
    other = RectifiedFlow()
    by_delta_other = flipd.flipd(mixture.as_model(other, "flow_velocity"), x, delta=schedule.delta(0.1).item(),
                                 schedule=other, prediction="flow_velocity")
    assert torch.allclose(by_t, by_delta_other, rtol=1e-6)


def test_per_point_t0():
    mixture = GaussianMixture.random([3], 6, seed=0)
    x, _ = mixture.sample(5, seed=0)
    model = mixture.as_model(VP(), "epsilon")
    times = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.4], dtype=torch.float64)
    lid = flipd.flipd(model, x, t0=times)
    one_by_one = torch.cat([flipd.flipd(model, x[i : i + 1], t0=float(t)) for i, t in enumerate(times)])
    assert torch.allclose(lid, one_by_one)
    # Several batches: each takes its own points' noise levels.
    result = flipd.estimate(model, x, t0=times, batch_size=2)
    assert torch.allclose(result.lid, one_by_one)
    torch.testing.assert_close(result.sigma, VP().sigma(times))


@pytest.mark.parametrize("d", [1, 3, 7])
def test_converges_to_subspace_dimension_as_t0_vanishes(d):
    mixture = GaussianMixture.random([d], 9, seed=d)
    x, _ = mixture.sample(32, seed=0)
    model = mixture.as_model(VP(), "epsilon")
    errors = [(flipd.flipd(model, x, t0=t0) - d).abs().max().item() for t0 in (0.1, 0.01, 0.001)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


class TimeMLP(nn.Module):
    """A small random network f(y, t), each point independently."""

    def __init__(self, dim, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, y, t):
        return self.net(torch.cat([y, t[:, None]], dim=1))


class TimeConv(nn.Module):
    def __init__(self, channels=2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, channels, 3, padding=1)

    def forward(self, y, t):
        return self.conv2(torch.tanh(self.conv1(y) * (1 + t[:, None, None, None])))


def dense_flipd(network, x, t0, schedule=VP()):
    """FLIPD for an epsilon network from its dense Jacobian (autograd), one point at a time."""
    t = torch.tensor(t0, dtype=torch.float64)
    psi, sigma = schedule.psi(t).item(), schedule.sigma(t).item()
    values = []
    for point in x:
        y = psi * point[None]
        time = torch.full((1,), t0, dtype=x.dtype)
        jacobian = torch.autograd.functional.jacobian(lambda z: network(z, time), y)
        dim = y.numel()
        trace = jacobian.reshape(dim, dim).trace()
        eps = network(y, time)
        values.append(dim - sigma * trace + eps.pow(2).sum())
    return torch.stack(values).detach()


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_exact_trace_equals_dense_jacobian(mode):
    torch.manual_seed(0)
    network = TimeMLP(7).double()
    x = torch.randn(9, 7, dtype=torch.float64)
    lid = flipd.flipd(network, x, t0=0.1, trace="exact", mode=mode, batch_size=4, chunk_rows=6)
    assert torch.allclose(lid, dense_flipd(network, x, 0.1), rtol=1e-10)


def test_image_shaped_input():
    torch.manual_seed(0)
    network = TimeConv().double()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    lid = flipd.flipd(network, x, t0=0.2, trace="exact")
    assert lid.shape == (3,)
    assert torch.allclose(lid, dense_flipd(network, x, 0.2), rtol=1e-10)


@pytest.mark.parametrize("trace", ["hutchinson", "gaussian"])
def test_hutchinson_is_unbiased_within_three_standard_errors(trace):
    torch.manual_seed(1)
    network = TimeMLP(12).double()
    x = torch.randn(6, 12, dtype=torch.float64)
    exact = flipd.flipd(network, x, t0=0.3, trace="exact")
    lid, stderr = flipd.flipd(network, x, t0=0.3, trace=trace, n_probes=4000, seed=5, return_stderr=True)
    assert (stderr > 0).all()
    assert ((lid - exact).abs() < 3 * stderr).all()
    # the reported standard error agrees with the spread over independent seeds
    few = torch.stack([flipd.flipd(network, x, t0=0.3, trace=trace, n_probes=20, seed=s) for s in range(60)])
    _, stderr_few = flipd.flipd(network, x, t0=0.3, trace=trace, n_probes=20, seed=99, return_stderr=True)
    ratio = few.std(0) / stderr_few
    assert ratio.median().item() == pytest.approx(1.0, abs=0.35)


def test_one_probe_has_nan_stderr_and_exact_has_zero():
    network = TimeMLP(5).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    _, stderr = flipd.flipd(network, x, t0=0.1, trace="hutchinson", return_stderr=True)
    assert torch.isnan(stderr).all()
    _, stderr = flipd.flipd(network, x, t0=0.1, trace="exact", return_stderr=True)
    assert (stderr == 0).all()


def test_probes_are_reproducible_and_leave_global_rng_alone():
    network = TimeMLP(20)
    x = torch.randn(8, 20)
    state = torch.get_rng_state()
    first = flipd.flipd(network, x, t0=0.1, trace="hutchinson", n_probes=3, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    again = flipd.flipd(network, x, t0=0.1, trace="hutchinson", n_probes=3, seed=7, chunk_rows=8)
    other = flipd.flipd(network, x, t0=0.1, trace="hutchinson", n_probes=3, seed=8)
    assert torch.allclose(first, again) and not torch.allclose(first, other)
    assert torch.is_grad_enabled()


def test_trace_auto_picks_exact_for_small_dimension():
    network = TimeMLP(6)
    x = torch.randn(3, 6)
    result = flipd.estimate(network, x, t0=0.1)
    assert result.trace == "exact" and result.n_probes == 6 and result.mode == "reverse"
    big = TimeMLP(300)
    result = flipd.estimate(big, torch.randn(2, 300), t0=0.1, n_probes=2)
    assert result.trace == "hutchinson" and result.n_probes == 2


def test_model_that_cannot_be_vmapped_falls_back_to_a_loop():
    base = TimeMLP(5).double()

    def stubborn(y, t):  # data-dependent control flow is not vmappable
        return base(y, t) * (2.0 if float(y.detach().abs().sum()) >= 0 else 1.0)

    x = torch.randn(4, 5, dtype=torch.float64)
    lid = flipd.flipd(stubborn, x, t0=0.2, trace="exact")
    reference = flipd.flipd(lambda y, t: 2.0 * base(y, t), x, t0=0.2, trace="exact")
    assert torch.allclose(lid, reference)


def test_falls_back_to_forward_mode_when_reverse_mode_fails():
    class NoBackward(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(value):
            return value.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("no reverse mode here")

        @staticmethod
        def jvp(ctx, tangent):
            return tangent

    network = TimeMLP(4).double()

    def model(y, t):
        return network(NoBackward.apply(y), t)

    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falling back to forward"):
        result = flipd.estimate(model, x, t0=0.1, trace="exact")
    assert result.mode == "forward"
    assert torch.allclose(result.lid, dense_flipd(network, x, 0.1), rtol=1e-10)


def test_differentiable_mode_gradients_match_finite_differences():
    mixture = GaussianMixture.random([2, 3], 5, separation=2.0, off_variance=0.05, seed=0)
    x, _ = mixture.sample(3, seed=1)
    model = mixture.as_model(VP(), "epsilon")
    x = x.clone().requires_grad_(True)

    def objective(points):
        return flipd.flipd(model, points, t0=0.2, trace="exact", differentiable=True)

    assert objective(x).requires_grad
    assert torch.autograd.gradcheck(objective, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    without = flipd.flipd(model, x, t0=0.2)
    assert not without.requires_grad


def test_curve_agrees_with_pointwise_calls():
    network = TimeMLP(15)
    x = torch.randn(10, 15)
    grid = [0.05, 0.1, 0.3]
    for kwargs in ({"trace": "exact"}, {"trace": "hutchinson", "n_probes": 2, "seed": 3}):
        curve = flipd.flipd_curve(network, x, grid, **kwargs)
        assert curve.shape == (10, 3)
        for j, t in enumerate(grid):
            assert torch.allclose(curve[:, j], flipd.flipd(network, x, t0=t, **kwargs))


def test_knee_rule_recovers_dimensions_from_analytic_curves():
    # thin Gaussians around subspaces of dimensions 2, 4, 8 in R^10: curves fall from D to d
    mixture = GaussianMixture.random([2, 4, 8], 10, variance=10.0, off_variance=1e-3, separation=30.0, seed=0)
    x, component = mixture.sample(150, seed=1)
    result = flipd.estimate(mixture.as_model(VP(), "epsilon"), x, t0="knee")
    assert result.t0.shape == (150,) and bool(torch.isfinite(result.t0).all())
    for k, d in enumerate([2, 4, 8]):
        estimates = result.lid[component == k]
        assert (estimates.mean() - d).abs() < 0.3
        assert (estimates - d).abs().max() < 0.6
    # the chosen t0 is reported in the schedule's own units: same smoothing under Discrete
    discrete = flipd.estimate(mixture.as_model(DDPM, "epsilon"), x[:20], t0="knee", schedule=DDPM)
    assert torch.allclose(DDPM.delta(discrete.t0), VP().delta(result.t0[:20]), atol=0.05)


def test_knee_function_direct():
    grid = torch.linspace(0.06, 0.48, 22, dtype=torch.float64)
    curve = 3 + 7 * torch.exp(-grid / 0.03)  # falls steeply to a plateau at 3
    found = flipd.knee(curve, grid, ambient_dim=10)
    assert found.found.item() and found.lid.item() == pytest.approx(3, abs=0.5)
    flat = flipd.knee(torch.ones(22, dtype=torch.float64), grid, ambient_dim=10)
    assert flat.lid.item() == 10 and not flat.found.item()
    with pytest.raises(ValueError, match="shape"):
        flipd.knee(torch.ones(2, 5), grid)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def model_and_x():
    return TimeMLP(4), torch.randn(5, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"t0": 0.0}, "outside"),
        ({"t0": -0.1}, "outside"),
        ({"t0": 1.5}, "outside"),
        ({"t0": 0.1, "sigma": 0.2}, "at most once"),
        ({"sigma": 0.1, "delta": 0.2}, "at most once"),
        ({"t0": "kneed"}, "auto"),
        ({"t0": 0.1, "prediction": "noise"}, "Unknown prediction"),
        ({"t0": 0.1, "trace": "approximate"}, "Unknown trace"),
        ({"t0": 0.1, "n_probes": 0}, "n_probes"),
        ({"t0": torch.tensor([0.1, 0.2])}, r"shape \[N\]"),
        ({"sigma": -1.0}, "positive"),
        ({"t0": 0.1, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_named(model_and_x, kwargs, message):
    model, x = model_and_x
    with pytest.raises(ValueError, match=message):
        flipd.flipd(model, x, **kwargs)


def test_bad_data_is_named(model_and_x):
    model, x = model_and_x
    with pytest.raises(ValueError, match="empty batch"):
        flipd.flipd(model, x[:0], t0=0.1)
    with pytest.raises(ValueError, match="batch dimension"):
        flipd.flipd(model, x[0], t0=0.1)
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"non-finite values .* points \[3\]"):
        flipd.flipd(model, bad, t0=0.1)
    with pytest.raises(TypeError, match="floating point"):
        flipd.flipd(model, torch.ones(2, 4, dtype=torch.long), t0=0.1)


def test_bad_model_outputs_are_named():
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"returned shape \(6, 2\)"):
        flipd.flipd(lambda y, t: y[:, :2], x, t0=0.1)

    def poisoned(y, t):
        out = y * 1.0
        return torch.where(torch.arange(6)[:, None] == 4, torch.full_like(out, math.nan), out)

    with pytest.raises(ValueError, match=r"non-finite values .* for 1 of 6 points, at indices \[4\]"):
        flipd.flipd(poisoned, x, t0=0.1)
    with pytest.raises(TypeError, match="ModelAdapter"):
        flipd.flipd(lambda y, t: {"out": y}, x, t0=0.1)


def test_model_adapter_scales_time_and_unpacks_outputs():
    class Output:
        def __init__(self, sample):
            self.sample = sample

    seen = {}

    def network(y, timestep, scale):
        seen["timestep"] = timestep
        return Output(y * scale)

    model = flipd.ModelAdapter(network, time_scale=1000, kwargs={"scale": 2.0})
    y = torch.randn(3, 2)
    assert torch.equal(model(y, torch.full((3,), 0.05)), 2 * y)
    assert torch.allclose(seen["timestep"], torch.full((3,), 50.0))


def test_a_model_that_fails_on_the_input_is_reported_without_fallback():
    network = TimeMLP(4)
    with pytest.raises(RuntimeError) as caught:
        flipd.flipd(network, torch.randn(3, 6), t0=0.1)
    assert "shape (3, 6)" in "".join(getattr(caught.value, "__notes__", []))


def test_rademacher_probes_are_balanced_independent_and_chunk_invariant():
    from flipd.trace import indexed_probes

    def draw(chunk):
        chunks = indexed_probes(torch.Size([50, 7, 9]), 40, chunk, distribution="rademacher",
                                seed=3, indices=torch.arange(50), dtype=torch.float64, device="cpu")
        return torch.cat(list(chunks))

    probes = draw(40)
    assert probes.shape == (40, 50, 7, 9) and set(probes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(probes, draw(1)) and torch.equal(probes, draw(7))
    flat = probes.reshape(40, -1)
    count = flat.numel()  # 126000 entries: mean and correlations have standard error 1/sqrt(count)
    assert abs(flat.mean().item()) < 4 / count**0.5
    for lag in (1, 61, 62, 63):  # neighbours within and across 62-bit draws
        assert abs((flat[:, lag:] * flat[:, :-lag]).mean().item()) < 4 / (count - 40 * lag) ** 0.5
    assert abs((flat[1:] * flat[:-1]).mean().item()) < 4 / (count - flat.shape[1]) ** 0.5  # across probes
