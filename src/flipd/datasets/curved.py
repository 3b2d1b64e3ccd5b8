"""Strongly curved manifolds with a known LID: a wound helix, spheres and multiscale tori.

Each manifold is drawn in a small "shape space" R^k (k = 3 for the helix, d + 1 for the
d-sphere, 2d for the d-torus), mapped into R^D by a random ``[D, k]`` matrix with orthonormal
columns (fixed by ``geometry_seed``), and multiplied by one number so that the mean variance
of a coordinate is 1. The shapes are centred at the origin by symmetry, and their total
variance is known in closed form, so the scale is exact (no reference draw): in the data's
coordinates every length of the shape is multiplied by ``scale = sqrt(D / total variance)``.
One scalar keeps the shape (a per-coordinate standardisation would bend it by different amounts
in different directions); models of these data are trained with ``standardize="scalar"``.

The point of these data is the size of their curvature against the smoothing FLIPD reads at.
At the default t0 = 0.05 of the reference VP schedule the noise std is sigma ≈ 0.172, and the
noise normal to a d-dimensional manifold has norm about ``sigma * sqrt(D - d)``; where that is
comparable to the radius of curvature (or to the distance between neighbouring sheets) the
smoothed density no longer looks d-dimensional. :meth:`CurvedManifold.length_scales` gives the
radii and gaps in data units; for the defaults (see each kind below) it gives:

=========================  ===  ===========================  ===============  ===============
spec                        LID  smallest radius of curvature  gap between       sigma·sqrt(D-d)
                                                               sheets            at t0 = 0.05
=========================  ===  ===========================  ===============  ===============
``helix`` (D=13)            1    ≈ 0.36 (tube radius)          ≈ 1.0 (windings)  0.59
``sphere`` (d=2, D=10)      2    ≈ 3.2 (= sqrt(D))             -                 0.49
``torus`` (d=2, D=12)       2    ≈ 0.68 (small circle)         -                 0.54
=========================  ===  ===========================  ===============  ===============

Spheres are the gently curved control: their radius sqrt(D) is many noise stds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CURVED_KINDS", "CurvedManifold", "curved_from_options"]

#: The curved shapes, with the options each takes and their defaults.
CURVED_KINDS: dict[str, dict[str, float]] = {
    "helix": {"D": 13, "turns": 20, "tube": 0.1},
    "sphere": {"D": 10, "d": 2},
    "torus": {"D": 12, "d": 2, "ratio": 0.2},
}
_INTEGER_OPTIONS = ("D", "d", "turns", "geometry_seed")

# Random streams of one seed kept apart (the geometry vs. the samples), as in the mixtures.
_GEOMETRY_STREAM = 0xC0
_SAMPLE_STREAM = 0xC1


def _orthonormal_columns(rng: np.random.Generator, ambient_dim: int, dim: int) -> np.ndarray:
    """``[D, k]`` float64 with orthonormal columns (Q of a Gaussian matrix's QR, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((ambient_dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


@dataclass(frozen=True)
class CurvedManifold:
    """One curved manifold of known dimension, embedded in R^D (see the module notes).

    Kinds (shape space, LID, total variance before scaling):

    * ``"helix"``: a closed curve wound ``turns`` times around a unit circle at distance
      ``tube``: ``((1 + tube·cos(turns·a))·cos a, (1 + tube·cos(turns·a))·sin a,
      tube·sin(turns·a))``, a uniform on [0, 2 pi) (uniform in the parameter, not in arc
      length); R^3, LID 1, total variance 1 + tube². Its radius of curvature is at most about
      ``tube`` and neighbouring windings are ``2 pi (1 - tube) / turns`` apart; both shrink, and
      the curve gets harder, as ``turns`` grows or ``tube`` shrinks. Needs ``turns >= 2``.
    * ``"sphere"``: the unit d-sphere, uniform; R^(d+1), LID d, total variance 1.
    * ``"torus"``: the product of d circles of radii ``1, ratio, ratio², ...``, uniform in
      every angle (a flat torus bent in R^2d; its smallest circle is the curvature scale);
      R^(2d), LID d, total variance ``sum of ratio^(2k)``.

    Attributes:
        kind: "helix", "sphere" or "torus".
        ambient_dim: D.
        options: the shape's options (``turns``/``tube``, ``d``, ``d``/``ratio``).
        geometry_seed: seeds the embedding.
    """

    kind: str
    ambient_dim: int
    options: dict[str, float] = field(default_factory=dict)
    geometry_seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CURVED_KINDS:
            raise ValueError(f"unknown curved manifold {self.kind!r}; valid: {', '.join(CURVED_KINDS)}")
        options = {k: v for k, v in CURVED_KINDS[self.kind].items() if k != "D"}
        unknown = sorted(set(self.options) - set(options))
        if unknown:
            raise ValueError(f"{self.kind}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(options)}")
        options.update(self.options)
        object.__setattr__(self, "options", options)
        if self.kind == "helix":
            if int(options["turns"]) != options["turns"] or options["turns"] < 2:
                raise ValueError(f"helix: turns must be an integer >= 2 (a closed, centred curve); got {options['turns']}")
            if not 0 < options["tube"] < 1:
                raise ValueError(f"helix: tube must be in (0, 1) (below the unit circle's radius); got {options['tube']}")
        else:
            if int(options["d"]) != options["d"] or options["d"] < 1:
                raise ValueError(f"{self.kind}: d must be a positive integer; got {options['d']}")
            if self.kind == "torus" and not 0 < options["ratio"] <= 1:
                raise ValueError(f"torus: ratio must be in (0, 1]; got {options['ratio']}")
        if int(self.ambient_dim) != self.ambient_dim or self.ambient_dim < self.shape_dim:
            raise ValueError(
                f"{self.kind}: D must be an integer >= {self.shape_dim} (the shape lives in R^{self.shape_dim}); "
                f"got {self.ambient_dim}"
            )

    @property
    def dim(self) -> int:
        """The manifold's dimension (its LID at every point)."""
        return 1 if self.kind == "helix" else int(self.options["d"])

    @property
    def shape_dim(self) -> int:
        """k, the dimension of the shape space the manifold is drawn in before embedding."""
        return {"helix": 3, "sphere": self.dim + 1, "torus": 2 * self.dim}[self.kind]

    @property
    def radii(self) -> np.ndarray:
        """The torus's circle radii ``ratio**k``, [d] (shape units; torus only)."""
        return float(self.options["ratio"]) ** np.arange(self.dim, dtype=np.float64)

    @property
    def total_variance(self) -> float:
        """E‖p‖² of the shape's points p (the shapes are centred), in shape units."""
        if self.kind == "helix":
            return 1.0 + float(self.options["tube"]) ** 2
        if self.kind == "sphere":
            return 1.0
        return float(np.sum(self.radii**2))

    @property
    def scale(self) -> float:
        """Lengths in data units per length in shape units: ``sqrt(D / total_variance)``."""
        return math.sqrt(self.ambient_dim / self.total_variance)

    @property
    def embedding(self) -> np.ndarray:
        """``[D, k]`` float64 with orthonormal columns, fixed by ``geometry_seed``."""
        rng = np.random.default_rng([_GEOMETRY_STREAM, int(self.geometry_seed)])
        return _orthonormal_columns(rng, int(self.ambient_dim), self.shape_dim)

    @property
    def name(self) -> str:
        """The spec that rebuilds this manifold, e.g. ``"helix:D=13:turns=20:tube=0.1"``."""
        parts = [self.kind, f"D={int(self.ambient_dim)}"]
        parts += [f"{k}={int(v) if k in _INTEGER_OPTIONS else f'{v:g}'}" for k, v in self.options.items()]
        if self.geometry_seed:
            parts.append(f"geometry_seed={int(self.geometry_seed)}")
        return ":".join(parts)

    def length_scales(self) -> dict[str, float]:
        """Curvature scales in data units: ``radius`` (the smallest radius of curvature, up to
        the helix's small correction), ``gap`` (distance between neighbouring windings of the
        helix; NaN otherwise) and, for comparison, ``normal_noise_at_default`` = sigma·sqrt(D − d)
        with sigma the noise std of the default t0 = 0.05 of the reference VP schedule."""
        from ..noise import DEFAULT_REFERENCE_T0, REFERENCE_SCHEDULE

        if self.kind == "helix":
            tube, turns = float(self.options["tube"]), float(self.options["turns"])
            radius, gap = tube, 2 * math.pi * (1 - tube) / turns
        elif self.kind == "sphere":
            radius, gap = 1.0, math.nan
        else:
            radius, gap = float(self.radii[-1]), math.nan
        sigma = float(REFERENCE_SCHEDULE.sigma(DEFAULT_REFERENCE_T0))
        return {
            "radius": radius * self.scale,
            "gap": gap * self.scale,
            "normal_noise_at_default": sigma * math.sqrt(self.ambient_dim - self.dim),
        }

    def shape_points(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` points of the shape in shape space, ``[n, k]`` float64 (sample stream ``seed``)."""
        rng = np.random.default_rng([_SAMPLE_STREAM, int(seed)])
        if self.kind == "helix":
            tube, turns = float(self.options["tube"]), float(self.options["turns"])
            around = rng.uniform(0.0, 2 * math.pi, size=n)
            ring = 1.0 + tube * np.cos(turns * around)
            return np.stack([ring * np.cos(around), ring * np.sin(around), tube * np.sin(turns * around)], axis=1)
        if self.kind == "sphere":
            gaussian = rng.standard_normal((n, self.dim + 1))
            norms = np.linalg.norm(gaussian, axis=1, keepdims=True)
            return gaussian / np.where(norms > 0, norms, 1.0)
        angles = rng.uniform(0.0, 2 * math.pi, size=(n, self.dim))
        radii = self.radii
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=2).reshape(n, 2 * self.dim)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` points on the manifold in R^D, ``[n, D]`` float64: shape points, embedded and scaled."""
        return self.scale * self.shape_points(n, seed) @ self.embedding.T

    def to_shape_space(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Data points ``[n, D]`` back in shape space ``[n, k]``, and each point's distance
        from the shape's k-dimensional span ``[n]`` (data units; 0 for points of :meth:`sample`)."""
        x = np.asarray(x, dtype=np.float64)
        embedding = self.embedding
        inside = x @ embedding
        residual = np.linalg.norm(x - inside @ embedding.T, axis=1)
        return inside / self.scale, residual


def curved_from_options(kind: str, values: dict[str, str], spec: str) -> CurvedManifold:
    """A :class:`CurvedManifold` from the text options of a spec (``{"D": "13", "turns": "20"}``).

    Raises:
        ValueError: an unknown key or a value that is not a number, naming the valid keys.
    """
    valid = [*CURVED_KINDS[kind], "geometry_seed"]
    numbers: dict[str, float] = {}
    for key, text in values.items():
        if key not in valid:
            raise ValueError(f"{spec!r}: unknown key {key!r} for {kind}; valid keys: {', '.join(valid)}")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{spec!r}: {key} must be a number, got {text!r}") from None
        if key in _INTEGER_OPTIONS and number != int(number):
            raise ValueError(f"{spec!r}: {key} must be an integer, got {text!r}")
        numbers[key] = number
    ambient_dim = int(numbers.pop("D", CURVED_KINDS[kind]["D"]))
    geometry_seed = int(numbers.pop("geometry_seed", 0))
    return CurvedManifold(kind, ambient_dim, numbers, geometry_seed)
