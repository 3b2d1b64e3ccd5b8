"""How faithful flipd's samplers are: a closed-form Gaussian model sampled with DDIM and DDPM.

The model is the exact score of a 2-d Gaussian (``flipd.analytic.GaussianMixture`` with one
full-rank component, variances 4 and 0.25 along rotated axes), so every difference between the
sample covariance and the true one is the sampler's discretisation plus sampling error. For each
sampler and number of steps, ``--n`` samples are drawn with seeds 0, 1, ...; the report gives the
mean over seeds of each eigenvalue of the sample covariance divided by the true one (1.000 is
exact; one seed of 20000 samples has a sampling error of sqrt(2/20000) = 1.0%).

Usage (from the repository root; ``flipd bench sampling`` is the same):
    python -m flipd.bench sampling                 # writes benchmarks/results/sampling.{json,md}
    python -m flipd.bench sampling --n 2000 --seeds 1 --settings ddim:20 --out /tmp/sampling
    python -m flipd.bench sampling --report-only   # rewrites sampling.md from sampling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..analytic import GaussianMixture
from ..models.base import as_model
from ..models.sampling import SAMPLERS, sample_model
from ..runs.environment import package_versions
from ..runs.files import write_text
from ..schedules import VP
from ._report import git_revision, markdown_table, rewrite_report

__all__ = ["main", "measure", "render_markdown"]

RESULTS = Path("benchmarks/results")
ROTATION = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=torch.float64)
#: The true variances along the two axes, smallest first.
VARIANCES = torch.tensor([0.25, 4.0], dtype=torch.float64)
DEFAULT_SETTINGS = ("ddim:20", "ddim:50", "ddim:200", "ddim:1000", "ddpm:50", "ddpm:200", "ddpm:1000")


def _setting(text: str) -> tuple[str, int]:
    sampler, _, steps = text.partition(":")
    if sampler not in SAMPLERS or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected SAMPLER:STEPS with a sampler of {', '.join(SAMPLERS)}, e.g. ddim:50")
    return sampler, int(steps)


def measure(settings: Sequence[tuple[str, int]], n: int, seeds: int) -> list[dict[str, Any]]:
    """One record per (sampler, steps): the mean ratios of sample to true variances, and seconds."""
    gaussian = GaussianMixture(torch.tensor([[1.0, -2.0]]), [ROTATION], [VARIANCES.flip(0)])
    model = as_model(gaussian.as_model(VP(), "epsilon"), schedule=VP(), prediction="epsilon")
    records = []
    for sampler, steps in settings:
        ratios, began = [], time.perf_counter()
        for seed in range(seeds):
            x = sample_model(model, n, (2,), steps=steps, sampler=sampler, seed=seed, dtype=torch.float64)
            ratios.append(torch.linalg.eigvalsh(torch.cov(x.T)) / VARIANCES)
        mean = torch.stack(ratios).mean(0)
        records.append({"sampler": sampler, "steps": steps, "minor_ratio": float(mean[0]), "major_ratio": float(mean[1]),
                        "seconds_per_seed": (time.perf_counter() - began) / seeds})
    return records


def render_markdown(result: dict[str, Any]) -> str:
    """The report, a function of the record alone."""
    table = markdown_table(
        ["sampler", "steps", "variance 0.25 (sample / true)", "variance 4 (sample / true)"],
        [[r["sampler"], r["steps"], r["minor_ratio"], r["major_ratio"]] for r in result["records"]],
    )
    return (f"# Sampling a closed-form Gaussian\n\n`{result['command'].strip()}` ({result['n']} samples per seed, "
            f"seeds 0-{result['seeds'] - 1}, mean over seeds; git {result['git']})\n\n{table}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flipd.bench sampling``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flipd.bench sampling", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="samples per seed (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1 (default %(default)s)")
    parser.add_argument("--settings", type=_setting, nargs="+", default=[_setting(s) for s in DEFAULT_SETTINGS],
                        help="SAMPLER:STEPS pairs (default: %s)" % " ".join(DEFAULT_SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "sampling",
                        help="results path without suffix: writes OUT.json and OUT.md (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: rewrite OUT.md from OUT.json")
    args = parser.parse_args(argv)
    if args.report_only:
        return rewrite_report(args.out.with_suffix(".json"), args.out.with_suffix(".md"), render_markdown)
    torch.set_num_threads(args.threads)
    result = {
        "command": "python -m flipd.bench sampling " + " ".join(argv if argv is not None else sys.argv[1:]),
        "n": args.n, "seeds": args.seeds, "threads": args.threads, "git": git_revision(),
        "versions": package_versions(("torch", "numpy", "diffusers")),
        "records": measure(args.settings, args.n, args.seeds),
    }
    write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text(args.out.with_suffix(".md"), render_markdown(result))
    print(render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
