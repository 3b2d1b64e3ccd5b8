"""Drawing samples from a diffusion model through a diffusers scheduler (DDIM or DDPM steps).

A trained model should be looked at before its LID is trusted: samples that do not resemble
the training data mean the score, and hence FLIPD, is not yet right.

The samplers run in the coordinates of the variance-preserving discrete process that diffusers
schedulers implement, ``x_k = sqrt(ᾱ_k)·z + sqrt(1 − ᾱ_k)·ε`` over 1000 training timesteps,
and reach any flipd model through the same smoothing, delta = log(sigma/psi):

* the scheduler's levels are those of the reference VP schedule at ``u_k = (k + 1)/1000`` (the
  times flipd trains on), ``ᾱ_k = 1/(1 + e^{2·delta_k})``, with delta clamped into the model
  schedule's range (VE with sigma_max = 80 ends at delta = 4.38 where the reference reaches
  5.02; its first steps then repeat its largest level, which leaves the state unchanged);
* at timestep k the model is called at its own time ``t_k`` with that delta, on
  ``y = sqrt(psi² + sigma²)(t_k)·x_k`` (which is ``psi·z + sigma·ε``);
* its output f, of any prediction type, gives the score ``a·f + b·y``
  (:func:`flipd.parameterization.score_coefficients`) and hence the noise estimate
  ``ε̂ = −sigma·score`` that the scheduler is given (``prediction_type="epsilon"``).

So every schedule (VP, Cosine, Discrete, VE, RectifiedFlow) and every prediction ("score",
"epsilon", "sample", "v_prediction", "flow_velocity") samples through DDIM and DDPM. The last
step returns the clean point z in the model's coordinates; :meth:`DiffusionModel.sample`
maps it back to the user's (undoing the standardisation). diffusers is imported only here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..noise import REFERENCE_SCHEDULE, delta_range
from ..parameterization import score_coefficients
from ..schedules import Schedule
from .base import Model

__all__ = ["SAMPLERS", "TRAIN_TIMESTEPS", "diffusers_scheduler", "sample_model"]

#: Sampler names: deterministic DDIM (``eta=0``; ``eta>0`` adds noise) and ancestral DDPM.
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")
#: Training timesteps of the discrete process the schedulers step through.
TRAIN_TIMESTEPS = 1000


def _level_deltas(schedule: Schedule) -> Tensor:
    """delta_k [1000] (float64) of the scheduler's levels: the reference VP's at (k + 1)/1000,
    clamped into ``schedule``'s range."""
    reference_t = torch.arange(1, TRAIN_TIMESTEPS + 1, dtype=torch.float64) / TRAIN_TIMESTEPS
    low, high = delta_range(schedule)
    return REFERENCE_SCHEDULE.delta(reference_t).clamp(low, high)


def diffusers_scheduler(schedule: Schedule, sampler: str = "ddim") -> Any:
    """A diffusers ``DDIMScheduler`` or ``DDPMScheduler`` whose 1000 levels are the smoothing
    levels of ``schedule`` (see the module notes), predicting epsilon, without clipping and with
    "trailing" timestep spacing (the first step starts from the noisiest level).

    Raises:
        ValueError: an unknown sampler.
        ModuleNotFoundError: diffusers is not installed (the ``images`` extra).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
    from diffusers import DDIMScheduler, DDPMScheduler

    alphas_cumprod = torch.sigmoid(-2 * _level_deltas(schedule))
    betas = 1 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    common = dict(num_train_timesteps=TRAIN_TIMESTEPS, trained_betas=betas.clamp(0, 1).tolist(), clip_sample=False,
                  prediction_type="epsilon", timestep_spacing="trailing")
    if sampler == "ddim":
        return DDIMScheduler(set_alpha_to_one=True, **common)
    return DDPMScheduler(variance_type="fixed_small", **common)


def _check_request(n: int, steps: int, sampler: str, eta: float, batch_size: int | None) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of samples; got {n!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be an integer from 1 to {TRAIN_TIMESTEPS}; got {steps!r}.")
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
    if not eta >= 0 or (eta and sampler != "ddim"):
        raise ValueError(f"eta must be >= 0 and applies to the ddim sampler only; got eta={eta!r} with {sampler}.")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}.")


@torch.no_grad()
def sample_model(
    model: Model,
    n: int,
    shape: Sequence[int],
    *,
    steps: int = 50,
    sampler: str = "ddim",
    eta: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Draw ``n`` samples from ``model`` (any :class:`flipd.Model`) in the model's coordinates.

    Args:
        model: the model; its ``schedule`` and ``prediction`` say how to read its output.
        n: number of samples.
        shape: shape of one point, e.g. (D,) or (C, H, W).
        steps: denoising steps (1 to 1000; 50 is usual for DDIM, DDPM wants more).
        sampler: "ddim" or "ddpm" (:data:`SAMPLERS`).
        eta: DDIM's noise (0: deterministic given the starting noise; 1: like DDPM).
        seed: seed of the starting noise and of the noise added by the steps. The samples
            depend only on ``seed``, ``batch_size`` and the settings; no global random state is
            used or changed.
        batch_size: samples denoised together (default: all ``n``).
        dtype, device: of the samples and the model calls.
        progress: called with the number of samples of a batch after each of its steps
            (``n·steps`` in all).

    Returns:
        Samples [n, *shape] (``dtype``, on ``device``) in the model's coordinates (for a flipd
        checkpoint, standardised units: :meth:`DiffusionModel.sample` maps them back).
    """
    _check_request(n, steps, sampler, eta, batch_size)
    shape = tuple(int(s) for s in shape)
    schedule, prediction = model.schedule, model.prediction
    scheduler = diffusers_scheduler(schedule, sampler)
    scheduler.set_timesteps(steps)
    alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
    low, high = delta_range(schedule)
    times = schedule.t_from_delta((0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)).clamp(low, high))
    psi, sigma = schedule.psi(times), schedule.sigma(times)
    a, b = score_coefficients(prediction, schedule, times, psi=psi, sigma=sigma)
    gain = torch.sqrt(psi**2 + sigma**2)
    generator = torch.Generator().manual_seed(int(seed))
    batches = []
    per_batch = batch_size or n
    for start in range(0, n, per_batch):
        count = min(per_batch, n - start)
        x = torch.randn((count, *shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        for timestep in scheduler.timesteps:
            k = int(timestep)
            y = x * float(gain[k])
            t = torch.full((count,), float(times[k]), dtype=dtype, device=device)
            output = model(y, t)
            noise = -float(sigma[k]) * (float(a[k]) * output + float(b[k]) * y)
            options = {"eta": eta} if sampler == "ddim" else {}
            x = scheduler.step(noise, k, x, generator=generator, **options).prev_sample
            if progress is not None:
                progress(count)
        batches.append(x)
    return torch.cat(batches)
