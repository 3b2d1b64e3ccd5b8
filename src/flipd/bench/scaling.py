"""How the scaling before training moves FLIPD, with a perfect model (no network error).

A model trained under ``standardize=mode`` sees the data as ``z = (x − shift) / scale``
(:func:`flipd.models.checkpoint.fit_standardization`), and the noise level t0 is measured in
those coordinates. This script smooths each data set *in the coordinates of each scaling*
exactly (:class:`flipd.analytic.SmoothedEmpirical`, whose FLIPD has a closed form) and prints the
mean FLIPD per true component at each t0: what a perfect model trained under that scaling would
read. Data sets:

- ``doughnut``: the demo's torus (LID 2, tube radius 1) and its core circle (LID 1), atoms at the
  nodes of the quadrature rule of ``benchmarks/oracle_flipd.py`` (spacing 0.05 in data units);
- ``jittered-circle``: a circle of radius 1 in the xy-plane with Gaussian jitter of std 0.001 in
  z (LID 1), 20,000 drawn atoms.

Usage:
    python -m flipd.bench scaling                     # both data sets at t0 = 0.05 (about 2 minutes)
    python -m flipd.bench scaling --datasets doughnut --t0 0.02 0.05 --n-eval 200
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from .oracle import quadrature

from flipd.analytic import SmoothedEmpirical
from flipd.datasets import get_dataset
from flipd.models.checkpoint import fit_standardization
from flipd.schedules import VP

SCALINGS = ("none", "scalar", "per_coordinate")


def jittered_circle(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points [n, 3] of the radius-1 circle with 0.001 jitter in z, and their true LID [n]."""
    generator = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    z = 0.001 * torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([torch.cos(angle), torch.sin(angle), z], dim=1), torch.ones(n)


def data_set(name: str, n_eval: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(atoms [M, D], atom weights [M] or None, evaluation points [N, D], true LID [N])``."""
    if name == "doughnut":
        atoms, weights = quadrature("doughnut", 0.05)
        data = get_dataset("doughnut", n_eval, seed=1)
        return torch.from_numpy(atoms), torch.from_numpy(weights), torch.from_numpy(data.x), torch.from_numpy(data.lid)
    if name == "jittered-circle":
        atoms, _ = jittered_circle(20_000, seed=0)
        points, truth = jittered_circle(n_eval, seed=1)
        return atoms, None, points, truth
    raise ValueError(f"Unknown data set {name!r}; use doughnut or jittered-circle.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["doughnut", "jittered-circle"])
    parser.add_argument("--t0", type=float, nargs="+", default=[0.05])
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    schedule = VP()
    print(f"{'data set':<16}{'scaling':<16}{'t0':>6}{'noise std, data units':>24}  mean FLIPD per true LID")
    for name in args.datasets:
        atoms, weights, points, truth = data_set(name, args.n_eval)
        for mode in SCALINGS:
            shift, scale = fit_standardization(atoms, mode)
            perfect = SmoothedEmpirical((atoms - shift) / scale, weights)
            for t0 in args.t0:
                began = time.perf_counter()
                lid = perfect.exact_flipd((points - shift) / scale, t0, schedule)
                cells = "  ".join(
                    f"LID {int(value)}: {float(lid[truth == value].mean()):.3f}" for value in np.unique(truth.numpy())
                )
                sigma = float(schedule.sigma(torch.tensor(t0)))  # in model units; sigma·scale in data units
                low, high = sigma * float(scale.min()), sigma * float(scale.max())
                noise = f"{low:.3g}" if math.isclose(low, high) else f"{low:.3g} to {high:.3g}"
                print(f"{name:<16}{mode:<16}{t0:>6g}{noise:>24}  {cells}  ({time.perf_counter() - began:.1f} s)", flush=True)
    return 0
