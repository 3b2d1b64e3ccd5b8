"""Every registered LID method through one conformance test: shapes, dtype, seeding, bad input.

A method of flipd.methods.METHODS (FLIPD or a baseline of flipd.baselines) is tested here
because it exists: through the registry's one calling convention and one result type, and
through the estimate job's chunk estimator.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import flipd
from flipd.analytic import GaussianMixture
from flipd.jobs.estimate import METHODS, EstimateSettings, method_chunks
from flipd.methods import METHODS as REGISTRY
from flipd.methods import MODEL_METHODS
from flipd.results import LIDResult
from flipd.noise import default_noise_level
from flipd.runs.chunks import CHUNK_COLUMNS
from flipd.schedules import VP

N_POINTS = 48


@pytest.fixture(scope="module")
def setup():
    mixture = GaussianMixture.random([1, 3], ambient_dim=4, seed=0)
    x, _ = mixture.sample(N_POINTS, seed=1)
    model = flipd.as_model(mixture.as_model(VP(), prediction="epsilon"), schedule=VP(), prediction="epsilon")
    return model, x.float()


def _estimator(method: str, model):
    noise = default_noise_level(model.schedule) if method == "flipd" else {}
    options = {"n_neighbors": 20} if method not in MODEL_METHODS else {"trace": "hutchinson", "n_probes": 2}
    if method == "nb":
        options = {}
    settings = EstimateSettings(method=method, **noise, seed=3, batch_size=16, chunk_size=N_POINTS, **options)
    return method_chunks(settings, model if method in MODEL_METHODS else None)


def _run(estimator, x, indices):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimator(x, np.asarray(indices, dtype=np.int64), None)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_one_float64_row_per_point(setup, method):
    model, x = setup
    arrays, info = _run(_estimator(method, model), x, np.arange(N_POINTS))
    assert set(arrays) == set(CHUNK_COLUMNS)
    for name in CHUNK_COLUMNS:
        assert arrays[name].shape == (N_POINTS,) and arrays[name].dtype == np.float64, name
    assert np.isfinite(arrays["lid"]).all()
    assert {"trace", "n_probes", "mode", "resolved"} <= set(info)
    again, _ = _run(_estimator(method, model), x, np.arange(N_POINTS))
    assert np.array_equal(again["lid"], arrays["lid"])  # deterministic for a seed


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_model_methods_are_seeded_by_point(setup, method):
    model, x = setup
    full, _ = _run(_estimator(method, model), x, np.arange(N_POINTS))
    part, _ = _run(_estimator(method, model), x[8:20], np.arange(8, 20))
    assert np.allclose(part["lid"], full["lid"][8:20], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_rejects_non_finite_points(setup, method):
    model, x = setup
    bad = x.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite|NaN"):
        _run(_estimator(method, model), bad, np.arange(N_POINTS))


def test_every_method_is_registered_once():
    from flipd.baselines import BASELINES

    assert METHODS == ("flipd", *BASELINES) and len(set(METHODS)) == len(METHODS)
    assert set(MODEL_METHODS) == {"flipd"} | {name for name, b in BASELINES.items() if b.needs_model}


def _call(method: str, model, x, **kwargs) -> LIDResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extra = {"n_neighbors": 20} if "n_neighbors" in REGISTRY[method].defaults else {}
        return REGISTRY[method](x, model if method in MODEL_METHODS else None, seed=3, **extra, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_one_result_type_with_resolved_settings(setup, method):
    model, x = setup
    result = _call(method, model, x)
    assert isinstance(result, LIDResult) and result.method == method and len(result) == N_POINTS
    assert result.ambient_dim == 4
    for name, values in result.columns().items():
        assert values.shape == (N_POINTS,) and values.dtype == np.float64, name
    # resolved settings: every default is filled in, nothing is left as None
    assert set(REGISTRY[method].defaults) - {"chunk_rows"} <= set(result.settings)
    assert all(value is not None for key, value in result.settings.items() if key != "batch_size"), result.settings
    frame = result.to_pandas()
    assert list(frame.index) == list(range(N_POINTS)) and frame["method"].eq(method).all()
    assert np.array_equal(frame["lid"].to_numpy(), result.columns()["lid"])
    assert repr(result).startswith(f"LIDResult(method={method!r}, n={N_POINTS}, D=4") and len(repr(result)) < 300


def test_classical_settings_record_the_neighbourhood_actually_used(setup):
    _, x = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = REGISTRY["lpca"](x)  # default k = 1000, but only 47 neighbours exist
    assert result.settings["n_neighbors"] == N_POINTS - 1


def test_nb_reports_the_noise_level_it_read(setup):
    model, x = setup
    result = _call("nb", model, x[:8])
    assert np.isfinite(result.columns()["t0"]).all() and result.settings["n_copies"] == 16
    assert result.settings["t0"] == pytest.approx(float(result.t0[0]))


@pytest.mark.parametrize("method", [name for name in METHODS if not REGISTRY[name].reads_noise_level])
def test_methods_without_a_noise_level_refuse_one(setup, method):
    model, x = setup
    with pytest.raises(ValueError, match="takes no noise level"):
        REGISTRY[method](x, model, t0=0.05)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_settings_are_named(setup, method):
    model, x = setup
    with pytest.raises(TypeError, match="unknown settings bogus"):
        REGISTRY[method](x, model, bogus=1)


def test_model_methods_need_a_model(setup):
    _, x = setup
    for method in MODEL_METHODS:
        with pytest.raises(ValueError, match="needs a diffusion model"):
            REGISTRY[method](x)


def test_flipd_through_the_registry_equals_flipd_estimate(setup):
    model, x = setup
    direct = flipd.estimate(model, x, t0=0.05, trace="hutchinson", n_probes=2, seed=3)
    registered = REGISTRY["flipd"](x, model, t0=0.05, trace="hutchinson", n_probes=2, seed=3)
    assert torch.equal(direct.lid, registered.lid) and registered.settings["n_probes"] == 2


@pytest.mark.parametrize("method", ["flipd", "lpca"])
def test_progress_true_shows_a_bar_and_a_callable_counts_every_point(setup, method, capsys):
    model, x = setup
    counted = []
    quiet = _call(method, model, x, progress=counted.append)
    assert sum(counted) == N_POINTS
    shown = _call(method, model, x, progress=True)
    assert np.array_equal(shown.columns()["lid"], quiet.columns()["lid"])
    assert "pt" in capsys.readouterr().err  # tqdm writes its bar to stderr
    with pytest.raises(TypeError, match="progress must be"):
        _call(method, model, x, progress="yes")


def test_flipd_curve_progress_counts_points_times_grid(setup):
    model, x = setup
    counted = []
    flipd.flipd_curve(model, x, [0.02, 0.05, 0.1], progress=counted.append)
    assert sum(counted) == 3 * N_POINTS


def test_baseline_estimates_outside_zero_to_d_are_warned_about_by_index():
    from flipd.datasets import get_dataset

    x = get_dataset("lollipop", 300, seed=0).x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.warns(flipd.EstimateWarning, match=r"the twonn estimates of points \[.*lie outside \[0, D = 2\]"):
            result = REGISTRY["twonn"](x, indices=range(1000, 1300))
    outside = result.columns()["lid"] > 2
    assert outside.any()  # TwoNN reads above D on the lollipop's stick and dot
