"""Every registered LID method through one conformance test: shapes, dtype, seeding, bad input.

A method added to flipd.jobs.estimate.METHODS (FLIPD or a baseline of flipd.baselines) is
tested here because it exists.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import flipd
from flipd.analytic import GaussianMixture
from flipd.jobs.estimate import METHODS, MODEL_METHODS, EstimateSettings, baseline_chunks, flipd_chunks
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
    if method == "flipd":
        return flipd_chunks(model, settings)
    return baseline_chunks(settings, model=model if method in MODEL_METHODS else None)


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
    assert {"trace", "n_probes", "mode"} <= set(info)
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
