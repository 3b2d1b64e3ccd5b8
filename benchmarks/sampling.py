"""How faithful flipd's samplers are: a closed-form Gaussian model sampled with DDIM and DDPM.

The model is the exact score of a 2-d Gaussian (``flipd.analytic.GaussianMixture`` with one
full-rank component, variances 4 and 0.25 along rotated axes), so every difference between the
sample covariance and the true one is the sampler's discretisation plus sampling error. For each
sampler and number of steps, 20000 samples are drawn with seeds 0, 1 and 2, and the table gives
the mean over seeds of each eigenvalue of the sample covariance relative to the truth (1.000 is
exact; the sampling error of one seed is sqrt(2/20000) = 1.0%).

Usage:
    python benchmarks/sampling.py            # writes benchmarks/results/sampling.md and .json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import flipd
from flipd.analytic import GaussianMixture
from flipd.bench._report import git_revision, markdown_table, package_versions, write_text_atomically
from flipd.models.sampling import sample_model
from flipd.schedules import VP

ROTATION = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=torch.float64)
VARIANCES = torch.tensor([4.0, 0.25], dtype=torch.float64)
SETTINGS = (("ddim", 20), ("ddim", 50), ("ddim", 200), ("ddim", 1000), ("ddpm", 50), ("ddpm", 200), ("ddpm", 1000))


def measure(n: int, seeds: int) -> list[dict]:
    gaussian = GaussianMixture(torch.tensor([[1.0, -2.0]]), [ROTATION], [VARIANCES])
    model = flipd.as_model(gaussian.as_model(VP(), "epsilon"), schedule=VP(), prediction="epsilon")
    records = []
    for sampler, steps in SETTINGS:
        ratios, began = [], time.perf_counter()
        for seed in range(seeds):
            x = sample_model(model, n, (2,), steps=steps, sampler=sampler, seed=seed, dtype=torch.float64)
            ratios.append(torch.linalg.eigvalsh(torch.cov(x.T)) / VARIANCES.flip(0))
        mean = torch.stack(ratios).mean(0)
        records.append({"sampler": sampler, "steps": steps, "minor_ratio": float(mean[0]), "major_ratio": float(mean[1]),
                        "seconds_per_seed": (time.perf_counter() - began) / seeds})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="samples per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sampling"))
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    records = measure(arguments.n, arguments.seeds)
    table = markdown_table(
        ["sampler", "steps", "variance 0.25 (sample / true)", "variance 4 (sample / true)"],
        [[r["sampler"], r["steps"], r["minor_ratio"], r["major_ratio"]] for r in records],
    )
    text = (f"# Sampling a closed-form Gaussian\n\n`python benchmarks/sampling.py` ({arguments.n} samples, "
            f"seeds 0-{arguments.seeds - 1}, mean over seeds; git {git_revision()})\n\n{table}\n")
    write_text_atomically(arguments.out.with_suffix(".md"), text)
    write_text_atomically(arguments.out.with_suffix(".json"), json.dumps(
        {"records": records, "n": arguments.n, "seeds": arguments.seeds, "versions": package_versions()}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
