"""Synthetic point clouds with a known local intrinsic dimension (LID) for every point.

Every generator is deterministic given its seed, draws from local ``numpy.random.Generator`` /
``torch.Generator`` objects only (global random state is left as it was), and returns a
:class:`SyntheticData`. The data sets follow the method notes, §8 ("Benchmark data"):

* :func:`lollipop` (D = 2): disk (LID 2), stick (LID 1), isolated point (LID 0), weights 4 : 2 : 1.
* :func:`string_within_doughnut` (D = 3): torus (LID 2) and its core circle (LID 1), 50/50.
* :func:`swiss_roll` (D = 3): scikit-learn's noiseless Swiss roll (LID 2).
* :func:`manifold_mixture` / :class:`ManifoldMixture` (any D): equally weighted d_i-dimensional
  manifolds, flat ("affine") or bent by a random diffeomorphism ("squiggly", "rq_nsf").
* strongly curved manifolds (:mod:`flipd.datasets.curved`): ``helix`` (a curve wound around a
  circle), ``sphere`` (the d-sphere) and ``torus`` (a product of circles of shrinking radii),
  each in any D.

:func:`get_dataset` builds any of them from a short text spec such as
``"mixture:affine:D=10:dims=2,4,8"``; :func:`list_datasets` lists the names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from .curved import CURVED_KINDS, curved_from_options

if TYPE_CHECKING:
    from flipd.analytic import GaussianMixture

__all__ = [
    "SyntheticData",
    "ManifoldMixture",
    "lollipop",
    "string_within_doughnut",
    "swiss_roll",
    "manifold_mixture",
    "mixture_from_spec",
    "get_dataset",
    "list_datasets",
    "DIFFEOMORPHISMS",
    "LATENT_DISTRIBUTIONS",
]

Diffeomorphism = Literal["affine", "squiggly", "rq_nsf"]
LatentDistribution = Literal["uniform", "normal", "laplace"]

DIFFEOMORPHISMS: tuple[str, ...] = ("affine", "squiggly", "rq_nsf")
LATENT_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "normal", "laplace")

# Tags that keep the random streams of one seed apart (geometry of a mixture vs. its samples).
_GEOMETRY_STREAM = 0x6E0
_REFERENCE_STREAM = 0x6E1
_SAMPLE_STREAM = 0x5A3


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """Points with their ground-truth LID.

    Attributes:
        x: ``[N, D]`` float32 points in ambient space R^D.
        lid: ``[N]`` int64 true local intrinsic dimension of each point.
        component: ``[N]`` int64 index of the component (submanifold) each point was drawn from;
            ``lid == np.asarray(component_dims)[component]``.
        name: spec string that :func:`get_dataset` turns back into this data set.
        component_dims: dimension of each component, in component order.
        mean: ``[D]`` float64 per-coordinate shift subtracted during standardisation, or ``None``
            when the data are not standardised (raw ``x = x_std * std + mean``).
        std: ``[D]`` float64 per-coordinate scale divided out during standardisation, or ``None``.
    """

    x: np.ndarray
    lid: np.ndarray
    component: np.ndarray
    name: str
    component_dims: tuple[int, ...]
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 2 or self.lid.shape != (n,) or self.component.shape != (n,):
            raise ValueError(
                f"inconsistent shapes: x {self.x.shape}, lid {self.lid.shape}, "
                f"component {self.component.shape}"
            )

    @property
    def n(self) -> int:
        """Number of points N."""
        return int(self.x.shape[0])

    @property
    def ambient_dim(self) -> int:
        """Ambient dimension D."""
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return self.n


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")


def _draw_components(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    """``[n]`` int64 i.i.d. component labels with probabilities ``weights / weights.sum()``."""
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def _finish(
    x: np.ndarray,
    component: np.ndarray,
    component_dims: tuple[int, ...],
    name: str,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> SyntheticData:
    lid = np.asarray(component_dims, dtype=np.int64)[component]
    return SyntheticData(
        x=np.ascontiguousarray(x, dtype=np.float32),
        lid=lid,
        component=component.astype(np.int64),
        name=name,
        component_dims=component_dims,
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------
# Low-dimensional examples
# --------------------------------------------------------------------------------------------

LOLLIPOP_DISK_CENTRE = np.array([3.0, 3.0])
LOLLIPOP_DISK_RADIUS = 1.0
LOLLIPOP_STICK_START = np.array([1.5, 1.5])
# The stick meets the disk at the edge point closest to its start.
LOLLIPOP_STICK_END = LOLLIPOP_DISK_CENTRE - LOLLIPOP_DISK_RADIUS * np.array([1.0, 1.0]) / math.sqrt(2)
LOLLIPOP_DOT = np.array([0.0, 0.0])


def lollipop(n: int, seed: int = 0) -> SyntheticData:
    """Lollipop in R^2: candy, stick and a dot, drawn with weights 4 : 2 : 1.

    Components (index: set, LID):
        0: disk of radius 1 centred at (3, 3), uniform in area (radius = sqrt(U)), LID 2;
        1: segment from (1.5, 1.5) to the nearest point of the disk's edge, uniform, LID 1;
        2: the single point (0, 0), LID 0.

    Args:
        n: number of points N.
        seed: seed of the local random generator.

    Returns:
        :class:`SyntheticData` with ``x`` of shape ``[N, 2]`` and ``component_dims == (2, 1, 0)``.
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    component = _draw_components(rng, n, np.array([4.0, 2.0, 1.0]))
    x = np.empty((n, 2), dtype=np.float64)

    disk = component == 0
    m = int(disk.sum())
    radius = LOLLIPOP_DISK_RADIUS * np.sqrt(rng.uniform(size=m))
    angle = rng.uniform(0.0, 2.0 * math.pi, size=m)
    x[disk] = LOLLIPOP_DISK_CENTRE + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)

    stick = component == 1
    s = rng.uniform(size=int(stick.sum()))[:, None]
    x[stick] = LOLLIPOP_STICK_START + s * (LOLLIPOP_STICK_END - LOLLIPOP_STICK_START)

    x[component == 2] = LOLLIPOP_DOT
    return _finish(x, component, (2, 1, 0), "lollipop")


DOUGHNUT_MAJOR_RADIUS = 10.0
DOUGHNUT_MINOR_RADIUS = 1.0


def string_within_doughnut(n: int, seed: int = 0) -> SyntheticData:
    """Torus ("doughnut") in R^3 mixed 50/50 with its core circle ("string").

    Components (index: set, LID):
        0: torus ``((R + r cos p) cos a, (R + r cos p) sin a, r sin p)``, R = 10, r = 1, with the
           angles a, p uniform on [0, 2 pi) (uniform in angle, not in area), LID 2;
        1: core circle ``(R cos a, R sin a, 0)``, a uniform, LID 1.

    Args:
        n: number of points N.
        seed: seed of the local random generator.

    Returns:
        :class:`SyntheticData` with ``x`` of shape ``[N, 3]`` and ``component_dims == (2, 1)``.
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    component = _draw_components(rng, n, np.array([1.0, 1.0]))
    big_r, small_r = DOUGHNUT_MAJOR_RADIUS, DOUGHNUT_MINOR_RADIUS
    x = np.empty((n, 3), dtype=np.float64)

    torus = component == 0
    m = int(torus.sum())
    around = rng.uniform(0.0, 2.0 * math.pi, size=m)
    tube = rng.uniform(0.0, 2.0 * math.pi, size=m)
    ring = big_r + small_r * np.cos(tube)
    x[torus] = np.stack([ring * np.cos(around), ring * np.sin(around), small_r * np.sin(tube)], 1)

    circle = component == 1
    around = rng.uniform(0.0, 2.0 * math.pi, size=int(circle.sum()))
    x[circle] = np.stack([big_r * np.cos(around), big_r * np.sin(around), 0.0 * around], 1)
    return _finish(x, component, (2, 1), "doughnut")


def swiss_roll(n: int, seed: int = 0) -> SyntheticData:
    """scikit-learn's ``make_swiss_roll`` without noise (D = 3, LID 2 everywhere), unscaled.

    Args:
        n: number of points N.
        seed: seeds a local ``RandomState`` handed to scikit-learn.

    Returns:
        :class:`SyntheticData` with ``x`` of shape ``[N, 3]`` and ``component_dims == (2,)``.
    """
    from sklearn.datasets import make_swiss_roll

    _check_n(n)
    random_state = np.random.RandomState(np.random.MT19937(np.random.SeedSequence(seed)))
    x, _ = make_swiss_roll(n_samples=n, noise=0.0, random_state=random_state)
    return _finish(x, np.zeros(n, dtype=np.int64), (2,), "swiss_roll")


# --------------------------------------------------------------------------------------------
# Diffeomorphisms of R^D used by the manifold mixtures
# --------------------------------------------------------------------------------------------


class _AmbientMap(Protocol):
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Map ``[M, D]`` float64 points to ``[M, D]`` float64 points."""
        ...


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _random_orthogonal(rng: np.random.Generator, dim: int) -> np.ndarray:
    """``[dim, dim]`` orthogonal matrix drawn from the Haar measure."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


class _SquigglyMap:
    """Five rounds of: sine bumps on a random coordinate subset, sign flips on another random
    subset, a random rotation.

    The bump ``x + (1 - kappa) sin(omega x) / omega`` has derivative
    ``1 + (1 - kappa) cos(omega x) >= kappa > 0``, so every round is a diffeomorphism of R^D.
    Each coordinate joins each subset independently with probability 1/2.
    """

    rounds = 5
    kappa = 1e-4

    def __init__(self, rng: np.random.Generator, ambient_dim: int, frequency: float) -> None:
        self.frequency = float(frequency)
        self.steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for _ in range(self.rounds):
            bump = rng.uniform(size=ambient_dim) < 0.5
            flip = rng.uniform(size=ambient_dim) < 0.5
            rotation = _random_orthogonal(rng, ambient_dim)
            self.steps.append((bump, flip, rotation))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        omega = self.frequency
        for bump, flip, rotation in self.steps:
            x = x.copy()
            x[:, bump] += (1.0 - self.kappa) * np.sin(omega * x[:, bump]) / omega
            x[:, flip] *= -1.0
            x = x @ rotation
        return x


class _RationalQuadraticSplineFlow:
    """Randomly initialised rational-quadratic neural spline flow built from ``zuko``.

    Five coupling layers (masked transforms with two passes; the halves swap roles from one layer
    to the next), 32 bins on [-10, 10] with identity tails, conditioner MLPs with hidden widths
    (64, 64) and SiLU activations. The splines are C^1 and the conditioners smooth, so the flow is
    a C^1 diffeomorphism (ReLU conditioners would only make it piecewise smooth, with creases
    where the local dimension test sees an extra direction). Every weight and bias is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) by a local
    ``torch.Generator``; the global torch random state is restored after construction.
    Evaluated in float64, in chunks, without gradients.
    """

    couplings = 5
    bins = 32
    tail_bound = 10.0
    hidden_features = (64, 64)

    def __init__(self, rng: np.random.Generator, ambient_dim: int) -> None:
        try:
            import torch
            from zuko.flows import MaskedAutoregressiveTransform
            from zuko.transforms import MonotonicRQSTransform
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the 'rq_nsf' diffeomorphism needs the 'zuko' package: pip install 'flipd[bench]'"
            ) from error
        from functools import partial

        self._torch = torch
        self.ambient_dim = ambient_dim
        ascending = torch.arange(ambient_dim)
        with torch.random.fork_rng(devices=[]):  # module construction draws from the global RNG
            layers = [
                MaskedAutoregressiveTransform(
                    features=ambient_dim,
                    passes=2,
                    order=ascending if i % 2 == 0 else ascending.flip(0),
                    univariate=partial(MonotonicRQSTransform, bound=self.tail_bound),
                    shapes=[(self.bins,), (self.bins,), (self.bins - 1,)],
                    hidden_features=self.hidden_features,
                    activation=torch.nn.SiLU,
                )
                for i in range(self.couplings)
            ]
        self.layers = torch.nn.ModuleList(layers).to(torch.float64).eval()

        generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        linear_modules = [m for m in self.layers.modules() if isinstance(m, torch.nn.Linear)]
        n_parameters = sum(1 for _ in self.layers.parameters())
        if n_parameters != 2 * len(linear_modules):
            raise RuntimeError("unexpected parameters in the zuko spline flow; cannot seed them")
        with torch.no_grad():
            for module in linear_modules:
                bound = 1.0 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        # Chunks of about 65k coordinates (x 95 spline parameters each) run fastest on CPU.
        rows = max(1, 2**16 // self.ambient_dim)
        out = np.empty_like(x, dtype=np.float64)
        with torch.no_grad():
            for start in range(0, x.shape[0], rows):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + rows], np.float64))
                for layer in self.layers:
                    chunk = layer()(chunk)
                out[start : start + rows] = chunk.numpy()
        return out


# --------------------------------------------------------------------------------------------
# Manifold mixtures
# --------------------------------------------------------------------------------------------


def _orthonormal_embedding(rng: np.random.Generator, ambient_dim: int, dim: int) -> np.ndarray:
    """``[D, d]`` matrix with orthonormal columns: U V^T from the SVD of a Gaussian D x d matrix."""
    if dim == 0:
        return np.zeros((ambient_dim, 0))
    u, _, vt = np.linalg.svd(rng.standard_normal((ambient_dim, dim)), full_matrices=False)
    return u @ vt


def _draw_latent(rng: np.random.Generator, latent: str, size: tuple[int, int]) -> np.ndarray:
    if latent == "uniform":
        return rng.uniform(-1.0, 1.0, size=size)
    if latent == "normal":
        return rng.standard_normal(size=size)
    return rng.laplace(0.0, 1.0, size=size)


class ManifoldMixture:
    """Equally weighted mixture of submanifolds of R^D with dimensions ``dims``.

    Component i is the image of a latent ``z`` in R^{d_i} under
    ``x = standardise(phi(A_i z) + mode_i)`` where ``A_i`` is a ``[D, d_i]`` matrix with
    orthonormal columns, ``phi`` is one diffeomorphism of R^D shared by all components,
    ``mode_i = 10 (e_i - 1/2) / sqrt(2)`` and ``standardise`` is a per-coordinate affine map. Every
    point of component i therefore has LID ``d_i``.

    The geometry (``A_i``, ``phi``, the standardisation) depends only on the constructor's
    arguments, so every call of :meth:`sample` draws from one fixed distribution. The standardising
    mean and std are estimated once from a reference draw of ``reference_size`` points; samples are
    then zero-mean, unit-std per coordinate up to sampling error.

    Args:
        ambient_dim: ambient dimension D.
        dims: dimension d_i of each component, ``0 <= d_i <= D``; at most D components.
        diffeomorphism: ``"affine"`` (``phi`` = identity, flat components), ``"squiggly"`` (random
            sine bumps, sign flips and rotations) or ``"rq_nsf"`` (randomly initialised
            rational-quadratic spline coupling flow; needs ``zuko``).
        latent: distribution of ``z``: ``"uniform"`` on [-1, 1]^d, standard ``"normal"`` or
            standard ``"laplace"`` (scale 1) per coordinate.
        frequency: angular frequency omega of the squiggly map's sine bumps (larger is harder);
            ignored by the other maps.
        geometry_seed: seeds the embeddings, the diffeomorphism and the reference draw.
        reference_size: number of points in the draw that fixes the standardisation.
    """

    def __init__(
        self,
        ambient_dim: int,
        dims: tuple[int, ...] | list[int],
        diffeomorphism: Diffeomorphism = "affine",
        latent: LatentDistribution = "uniform",
        frequency: float = 1.0,
        geometry_seed: int = 0,
        reference_size: int = 2048,
    ) -> None:
        dims = tuple(int(d) for d in dims)
        if ambient_dim < 1:
            raise ValueError(f"ambient_dim must be >= 1, got {ambient_dim}")
        if not dims:
            raise ValueError("dims must list at least one component dimension")
        if len(dims) > ambient_dim:
            raise ValueError(
                f"{len(dims)} components need ambient_dim >= {len(dims)} (one mode per axis), "
                f"got {ambient_dim}"
            )
        if any(d < 0 or d > ambient_dim for d in dims):
            raise ValueError(f"every dimension in dims must be in [0, {ambient_dim}], got {dims}")
        if diffeomorphism not in DIFFEOMORPHISMS:
            raise ValueError(
                f"unknown diffeomorphism {diffeomorphism!r}; valid: {', '.join(DIFFEOMORPHISMS)}"
            )
        if latent not in LATENT_DISTRIBUTIONS:
            raise ValueError(
                f"unknown latent {latent!r}; valid: {', '.join(LATENT_DISTRIBUTIONS)}"
            )
        if not (math.isfinite(frequency) and frequency > 0):
            raise ValueError(f"frequency must be a positive number, got {frequency}")

        self.ambient_dim = int(ambient_dim)
        self.dims = dims
        self.diffeomorphism = diffeomorphism
        self.latent = latent
        self.frequency = float(frequency)
        self.geometry_seed = int(geometry_seed)

        rng = np.random.default_rng([_GEOMETRY_STREAM, self.geometry_seed])
        self.embeddings = [_orthonormal_embedding(rng, ambient_dim, d) for d in dims]
        self.modes = 10.0 * (np.eye(len(dims), ambient_dim) - 0.5) / math.sqrt(2.0)
        self._phi: _AmbientMap
        if diffeomorphism == "affine":
            self._phi = _identity
        elif diffeomorphism == "squiggly":
            self._phi = _SquigglyMap(rng, ambient_dim, self.frequency)
        else:
            self._phi = _RationalQuadraticSplineFlow(rng, ambient_dim)

        reference_rng = np.random.default_rng([_REFERENCE_STREAM, self.geometry_seed])
        reference = self._draw_raw(reference_rng, reference_size)[0]
        self.mean = reference.mean(axis=0)
        std = reference.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)

    @property
    def name(self) -> str:
        """Spec string of this mixture for :func:`get_dataset`."""
        parts = [
            "mixture",
            self.diffeomorphism,
            f"D={self.ambient_dim}",
            "dims=" + ",".join(str(d) for d in self.dims),
        ]
        if self.latent != "uniform":
            parts.append(f"latent={self.latent}")
        if self.diffeomorphism == "squiggly":
            parts.append(f"omega={self.frequency:g}")
        if self.geometry_seed != 0:
            parts.append(f"geometry_seed={self.geometry_seed}")
        return ":".join(parts)

    def _unstandardised(self, z: np.ndarray, component: int) -> np.ndarray:
        flat = np.asarray(z, dtype=np.float64) @ self.embeddings[component].T
        return self._phi(flat) + self.modes[component]

    def embed(self, z: np.ndarray, component: int) -> np.ndarray:
        """Map latent coordinates of one component to (standardised) ambient points.

        Args:
            z: ``[M, d_i]`` latent coordinates (any real values; the map is defined on all of
                R^{d_i}).
            component: component index i.

        Returns:
            ``[M, D]`` float64 points on component i, in the same coordinates as :meth:`sample`.
        """
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dims[component]:
            raise ValueError(f"z must have shape [M, {self.dims[component]}], got {z.shape}")
        return (self._unstandardised(z, component) - self.mean) / self.std

    def as_gaussian_mixture(self) -> GaussianMixture:
        """The exact distribution of an affine mixture with normal latents, with closed-form scores.

        Component i is then the Gaussian ``N(m_i, B_i B_iᵀ)`` with ``B_i = S⁻¹ A_i`` and
        ``m_i = S⁻¹ (mode_i − mean)`` (``S = diag(std)``, the standardisation): a Gaussian on a
        d_i-dimensional affine subspace. Its smoothed score is known exactly at every noise level,
        so it serves as a perfect diffusion model of this data set.

        Returns:
            :class:`flipd.analytic.GaussianMixture` in the coordinates of :meth:`sample`.

        Raises:
            ValueError: for curved (non-affine) mixtures or non-normal latents, whose smoothed
                scores have no closed form.
        """
        if self.diffeomorphism != "affine" or self.latent != "normal":
            raise ValueError(
                f"Only affine mixtures with normal latents are Gaussian mixtures; {self.name!r} is "
                f"{self.diffeomorphism} with {self.latent} latents."
            )
        import torch

        from flipd.analytic import GaussianMixture

        means, bases, variances = [], [], []
        for embedding, mode in zip(self.embeddings, self.modes):
            scaled = embedding / self.std[:, None]  # B_i = S⁻¹ A_i, [D, d_i]
            basis, singular_values, _ = np.linalg.svd(scaled, full_matrices=False)
            means.append((mode - self.mean) / self.std)
            bases.append(torch.from_numpy(basis))
            variances.append(torch.from_numpy(singular_values**2))
        return GaussianMixture(torch.from_numpy(np.stack(means)), bases, variances)

    def _draw_raw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        component = _draw_components(rng, n, np.ones(len(self.dims)))
        flat = np.zeros((n, self.ambient_dim))
        for i, d in enumerate(self.dims):
            rows = component == i
            z = _draw_latent(rng, self.latent, (int(rows.sum()), d))
            flat[rows] = z @ self.embeddings[i].T
        x = self._phi(flat) + self.modes[component]
        return x, component

    def sample(self, n: int, seed: int = 0) -> SyntheticData:
        """Draw ``n`` points (float32, standardised) with their component labels and LID.

        Args:
            n: number of points N.
            seed: seed of the sampling stream (independent of ``geometry_seed``).

        Returns:
            :class:`SyntheticData` with ``x`` of shape ``[N, D]`` and the standardisation's
            ``mean`` / ``std`` (each ``[D]``).
        """
        _check_n(n)
        rng = np.random.default_rng([_SAMPLE_STREAM, int(seed)])
        x, component = self._draw_raw(rng, n)
        x = (x - self.mean) / self.std
        return _finish(x, component, self.dims, self.name, self.mean.copy(), self.std.copy())


@lru_cache(maxsize=8)
def _cached_mixture(
    ambient_dim: int,
    dims: tuple[int, ...],
    diffeomorphism: str,
    latent: str,
    frequency: float,
    geometry_seed: int,
) -> ManifoldMixture:
    return ManifoldMixture(
        ambient_dim, dims, diffeomorphism, latent, frequency, geometry_seed  # type: ignore[arg-type]
    )


def _mixture(
    ambient_dim: int,
    dims: tuple[int, ...] | list[int],
    diffeomorphism: str = "affine",
    latent: str = "uniform",
    frequency: float = 1.0,
    geometry_seed: int = 0,
) -> ManifoldMixture:
    """The cached mixture of these arguments, normalised so that every caller shares one entry."""
    return _cached_mixture(
        int(ambient_dim), tuple(int(d) for d in dims), diffeomorphism, latent, float(frequency), int(geometry_seed)
    )


def mixture_from_spec(spec: str) -> ManifoldMixture:
    """The :class:`ManifoldMixture` behind a ``mixture:...`` spec of :func:`get_dataset`.

    ``get_dataset(spec, n, seed).x`` are samples of ``mixture_from_spec(spec).sample(n, seed)``.
    """
    name, *options = (part.strip() for part in spec.strip().split(":"))
    if name != "mixture":
        raise ValueError(f"{spec!r} is not a mixture spec; usage: {_MIXTURE_USAGE}")
    return _mixture(**_parse_mixture(spec, options))


def manifold_mixture(
    n: int,
    *,
    ambient_dim: int,
    dims: tuple[int, ...] | list[int],
    diffeomorphism: Diffeomorphism = "affine",
    latent: LatentDistribution = "uniform",
    frequency: float = 1.0,
    seed: int = 0,
    geometry_seed: int = 0,
) -> SyntheticData:
    """Sample ``n`` points from a :class:`ManifoldMixture` (see there for the construction).

    ``seed`` only changes which points are drawn; ``geometry_seed`` changes the manifolds
    themselves. Two calls that differ only in ``seed`` or ``n`` therefore sample the same
    distribution (e.g. a training set and a held-out set). Built mixtures are cached.

    Returns:
        :class:`SyntheticData` with ``x`` of shape ``[N, D]`` (float32, standardised),
        ``component_dims == tuple(dims)``.
    """
    return _mixture(ambient_dim, dims, diffeomorphism, latent, frequency, geometry_seed).sample(n, seed)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_SIMPLE_DATASETS = {
    "lollipop": lollipop,
    "doughnut": string_within_doughnut,
    "swiss_roll": swiss_roll,
}
_ALIASES = {"string_within_doughnut": "doughnut"}
_MIXTURE_KEYS = ("D", "dims", "latent", "omega", "geometry_seed")
_MIXTURE_USAGE = (
    "mixture:<diffeomorphism>:D=<int>:dims=<int>[,<int>...]"
    "[:latent=uniform|normal|laplace][:omega=<float>, squiggly only][:geometry_seed=<int>]"
)


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset` (``"mixture"`` and the curved sets take options, see there)."""
    return [*_SIMPLE_DATASETS, "mixture", *CURVED_KINDS]


def _parse_int(key: str, text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{spec!r}: {key} must be an integer, got {text!r}") from None


def _parse_mixture(spec: str, options: list[str]) -> dict:
    if not options or "=" in options[0]:
        raise ValueError(
            f"{spec!r}: a mixture needs a diffeomorphism after 'mixture:' "
            f"({', '.join(DIFFEOMORPHISMS)}); usage: {_MIXTURE_USAGE}"
        )
    diffeomorphism = options[0]
    if diffeomorphism not in DIFFEOMORPHISMS:
        raise ValueError(
            f"{spec!r}: unknown diffeomorphism {diffeomorphism!r}; "
            f"valid: {', '.join(DIFFEOMORPHISMS)}"
        )
    values = _key_values(spec, options[1:], usage=_MIXTURE_USAGE)
    for key in values:
        if key not in _MIXTURE_KEYS:
            raise ValueError(
                f"{spec!r}: unknown key {key!r}; valid keys: {', '.join(_MIXTURE_KEYS)}"
            )
    missing = [key for key in ("D", "dims") if key not in values]
    if missing:
        raise ValueError(f"{spec!r}: missing {' and '.join(missing)}; usage: {_MIXTURE_USAGE}")

    kwargs: dict = {
        "diffeomorphism": diffeomorphism,
        "ambient_dim": _parse_int("D", values["D"], spec),
        "dims": tuple(_parse_int("dims", d.strip(), spec) for d in values["dims"].split(",")),
    }
    if "latent" in values:
        if values["latent"] not in LATENT_DISTRIBUTIONS:
            raise ValueError(
                f"{spec!r}: unknown latent {values['latent']!r}; "
                f"valid: {', '.join(LATENT_DISTRIBUTIONS)}"
            )
        kwargs["latent"] = values["latent"]
    if "omega" in values:
        if diffeomorphism != "squiggly":
            raise ValueError(f"{spec!r}: omega only applies to the squiggly diffeomorphism")
        try:
            kwargs["frequency"] = float(values["omega"])
        except ValueError:
            raise ValueError(f"{spec!r}: omega must be a number, got {values['omega']!r}") from None
    if "geometry_seed" in values:
        kwargs["geometry_seed"] = _parse_int("geometry_seed", values["geometry_seed"], spec)
    return kwargs


def _key_values(spec: str, options: list[str], usage: str | None = None) -> dict[str, str]:
    """``key=value`` options of a spec as a dict of texts; a malformed or repeated key raises
    (naming ``usage`` when given)."""
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = (part.strip() for part in option.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"{spec!r}: expected key=value, got {option!r}" + (f"; usage: {usage}" if usage else ""))
        if key in values:
            raise ValueError(f"{spec!r}: key {key!r} given twice")
        values[key] = value
    return values


def get_dataset(spec: str, n: int, seed: int = 0) -> SyntheticData:
    """Build a synthetic data set from a spec string.

    Specs:
        ``lollipop``, ``doughnut`` (alias ``string_within_doughnut``), ``swiss_roll``, and
        ``mixture:<diffeomorphism>:D=<int>:dims=<d1>,<d2>,...`` with optional
        ``:latent=uniform|normal|laplace`` (default uniform), ``:omega=<float>`` (squiggly only,
        default 1) and ``:geometry_seed=<int>`` (default 0), e.g.
        ``mixture:affine:D=10:dims=2,4,8``, ``mixture:squiggly:D=10:dims=5:omega=5``,
        ``mixture:rq_nsf:D=100:dims=10,25,50:latent=laplace``; and the curved manifolds of
        :mod:`flipd.datasets.curved`, each with optional ``key=value`` options (defaults in
        brackets) and ``:geometry_seed=<int>``: ``helix[:D=13][:turns=20][:tube=0.1]`` (LID 1),
        ``sphere[:D=10][:d=2]`` (LID d), ``torus[:D=12][:d=2][:ratio=0.2]`` (LID d).

    Args:
        spec: data set spec as above.
        n: number of points N.
        seed: sampling seed.

    Returns:
        :class:`SyntheticData`; its ``name`` is a spec that rebuilds the same data set.

    Raises:
        ValueError: on an unknown name, key or value, naming the problem and the valid choices.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string; valid names: {', '.join(list_datasets())}")
    name, *options = (part.strip() for part in spec.strip().split(":"))
    name = _ALIASES.get(name, name)
    if name in _SIMPLE_DATASETS:
        if options:
            raise ValueError(f"{spec!r}: data set {name!r} takes no options")
        return _SIMPLE_DATASETS[name](n, seed)
    if name == "mixture":
        return mixture_from_spec(spec).sample(n, seed)
    if name in CURVED_KINDS:
        _check_n(n)
        manifold = curved_from_options(name, _key_values(spec, options), spec)
        return _finish(manifold.sample(n, seed), np.zeros(n, dtype=np.int64), (manifold.dim,), manifold.name)
    raise ValueError(
        f"{spec!r}: unknown data set {name!r}; valid names: {', '.join(list_datasets())} "
        f"(aliases: {', '.join(_ALIASES)})"
    )
