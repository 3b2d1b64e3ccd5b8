"""Cost of the exact trace against Hutchinson probes, per point: the numbers behind trace="auto".

For each network the script times ``flipd.flipd`` with the exact trace (D basis probes) and with
Hutchinson's estimate (``--probes`` Rademacher probes, 4 by default) on the same batch, in
interleaved repeats, and prints the median of each and their ratio. The networks are untrained
(timing does not depend on the weights):

- ``unet``: flipd's default convolutional U-net (:class:`flipd.models.unet.ImageUNet`, channels
  16, 32, 64) on 1×16×16 images (D = 256), the largest image size the old rule (exact up to
  D = 256) traced exactly;
- ``mlp``: flipd's MLP U-net (:class:`flipd.models.MLPUNet`, widths 256-256-256) on vectors with
  D = 256, the largest D that ``trace="auto"`` still traces exactly.

Usage:
    python -m flipd.bench trace_cost                    # both networks, 16 points, 5 repeats, 1 thread
    python -m flipd.bench trace_cost --networks unet --points 8 --repeats 3 --threads 2

Short calls suffer most from other processes on a shared machine (with 2 threads on 2 busy
cores one run read 9.3 for the U-net where one thread read 53.5), so compare runs made alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import flipd
from flipd.models import MLPUNet, MLPUNetConfig


def _network(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """An untrained network in eval mode and the shape of one of its points."""
    torch.manual_seed(0)
    if name == "unet":
        from flipd.models.unet import ImageUNet, UNetConfig

        return ImageUNet(UNetConfig(image_shape=(1, 16, 16))).eval(), (1, 16, 16)
    if name == "mlp":
        return MLPUNet(MLPUNetConfig(data_dim=256, widths=(256, 256, 256))).eval(), (256,)
    raise ValueError(f"Unknown network {name!r}; use unet or mlp.")


def _seconds(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def measure(name: str, *, points: int, probes: int, repeats: int) -> dict[str, float]:
    """Median seconds per point of the exact trace and of ``probes`` Hutchinson probes."""
    network, shape = _network(name)
    x = torch.randn(points, *shape, generator=torch.Generator().manual_seed(1))
    exact = lambda: flipd.flipd(network, x, t0=0.05, trace="exact")  # noqa: E731
    hutchinson = lambda: flipd.flipd(network, x, t0=0.05, trace="hutchinson", n_probes=probes)  # noqa: E731
    exact(), hutchinson()  # warm-up
    times = {"exact": [], "hutchinson": []}
    for _ in range(repeats):
        times["exact"].append(_seconds(exact) / points)
        times["hutchinson"].append(_seconds(hutchinson) / points)
    exact_s, hutchinson_s = (statistics.median(times[key]) for key in ("exact", "hutchinson"))
    return {"dim": float(torch.Size(shape).numel()), "exact_s": exact_s, "hutchinson_s": hutchinson_s,
            "ratio": exact_s / hutchinson_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench trace_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["unet", "mlp"], choices=["unet", "mlp"])
    parser.add_argument("--points", type=int, default=16, help="points per batch")
    parser.add_argument("--probes", type=int, default=4, help="Hutchinson probes per point")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.points} points, {args.probes} Hutchinson probes, {args.repeats} repeats, {args.threads} threads")
    print(f"{'network':<8}{'D':>6}{'exact s/point':>16}{'Hutchinson s/point':>20}{'exact / Hutchinson':>20}")
    for name in args.networks:
        row = measure(name, points=args.points, probes=args.probes, repeats=args.repeats)
        print(f"{name:<8}{int(row['dim']):>6}{row['exact_s']:>16.4f}{row['hutchinson_s']:>20.5f}{row['ratio']:>20.1f}")
    return 0
