"""What a diffusion network outputs, and how that output gives the score.

Every common parameterisation is affine in the network output ``f(y, t)`` and the input ``y``:

    score(y, t) = a(t)·f(y, t) + b(t)·y

with scalars ``a``, ``b`` that depend only on the schedule at ``t``. FLIPD then needs only
``tr ∇_y f`` and ``f`` itself:

    FLIPD = D + sigma²·[a·tr∇f + b·D + ‖a·f + b·y‖²].

Conventions, with y = psi·x0 + sigma·eps:

============== ============================================ ==========================
prediction     network output f                             a, b
============== ============================================ ==========================
score          ∇ log p_t(y)                                 1, 0
epsilon        eps                                          -1/sigma, 0
sample         x0 (EDM's denoiser D(y; sigma) with VE)      psi/sigma², -1/sigma²
v_prediction   v = psi·eps - sigma·x0                       -psi/(sigma·r), -1/r, r = psi²+sigma²
flow_velocity  u = psi'·x0 + sigma'·eps (d/dt of x_t;          -1/(sigma·g), psi'/(psi·sigma·g),
               rectified flow: u = eps - x0)                g = sigma' - psi'·sigma/psi
============== ============================================ ==========================
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .schedules import Schedule

Prediction = Literal["score", "epsilon", "sample", "v_prediction", "flow_velocity"]
PREDICTIONS: tuple[str, ...] = ("score", "epsilon", "sample", "v_prediction", "flow_velocity")

__all__ = ["Prediction", "PREDICTIONS", "check_prediction", "score_coefficients"]


def check_prediction(prediction: str) -> str:
    """Return ``prediction`` if it is known, else raise a ``ValueError`` listing the choices."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"Unknown prediction {prediction!r}. Use one of {', '.join(PREDICTIONS)} "
            "(diffusers' prediction_type 'epsilon', 'sample' and 'v_prediction' map directly)."
        )
    return prediction


def score_coefficients(
    prediction: str, schedule: Schedule, t: Tensor, *, psi: Tensor | None = None, sigma: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Coefficients ``(a, b)`` with ``score(y, t) = a·f(y, t) + b·y`` for network output ``f``.

    Args:
        prediction: one of :data:`PREDICTIONS`.
        schedule: the noise schedule the network was trained with.
        t: times, float tensor of any shape, in the schedule's units.
        psi, sigma: ``schedule.psi(t)`` and ``schedule.sigma(t)`` if the caller has them.

    Returns:
        Two float64 tensors shaped like ``t``.
    """
    check_prediction(prediction)
    psi = schedule.psi(t) if psi is None else psi
    sigma = schedule.sigma(t) if sigma is None else sigma
    if prediction == "score":
        return torch.ones_like(psi), torch.zeros_like(psi)
    if prediction == "epsilon":
        return -1 / sigma, torch.zeros_like(psi)
    if prediction == "sample":
        return psi / sigma**2, -1 / sigma**2
    if prediction == "v_prediction":
        # eps = (psi·v + sigma·y) / (psi² + sigma²)
        norm = psi**2 + sigma**2
        return -psi / (sigma * norm), -1 / norm
    # flow_velocity: u = psi'·x0 + sigma'·eps and x0 = (y - sigma·eps)/psi give
    # eps = (u - (psi'/psi)·y) / g with g = sigma' - psi'·sigma/psi (for rectified flow g = 1/psi).
    dpsi, dsigma = schedule.derivatives(t)
    g = dsigma - dpsi * sigma / psi
    return -1 / (sigma * g), dpsi / (psi * sigma * g)
