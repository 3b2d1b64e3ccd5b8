"""Gaussian mixtures on linear subspaces: exact scores and exact FLIPD, for checks and demos.

Component k is N(mean_k, U_k diag(variances_k) U_kᵀ + off_variance·(I − U_k U_kᵀ)) with U_k a
D×d_k orthonormal basis: a Gaussian on a d_k-dimensional affine subspace (off_variance = 0) or
a thin Gaussian around it. Smoothing by a schedule at time t gives again a Gaussian mixture,
with means psi·mean_k and covariances C_k = psi²·Σ_k + sigma²·I, so the score and its Jacobian
are known in closed form:

    s(y) = Σ_k w_k(y)·s_k(y),   s_k(y) = −C_k⁻¹(y − psi·mean_k),
    tr∇s = Σ_k w_k·(−tr C_k⁻¹ + ‖s_k‖²) − ‖s‖²,

hence FLIPD(x) = D + sigma²·Σ_k w_k·(‖s_k‖² − tr C_k⁻¹) exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .parameterization import score_coefficients
from .schedules import Schedule

__all__ = ["GaussianMixture", "SmoothedEmpirical"]


class GaussianMixture:
    """A mixture of Gaussians on linear subspaces of R^D with closed-form diffusion scores.

    Args:
        means: component means, [K, D].
        bases: K orthonormal bases, each [D, d_k] (columns span the subspace).
        variances: K tensors of on-subspace variances, each [d_k].
        off_variance: variance orthogonal to each subspace (0 for data exactly on it).
        weights: mixture weights [K] (default equal).

    All computations run in float64.
    """

    def __init__(
        self,
        means: Tensor,
        bases: Sequence[Tensor],
        variances: Sequence[Tensor],
        *,
        off_variance: float = 0.0,
        weights: Tensor | None = None,
    ) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.bases = [torch.as_tensor(u, dtype=torch.float64) for u in bases]
        self.variances = [torch.as_tensor(v, dtype=torch.float64) for v in variances]
        k, dim = self.means.shape
        if len(self.bases) != k or len(self.variances) != k:
            raise ValueError("means, bases and variances must describe the same number of components.")
        self.off_variance = float(off_variance)
        self.weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.dim = dim

    @classmethod
    def random(
        cls,
        dims: Sequence[int],
        ambient_dim: int,
        *,
        separation: float = 10.0,
        variance: float = 1.0,
        off_variance: float = 0.0,
        seed: int = 0,
    ) -> "GaussianMixture":
        """Components of the given dimensions on random subspaces, means ``separation`` apart."""
        generator = torch.Generator().manual_seed(seed)
        if max(dims) > ambient_dim:
            raise ValueError(f"Component dimensions {list(dims)} exceed the ambient dimension {ambient_dim}.")
        means = torch.randn(len(dims), ambient_dim, generator=generator, dtype=torch.float64)
        means = separation * means / means.norm(dim=1, keepdim=True) / math.sqrt(2)
        bases = [torch.linalg.qr(torch.randn(ambient_dim, d, generator=generator, dtype=torch.float64))[0] for d in dims]
        variances = [torch.full((d,), variance, dtype=torch.float64) for d in dims]
        return cls(means, bases, variances, off_variance=off_variance)

    @property
    def component_dims(self) -> list[int]:
        """Dimension d_k of each component's subspace."""
        return [u.shape[1] for u in self.bases]

    def sample(self, n: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Draw n points: ``(x [n, D] float64, component [n] long)``."""
        generator = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for k, (basis, variance) in enumerate(zip(self.bases, self.variances)):
            rows = component == k
            m = int(rows.sum())
            on = torch.randn(m, basis.shape[1], generator=generator, dtype=torch.float64) * variance.sqrt()
            off = torch.randn(m, self.dim, generator=generator, dtype=torch.float64) * math.sqrt(self.off_variance)
            off = off - off @ basis @ basis.T
            x[rows] = self.means[k] + on @ basis.T + off
        return x, component

    def _component_terms(self, y: Tensor, psi: Tensor, sigma: Tensor):
        """Per-component scores [K, N, D], log-densities [K, N] and tr C_k⁻¹ [K, N]."""
        psi, sigma = psi[:, None], sigma[:, None]
        scores, log_densities, traces = [], [], []
        for mean, basis, variance in zip(self.means, self.bases, self.variances):
            on_eig = psi**2 * variance + sigma**2  # [N, d]
            off_eig = psi**2 * self.off_variance + sigma**2  # [N, 1]
            centred = y - psi * mean
            coords = centred @ basis  # [N, d]
            residual = centred - coords @ basis.T
            scores.append(-(coords / on_eig) @ basis.T - residual / off_eig)
            off_dims = self.dim - basis.shape[1]
            mahalanobis = (coords**2 / on_eig).sum(1) + (residual**2).sum(1) / off_eig[:, 0]
            log_det = on_eig.log().sum(1) + off_dims * off_eig[:, 0].log()
            log_densities.append(-0.5 * (mahalanobis + log_det + self.dim * math.log(2 * math.pi)))
            traces.append((1 / on_eig).sum(1) + off_dims / off_eig[:, 0])
        return torch.stack(scores), torch.stack(log_densities), torch.stack(traces)

    def _responsibilities(self, log_densities: Tensor) -> Tensor:
        return torch.softmax(log_densities + self.weights.log()[:, None], dim=0)

    def score(self, y: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
        """Score of the smoothed mixture at noised points y [N, D] and times t [N]."""
        y64 = y.to(torch.float64)
        scores, log_densities, _ = self._component_terms(y64, schedule.psi(t), schedule.sigma(t))
        weights = self._responsibilities(log_densities)
        return (weights[..., None] * scores).sum(0).to(y.dtype)

    def exact_flipd(self, x: Tensor, t: float | Tensor, schedule: Schedule) -> Tensor:
        """Exact FLIPD of the clean points x [N, D] at time t (scalar or [N])."""
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        psi, sigma = schedule.psi(t), schedule.sigma(t)
        y = psi[:, None] * x
        scores, log_densities, traces = self._component_terms(y, psi, sigma)
        weights = self._responsibilities(log_densities)
        return self.dim + sigma**2 * (weights * (scores.pow(2).sum(-1) - traces)).sum(0)

    def as_model(self, schedule: Schedule, prediction: str = "score"):
        """A ``model(y, t)`` that outputs what a perfect network of type ``prediction`` would."""
        return _perfect_network(self.score, schedule, prediction)


def _perfect_network(score_fn, schedule: Schedule, prediction: str):
    """``model(y, t)`` returning the network output of type ``prediction`` for an exact score."""

    def model(y: Tensor, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        a, b = score_coefficients(prediction, schedule, t64)
        shape = (-1,) + (1,) * (y.ndim - 1)
        score = score_fn(y, t64, schedule).to(torch.float64)
        output = (score - b.reshape(shape) * y.to(torch.float64)) / a.reshape(shape)
        return output.to(y.dtype)

    return model


class SmoothedEmpirical:
    """A measure on a finite set of atoms, smoothed by a diffusion schedule.

    At time t the density is p_t(y) = Σ_m c_m·N(y; psi·a_m, sigma²·I) (atom weights c_m, summing
    to 1), a Gaussian mixture with one isotropic component per atom, so with posterior weights
    w_m(y) ∝ c_m·exp(−‖y − psi·a_m‖²/2sigma²):

        s(y) = −Σ_m w_m·(y − psi·a_m)/sigma²,     FLIPD(x) = Σ_m w_m·‖y − psi·a_m‖²/sigma²,

    the second because tr∇s + ‖s‖² = Δp/p = Σ_m w_m·(‖y − psi·a_m‖²/sigma⁴ − D/sigma²).

    With many atoms drawn from a data distribution (equal weights), or a quadrature rule over
    its parameters (atoms at the nodes, weighted), this is that distribution's own smoothed
    score up to sampling or quadrature error: FLIPD with a perfect model. It separates the
    estimator's bias at a noise level from the error of a trained network. Sums over atoms are
    streamed, so millions of atoms fit in memory. Computations run in float64.

    Args:
        atoms: [M, D] points.
        weights: [M] non-negative atom weights (normalised here); default equal.
        atom_chunk: atoms per block of the streamed sums.
    """

    def __init__(self, atoms, weights=None, *, atom_chunk: int = 16384) -> None:
        self.atoms = torch.as_tensor(atoms, dtype=torch.float64)
        if self.atoms.ndim != 2 or self.atoms.shape[0] == 0:
            raise ValueError(f"atoms must have shape [M, D] with M >= 1; got {tuple(self.atoms.shape)}.")
        if weights is None:
            self._log_weights = torch.zeros(self.atoms.shape[0], dtype=torch.float64)
        else:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != self.atoms.shape[:1] or (weights < 0).any() or not weights.sum() > 0:
                raise ValueError(
                    f"weights must be [M] = [{self.atoms.shape[0]}] non-negative numbers with a positive sum; "
                    f"got shape {tuple(weights.shape)}."
                )
            self._log_weights = weights.log()
        self.dim = self.atoms.shape[1]
        self.atom_chunk = int(atom_chunk)
        self._atom_norms = self.atoms.pow(2).sum(1)

    def _moments(self, y: Tensor, psi: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior means of r_m = y − psi·a_m [N, D] and of ‖r_m‖² [N], for y [N, D]."""
        psi, sigma = psi[:, None], sigma[:, None]
        y_norms = y.pow(2).sum(1, keepdim=True)
        running_max = torch.full((y.shape[0], 1), -math.inf, dtype=torch.float64)
        total = torch.zeros(y.shape[0], 1, dtype=torch.float64)
        mean_atom = torch.zeros_like(y)
        mean_sq = torch.zeros(y.shape[0], 1, dtype=torch.float64)
        for start in range(0, self.atoms.shape[0], self.atom_chunk):
            atoms = self.atoms[start:start + self.atom_chunk]
            squared = (y_norms + psi**2 * self._atom_norms[start:start + self.atom_chunk] - 2 * psi * (y @ atoms.T)).clamp_min(0)
            logits = self._log_weights[start:start + self.atom_chunk] - squared / (2 * sigma**2)
            new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            total = total * rescale + weights.sum(1, keepdim=True)
            mean_atom = mean_atom * rescale + weights @ atoms
            mean_sq = mean_sq * rescale + (weights * squared).sum(1, keepdim=True)
            running_max = new_max
        return y - psi * mean_atom / total, (mean_sq / total)[:, 0]

    def score(self, y: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
        """Score of the smoothed measure at noised points y [N, D] and times t [N]."""
        t64 = torch.as_tensor(t, dtype=torch.float64).expand(y.shape[0])
        sigma = schedule.sigma(t64)
        mean_residual, _ = self._moments(y.to(torch.float64), schedule.psi(t64), sigma)
        return (-mean_residual / sigma[:, None] ** 2).to(y.dtype)

    def exact_flipd(self, x: Tensor, t: float | Tensor, schedule: Schedule, *, chunk: int = 256) -> Tensor:
        """Exact FLIPD of clean points x [N, D] at time t (scalar or [N]), ``chunk`` points at a time."""
        x = torch.as_tensor(x, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        psi, sigma = schedule.psi(t), schedule.sigma(t)
        out = torch.empty(x.shape[0], dtype=torch.float64)
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            y = psi[rows, None] * x[rows]
            _, mean_sq = self._moments(y, psi[rows], sigma[rows])
            out[rows] = mean_sq / sigma[rows] ** 2
        return out

    def as_model(self, schedule: Schedule, prediction: str = "score"):
        """A ``model(y, t)`` that outputs what a perfect network of type ``prediction`` would."""
        return _perfect_network(self.score, schedule, prediction)
