"""Curved data sets: shapes, seeds, true LID and closed-form checks that points lie on the manifold."""

import math

import numpy as np
import pytest

from flipd.datasets import get_dataset, list_datasets
from flipd.datasets.curved import CURVED_KINDS, CurvedManifold

SPECS = ["helix", "helix:D=20:turns=40:tube=0.05", "sphere", "sphere:D=20:d=4", "torus", "torus:D=20:d=3:ratio=0.3"]


def manifold_of(name: str) -> CurvedManifold:
    kind, *options = name.split(":")
    values = dict(option.split("=") for option in options)
    ambient_dim = int(values.pop("D"))
    seed = int(values.pop("geometry_seed", 0))
    return CurvedManifold(kind, ambient_dim, {k: float(v) for k, v in values.items()}, seed)


@pytest.mark.parametrize("spec", SPECS)
def test_shapes_labels_and_names(spec):
    data = get_dataset(spec, 300, seed=0)
    manifold = manifold_of(data.name)
    assert data.x.shape == (300, manifold.ambient_dim) and data.x.dtype == np.float32
    assert data.lid.dtype == np.int64 and np.all(data.lid == manifold.dim)
    assert data.component_dims == (manifold.dim,)
    assert np.array_equal(get_dataset(data.name, 300, seed=0).x, data.x)


@pytest.mark.parametrize("spec", SPECS)
def test_seeds(spec):
    assert np.array_equal(get_dataset(spec, 50, seed=3).x, get_dataset(spec, 50, seed=3).x)
    assert not np.array_equal(get_dataset(spec, 50, seed=3).x, get_dataset(spec, 50, seed=4).x)
    other = get_dataset(f"{spec}:geometry_seed=1", 50, seed=3).x
    assert not np.allclose(other, get_dataset(spec, 50, seed=3).x)


@pytest.mark.parametrize("spec", SPECS)
def test_unit_mean_coordinate_variance_and_centred(spec):
    x = get_dataset(spec, 20_000, seed=1).x.astype(np.float64)
    assert abs(float(np.mean(x**2)) - 1.0) < 0.03
    assert np.abs(x.mean(axis=0)).max() < 0.1


@pytest.mark.parametrize("spec", SPECS)
def test_points_lie_on_the_manifold(spec):
    data = get_dataset(spec, 2000, seed=2)
    manifold = manifold_of(data.name)
    p, off_span = manifold.to_shape_space(data.x)
    assert off_span.max() < 1e-4 * manifold.scale
    if manifold.kind == "sphere":
        np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    elif manifold.kind == "torus":
        pairs = np.linalg.norm(p.reshape(len(p), manifold.dim, 2), axis=2)
        np.testing.assert_allclose(pairs, np.broadcast_to(manifold.radii, pairs.shape), atol=1e-5)
    else:
        turns, tube = manifold.options["turns"], manifold.options["tube"]
        around = np.arctan2(p[:, 1], p[:, 0])
        ring = np.hypot(p[:, 0], p[:, 1])
        np.testing.assert_allclose(ring, 1 + tube * np.cos(turns * around), atol=1e-5)
        np.testing.assert_allclose(p[:, 2], tube * np.sin(turns * around), atol=1e-5)


def test_helix_length_scales_follow_turns_and_tube():
    wide = CurvedManifold("helix", 13, {"turns": 20, "tube": 0.1}).length_scales()
    tight = CurvedManifold("helix", 13, {"turns": 40, "tube": 0.05}).length_scales()
    assert tight["radius"] < wide["radius"] and tight["gap"] < wide["gap"]
    assert wide["radius"] == pytest.approx(0.1 * math.sqrt(13 / 1.01))
    # sigma(t0 = 0.05) ≈ 0.172 of the reference schedule, times sqrt(D - d)
    assert wide["normal_noise_at_default"] == pytest.approx(0.1716 * math.sqrt(12), rel=1e-2)


def test_sphere_radius_is_sqrt_d():
    data = get_dataset("sphere:D=20:d=4", 100, seed=0)
    np.testing.assert_allclose(np.linalg.norm(data.x, axis=1), math.sqrt(20), rtol=1e-5)


def test_registry_lists_the_curved_kinds():
    assert set(CURVED_KINDS) <= set(list_datasets())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("helix:turns=1", "turns must be an integer >= 2"),
        ("helix:turns=2.5", "turns must be an integer"),
        ("helix:tube=1.5", "tube must be in"),
        ("sphere:D=2:d=2", "D must be an integer >= 3"),
        ("torus:ratio=0", "ratio must be in"),
        ("sphere:radius=2", "unknown key 'radius'"),
        ("torus:d=two", "d must be a number"),
        ("helix:D", "expected key=value"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(spec, 10)
