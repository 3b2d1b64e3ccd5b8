"""FLIPD of a flipd image model and of its diffusers export (flipd export) on the same images.

Trains a small convolutional U-net on digits8 (8x8 greyscale digits in [-1, 1], no
standardisation, reference VP schedule, epsilon), exports it as a diffusers DDPMPipeline folder,
loads the folder back with flipd.from_diffusers and compares FLIPD per image at the default
noise level and at t0 = 0.2 of the reference schedule (= timestep 200 of the export), with the
same Hutchinson probes. Writes a JSON record and prints a markdown table.

Usage:
    python -m flipd.bench export                   # writes benchmarks/results/export_agreement.json
    python -m flipd.bench export --steps 50 --n 32 --out /tmp/export_agreement.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import flipd
from flipd.datasets.sources import load_points
from flipd.jobs.train import train_model
from flipd.runs.files import write_json


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--n", type=int, default=256, help="images compared")
    parser.add_argument("--probes", type=int, default=4, help="Hutchinson probes per image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_agreement.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model = train_model(
            load_points("digits8", n=1500, seed=0, at_most=True), Path(folder) / "model", steps=args.steps,
            batch_size=128, network="unet", channels=(8, 16), standardize="none", seed=0, progress=False,
        )
        exported = flipd.from_diffusers(model.export_diffusers(Path(folder) / "pipeline"))
        images = load_points("digits8", n=args.n, seed=1).x
        rows = []
        for label, original_level, exported_level in (("default level", {}, {}),
                                                       ("t0 = 0.2 (timestep 200)", {"t0": 0.2}, {"t0": 200.0})):
            options = dict(trace="hutchinson", n_probes=args.probes, seed=0)
            a = flipd.flipd(model, images, **original_level, **options).double()
            b = flipd.flipd(exported, images, **exported_level, **options).double()
            difference = (a - b).abs()
            rows.append({
                "level": label, "n": args.n, "mean_lid": float(a.mean()),
                "max_abs_difference": float(difference.max()), "mean_abs_difference": float(difference.mean()),
                "max_rel_difference": float((difference / a.abs()).max()),
            })
    record = {"benchmark": "export_agreement", "command": "python -m flipd.bench export", "steps": args.steps, "probes": args.probes, "threads": args.threads,
              "final_val_loss": model.metadata.get("final_val_loss"), "rows": rows,
              "seconds": round(time.perf_counter() - began, 1), "torch": torch.__version__}
    write_json(args.out, record)
    print("| noise level | images | mean LID | max abs. difference | max rel. difference |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['level']} | {row['n']} | {row['mean_lid']:.2f} | {row['max_abs_difference']:.2e} | "
              f"{row['max_rel_difference']:.2e} |")
    print(json.dumps({"seconds": record["seconds"]}))
    return 0
