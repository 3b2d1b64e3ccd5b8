"""Tests of the baseline LID estimators: normal bundle, FPRegress and the skdim estimators."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from flipd.analytic import GaussianMixture
from flipd.baselines import (
    BASELINES,
    DEFAULT_STDS,
    NB_REFERENCE_DELTA,
    estimate_classical,
    estimate_fpregress,
    estimate_nb,
    fokker_planck_log_density,
    lid_from_spectrum,
    normal_bundle_spectrum,
    regression_lid,
    stds_around,
)
from flipd.estimator import NonFiniteOutputError
from flipd.schedules import VE, VP, Cosine, RectifiedFlow


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    """Gaussians on a 2-dim and a 5-dim affine subspace of R^8."""
    return GaussianMixture.random([2, 5], 8, seed=0)


@pytest.fixture(scope="module")
def mixture_points(mixture):
    x, component = mixture.sample(40, seed=1)
    true = np.asarray(mixture.component_dims, dtype=np.float64)[component.numpy()]
    return x, true


def exact_log_smoothed_density(mixture: GaussianMixture, x: np.ndarray, std: float) -> np.ndarray:
    """log of the mixture density convolved with N(0, std²·I), by its own closed form."""
    eye = np.eye(mixture.dim)
    terms = []
    for weight, mean, basis, variance in zip(mixture.weights, mixture.means, mixture.bases, mixture.variances):
        u = basis.numpy()
        covariance = u @ np.diag(variance.numpy()) @ u.T + mixture.off_variance * (eye - u @ u.T) + std**2 * eye
        terms.append(math.log(weight) + multivariate_normal(mean.numpy(), covariance).logpdf(x))
    return logsumexp(np.stack(terms), axis=0)


# --------------------------------------------------------------------------- normal bundle


@pytest.mark.parametrize(
    ("schedule", "prediction"),
    [(VP(), "score"), (VP(), "epsilon"), (VE(), "sample"), (Cosine(), "v_prediction"), (RectifiedFlow(), "flow_velocity")],
    ids=["vp-score", "vp-epsilon", "ve-sample", "cosine-v", "rf-velocity"],
)
def test_nb_recovers_subspace_dimensions(mixture, mixture_points, schedule, prediction):
    x, true = mixture_points
    lid = estimate_nb(mixture.as_model(schedule, prediction), x, schedule=schedule, prediction=prediction)
    assert lid.shape == (x.shape[0],) and lid.dtype == np.float64
    # Exact scores: the normal singular values (~sqrt(K)) dwarf the tangential ones (~sigma).
    np.testing.assert_array_equal(lid, true)


def test_nb_spectrum_separates_normal_and_tangent_directions(mixture, mixture_points):
    x, true = mixture_points
    spectra = normal_bundle_spectrum(mixture.as_model(VP(), "score"), x[:6], prediction="score")
    assert spectra.shape == (6, 8)
    assert np.all(np.diff(spectra, axis=1) <= 0)
    for values, d in zip(spectra, true[:6]):
        normal = 8 - int(d)
        # normal singular values ~ sqrt(K); tangential ones ~ sigma·sqrt(K)·|tangent coordinate|
        assert values[normal - 1] > 3 * values[normal]


def test_nb_accepts_image_shaped_points(mixture, mixture_points):
    x, true = mixture_points[0][:6], mixture_points[1][:6]
    flat_model = mixture.as_model(VP(), "epsilon")

    def image_model(y, t):
        return flat_model(y.flatten(1), t).reshape(y.shape)

    images = x.reshape(-1, 2, 2, 2)
    spectra = normal_bundle_spectrum(image_model, images)
    np.testing.assert_allclose(spectra, normal_bundle_spectrum(flat_model, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(estimate_nb(image_model, images), true)


def test_nb_noise_is_seeded_and_independent_of_batching(mixture, mixture_points):
    x = mixture_points[0][:5]
    model = mixture.as_model(VP(), "epsilon")
    reference = normal_bundle_spectrum(model, x, seed=3)
    np.testing.assert_allclose(normal_bundle_spectrum(model, x, seed=3, rows_per_forward=7), reference, rtol=1e-6, atol=1e-8)
    assert not np.allclose(normal_bundle_spectrum(model, x, seed=4), reference)


def test_nb_centring_removes_a_shared_offset(mixture, mixture_points):
    x, true = mixture_points[0][:6], mixture_points[1][:6]
    exact = mixture.as_model(VP(), "score")
    offset = torch.full((8,), 40.0, dtype=x.dtype)

    def biased(y, t):  # a score with a large error shared by every noisy copy
        return exact(y, t) + offset

    # The shared direction dominates: the reference rule sees one normal direction.
    np.testing.assert_array_equal(estimate_nb(biased, x, prediction="score"), np.full(6, 7.0))
    np.testing.assert_array_equal(estimate_nb(biased, x, prediction="score", center=True), true)
    # Centred spectra are those of the explicitly centred K×D score matrix.
    n_copies, sigma, psi = 32, float(VP().sigma(0.01)), float(VP().psi(0.01))
    spectra = normal_bundle_spectrum(biased, x[:1], prediction="score", n_copies=n_copies, center=True, seed=5)
    from flipd.baselines.normal_bundle import _copy_generator

    noise = torch.randn((n_copies, 8), generator=_copy_generator(5, 0, x.device), dtype=x.dtype)
    copies = psi * x[:1] + sigma * noise
    scores = sigma * biased(copies, torch.full((n_copies,), 0.01, dtype=x.dtype))
    expected = torch.linalg.svdvals(scores - scores.mean(0)).numpy()
    np.testing.assert_allclose(spectra[0], expected, rtol=1e-6, atol=1e-8)


def test_nb_default_noise_level_is_reference_t(mixture, mixture_points):
    x = mixture_points[0][:4]
    model = mixture.as_model(VP(), "score")
    default = normal_bundle_spectrum(model, x, prediction="score")
    np.testing.assert_allclose(normal_bundle_spectrum(model, x, prediction="score", t=0.01), default, rtol=1e-6)
    sigma = float(VP().sigma(0.01))
    np.testing.assert_allclose(normal_bundle_spectrum(model, x, prediction="score", sigma=sigma), default, rtol=1e-6)
    assert NB_REFERENCE_DELTA == pytest.approx(float(VP().delta(0.01)))


def test_lid_from_spectrum_uses_largest_drop():
    spectra = np.array([[5.0, 4.0, 3.5, 0.2, 0.1], [0.1, 6.0, 0.2, 5.5, 0.05]])
    np.testing.assert_array_equal(lid_from_spectrum(spectra, 5), [2.0, 3.0])
    with pytest.raises(ValueError, match="m >= 2"):
        lid_from_spectrum(np.ones((3, 1)), 5)


def test_nb_rejects_bad_input(mixture, mixture_points):
    x = mixture_points[0][:3]
    model = mixture.as_model(VP(), "epsilon")
    with pytest.raises(ValueError, match="at most once"):
        estimate_nb(model, x, t=0.01, sigma=0.05)
    with pytest.raises(ValueError, match="n_copies"):
        estimate_nb(model, x, n_copies=1)
    with pytest.raises(ValueError, match="empty"):
        estimate_nb(model, x[:0])
    with pytest.raises(ValueError, match="non-finite"):
        estimate_nb(model, torch.full((2, 8), math.nan))
    with pytest.raises(ValueError, match="shaped like its input"):
        estimate_nb(lambda y, t: y[:, :2], x)
    with pytest.raises(ValueError, match="non-finite values"):
        estimate_nb(lambda y, t: y * math.inf, x)
    # Every point with a non-finite copy is named by its global index, across forward passes.
    far = torch.cat([x, x[:2] * 1e4, x[:1]])  # positions 3 and 4 lie far out

    def overflows_far_out(y, t):
        return torch.where(y.abs().amax(dim=1, keepdim=True) > 1e3, torch.full_like(y, math.inf), y)

    # One forward pass for all copies names both; passes of 3 rows (a point's 4 copies split over two
    # passes) stop at the first.
    for rows_per_forward, named in ((10_000, [13, 14]), (3, [13])):
        with pytest.raises(NonFiniteOutputError) as caught:
            estimate_nb(overflows_far_out, far, n_copies=4, rows_per_forward=rows_per_forward,
                        indices=[10, 11, 12, 13, 14, 15])
        assert caught.value.indices == named and caught.value.n_points == 6


# --------------------------------------------------------------------------- FPRegress


def test_integrated_log_density_matches_closed_form(mixture, mixture_points):
    x = mixture_points[0][:12]
    log_density = fokker_planck_log_density(mixture.as_model(VP(), "epsilon"), x, DEFAULT_STDS)
    exact = np.stack([exact_log_smoothed_density(mixture, x.numpy(), s) for s in DEFAULT_STDS], axis=1)
    exact -= exact[:, -1:]
    assert log_density.shape == (12, 8)
    np.testing.assert_array_equal(log_density[:, -1], 0.0)
    # Euler with 4 sub-steps; the FLIPD curve is nearly flat here, so the error is tiny.
    np.testing.assert_allclose(log_density, exact, atol=1e-2)


def test_euler_integration_error_is_first_order():
    # Thin Gaussians (std 0.03 off their subspaces): FLIPD sweeps across the grid, so the
    # integrand is far from constant and the step size matters.
    thin = GaussianMixture.random([2, 5], 8, seed=0, off_variance=1e-3)
    x = thin.sample(12, seed=1)[0]
    exact = np.stack([exact_log_smoothed_density(thin, x.numpy(), s) for s in DEFAULT_STDS], axis=1)
    exact -= exact[:, -1:]
    model = thin.as_model(VP(), "score")
    errors = [
        np.abs(fokker_planck_log_density(model, x, prediction="score", substeps=m) - exact).max() for m in (1, 2)
    ]
    assert 0.05 < errors[0] < 2.0
    assert 1.7 < errors[0] / errors[1] < 2.3


def test_fpregress_recovers_subspace_dimensions(mixture, mixture_points):
    x, true = mixture_points[0][:20], mixture_points[1][:20]
    lid = estimate_fpregress(mixture.as_model(VP(), "epsilon"), x)
    assert lid.shape == true.shape
    np.testing.assert_allclose(lid, true, atol=0.05)


def test_fpregress_is_schedule_free(mixture, mixture_points):
    x = mixture_points[0][:10]
    stds = stds_around(0.03)
    vp = estimate_fpregress(mixture.as_model(VP(), "epsilon"), x, stds=stds, substeps=2)
    ve = estimate_fpregress(mixture.as_model(VE(), "sample"), x, stds=stds, substeps=2, schedule=VE(), prediction="sample")
    np.testing.assert_allclose(vp, ve, atol=1e-6)


def test_regression_lid_reads_the_slope():
    stds = np.geomspace(0.01, 0.1, 8)
    log_density = np.stack([(3 - 8) * np.log(stds) + 4.0, (6 - 8) * np.log(stds) - 1.0])
    np.testing.assert_allclose(regression_lid(log_density, stds, 8), [3.0, 6.0])
    np.testing.assert_allclose(stds_around(0.1), [0.05, 0.1 / math.sqrt(2), 0.1, 0.1 * math.sqrt(2), 0.2])


def test_fpregress_rejects_bad_input(mixture, mixture_points):
    x = mixture_points[0][:3]
    model = mixture.as_model(VP(), "epsilon")
    with pytest.raises(ValueError, match="strictly increasing"):
        estimate_fpregress(model, x, stds=[0.1, 0.05])
    with pytest.raises(ValueError, match="at least two"):
        estimate_fpregress(model, x, stds=[0.1])
    with pytest.raises(ValueError, match="substeps"):
        estimate_fpregress(model, x, substeps=0)
    with pytest.raises(ValueError, match="not reached"):
        estimate_fpregress(mixture.as_model(VE(0.05), "sample"), x, schedule=VE(0.05), prediction="sample")
    with pytest.raises(ValueError, match="empty"):
        estimate_fpregress(model, x[:0])


# --------------------------------------------------------------------------- classical


@pytest.fixture(scope="module")
def flat_points() -> np.ndarray:
    """800 Gaussian points on a random 3-dim linear subspace of R^6."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(6, 3)))[0]
    return rng.normal(size=(800, 3)) @ basis.T


@pytest.mark.parametrize(
    ("method", "n_neighbors", "points", "tolerance"),
    [("mle", 20, 800, 0.3), ("lpca", 50, 800, 0.0), ("twonn", 50, 800, 0.4), ("ess", 20, 150, 0.3)],
)
def test_classical_estimators_find_flat_dimension(flat_points, method, n_neighbors, points, tolerance):
    lid = estimate_classical(flat_points[:points], method, n_neighbors)
    assert lid.shape == (points,) and lid.dtype == np.float64
    assert abs(np.mean(lid) - 3.0) <= tolerance
    assert abs(np.median(lid) - 3.0) <= max(tolerance, 0.5)


def test_classical_reference_set_matches_self_fit_and_handles_unseen_points(flat_points):
    reference = flat_points[:600]
    own = estimate_classical(reference, "mle", 20)
    np.testing.assert_allclose(estimate_classical(reference[:30], "mle", 20, reference=reference), own[:30])
    unseen = estimate_classical(flat_points[600:], "lpca", 50, reference=reference)
    np.testing.assert_array_equal(unseen, 3.0)


def test_classical_parallel_chunks_match_serial(flat_points):
    from joblib import parallel_config

    serial = estimate_classical(flat_points[:200], "twonn", 30)
    with parallel_config(backend="threading"):
        parallel = estimate_classical(flat_points[:200], "twonn", 30, n_jobs=2)
    np.testing.assert_array_equal(parallel, serial)


def test_classical_clips_large_neighbourhoods(flat_points):
    with pytest.warns(UserWarning, match="n_neighbors=1000 exceeds the 39 available"):
        clipped = estimate_classical(flat_points[:40], "lpca")
    np.testing.assert_array_equal(clipped, estimate_classical(flat_points[:40], "lpca", 39))


def test_classical_reports_undefined_points():
    rng = np.random.default_rng(1)
    # eight copies of one point, far from the rest: their neighbourhoods hold only duplicates
    points = np.vstack([np.full((8, 4), 50.0), rng.normal(size=(60, 4))])
    with pytest.warns(UserWarning, match="undefined at 8 of 68"):
        lid = estimate_classical(points, "twonn", 5)
    assert np.isnan(lid[:8]).all() and np.isfinite(lid[8:]).all()


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.zeros((0, 5)), {"method": "mle"}, ValueError, "empty"),
        (np.ones(5), {"method": "mle"}, ValueError, "shape"),
        (np.ones((10, 1)), {"method": "mle"}, ValueError, "D >= 2"),
        (np.array([[0.0, 1.0], [math.inf, 0.0]] * 5), {"method": "mle"}, ValueError, r"non-finite .* \[1, 3, 5, 7, 9\]"),
        (np.ones((10, 3)), {"method": "danco"}, ValueError, "Unknown method 'danco'"),
        (np.ones((10, 3)), {"method": "mle", "n_neighbors": 2}, ValueError, "at least 3"),
        (np.ones((10, 3)), {"method": "mle", "n_neighbors": 5.5}, ValueError, "integer"),
        (np.ones((3, 3)), {"method": "mle"}, ValueError, "at least 4 points"),
        (np.ones((10, 3)), {"method": "mle", "n_jobs": 0}, ValueError, "n_jobs"),
        (np.ones((10, 3)), {"method": "mle", "reference": np.ones((10, 4))}, ValueError, "features"),
        (np.ones((10, 3)), {"method": "lpca", "alpha": 1}, TypeError, "Invalid option for lpca"),
        (np.array([["a", "b"]] * 5), {"method": "mle"}, TypeError, "real numbers"),
    ],
    ids=["empty", "1d", "one-feature", "non-finite", "unknown", "k-small", "k-float", "few-points", "n-jobs",
         "reference-features", "bad-option", "strings"],
)
def test_classical_rejects_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        estimate_classical(x, **kwargs)


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_baseline_with_its_needs():
    assert set(BASELINES) == {"nb", "fpregress", "lpca", "mle", "ess", "twonn"}
    assert {name for name, baseline in BASELINES.items() if baseline.needs_model} == {"nb", "fpregress"}
    assert BASELINES["lpca"].defaults["n_neighbors"] == 1000
    assert BASELINES["mle"].defaults["n_neighbors"] == 1000
    assert BASELINES["ess"].defaults["n_neighbors"] == 100
    for name in ("nb", "fpregress"):
        parameters = inspect.signature(BASELINES[name].function).parameters
        for key, value in BASELINES[name].defaults.items():
            assert parameters[key].default == value, (name, key)


def test_registry_calls_every_kind_uniformly(mixture, mixture_points, flat_points):
    x, true = mixture_points
    model = mixture.as_model(VP(), "score")
    np.testing.assert_array_equal(BASELINES["nb"](x, model=model, prediction="score"), true)
    with pytest.raises(ValueError, match="needs a diffusion model"):
        BASELINES["fpregress"](x)
    lid = BASELINES["mle"](flat_points[:300], model=model, prediction="score", n_neighbors=20)
    np.testing.assert_array_equal(lid, estimate_classical(flat_points[:300], "mle", 20))


def test_model_based_baselines_recover_dimensions_at_d100():
    # The medium suite's geometry (components of dimension 10, 25 and 50 in R^100) with exact
    # scores: NB and FPRegress must be accurate here, so errors on trained models are the models'.
    wide = GaussianMixture.random([10, 25, 50], 100, seed=0)
    x, component = wide.sample(30, seed=1)
    truth = np.array([10, 25, 50])[component.numpy()]
    model = wide.as_model(VP(), prediction="epsilon")
    assert np.abs(estimate_nb(model, x.float()) - truth).mean() <= 0.25
    assert np.abs(estimate_fpregress(model, x.float()) - truth).mean() <= 0.25


def test_using_the_classical_estimators_leaves_the_warning_filters_alone():
    """scikit-dimension runs warnings.filterwarnings("ignore") when imported; flipd imports it
    so that the process's filters (and so flipd's warnings about results) are left as they were."""
    import subprocess
    import sys

    script = (
        "import warnings, numpy as np\n"
        "from flipd.baselines import estimate_classical\n"
        "before = list(warnings.filters)\n"
        "estimate_classical(np.random.default_rng(0).normal(size=(50, 3)), 'lpca', 10)\n"
        "assert warnings.filters == before, 'the warning filters changed'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
