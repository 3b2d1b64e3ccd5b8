"""Cost of FLIPD at Stable Diffusion scale: ``python -m flipd.bench scale``.

A ``UNet2DConditionModel`` with the Stable Diffusion v1.5 configuration and **random weights**
(timing only: no LID values are meaningful) runs on one 4×64×64 latent (D = 16384), batch 1,
float32, conditioned on an all-zero empty-prompt embedding [1, 77, 768]. Measured on this CPU:

- one forward pass of the UNet;
- FLIPD with one Hutchinson probe through :func:`flipd.flipd` (Discrete schedule from SD's
  scaled-linear betas 0.00085 → 0.012, 1000 steps, via :func:`flipd.from_diffusers`);
- the normal-bundle estimator's cost per image (K = 4D score evaluations and an SVD of a K×D
  matrix), **extrapolated** from a slice: a few batched forward passes, and SVDs of smaller
  4d×d matrices scaled by the O(K·D²) cost of the SVD;
- peak resident memory of the forward pass and of FLIPD, each in its own subprocess so that
  peaks do not mix (the kernel's high-water mark is reset after set-up and warm-up).

Results go to ``scale.json`` and ``scale.md`` in ``--out``. ``--config tiny`` runs the same code
on a tiny UNet in seconds (used by the tests).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..runs.environment import machine_info, package_versions
from ..runs.files import load_average, write_text
from ._report import check_output_folders, git_revision, positive_int, rewrite_report

#: Stable Diffusion v1.5's UNet configuration (860M parameters).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

#: A tiny UNet of the same structure, for exercising the benchmark code quickly.
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "cross_attention_dim": 12,
    "attention_head_dim": 2,
}

CONFIGS: dict[str, dict[str, Any]] = {"sd15": SD15_UNET_CONFIG, "tiny": TINY_UNET_CONFIG}

#: Stable Diffusion's training schedule: betas = linspace(√0.00085, √0.012, 1000)².
SD_BETA_START, SD_BETA_END, SD_TRAIN_STEPS = 0.00085, 0.012, 1000
#: Noise level of the FLIPD runs, as a diffusers timestep index (cost does not depend on it).
FLIPD_TIMESTEP = 300
#: Score evaluations per point of the normal-bundle estimator, as a multiple of D.
NB_SAMPLES_PER_DIM = 4
#: SVD sizes d (matrices 4d × d) timed to extrapolate the normal-bundle SVD to D.
SVD_DIMS = {"sd15": (512, 1024, 2048), "tiny": (16, 32)}
#: Latent images per forward pass in the normal-bundle slice.
NB_SLICE_BATCH = 2

__all__ = ["SD15_UNET_CONFIG", "TINY_UNET_CONFIG", "build_model", "main", "run_benchmark"]


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in KiB, or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark (Linux); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (since the last reset, where supported)."""
    peak = _status_kib("VmHWM")
    if peak is None:  # ru_maxrss: KiB on Linux, bytes on macOS; cannot be reset
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak / 1024 if sys.platform == "darwin" else peak
    return peak / 1024


def _rss_mib() -> float | None:
    rss = _status_kib("VmRSS")
    return None if rss is None else rss / 1024


# --------------------------------------------------------------------------- model


def build_model(config_name: str = "sd15", *, seed: int = 0):
    """The benchmark's flipd model: a random-weight UNet2DConditionModel with SD's schedule.

    Args:
        config_name: "sd15" (Stable Diffusion v1.5's UNet) or "tiny".
        seed: seed of the random weights.

    Returns:
        A :class:`flipd.DiffusersModel` in float32 conditioned on an all-zero [1, 77, C] prompt
        embedding, with its modules frozen (no parameter gradients).
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from ..models.diffusers import from_diffusers

    if config_name not in CONFIGS:
        raise ValueError(f"Unknown config {config_name!r}; use one of {', '.join(CONFIGS)}.")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**CONFIGS[config_name])
    scheduler = DDPMScheduler(
        num_train_timesteps=SD_TRAIN_STEPS, beta_start=SD_BETA_START, beta_end=SD_BETA_END,
        beta_schedule="scaled_linear",
    )
    return from_diffusers(unet, scheduler=scheduler, prompt=None, dtype=torch.float32)


def _latents(config_name: str, batch: int = 1, seed: int = 1) -> torch.Tensor:
    config = CONFIGS[config_name]
    generator = torch.Generator().manual_seed(seed)
    size = config["sample_size"]
    return torch.randn(batch, config["in_channels"], size, size, generator=generator)


# --------------------------------------------------------------------------- workers


def _timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _worker(task: str, config_name: str, repeats: int, threads: int) -> dict[str, Any]:
    """One measurement in this process.

    Tasks: "timing" (forward passes and FLIPD runs interleaved, so that both meet the same
    machine load), "forward_memory" / "flipd_memory" (peak RSS of one call, nothing else run
    in the process), "nb_slice" (batched forward passes and small SVDs).
    """
    import flipd

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = build_model(config_name)
    setup_seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.network.parameters())
    result: dict[str, Any] = {
        "task": task, "parameters": parameters, "setup_seconds": setup_seconds, "rss_after_setup_mib": _rss_mib(),
    }

    if task == "nb_slice":
        latents = _latents(config_name, NB_SLICE_BATCH)
        times = torch.full((NB_SLICE_BATCH,), float(FLIPD_TIMESTEP))
        with torch.no_grad():  # no warm-up: one-time costs are negligible beside ~K forward passes
            seconds = _timed(lambda: model(latents, times), repeats)
        result["batch"] = NB_SLICE_BATCH
        result["forward_seconds"] = seconds
        result["seconds_per_score"] = statistics.median(seconds) / NB_SLICE_BATCH
        svd = []
        for dim in SVD_DIMS[config_name]:
            matrix = torch.randn(NB_SAMPLES_PER_DIM * dim, dim, generator=torch.Generator().manual_seed(dim))
            svd.append({"dim": dim, "rows": NB_SAMPLES_PER_DIM * dim,
                        "seconds": statistics.median(_timed(lambda: torch.linalg.svdvals(matrix), repeats))})
        result["svd"] = svd
        return result

    latents = _latents(config_name)
    times = torch.full((1,), float(FLIPD_TIMESTEP))

    def forward() -> None:
        with torch.no_grad():
            model(latents, times)

    def flipd_one_probe() -> None:
        estimate = flipd.estimate(model, latents, t0=FLIPD_TIMESTEP, trace="hutchinson", n_probes=1, **model.options)
        result["lid"], result["mode"] = estimate.lid.item(), estimate.mode

    if task == "timing":
        forward()  # warm-up (one-time kernel and allocator set-up), not timed
        flipd_one_probe()
        result["forward_seconds"], result["flipd_seconds"] = [], []
        for _ in range(repeats):
            result["forward_seconds"] += _timed(forward, 1)
            result["flipd_seconds"] += _timed(flipd_one_probe, 1)
    elif task in ("forward_memory", "flipd_memory"):
        result["peak_reset"] = _reset_peak_rss()
        (forward if task == "forward_memory" else flipd_one_probe)()
        result["peak_rss_mib"] = _peak_rss_mib()
    else:
        raise ValueError(f"Unknown worker task {task!r}.")
    result["parameter_gradients"] = any(
        p.requires_grad or p.grad is not None for p in model.network.parameters()
    )
    return result


def _run_worker(task: str, config_name: str, repeats: int, threads: int) -> dict[str, Any]:
    """Run :func:`_worker` in a fresh Python process and return its result."""
    import flipd

    source_root = str(Path(flipd.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([source_root, *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = str(threads)
    command = [
        sys.executable, "-m", "flipd.bench.scale", "--worker", task, "--config", config_name,
        "--repeats", str(repeats), "--threads", str(threads),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"The {task} measurement failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def _machine() -> dict[str, Any]:
    """CPU, cores, memory (GiB), OS, Python, torch and diffusers versions and the commit
    (from :mod:`flipd.runs.environment` and :func:`flipd.bench._report.git_revision`)."""
    machine = machine_info()
    versions = package_versions(("torch", "diffusers"))
    try:
        memory_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory_gib = round(memory_kib / 2**20, 1)
    except (OSError, AttributeError):
        memory_gib = None
    return {
        "cpu": machine["cpu"], "cores": machine["cores"], "memory_gib": memory_gib, "os": machine["platform"],
        "python": machine["python"], "torch": versions["torch"], "diffusers": versions["diffusers"],
        "commit": git_revision(Path(__file__).resolve().parent),
    }


def run_benchmark(config_name: str = "sd15", *, repeats: int = 3, threads: int = 2) -> dict[str, Any]:
    """Measure forward, FLIPD and the normal-bundle slice, each in its own subprocess.

    Returns:
        A JSON-ready dict: machine, settings, raw measurements and derived figures (seconds per
        image, ratios to one forward pass, peak memory, the extrapolated normal-bundle cost).
    """
    load_before = load_average()
    timing = _run_worker("timing", config_name, repeats, threads)
    forward = _run_worker("forward_memory", config_name, repeats, threads)
    flipd_run = _run_worker("flipd_memory", config_name, repeats, threads)
    nb = _run_worker("nb_slice", config_name, repeats, threads)
    load_after = load_average()

    config = CONFIGS[config_name]
    dim = config["in_channels"] * config["sample_size"] ** 2
    forward_seconds = statistics.median(timing["forward_seconds"])
    flipd_seconds = statistics.median(timing["flipd_seconds"])
    # Each FLIPD run is compared with the forward pass just before it (same machine load).
    pair_ratios = [f / g for f, g in zip(timing["flipd_seconds"], timing["forward_seconds"])]
    # SVD cost grows as K·D² = 4·D³ for K = 4D: fit the constant on the largest measured size.
    largest = nb["svd"][-1]
    svd_seconds = largest["seconds"] * (dim / largest["dim"]) ** 3
    nb_scores = NB_SAMPLES_PER_DIM * dim
    nb_forward_seconds = nb_scores * nb["seconds_per_score"]
    derived = {
        "ambient_dim": dim,
        "forward_seconds": forward_seconds,
        "flipd_seconds_per_image": flipd_seconds,
        "flipd_over_forward": statistics.median(pair_ratios),
        "flipd_over_forward_pairs": pair_ratios,
        "flipd_median_over_forward_median": flipd_seconds / forward_seconds,
        "forward_peak_rss_mib": forward["peak_rss_mib"],
        "flipd_peak_rss_mib": flipd_run["peak_rss_mib"],
        "flipd_peak_over_forward_peak": flipd_run["peak_rss_mib"] / forward["peak_rss_mib"],
        "forward_peak_above_setup_mib": forward["peak_rss_mib"] - (forward["rss_after_setup_mib"] or 0.0),
        "flipd_peak_above_setup_mib": flipd_run["peak_rss_mib"] - (flipd_run["rss_after_setup_mib"] or 0.0),
        "nb_score_evaluations": nb_scores,
        "nb_forward_seconds_extrapolated": nb_forward_seconds,
        "nb_svd_seconds_extrapolated": svd_seconds,
        "nb_svd_matrix_gib": nb_scores * dim * 4 / 2**30,
        "nb_seconds_per_image_extrapolated": nb_forward_seconds + svd_seconds,
        "nb_over_flipd": (nb_forward_seconds + svd_seconds) / flipd_seconds,
    }
    targets = {
        "flipd_over_forward_max": 2.5,
        "flipd_peak_over_forward_peak_max": 2.0,
        "time_met": derived["flipd_over_forward"] <= 2.5,
        "memory_met": derived["flipd_peak_over_forward_peak"] <= 2.0,
    }
    return {
        "benchmark": "scale",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": {
            "config": config_name, "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "weights": "random (timing only)", "dtype": "float32", "batch": 1, "threads": threads,
            "repeats": repeats, "text_conditioning": "all-zero embedding [1, 77, cross_attention_dim]",
            "schedule": f"Discrete, scaled-linear betas {SD_BETA_START} -> {SD_BETA_END}, {SD_TRAIN_STEPS} steps",
            "flipd": {"t0": FLIPD_TIMESTEP, "trace": "hutchinson", "n_probes": 1},
            "nb": {"samples_per_dim": NB_SAMPLES_PER_DIM, "slice_batch": NB_SLICE_BATCH,
                   "svd_dims": list(SVD_DIMS[config_name])},
        },
        "timing": timing,
        "forward_memory": forward,
        "flipd_memory": flipd_run,
        "nb_slice": nb,
        "derived": derived,
        "targets": targets,
    }


def _fmt(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.2f} s"


def render_markdown(result: dict[str, Any], command: str) -> str:
    """The results as a Markdown report."""
    m, d, t, s = result["machine"], result["derived"], result["targets"], result["settings"]
    yes_no = {True: "met", False: "missed"}
    lines = [
        "# FLIPD at Stable Diffusion scale",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {result['date']}. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"{m['os']}; Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}; commit {m['commit']}.",
        f"Load average before/after: {result['load_average_before']} / {result['load_average_after']} "
        "(other processes on the machine slow every measurement alike).",
        "",
        f"UNet2DConditionModel, config `{s['config']}`, {result['timing']['parameters'] / 1e6:.0f}M parameters, "
        f"**{s['weights']}**; latent D = {d['ambient_dim']}, batch 1, {s['dtype']}, {s['threads']} threads; "
        f"text conditioning: {s['text_conditioning']}. Schedule: {s['schedule']}. FLIPD: one Rademacher "
        f"probe at timestep {s['flipd']['t0']} through `flipd.flipd` (differentiation mode: "
        f"{result['timing'].get('mode')}). Timing: after one warm-up of each, {s['repeats']} forward passes and "
        f"{s['repeats']} FLIPD runs alternate in one process (so both meet the same machine load); times are "
        "medians, the ratio is the median over the pairs (FLIPD run / the forward pass just before it). Memory: "
        "one forward pass and one FLIPD run, each alone in a fresh process, peak RSS (kernel high-water mark, "
        "reset after model set-up).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| one UNet forward pass | {d['forward_seconds']:.2f} s |",
        f"| FLIPD, 1 probe, per image | {d['flipd_seconds_per_image']:.2f} s |",
        f"| FLIPD / forward (target ≤ {t['flipd_over_forward_max']}) | **{d['flipd_over_forward']:.2f}×** ({yes_no[t['time_met']]}); pairs: {', '.join(f'{r:.2f}' for r in d['flipd_over_forward_pairs'])} |",
        f"| peak RSS, forward | {d['forward_peak_rss_mib']:.0f} MiB |",
        f"| peak RSS, FLIPD | {d['flipd_peak_rss_mib']:.0f} MiB |",
        f"| FLIPD peak / forward peak (target ≤ {t['flipd_peak_over_forward_peak_max']}) | **{d['flipd_peak_over_forward_peak']:.2f}×** ({yes_no[t['memory_met']]}) |",
        f"| RSS after set-up (weights, libraries), forward / FLIPD | {result['forward_memory']['rss_after_setup_mib']:.0f} / {result['flipd_memory']['rss_after_setup_mib']:.0f} MiB |",
        f"| peak above the set-up RSS (activations, retained allocations), forward / FLIPD | {d['forward_peak_above_setup_mib']:.0f} / {d['flipd_peak_above_setup_mib']:.0f} MiB |",
        f"| parameter gradients computed | {result['flipd_memory']['parameter_gradients']} |",
        f"| NB: {d['nb_score_evaluations']} score evaluations (extrapolated) | {_fmt(d['nb_forward_seconds_extrapolated'])} |",
        f"| NB: SVD of a {d['nb_score_evaluations']}×{d['ambient_dim']} matrix ({d['nb_svd_matrix_gib']:.1f} GiB in float32; extrapolated) | {_fmt(d['nb_svd_seconds_extrapolated'])} |",
        f"| NB per image (extrapolated) | {_fmt(d['nb_seconds_per_image_extrapolated'])} = **{d['nb_over_flipd']:.0f}×** FLIPD |",
        "",
        "NB extrapolation: the score evaluations at the measured cost per latent of a batch of "
        f"{result['nb_slice']['batch']} ({result['nb_slice']['seconds_per_score']:.2f} s, median of "
        f"{len(result['nb_slice']['forward_seconds'])} passes without warm-up); the SVD (singular values only, "
        "`torch.linalg.svdvals`) from 4d×d matrices, scaled by (D/d)³ from the largest d:",
        "",
        "| d | matrix | seconds |",
        "|---|---|---|",
        *(f"| {row['dim']} | {row['rows']}×{row['dim']} | {row['seconds']:.3f} |" for row in result["nb_slice"]["svd"]),
        "",
        "Raw measurements: `scale.json` beside this file.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flipd.bench scale [--config sd15|tiny] [--repeats N] [--threads N] [--out DIR] [--report-only]``."""
    parser = argparse.ArgumentParser(prog="python -m flipd.bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sd15", help="UNet configuration")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for scale.json/.md")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite scale.md from the scale.json in --out")
    parser.add_argument(
        "--worker", choices=("timing", "forward_memory", "flipd_memory", "nb_slice"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.config, args.repeats, args.threads)))
        return 0
    if args.report_only:
        return rewrite_report(args.out / "scale.json", args.out / "scale.md",
                              lambda result: render_markdown(result, result["command"]))
    command = "python -m flipd.bench scale " + " ".join(
        ["--config", args.config, "--repeats", str(args.repeats), "--threads", str(args.threads), "--out", str(args.out)]
    )
    check_output_folders(parser, {"--out": args.out})
    result = run_benchmark(args.config, repeats=args.repeats, threads=args.threads)
    result["command"] = command
    write_text(args.out / "scale.json", json.dumps(result, indent=2) + "\n")
    write_text(args.out / "scale.md", render_markdown(result, command))
    d = result["derived"]
    print(
        f"forward {d['forward_seconds']:.2f} s, FLIPD {d['flipd_seconds_per_image']:.2f} s "
        f"({d['flipd_over_forward']:.2f}x), peak RSS {d['forward_peak_rss_mib']:.0f} / "
        f"{d['flipd_peak_rss_mib']:.0f} MiB ({d['flipd_peak_over_forward_peak']:.2f}x); "
        f"written to {args.out}/scale.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
