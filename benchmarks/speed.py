"""Speed and memory of FLIPD relative to one forward pass of the same model.

An MLP diffusion network (4 hidden layers of 1024 SiLU units, time as an extra input) at
D = 10, 100 and 784 on a batch of 512 points, with 2 CPU threads. Every time is the median of
several repeats, and every ratio divides two times measured in the same run, so the ratios are
meaningful on a shared, noisy machine. Peak memory is measured in a fresh subprocess per
configuration, as the growth of the resident set's high-water mark during one FLIPD call.

Usage:
    python benchmarks/speed.py                     # writes benchmarks/results/speed.{json,md}
    python benchmarks/speed.py --dims 10 --repeats 3 --out /tmp/speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import flipd

RESULTS = Path(__file__).resolve().parent / "results"


class MLP(nn.Module):
    """A plain MLP epsilon network: [y, t] -> eps, 4 × 1024 SiLU hidden layers."""

    def __init__(self, dim: int, width: int = 1024, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, t[:, None]], dim=1))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_dimension(dim: int, batch: int, repeats: int, exact: bool = True) -> dict:
    torch.manual_seed(0)
    model = MLP(dim).eval()
    x = torch.randn(batch, dim)
    t = torch.full((batch,), 0.05)

    def forward():
        with torch.no_grad():
            model(x, t)

    row = {"D": dim, "batch": batch}
    row["forward_s"] = median_seconds(forward, repeats)
    runs = {
        "hutchinson1_reverse": dict(trace="hutchinson", n_probes=1, mode="reverse"),
        "hutchinson1_forward": dict(trace="hutchinson", n_probes=1, mode="forward"),
        "hutchinson50_reverse": dict(trace="hutchinson", n_probes=50, mode="reverse"),
    }
    if exact:
        runs["exact_reverse"] = dict(trace="exact", mode="reverse")
    for name, kwargs in runs.items():
        exact_repeats = max(1, repeats // 3) if "exact" in name and dim > 100 else repeats
        seconds = median_seconds(lambda: flipd.flipd(model, x, t0=0.05, batch_size=batch, **kwargs), exact_repeats)
        row[f"{name}_s"] = seconds
        row[f"{name}_per_forward"] = seconds / row["forward_s"]
    if exact:
        row["exact_reverse_per_D_forwards"] = row["exact_reverse_per_forward"] / dim
    return row


def peak_memory_child(dim: int, batch: int, chunk_rows: int | None, trace: str) -> None:
    """Run in a subprocess: print the peak-RSS growth (MiB) of one FLIPD call."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = MLP(dim).eval()
    x = torch.randn(batch, dim)
    with torch.no_grad():
        model(x, torch.full((batch,), 0.05))
    with open("/proc/self/statm") as handle:
        resident_now = int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    flipd.flipd(model, x, t0=0.05, trace=trace, batch_size=batch, chunk_rows=chunk_rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_growth_mib": peak - resident_now}))


def peak_memory(dim: int, batch: int, chunk_rows: int | None, trace: str) -> float:
    code = (
        "import sys; sys.path.insert(0, %r); import speed; speed.peak_memory_child(%d, %d, %r, %r)"
        % (str(Path(__file__).resolve().parent), dim, batch, chunk_rows, trace)
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_growth_mib"]


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# FLIPD speed and memory",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, torch {result['torch']}, {result['threads']} threads, float32.  ",
        *(
            [f"Load average (1 min) at start / end: {result['load_average_1min']['start']:.1f} / "
             f"{result['load_average_1min']['end']:.1f} (other processes share the cores).  "]
            if "load_average_1min" in result else []
        ),
        "Model: MLP epsilon network, 4 × 1024 SiLU hidden layers; batch of "
        f"{result['rows'][0]['batch']} points; times are medians of {result['repeats']} repeats, "
        "ratios divide times measured in the same run.",
        "",
        "| D | forward (ms) | Hutchinson 1 probe, reverse / forward | Hutchinson 1 probe, forward mode / forward "
        "| Hutchinson 50 probes / forward | exact trace / forward | exact / (D · forward) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['D']} | {1000 * row['forward_s']:.1f} | {row['hutchinson1_reverse_per_forward']:.2f} "
            f"| {row['hutchinson1_forward_per_forward']:.2f} | {row['hutchinson50_reverse_per_forward']:.1f} "
            f"| {row.get('exact_reverse_per_forward', float('nan')):.1f} "
            f"| {row.get('exact_reverse_per_D_forwards', float('nan')):.2f} |"
        )
    lines += [
        "",
        "Targets: Hutchinson with one probe ≤ 2.0 forward passes; exact trace ≤ 1.2·D forward passes.",
        "",
        "## Peak memory of one FLIPD call (growth of peak RSS, MiB)",
        "",
        "| D | trace | chunked (default chunk_rows) | unchunked (all probes in one call) |",
        "|---:|---|---:|---:|",
    ]
    for row in result["memory"]:
        lines.append(f"| {row['D']} | {row['trace']} | {row['chunked_mib']:.0f} | {row['unchunked_mib']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 784])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-dims", type=int, nargs="*", default=[100, 784])
    parser.add_argument("--skip-exact", action="store_true", help="time the Hutchinson runs only")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for dim in args.dims:
        rows.append(time_dimension(dim, args.batch, args.repeats, exact=not args.skip_exact))
        print(json.dumps(rows[-1]), flush=True)
    memory = []
    for dim in args.memory_dims:
        entry = {
            "D": dim,
            "trace": "exact",
            "chunked_mib": peak_memory(dim, args.batch, None, "exact"),
            "unchunked_mib": peak_memory(dim, args.batch, args.batch * dim, "exact"),
        }
        memory.append(entry)
        print(json.dumps(entry), flush=True)
    result = {
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
        "flipd": flipd.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "rows": rows,
        "memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    temporary = json_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(json_path)
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {json_path} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
