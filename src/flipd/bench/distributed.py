"""Points per second of ``flipd estimate`` in one process and under torchrun: ``python -m flipd.bench distributed``.

One small flipd checkpoint (an MLP U-net trained for a few steps on the lollipop: **timing
only**, its LIDs mean nothing) and the same ``-n`` lollipop points are estimated by

- ``python -m flipd estimate ...`` (one process), and
- ``python -m torch.distributed.run --standalone --nproc-per-node=P -m flipd estimate ...``
  (P processes over gloo, the chunks dealt round-robin),

each process with one torch thread (``OMP_NUM_THREADS=1``, ``--threads 1``), alternating the
two for ``--repeats`` rounds. Two rates are reported, medians over the rounds:

- *estimation*: points / the ``estimate_s`` of the run's metadata, rank 0's time from opening
  the chunked run to every rank being done (it includes each process's first-call warm-up);
- *end to end*: points / the wall time of the whole command (interpreter and torch start-up,
  the launcher, loading, the table).

Every round also checks that the P-process table equals the one-process table bitwise. The
load average is recorded before and after every run: on a machine shared with other work the
speed-up says as much about the neighbours as about flipd. Results go to ``distributed.json``
and ``distributed.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs.environment import machine_info, package_versions
from ..runs.files import load_average, read_table, write_json, write_text
from ._report import git_revision, markdown_table

#: Training of the timing-only model: a few steps suffice (its estimates are not the point).
TRAIN_ARGUMENTS = ("-n", "2000", "--steps", "30", "--threads", "1", "--quiet")
#: The speed-up the benchmark aims at for 2 processes on 2 cores.
TARGET_SPEEDUP = 1.7


def _environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    package_root = str(Path(__file__).resolve().parents[2])
    path = environment.get("PYTHONPATH")
    return {**environment, "OMP_NUM_THREADS": "1", "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


def _run(command: list[str]) -> float:
    """Run ``command`` (output shown only on failure); return its wall time in seconds."""
    began = time.perf_counter()
    completed = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return seconds


def estimate_command(model: Path, table: Path, points: int, chunk_size: int, processes: int) -> list[str]:
    """The command of one timed run: plain ``python -m flipd`` for one process, torchrun for more."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, "-m", "flipd", "estimate", "lollipop", "-m", str(model), "-n", str(points), "-o", str(table),
            "--chunk-size", str(chunk_size), "--threads", "1", "--quiet", "--force"]


def _timed_run(model: Path, table: Path, points: int, chunk_size: int, processes: int) -> dict[str, Any]:
    before = load_average()
    wall = _run(estimate_command(model, table, points, chunk_size, processes))
    metadata = json.loads(table.with_suffix(".json").read_text())
    estimate_seconds = float(metadata["timings"]["estimate_s"])
    return {
        "processes": processes, "wall_s": round(wall, 3), "estimate_s": estimate_seconds,
        "estimation_points_per_s": points / estimate_seconds, "end_to_end_points_per_s": points / wall,
        "chunk_ranks": sorted(set(metadata["chunks"]["ranks"])), "load_before": before, "load_after": load_average(),
    }


def run_benchmark(work: Path, *, points: int, chunk_size: int, processes: int, repeats: int) -> dict[str, Any]:
    """Train the timing model (once per ``work`` folder), then time ``repeats`` alternating rounds.

    Returns:
        A JSON-ready dict: settings, every run, medians, the speed-up and whether the tables agreed.
    """
    model = work / "model"
    if not (model / "flipd_model.json").is_file():
        _run([sys.executable, "-m", "flipd", "train", "lollipop", "--out", str(model), *TRAIN_ARGUMENTS, "--force"])
    runs: list[dict[str, Any]] = []
    equal: list[bool] = []
    for round_index in range(repeats):
        order = (1, processes) if round_index % 2 == 0 else (processes, 1)
        tables = {}
        for count in order:
            tables[count] = work / f"lid-{count}.parquet"
            runs.append({"round": round_index, **_timed_run(model, tables[count], points, chunk_size, count)})
        equal.append(bool(read_table(tables[1]).equals(read_table(tables[processes]))))

    def median(count: int, key: str) -> float:
        return statistics.median(run[key] for run in runs if run["processes"] == count)

    medians = {
        str(count): {key: median(count, key) for key in ("estimation_points_per_s", "end_to_end_points_per_s", "estimate_s", "wall_s")}
        for count in (1, processes)
    }
    speedup = {
        key: medians[str(processes)][key] / medians["1"][key]
        for key in ("estimation_points_per_s", "end_to_end_points_per_s")
    }
    return {
        "benchmark": "distributed",
        "settings": {"points": points, "chunk_size": chunk_size, "processes": processes, "repeats": repeats,
                     "threads_per_process": 1, "data": "lollipop", "model": "MLP U-net, timing only",
                     "train_arguments": list(TRAIN_ARGUMENTS), "backend": "gloo"},
        "runs": runs, "medians": medians, "speedup": speedup, "tables_equal": equal,
        "target": {"speedup": TARGET_SPEEDUP, "met": speedup["estimation_points_per_s"] >= TARGET_SPEEDUP},
        "machine": machine_info(), "versions": package_versions(("torch", "numpy")), "commit": git_revision(Path(__file__).parent),
    }


def render_markdown(result: dict[str, Any], command: str) -> str:
    """The report: settings, medians and speed-ups, every run with the load beside it."""
    settings, medians, processes = result["settings"], result["medians"], result["settings"]["processes"]
    rows = [
        (f"{count} process{'es' if count > 1 else ''}", medians[str(count)]["estimation_points_per_s"],
         medians[str(count)]["end_to_end_points_per_s"], medians[str(count)]["estimate_s"], medians[str(count)]["wall_s"])
        for count in (1, processes)
    ]
    rows.append((f"speed-up ({processes} / 1)", result["speedup"]["estimation_points_per_s"],
                 result["speedup"]["end_to_end_points_per_s"], None, None))
    every = [
        (run["round"], run["processes"], run["estimate_s"], run["wall_s"], run["estimation_points_per_s"],
         " / ".join(map(str, run["load_before"] or [])), " / ".join(map(str, run["load_after"] or [])))
        for run in result["runs"]
    ]
    target = result["target"]
    return "\n".join([
        "# flipd estimate: one process against torchrun",
        "",
        f"Command: `{command}`",
        "",
        f"{settings['points']} lollipop points, chunks of {settings['chunk_size']}, FLIPD with the default settings "
        f"(exact trace, t0 = 0.05), one torch thread per process, gloo; the model is an MLP U-net trained for "
        f"{TRAIN_ARGUMENTS[3]} steps (timing only). Medians over {settings['repeats']} alternating rounds; machine: "
        f"{result['machine'].get('cores')} CPU cores, commit {result['commit']}.",
        "",
        markdown_table(["run", "estimation (points/s)", "end to end (points/s)", "estimate_s", "wall_s"], rows, digits=2),
        "",
        f"Tables of the {processes}-process runs equal the one-process tables bitwise in every round: "
        f"{all(result['tables_equal'])}. Target: {processes} processes at least {target['speedup']}x the points per "
        f"second of one (estimation rate): {'met' if target['met'] else 'not met'}.",
        "",
        "*Estimation* is points / rank 0's `estimate_s` (opening the chunked run to every rank done, each "
        "process's first-call warm-up included); *end to end* is points / the wall time of the command (start-up, "
        "launcher, loading and the table included).",
        "",
        "## Every run (load average 1 / 5 / 15 min before and after)",
        "",
        markdown_table(["round", "processes", "estimate_s", "wall_s", "points/s", "load before", "load after"], every, digits=2),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flipd.bench distributed [--points N] [--processes P] [--repeats R] [--chunk-size C] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m flipd.bench distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000, help="lollipop points per run")
    parser.add_argument("--processes", type=int, default=2, help="processes of the torchrun runs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians reported)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="points per chunk")
    parser.add_argument("--work", type=Path, default=Path("cache/bench-distributed"), help="folder for the model and tables")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for distributed.json/.md")
    args = parser.parse_args(argv)
    if min(args.points, args.repeats, args.chunk_size) < 1 or args.processes < 2:
        parser.error("--points, --repeats and --chunk-size must be positive and --processes at least 2")
    command = "python -m flipd.bench distributed " + " ".join([
        "--points", str(args.points), "--processes", str(args.processes), "--repeats", str(args.repeats),
        "--chunk-size", str(args.chunk_size), "--out", str(args.out),
    ])
    args.work.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(args.work, points=args.points, chunk_size=args.chunk_size, processes=args.processes,
                           repeats=args.repeats)
    result["command"] = command
    write_json(args.out / "distributed.json", result)
    write_text(args.out / "distributed.md", render_markdown(result, command))
    one, many = result["medians"]["1"], result["medians"][str(args.processes)]
    print(f"1 process {one['estimation_points_per_s']:.0f} points/s, {args.processes} processes "
          f"{many['estimation_points_per_s']:.0f} points/s ({result['speedup']['estimation_points_per_s']:.2f}x); "
          f"tables equal: {all(result['tables_equal'])}; written to {args.out}/distributed.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
