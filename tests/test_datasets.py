import math

import numpy as np
import pytest

from flipd.datasets import (
    ManifoldMixture,
    SyntheticData,
    get_dataset,
    list_datasets,
    lollipop,
    manifold_mixture,
    mixture_from_spec,
    string_within_doughnut,
    swiss_roll,
)

@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """The spline flow runs on tiny batches here; extra intra-op threads only contend for the
    cores (badly so under pytest-xdist)."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SMALL_SPECS = [
    "lollipop",
    "doughnut",
    "swiss_roll",
    "mixture:affine:D=10:dims=2,4,8",
    "mixture:squiggly:D=10:dims=5:omega=5",
    "mixture:affine:D=6:dims=0,3:latent=normal",
    "mixture:squiggly:D=6:dims=1,2,3:latent=laplace:omega=0.5:geometry_seed=3",
    "mixture:rq_nsf:D=10:dims=2,4,8",
]


def assert_within_binomial(count: int, n: int, p: float, sds: float = 5.0) -> None:
    sd = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= sds * sd, (count, n * p, sd)


def local_singular_values(points: np.ndarray) -> np.ndarray:
    """Singular values of the centred neighbourhood, largest first."""
    return np.linalg.svd(points - points.mean(axis=0), compute_uv=False)


# --------------------------------------------------------------------------------------------
# Common contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_shapes_dtypes_and_labels(spec):
    data = get_dataset(spec, 200, seed=0)
    assert isinstance(data, SyntheticData)
    assert data.x.dtype == np.float32 and data.x.ndim == 2 and data.x.shape[0] == 200
    assert data.lid.dtype == np.int64 and data.lid.shape == (200,)
    assert data.component.dtype == np.int64 and data.component.shape == (200,)
    assert np.array_equal(data.lid, np.asarray(data.component_dims)[data.component])
    assert np.all(np.isfinite(data.x))
    assert len(data) == data.n == 200
    assert data.ambient_dim == data.x.shape[1]


@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_name_rebuilds_the_same_data(spec):
    data = get_dataset(spec, 50, seed=4)
    again = get_dataset(data.name, 50, seed=4)
    assert again.name == data.name
    assert np.array_equal(again.x, data.x)


@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_deterministic_by_seed_and_different_across_seeds(spec):
    a = get_dataset(spec, 100, seed=1)
    b = get_dataset(spec, 100, seed=1)
    c = get_dataset(spec, 100, seed=2)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.component, b.component)
    assert not np.array_equal(a.x, c.x)


def test_zero_points():
    assert lollipop(0).x.shape == (0, 2)
    assert manifold_mixture(0, ambient_dim=4, dims=[1, 2]).x.shape == (0, 4)


def test_invalid_n():
    with pytest.raises(ValueError, match="n must be"):
        lollipop(-1)


def test_global_random_state_untouched():
    torch = pytest.importorskip("torch")
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    lollipop(50, seed=0)
    string_within_doughnut(50, seed=0)
    swiss_roll(50, seed=0)
    ManifoldMixture(5, (1, 2), "squiggly", reference_size=64).sample(50, seed=0)
    ManifoldMixture(5, (1, 2), "rq_nsf", reference_size=64).sample(50, seed=0)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


# --------------------------------------------------------------------------------------------
# Lollipop, doughnut, Swiss roll
# --------------------------------------------------------------------------------------------


def test_lollipop_weights_and_geometry():
    n = 14_000
    data = lollipop(n, seed=0)
    x = data.x.astype(np.float64)
    assert data.component_dims == (2, 1, 0)
    for label, p in enumerate([4 / 7, 2 / 7, 1 / 7]):
        assert_within_binomial(int(np.sum(data.component == label)), n, p)

    disk = x[data.component == 0]
    radius = np.linalg.norm(disk - [3.0, 3.0], axis=1)
    assert radius.max() <= 1.0 + 1e-6
    # uniform in area: P(r < 1/2) = 1/4
    assert_within_binomial(int(np.sum(radius < 0.5)), len(disk), 0.25)

    start = np.array([1.5, 1.5])
    end = np.array([3.0, 3.0]) - np.array([1.0, 1.0]) / math.sqrt(2)
    stick = x[data.component == 1]
    direction = (end - start) / np.linalg.norm(end - start)
    offset = stick - start
    along = offset @ direction / np.linalg.norm(end - start)
    across = offset @ np.array([-direction[1], direction[0]])
    assert np.abs(across).max() < 1e-5
    assert along.min() >= -1e-6 and along.max() <= 1 + 1e-6
    assert abs(along.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(stick))
    assert np.linalg.norm(end - [3.0, 3.0]) == pytest.approx(1.0)

    assert np.all(x[data.component == 2] == 0.0)


def test_doughnut_weights_and_equations():
    n = 10_000
    data = string_within_doughnut(n, seed=0)
    x = data.x.astype(np.float64)
    assert data.component_dims == (2, 1)
    assert_within_binomial(int(np.sum(data.component == 0)), n, 0.5)

    torus = x[data.component == 0]
    ring = np.hypot(torus[:, 0], torus[:, 1])
    np.testing.assert_allclose((ring - 10.0) ** 2 + torus[:, 2] ** 2, 1.0, atol=1e-4)
    # the tube angle is uniform, so about half of the torus lies outside the ring R = 10
    assert_within_binomial(int(np.sum(ring > 10.0)), len(torus), 0.5)

    circle = x[data.component == 1]
    np.testing.assert_allclose(np.hypot(circle[:, 0], circle[:, 1]), 10.0, atol=1e-4)
    np.testing.assert_allclose(circle[:, 2], 0.0, atol=1e-6)


def test_swiss_roll_on_its_surface():
    data = swiss_roll(2000, seed=0)
    x = data.x.astype(np.float64)
    assert data.component_dims == (2,) and np.all(data.lid == 2)
    t = np.hypot(x[:, 0], x[:, 2])  # x = t cos t, z = t sin t with t in [1.5 pi, 4.5 pi]
    assert t.min() >= 1.5 * np.pi - 1e-4 and t.max() <= 4.5 * np.pi + 1e-4
    np.testing.assert_allclose(x[:, 0], t * np.cos(t), atol=1e-3)
    np.testing.assert_allclose(x[:, 2], t * np.sin(t), atol=1e-3)
    assert x[:, 1].min() >= 0.0 and x[:, 1].max() <= 21.0


# --------------------------------------------------------------------------------------------
# Manifold mixtures
# --------------------------------------------------------------------------------------------


def test_mixture_equal_weights():
    n = 9000
    data = manifold_mixture(n, ambient_dim=10, dims=[2, 4, 8], seed=0)
    for label in range(3):
        assert_within_binomial(int(np.sum(data.component == label)), n, 1 / 3)


@pytest.mark.parametrize("diffeomorphism", ["affine", "squiggly"])
def test_mixture_standardised(diffeomorphism):
    data = manifold_mixture(
        8000, ambient_dim=10, dims=[2, 4, 8], diffeomorphism=diffeomorphism, seed=0
    )
    # statistics fixed by a 2048-point reference draw: sampling error ~ sqrt(1/8000 + 1/2048)
    tolerance = 5 * math.sqrt(1 / 8000 + 1 / 2048)
    assert np.abs(data.x.mean(axis=0)).max() < tolerance
    assert np.abs(data.x.std(axis=0) - 1.0).max() < tolerance
    assert data.mean.shape == data.std.shape == (10,)


def test_mixture_same_distribution_across_seeds_and_sizes():
    a = manifold_mixture(500, ambient_dim=8, dims=[3, 5], diffeomorphism="squiggly", seed=0)
    b = manifold_mixture(80, ambient_dim=8, dims=[3, 5], diffeomorphism="squiggly", seed=9)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)
    other = manifold_mixture(
        80, ambient_dim=8, dims=[3, 5], diffeomorphism="squiggly", seed=9, geometry_seed=1
    )
    assert not np.allclose(other.mean, b.mean)


def test_affine_components_are_flat_pieces_of_the_right_dimension():
    mixture = ManifoldMixture(10, (2, 4, 8), "affine")
    data = mixture.sample(3000, seed=0)
    raw = data.x.astype(np.float64) * data.std + data.mean
    for i, d in enumerate(mixture.dims):
        basis = mixture.embeddings[i]
        assert basis.shape == (10, d)
        np.testing.assert_allclose(basis.T @ basis, np.eye(d), atol=1e-12)
        offset = raw[data.component == i] - mixture.modes[i]
        np.testing.assert_allclose(offset - offset @ basis @ basis.T, 0.0, atol=1e-4)
        # uniform latent on [-1, 1]^d
        latent = offset @ basis
        assert np.abs(latent).max() <= 1 + 1e-4
    expected_modes = 10 * (np.eye(3, 10) - 0.5) / math.sqrt(2)
    np.testing.assert_allclose(mixture.modes, expected_modes)


def test_affine_nearest_neighbours_have_local_pca_rank_d():
    data = manifold_mixture(3000, ambient_dim=10, dims=[2, 4, 8], seed=0)
    x = data.x.astype(np.float64)
    rng = np.random.default_rng(0)
    for centre in rng.choice(len(x), size=12, replace=False):
        d = int(data.lid[centre])
        neighbours = np.argsort(np.linalg.norm(x - x[centre], axis=1))[: 3 * d + 5]
        assert np.all(data.component[neighbours] == data.component[centre])
        s = local_singular_values(x[neighbours])
        assert s[d - 1] > 1e-2 * s[0]
        if d < len(s):
            assert s[d] < 1e-5 * s[0]


@pytest.mark.parametrize(
    "diffeomorphism, frequency",
    [("squiggly", 1.0), ("squiggly", 5.0), ("squiggly", 10.0), ("rq_nsf", 1.0)],
)
def test_curved_components_have_local_pca_rank_d(diffeomorphism, frequency):
    mixture = get_mixture(diffeomorphism, frequency)
    rng = np.random.default_rng(1)
    radius = 1e-7  # small against the curvature; float64 resolves it
    n_centres, k = 6, 40
    for i, d in enumerate(mixture.dims):
        centres = rng.uniform(-1, 1, size=(n_centres, 1, d))
        latent = centres + radius * rng.standard_normal((n_centres, k, d))
        points = mixture.embed(latent.reshape(-1, d), i).reshape(n_centres, k, -1)
        for neighbourhood in points:
            s = local_singular_values(neighbourhood)
            assert s[d - 1] > 1e-6 * s[0], (i, d, s)
            assert s[d] < 1e-2 * s[d - 1], (i, d, s)


@pytest.mark.parametrize(
    "diffeomorphism, frequency", [("squiggly", 1.0), ("squiggly", 10.0), ("rq_nsf", 1.0)]
)
def test_curved_components_are_not_flat(diffeomorphism, frequency):
    mixture = get_mixture(diffeomorphism, frequency)
    latent = np.random.default_rng(2).uniform(-1, 1, size=(500, 2))
    s = local_singular_values(mixture.embed(latent, 0))  # the 2-dimensional component
    assert s[2] > 1e-3 * s[0]


def test_embed_matches_sample_for_affine():
    mixture = ManifoldMixture(6, (2, 3), "affine")
    z = np.array([[0.3, -0.7]])
    expected = (mixture.embeddings[0] @ z[0] + mixture.modes[0] - mixture.mean) / mixture.std
    np.testing.assert_allclose(mixture.embed(z, 0)[0], expected)
    with pytest.raises(ValueError, match="shape"):
        mixture.embed(np.zeros((1, 3)), 0)


def get_mixture(diffeomorphism: str, frequency: float) -> ManifoldMixture:
    # goes through the cache that get_dataset also uses, so the spline flow is built once
    from flipd.datasets.synthetic import _cached_mixture

    return _cached_mixture(10, (2, 4, 8), diffeomorphism, "uniform", frequency, 0)


@pytest.mark.parametrize("latent", ["normal", "laplace"])
def test_latent_distributions(latent):
    mixture = ManifoldMixture(12, (6,), "affine", latent=latent)
    data = mixture.sample(4000, seed=0)
    raw = data.x.astype(np.float64) * data.std + data.mean
    z = ((raw - mixture.modes[0]) @ mixture.embeddings[0]).ravel()
    assert abs(z.std() - (1.0 if latent == "normal" else math.sqrt(2))) < 0.05
    excess_kurtosis = np.mean(z**4) / np.mean(z**2) ** 2 - 3
    assert abs(excess_kurtosis - (0.0 if latent == "normal" else 3.0)) < 1.0


def test_mixture_argument_checks():
    with pytest.raises(ValueError, match="components need ambient_dim"):
        ManifoldMixture(2, (1, 1, 1))
    with pytest.raises(ValueError, match=r"in \[0, 4\]"):
        ManifoldMixture(4, (5,))
    with pytest.raises(ValueError, match="affine, squiggly, rq_nsf"):
        ManifoldMixture(4, (1,), "spline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uniform, normal, laplace"):
        ManifoldMixture(4, (1,), latent="cauchy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frequency"):
        ManifoldMixture(4, (1,), "squiggly", frequency=0.0)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_list_datasets():
    assert list_datasets() == ["lollipop", "doughnut", "swiss_roll", "mixture", "helix", "sphere", "torus"]


def test_registry_parses_specs():
    data = get_dataset("mixture:affine:D=10:dims=2,4,8", 30, seed=0)
    assert data.component_dims == (2, 4, 8) and data.ambient_dim == 10
    data = get_dataset(" mixture : squiggly : D=7 : dims=3 : omega=0.5 ", 30, seed=0)
    assert data.name == "mixture:squiggly:D=7:dims=3:omega=0.5"
    data = get_dataset("mixture:squiggly:D=7:dims=3", 30, seed=0)
    assert data.name == "mixture:squiggly:D=7:dims=3:omega=1"
    data = get_dataset("mixture:affine:latent=laplace:dims=1,2:D=4:geometry_seed=2", 30, seed=0)
    assert data.name == "mixture:affine:D=4:dims=1,2:latent=laplace:geometry_seed=2"
    assert get_dataset("string_within_doughnut", 30).name == "doughnut"
    direct = manifold_mixture(30, ambient_dim=10, dims=(2, 4, 8), seed=5)
    assert np.array_equal(get_dataset("mixture:affine:D=10:dims=2,4,8", 30, 5).x, direct.x)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lolipop", "unknown data set 'lolipop'; valid names: lollipop, doughnut, swiss_roll, mixture"),
        ("", "valid names: lollipop"),
        ("lollipop:D=3", "takes no options"),
        ("mixture", "needs a diffeomorphism"),
        ("mixture:D=10:dims=2", "needs a diffeomorphism"),
        ("mixture:spline:D=10:dims=2", "unknown diffeomorphism 'spline'; valid: affine, squiggly"),
        ("mixture:affine:dims=2", "missing D"),
        ("mixture:affine", "missing D and dims"),
        ("mixture:affine:D=10:dims=2:width=3", "unknown key 'width'; valid keys: D, dims, latent"),
        ("mixture:affine:D=10:dims=2:D=11", "given twice"),
        ("mixture:affine:D=ten:dims=2", "D must be an integer"),
        ("mixture:affine:D=10:dims=2,x", "dims must be an integer"),
        ("mixture:affine:D=10:dims=2:latent=cauchy", "unknown latent 'cauchy'"),
        ("mixture:affine:D=10:dims=2:omega=5", "omega only applies to the squiggly"),
        ("mixture:squiggly:D=10:dims=2:omega=fast", "omega must be a number"),
        ("mixture:affine:D=10:dims", "expected key=value"),
        ("mixture:affine:D=3:dims=4", r"in \[0, 3\]"),
    ],
)
def test_registry_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(spec, 10)


def test_mixture_from_spec_is_the_distribution_get_dataset_samples():
    spec = "mixture:affine:D=6:dims=1,3:latent=normal:geometry_seed=4"
    mixture = mixture_from_spec(spec)
    assert mixture.name == spec
    assert np.array_equal(mixture.sample(50, seed=3).x, get_dataset(spec, 50, seed=3).x)
    with pytest.raises(ValueError, match="not a mixture spec"):
        mixture_from_spec("lollipop")


def test_affine_normal_mixture_is_exactly_its_gaussian_mixture():
    torch = pytest.importorskip("torch")
    from flipd.schedules import VP

    spec = "mixture:affine:D=6:dims=1,3:latent=normal"
    gaussian = mixture_from_spec(spec).as_gaussian_mixture()
    data = get_dataset(spec, 40_000, seed=2)
    for k in range(2):
        points = data.x[data.component == k].astype(np.float64)
        mean = gaussian.means[k].numpy()
        basis, variances = gaussian.bases[k].numpy(), gaussian.variances[k].numpy()
        covariance = basis @ np.diag(variances) @ basis.T
        # Sample moments within a few standard errors (about 20,000 points per component).
        assert np.abs(points.mean(0) - mean).max() < 0.05 * math.sqrt(variances.max())
        assert np.abs(np.cov(points.T) - covariance).max() < 0.05 * variances.max()
        # Every point lies on the component's affine subspace (float32 rounding only).
        centred = points - mean
        assert np.abs(centred - centred @ basis @ basis.T).max() < 1e-4
    # Its exact FLIPD tends to the true LID as the noise vanishes, isolated points (LID 0) included.
    lid = gaussian.exact_flipd(torch.from_numpy(data.x[:500]), 1e-5, VP()).numpy()
    assert np.abs(lid - data.lid[:500]).max() < 0.01
    spec = "mixture:affine:D=6:dims=0,2:latent=normal"
    data = get_dataset(spec, 200, seed=2)
    lid = mixture_from_spec(spec).as_gaussian_mixture().exact_flipd(torch.from_numpy(data.x), 1e-5, VP()).numpy()
    assert np.abs(lid - data.lid).max() < 0.01 and set(data.lid.tolist()) == {0, 2}


@pytest.mark.parametrize("spec", ["mixture:affine:D=6:dims=2", "mixture:squiggly:D=6:dims=2:latent=normal"])
def test_only_affine_normal_mixtures_have_a_gaussian_form(spec):
    with pytest.raises(ValueError, match="Only affine mixtures with normal latents"):
        mixture_from_spec(spec).as_gaussian_mixture()
