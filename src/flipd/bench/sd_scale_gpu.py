"""FLIPD at Stable Diffusion scale on a GPU, in float32, bfloat16 and float16: ``python -m flipd.bench sd_scale_gpu``.

The Stable Diffusion v1.5-config ``UNet2DConditionModel`` from diffusers, built from its
configuration in code with **random weights** (no download; timing, memory and precision
agreement only: no LID value means anything), on 4x64x64 latents with an all-zero prompt
embedding and SD's scaled-linear schedule (:func:`flipd.bench.scale.build_model`). For each
precision:

- the largest batch that fits: FLIPD with one Hutchinson probe at batch sizes 1, 2, 4, ... up to
  ``--max-batch`` until CUDA runs out of memory;
- at that batch: seconds per image of one forward pass and of FLIPD (1 probe), their ratio
  (FLIPD in forward passes), and the peak GPU memory of a FLIPD call;
- agreement with float32: FLIPD of the same ``--points`` latents (same probes), Spearman
  correlation and the largest absolute difference.

``--tiny`` runs the same code on the small UNet of :mod:`flipd.bench.scale` (4x8x8 latents),
on the CPU when there is no GPU, to check the script end to end.

Usage:
    python -m flipd.bench sd_scale_gpu --out benchmarks/results           # on a CUDA machine
    python -m flipd.bench sd_scale_gpu --tiny --device cpu --out /tmp/sd  # a check anywhere
    python -m flipd.bench sd_scale_gpu --report-only                      # the report from its record
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device, resolve_dtype
from ..estimator import flipd
from ..runs.environment import machine_info, package_versions
from ..runs.files import write_json, write_text
from ._report import git_revision, markdown_table, rewrite_report
from .scale import CONFIGS, FLIPD_TIMESTEP, build_model

#: Target of the issue: FLIPD with one probe at most this many forward passes in bfloat16.
TARGET_FORWARDS_BF16 = 2.2


def model_in(config: str, device: torch.device, dtype: torch.dtype):
    """The benchmark model (random weights, seed 0) with its network and conditioning on
    ``device`` in ``dtype``."""
    model = build_model(config)
    model.network.to(device=device, dtype=dtype)
    conditioning = {name: value.to(device=device, dtype=dtype) for name, value in model.conditioning.items()}
    return dataclasses.replace(model, conditioning=conditioning)


def latents(config: str, n: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    """Standard normal latents [n, 4, S, S] in float32 (S the config's sample size)."""
    settings = CONFIGS[config]
    generator = torch.Generator().manual_seed(seed)
    size = settings["sample_size"]
    return torch.randn(n, settings["in_channels"], size, size, generator=generator).to(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flipd(model, x: torch.Tensor) -> torch.Tensor:
    return flipd(model, x, t0=float(FLIPD_TIMESTEP), trace="hutchinson", n_probes=1, seed=0,
                       batch_size=x.shape[0], encoded=True)


def _seconds(fn, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _synchronize(device)
        began = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - began)
    return times


def largest_batch(model, config: str, device: torch.device, max_batch: int) -> int:
    """The largest power-of-two batch (at most ``max_batch``) at which one-probe FLIPD runs."""
    fits, batch = 0, 1
    while batch <= max_batch:
        try:
            _flipd(model, latents(config, batch, device))
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fits, batch = batch, batch * 2
    if fits == 0:
        raise RuntimeError("FLIPD does not fit on the device even for one latent.")
    return fits


def measure(config: str, device: torch.device, dtype: torch.dtype, *, max_batch: int, repeats: int,
            agreement_x: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """Timing, memory and the FLIPD values of ``agreement_x`` for one precision."""
    model = model_in(config, device, dtype)
    batch = largest_batch(model, config, device, max_batch)
    x = latents(config, batch, device)
    t = torch.full((batch,), float(FLIPD_TIMESTEP), device=device)
    with torch.no_grad():
        model(x, t)  # warm-up
    _flipd(model, x)
    forward, estimate = [], []
    for _ in range(repeats):  # alternate, so both meet the same machine state
        with torch.no_grad():
            forward += _seconds(lambda: model(x, t), device, 1)
        estimate += _seconds(lambda: _flipd(model, x), device, 1)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _flipd(model, x)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    values = torch.cat([_flipd(model, chunk) for chunk in agreement_x.split(batch)]).float().cpu()
    ratios = [e / f for f, e in zip(forward, estimate)]
    record = {
        "dtype": str(dtype).removeprefix("torch."), "batch": batch,
        "forward_seconds_per_image": statistics.median(forward) / batch,
        "flipd_seconds_per_image": statistics.median(estimate) / batch,
        "flipd_in_forward_passes": statistics.median(ratios), "ratio_per_repeat": ratios,
        "peak_gpu_memory_gib": peak,
    }
    return record, values


def agreement(values: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Spearman correlation and the largest absolute difference of two FLIPD vectors."""
    from scipy.stats import spearmanr

    return {"spearman": float(spearmanr(values.numpy(), reference.numpy()).statistic),
            "max_abs_difference": float((values - reference).abs().max()),
            "mean_abs_difference": float((values - reference).abs().mean())}


def render(result: dict[str, Any]) -> str:
    rows = []
    for run in result["runs"]:
        agree = result["agreement"].get(run["dtype"], {})
        rows.append([run["dtype"], run["batch"], run["forward_seconds_per_image"], run["flipd_seconds_per_image"],
                     run["flipd_in_forward_passes"], run["peak_gpu_memory_gib"], agree.get("spearman"),
                     agree.get("max_abs_difference")])
    bf16 = next((r for r in result["runs"] if r["dtype"] == "bfloat16"), None)
    verdict = "" if bf16 is None or result["config"] != "sd15" else (
        f"FLIPD in bfloat16: {bf16['flipd_in_forward_passes']:.2f} forward passes "
        f"(target at most {TARGET_FORWARDS_BF16}: {'met' if bf16['flipd_in_forward_passes'] <= TARGET_FORWARDS_BF16 else 'not met'}).")
    return "\n".join([
        f"# FLIPD at Stable Diffusion scale: {result['config']} UNet on {result['device_name']}", "",
        f"Command: `{result['command']}`", "",
        f"Date: {result['date']}; commit {result['commit']}; {result['machine']['cpu']}, {result['machine']['platform']}; "
        f"torch {result['versions'].get('torch')}.", "",
        f"UNet2DConditionModel, config `{result['config']}`, random weights (timing only), latents "
        f"{result['latent_shape']}, all-zero prompt embedding, Discrete scaled-linear schedule, FLIPD with one "
        f"Rademacher probe at timestep {FLIPD_TIMESTEP}. Batch: the largest power of two up to {result['max_batch']} "
        f"at which FLIPD fits. Times are medians of {result['repeats']} alternating runs; agreement is over "
        f"{result['agreement_points']} latents with the same probes.", "",
        markdown_table(["dtype", "batch", "forward s/image", "FLIPD s/image", "FLIPD / forward", "peak GPU GiB",
                        "Spearman vs fp32", "max abs diff vs fp32"], rows, digits=4), "",
        verdict, "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench sd_scale_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the small UNet of flipd.bench.scale (a check of the script)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 256, 8 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=64, help="latents compared across precisions")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json record in --out")
    args = parser.parse_args(argv)
    stem = "sd_scale_gpu" + ("_tiny" if args.tiny else "")
    if args.report_only:
        return rewrite_report(args.out / f"{stem}.json", args.out / f"{stem}.md", render)
    config = "tiny" if args.tiny else "sd15"
    device = resolve_device(args.device)
    max_batch = args.max_batch or (8 if args.tiny else 256)
    dtypes = [resolve_dtype(name) for name in args.dtypes]
    if torch.float32 not in dtypes:
        dtypes.insert(0, torch.float32)  # the reference of the agreement
    agreement_x = latents(config, args.points, device, seed=2)
    runs, values = [], {}
    for dtype in dtypes:
        record, values[record_name := str(dtype).removeprefix("torch.")] = measure(
            config, device, dtype, max_batch=max_batch, repeats=args.repeats, agreement_x=agreement_x)
        runs.append(record)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last precision's model is gone with its measure() call
        print(f"{record_name}: batch {record['batch']}, FLIPD {record['flipd_seconds_per_image']:.4f} s/image, "
              f"{record['flipd_in_forward_passes']:.2f} forwards", file=sys.stderr)
    size = CONFIGS[config]["sample_size"]
    result = {
        "command": "python -m flipd.bench sd_scale_gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "machine": machine_info(), "versions": package_versions(("torch", "diffusers", "numpy", "scipy")),
        "commit": git_revision(Path(__file__).parent), "latent_shape": f"{CONFIGS[config]['in_channels']}x{size}x{size}",
        "max_batch": max_batch, "repeats": args.repeats, "agreement_points": args.points, "runs": runs,
        "agreement": {name: agreement(v, values["float32"]) for name, v in values.items() if name != "float32"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", result)
    text = render(result)
    write_text(args.out / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
