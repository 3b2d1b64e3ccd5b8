"""Speed and memory of FLIPD relative to one forward pass of the same model.

Two MLP epsilon networks at D = 10, 100 and 784 on a batch of 512 points, with 2 CPU threads:

- "plain": 4 hidden layers of 1024 SiLU units with t as an extra input. Every operation lies on
  the path from y to the output, so a backward pass costs as much as the forward pass.
- "flipd": the network :mod:`flipd.train` fits (``flipd.models.MLPUNet``: sinusoidal time
  embedding, FiLM time conditioning, skip connections), at the widths flipd's own benchmarks
  train for data of that size. Its time path is part of the forward pass but not of the
  input gradient, as in every diffusion network with a time embedding.

Each configuration is timed in its own block, its repeats interleaved with those of a plain
forward pass (and, for one-probe Hutchinson, of the autograd floor). A ratio is the median over
repeats of each call's time divided by the forward pass of the same repeat (the JSON also keeps
the ratio of the two medians). Separate blocks keep one configuration's memory traffic (50
probes, forward mode) from changing the allocator state another is measured in. Peak memory is
measured in a fresh subprocess per configuration, as the growth of the resident set's
high-water mark during one FLIPD call (Linux: reset through /proc/self/clear_refs).

Usage (from the repository root; ``flipd bench speed`` is the same):
    python -m flipd.bench speed                    # writes benchmarks/results/speed.{json,md}
    python -m flipd.bench speed --dims 10 --repeats 3 --out /tmp/speed
    python -m flipd.bench speed --report-only      # rewrites speed.md from speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import flipd
from flipd.models import MLPUNet, MLPUNetConfig
from flipd.bench._report import rewrite_report
from flipd.runs.files import write_text

#: Where the committed results live, relative to the repository root (the working directory).
RESULTS = Path("benchmarks/results")


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


def interleaved_times(functions: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of every call of each function, calling them in turn within every repeat.

    Interleaving exposes every function to the same drift in machine load, so ratios of the
    medians (and of the times within one repeat) stay meaningful on a shared machine.
    """
    for fn in functions.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def quartiles(values: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles of ``values``."""
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4)
    return first, third


#: Widths of flipd's MLP network at each benchmarked D: the small synthetic suite (D = 10), the
#: medium suite (D = 100) and the MNIST MLP of the image benchmark (D = 784).
FLIPD_WIDTHS = {10: (256, 256, 256), 100: (512, 512, 512), 784: (1024, 512, 256)}
NETWORKS = ("plain", "flipd")


def flipd_widths(dim: int) -> tuple[int, ...]:
    """Widths of flipd's network at ``dim`` (the small suite's for dimensions not in the table)."""
    return FLIPD_WIDTHS.get(dim, (256, 256, 256))


def build_network(kind: str, dim: int) -> nn.Module:
    """The benchmarked network of ``kind`` ("plain" or "flipd") for data of dimension ``dim``."""
    if kind == "plain":
        return MLP(dim).eval()
    return MLPUNet(MLPUNetConfig(data_dim=dim, widths=flipd_widths(dim))).eval()


def describe_network(kind: str, dim: int) -> str:
    if kind == "plain":
        return "plain MLP 4 × 1024"
    return "flipd MLPUNet " + "-".join(map(str, flipd_widths(dim)))


def time_dimension(kind: str, dim: int, batch: int, repeats: int, exact: bool = True) -> dict:
    torch.manual_seed(0)
    model = build_network(kind, dim)
    x = torch.randn(batch, dim)
    t = torch.full((batch,), 0.05)
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1

    def forward():
        with torch.no_grad():
            model(x, t)

    def autograd_floor():
        # The least any autodiff Hutchinson probe can cost: one forward pass that keeps the
        # graph, then one vector-Jacobian product with respect to the input, then vᵀ(Jᵀv).
        y = x.clone().requires_grad_()
        with torch.enable_grad():
            (product,) = torch.autograd.grad(model(y, t), y, probe)
        return (product * probe).sum(1)

    def run(**kwargs):
        return lambda: flipd.flipd(model, x, t0=0.05, batch_size=batch, **kwargs)

    # One block per configuration: {name: functions timed side by side with "forward"}.
    blocks = {
        "hutchinson1_reverse": {
            "autograd_floor": autograd_floor,
            "hutchinson1_reverse": run(trace="hutchinson", n_probes=1, mode="reverse"),
        },
        "hutchinson1_forward": {"hutchinson1_forward": run(trace="hutchinson", n_probes=1, mode="forward")},
        "hutchinson50_reverse": {"hutchinson50_reverse": run(trace="hutchinson", n_probes=50, mode="reverse")},
    }
    if exact:
        blocks["exact_reverse"] = {"exact_reverse": run(trace="exact", mode="reverse")}
    row = {"network": kind, "network_description": describe_network(kind, dim), "D": dim, "batch": batch}
    for block, functions in blocks.items():
        # The exact trace costs about D probes: fewer repeats at large D.
        block_repeats = max(1, repeats // 3) if block == "exact_reverse" and dim > 100 else repeats
        times = interleaved_times({"forward": forward, **functions}, block_repeats)
        medians = {name: statistics.median(values) for name, values in times.items()}
        row.setdefault("forward_s", medians["forward"])
        row[f"{block}_forward_s"] = medians["forward"]
        for name in functions:
            # Each call divided by the forward pass of the same repeat: pairs share the machine's
            # load at that moment, so their ratio is steadier than a ratio of two medians.
            ratios = [spent / forward_spent for spent, forward_spent in zip(times[name], times["forward"])]
            row[f"{name}_s"] = medians[name]
            row[f"{name}_per_forward"] = statistics.median(ratios)
            row[f"{name}_per_forward_quartiles"] = quartiles(ratios)
            row[f"{name}_median_over_forward_median"] = medians[name] / medians["forward"]
    if exact:
        row["exact_reverse_per_D_forwards"] = row["exact_reverse_per_forward"] / dim
    return row


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (e.g. "VmRSS", "VmHWM") in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_memory_child(dim: int, batch: int, chunk_rows: int | None, trace: str) -> None:
    """Run in a subprocess: print the peak-RSS growth (MiB) of one FLIPD call.

    The high-water mark is reset just before the call (``/proc/self/clear_refs``), so neither
    imports nor the parent process (whose peak a forked child inherits) count.
    """
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = MLP(dim).eval()
    x = torch.randn(batch, dim)
    with torch.no_grad():
        model(x, torch.full((batch,), 0.05))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak resident set size (VmHWM) to the current one
    resident_now = _status_mib("VmRSS")
    flipd.flipd(model, x, t0=0.05, trace=trace, batch_size=batch, chunk_rows=chunk_rows)
    print(json.dumps({"peak_growth_mib": _status_mib("VmHWM") - resident_now}))


def peak_memory(dim: int, batch: int, chunk_rows: int | None, trace: str) -> float:
    """Peak-RSS growth (MiB) of one FLIPD call, measured by :func:`peak_memory_child` in a fresh
    Python process that imports this same flipd."""
    source_root = str(Path(flipd.__file__).resolve().parent.parent)
    code = (
        "import sys; sys.path.insert(0, %r); from flipd.bench import speed; speed.peak_memory_child(%d, %d, %r, %r)"
        % (source_root, dim, batch, chunk_rows, trace)
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_growth_mib"]


def write_markdown(result: dict, path: Path) -> None:
    """Write the markdown report of a speed record ``result`` (as in ``speed.json``) to ``path``."""
    write_text(path, render_markdown(result))


def render_markdown(result: dict) -> str:
    """The markdown report of a speed record ``result`` (as in ``speed.json``)."""
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
        f"Batch of {result['rows'][0]['batch']} points; {result['repeats']} repeats (exact trace at "
        "D > 100: a third as many), each configuration interleaved with forward passes of the same "
        "network in its own block. A ratio is the median over repeats of the call's time divided by "
        "the forward pass of the same repeat; the forward column is the median forward time.",
        "",
        "| network | D | forward (ms) | autograd floor / forward | Hutchinson 1 probe, reverse / forward "
        "| same, 25–75 % of repeats "
        "| Hutchinson 1 probe, forward mode / forward "
        "| Hutchinson 50 probes / forward | exact trace / forward | exact / (D · forward) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        low, high = row.get("hutchinson1_reverse_per_forward_quartiles", (float("nan"), float("nan")))
        lines.append(
            f"| {row['network_description']} | {row['D']} | {1000 * row['forward_s']:.1f} "
            f"| {row['autograd_floor_per_forward']:.2f} "
            f"| {row['hutchinson1_reverse_per_forward']:.2f} | {low:.2f}–{high:.2f} "
            f"| {row['hutchinson1_forward_per_forward']:.2f} | {row['hutchinson50_reverse_per_forward']:.1f} "
            f"| {row.get('exact_reverse_per_forward', float('nan')):.1f} "
            f"| {row.get('exact_reverse_per_D_forwards', float('nan')):.2f} |"
        )
    lines += [
        "",
        "Targets: Hutchinson with one probe ≤ 2.0 forward passes; exact trace ≤ 1.2·D forward passes.",
        "The autograd floor is one forward pass that keeps the graph plus one vector-Jacobian "
        "product with respect to the input (plain `torch.autograd.grad`): the least any "
        "autodiff Hutchinson probe can cost, since the estimator needs both the output and vᵀJv. "
        "The 25–75 % column gives the quartiles of the per-repeat ratio: the spread this "
        "machine's load puts on it.",
        "",
        "## Peak memory of one FLIPD call on the plain network (growth of peak RSS, MiB)",
        "",
        "| D | trace | chunked (default chunk_rows) | unchunked (all probes in one call) |",
        "|---:|---|---:|---:|",
    ]
    for row in result["memory"]:
        lines.append(f"| {row['D']} | {row['trace']} | {row['chunked_mib']:.0f} | {row['unchunked_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flipd.bench speed``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m flipd.bench speed", description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 100, 784])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-dims", type=int, nargs="*", default=[100, 784])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--skip-exact", action="store_true", help="time the Hutchinson runs only")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed",
                        help="results path without suffix: writes OUT.json and OUT.md (default %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: rewrite OUT.md from OUT.json")
    args = parser.parse_args(argv)
    if args.report_only:
        return rewrite_report(args.out.with_suffix(".json"), args.out.with_suffix(".md"), render_markdown)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for kind in args.networks:
        for dim in args.dims:
            rows.append(time_dimension(kind, dim, args.batch, args.repeats, exact=not args.skip_exact))
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
        "command": "python -m flipd.bench speed " + " ".join(argv if argv is not None else sys.argv[1:]),
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
    json_path = args.out.with_suffix(".json")
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {json_path} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
