"""Peak memory of ``flipd estimate`` or ``flipd train`` on image folders of growing size: ``python -m flipd.bench stream_memory``.

Streamed input keeps the peak flat.

Folders of small greyscale noise images (generated on the fly, PNG) are estimated by the real
command, ``python -m flipd estimate FOLDER -m MODEL --trace hutchinson`` (one probe), or, with
``--command train``, trained on by ``python -m flipd train FOLDER -n COUNT --steps 20`` (the
default MLP U-net on the flattened images: the statistics pass over every image, the held-out
images and 20 batches), each run in its own child process; its peak resident set size is the
kernel's ``ru_maxrss`` of that child (``os.wait4``). The estimate's model is a flipd checkpoint
of an untrained MLP U-net (random weights: the numbers measure memory and speed, not LID).
Targets: peak RSS at the largest folder at most 1.2x that at the smallest.

Usage:
    python -m flipd.bench stream_memory                       # 5,000 and 50,000 8x8 images
    python -m flipd.bench stream_memory --command train       # the same folders, flipd train
    python -m flipd.bench stream_memory --counts 200 2000 --out /tmp/stream   # a quick check
    python -m flipd.bench stream_memory --report-only         # the report from its record
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..runs.environment import machine_info, package_versions
from ..runs.files import load_average, write_json, write_text
from ._report import git_revision, markdown_table, rewrite_report

#: The folder holding the flipd package, for the child processes.
SOURCE = Path(__file__).resolve().parents[2]

#: Peak RSS at the largest folder over that at the smallest must stay below this.
TARGET_RATIO = 1.2


def make_folder(folder: Path, count: int, size: int, seed: int = 0) -> int:
    """``count`` greyscale noise images of ``size`` x ``size`` pixels as PNG files; their bytes."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return sum(file.stat().st_size for file in folder.iterdir())


def make_model(folder: Path, dim: int) -> Path:
    """A flipd checkpoint of an untrained MLP U-net on D = ``dim`` (random weights, seed 0)."""
    import torch

    from flipd.models.checkpoint import DiffusionModel
    from flipd.models.mlp import MLPUNet, MLPUNetConfig

    torch.manual_seed(0)
    network = MLPUNet(MLPUNetConfig(data_dim=dim, widths=(32, 32)))
    return DiffusionModel(network, shift=torch.zeros(dim), scale=torch.ones(dim)).save(folder)


def estimate_command(folder: Path, model: Path, out: Path, *, workers: int, threads: int, chunk_size: int) -> list[str]:
    """The ``flipd estimate`` command line measured on ``folder``."""
    return [sys.executable, "-m", "flipd", "estimate", str(folder), "-m", str(model), "-o", str(out),
            "--trace", "hutchinson", "--quiet", "--threads", str(threads), "--workers", str(workers),
            "--chunk-size", str(chunk_size)]


def train_command(folder: Path, out: Path, *, count: int, steps: int, workers: int, threads: int) -> list[str]:
    """The ``flipd train`` command line measured on ``folder``: every one of its ``count`` images."""
    return [sys.executable, "-m", "flipd", "train", str(folder), "-o", str(out), "-n", str(count), "--steps", str(steps),
            "--quiet", "--threads", str(threads), "--workers", str(workers)]


def measure(command: list[str], *, threads: int) -> dict:
    """Run a flipd ``command`` line in a child process (``threads`` OpenMP threads); its peak
    RSS and wall time."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    child = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    errors = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[1:4])} failed: {errors}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds, "command": " ".join(command[1:])}


def render(result: dict) -> str:
    """The markdown report of a record."""
    if result["settings"].get("command", "estimate") == "train":
        return render_train(result)
    runs, settings = result["runs"], result["settings"]
    rows = [[r["images"], f"{r['float32_points_mib']:.2f}", f"{r['folder_mib']:.2f}", f"{r['peak_rss_mib']:.1f}",
             f"{r['seconds']:.1f}", f"{r['images_per_second']:.0f}"] for r in runs]
    machine = result["machine"]
    return "\n".join([
        "# Peak memory of flipd estimate on growing image folders (streamed input)", "",
        f"Command: `{result['command']}`", "",
        f"Date: {result['date']}. Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; "
        f"commit {result['commit']}. Load average before/after: {result['load_average'][0]} / {result['load_average'][1]} "
        "(the cores are shared with other jobs, so the times are only indicative).", "",
        f"Each folder holds greyscale noise images of {settings['size']}x{settings['size']} pixels (PNG), estimated by "
        f"`flipd estimate FOLDER -m MODEL --trace hutchinson --workers {settings['workers']} --threads {settings['threads']} "
        f"--chunk-size {settings['chunk_size']}` in its own child process (an untrained MLP U-net, widths 32-32: "
        "memory and speed only, the LID values mean nothing). Peak RSS is the child's `ru_maxrss`; "
        "the time includes starting Python and the header and PNG-size passes over the folder.", "",
        markdown_table(["images", "points as float32 (MiB)", "folder (MiB)", "peak RSS (MiB)", "seconds", "images/s"], rows), "",
        f"Peak RSS at {runs[-1]['images']} images / at {runs[0]['images']}: **{result['peak_ratio']:.3f}x** "
        f"(target at most {result['target_ratio']}x: {'met' if result['met'] else 'not met'}).", "",
    ])


def render_train(result: dict) -> str:
    """The markdown report of a ``--command train`` record."""
    runs, settings, machine = result["runs"], result["settings"], result["machine"]
    rows = [[r["images"], f"{r['float32_points_mib']:.2f}", f"{r['folder_mib']:.2f}", f"{r['peak_rss_mib']:.1f}",
             f"{r['seconds']:.1f}"] for r in runs]
    return "\n".join([
        "# Peak memory of flipd train on growing image folders (streamed input)", "",
        f"Command: `{result['command']}`", "",
        f"Date: {result['date']}. Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; "
        f"commit {result['commit']}. Load average before/after: {result['load_average'][0]} / {result['load_average'][1]} "
        "(the cores are shared with other jobs, so the times are only indicative).", "",
        f"Each folder holds greyscale noise images of {settings['size']}x{settings['size']} pixels (PNG), trained on by "
        f"`flipd train FOLDER -n IMAGES --steps {settings['steps']} --workers {settings['workers']} --threads "
        f"{settings['threads']}` in its own child process: the default MLP U-net (widths 256-256-256) on the flattened "
        "images, batches of 512, 5% of the images held out. Every image is read in the pass that checks the values "
        "and fits the standardisation, the held-out ones once more, and each step reads its batch. Peak RSS is the "
        "child's `ru_maxrss`; the time includes starting Python, the header and PNG-size passes over the folder and "
        "saving the checkpoint.", "",
        markdown_table(["images", "points as float32 (MiB)", "folder (MiB)", "peak RSS (MiB)", "seconds"], rows), "",
        f"Peak RSS at {runs[-1]['images']} images / at {runs[0]['images']}: **{result['peak_ratio']:.3f}x** "
        f"(target at most {result['target_ratio']}x: {'met' if result['met'] else 'not met'}).", "",
    ])


def record_stem(command: str) -> str:
    """The file name (without suffix) of a command's record and report."""
    return "stream_memory" if command == "estimate" else f"stream_memory_{command}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flipd.bench stream_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=("estimate", "train"), default="estimate",
                        help="the flipd command measured (train: record stream_memory_train.json/.md)")
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 50000], help="images per folder")
    parser.add_argument("--size", type=int, default=8, help="image side in pixels (greyscale)")
    parser.add_argument("--workers", type=int, default=0, help="--workers of the command")
    parser.add_argument("--threads", type=int, default=1, help="--threads of the command")
    parser.add_argument("--steps", type=int, default=20, help="--steps of flipd train")
    parser.add_argument("--chunk-size", type=int, default=1024, help="--chunk-size of flipd estimate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for stream_memory.json/.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report (.md) from its record (.json) of --command")
    args = parser.parse_args(argv)
    stem = record_stem(args.command)
    if args.report_only:
        return rewrite_report(args.out / f"{stem}.json", args.out / f"{stem}.md", render)
    load_before = load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="flipd-stream-") as scratch:
        root = Path(scratch)
        model = make_model(root / "model", args.size * args.size) if args.command == "estimate" else None
        for count in sorted(args.counts):
            began = time.perf_counter()
            folder_bytes = make_folder(root / f"images{count}", count, args.size)
            generated = time.perf_counter() - began
            folder = root / f"images{count}"
            if model is not None:
                command = estimate_command(folder, model, root / f"lid{count}.parquet", workers=args.workers,
                                           threads=args.threads, chunk_size=args.chunk_size)
            else:
                command = train_command(folder, root / f"model{count}", count=count, steps=args.steps,
                                        workers=args.workers, threads=args.threads)
            run = measure(command, threads=args.threads)
            run.update(images=count, folder_mib=folder_bytes / 2**20, float32_points_mib=count * args.size**2 * 4 / 2**20,
                       generate_seconds=generated, images_per_second=count / run["seconds"])
            runs.append(run)
            print(f"{count} images: peak RSS {run['peak_rss_mib']:.1f} MiB, {run['seconds']:.1f} s", file=sys.stderr)
    ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    command = "python -m flipd.bench stream_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command.strip(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": package_versions(), "commit": git_revision(Path(__file__).parent),
        "load_average": [load_before, load_average()],
        "settings": {"size": args.size, "workers": args.workers, "threads": args.threads, "chunk_size": args.chunk_size,
                     **({"command": "train", "steps": args.steps} if args.command == "train" else {})},
        "runs": runs, "peak_ratio": ratio, "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{stem}.json", result)
    text = render(result)
    write_text(args.out / f"{stem}.md", text)
    print(text)
    return 0
