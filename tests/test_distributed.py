"""Estimation split over processes: ``torchrun -m flipd`` (gloo on CPU) against one process.

The multi-process runs are real: torchrun (``python -m torch.distributed.run``) starts two
processes of ``python -m flipd`` in a subprocess; their tables are compared bitwise with a
one-process run of the same command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import flipd
from flipd.cli import app
from flipd.runs.chunks import open_chunked_run
from flipd.runs.distributed import Launch, detect_launch, rank_group

PACKAGE_ROOT = str(Path(flipd.__file__).resolve().parents[1])
TINY_TRAIN = ("-n", "1500", "--steps", "40", "--batch-size", "256", "--widths", "32,32", "--threads", "1", "--quiet")
runner = CliRunner()


def flipd_here(*args: str | Path):
    """The command line in this process (one process, no launcher)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def torchrun_command(*args: str | Path, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "flipd", *(str(a) for a in args)]


def launch_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**environment, "PYTHONPATH": PACKAGE_ROOT, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str | Path, processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args, processes=processes), env=launch_environment(),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_by_hand(*args: str | Path, processes: int = 2, timeout: float = 300) -> list[tuple[int, str]]:
    """Start the ranks as a launcher without a supervising agent would (the launcher's variables
    set by hand, as on a cluster scheduler): (exit status, stderr) of each rank, by rank."""
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, "-m", "flipd", *(str(a) for a in args)], stderr=subprocess.PIPE, text=True,
            env={**launch_environment(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(processes),
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        )
        for rank in range(processes)
    ]
    return [(process.wait(timeout=timeout), process.stderr.read()) for process in ranks]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "lollipop"
    result = flipd_here("train", "lollipop", "--out", directory, *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    return directory


def estimate_args(model: Path, table: Path, *extra: str) -> list:
    trace = () if "nb" in extra else ("--trace", "hutchinson", "--probes", "3")  # NB takes no trace options
    return ["estimate", "lollipop", "-m", model, "-n", "90", "-o", table, "--chunk-size", "12", *trace,
            "--batch-size", "8", "--seed", "5", "--threads", "1", "--quiet", *extra]


def mark_chunks(directory: Path) -> dict[int, float]:
    """Give every finished chunk a recognisable compute time (1000 + its index, in its info):
    a resumed run that loads a chunk reports that time, one that recomputes it its own."""
    marks = {}
    for path in sorted(directory.glob("chunk-*.npz")):
        index = int(path.name[6:12])
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name != "info"}
            info = json.loads(str(archive["info"]))
        info["seconds"] = marks[index] = 1000.0 + index
        with path.open("wb") as stream:
            np.savez(stream, **arrays, info=np.array(json.dumps(info)))
    return marks


def assert_chunks_loaded_not_recomputed(table: Path, marks: dict[int, float]) -> None:
    chunks = json.loads(table.with_suffix(".json").read_text())["chunks"]
    seconds = chunks["seconds"]
    assert chunks["resumed_chunks"] == len(marks)
    assert all(seconds[index] == mark for index, mark in marks.items())  # loaded from the files
    assert all(seconds[index] < 1000 for index in range(len(seconds)) if index not in marks)  # computed now


# --------------------------------------------------------------------------- launch mode


def test_launch_is_read_from_the_launcher_variables():
    assert detect_launch({}) == Launch()
    assert not detect_launch({"WORLD_SIZE": "1", "RANK": "0"}).distributed
    launched = detect_launch({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
                              "MASTER_PORT": "29500"})
    assert launched == Launch(rank=3, world_size=4, local_rank=1) and launched.distributed


@pytest.mark.parametrize("environ, fragment", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "RANK=2 is outside 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1"}, "MASTER_ADDR is not set"),
])
def test_bad_launcher_variables_are_named(environ, fragment):
    with pytest.raises(ValueError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        detect_launch(environ)


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with rank_group("cpu") as group:
        assert group.is_main and group.world_size == 1 and group.backend is None
        assert not torch.distributed.is_initialized()
        with pytest.raises(KeyError), group.agree("a step that fails"):
            raise KeyError("raised as it is")
        assert group.share([4, 2], 2) == [4, 2]


def test_bad_launcher_variables_are_a_one_line_error(model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    result = flipd_here(*estimate_args(model, tmp_path / "x.parquet"))
    assert result.exit_code == 2 and "RANK is not set" in result.stderr and "Traceback" not in result.output


# --------------------------------------------------------------------------- resume with any finished chunks


def test_resume_recomputes_only_the_missing_chunks_whatever_they_are(model, tmp_path):
    reference, table = tmp_path / "reference.parquet", tmp_path / "gaps.parquet"
    assert flipd_here(*estimate_args(model, reference)).exit_code == 0
    assert flipd_here(*estimate_args(model, table, "--stop-after-chunks", "5")).exit_code == 130
    chunks = table.with_name(table.name + ".chunks")
    for index in (0, 3):  # gaps anywhere, as several processes leave them
        (chunks / f"chunk-{index:06d}.npz").unlink()
    marks = mark_chunks(chunks)
    assert sorted(marks) == [1, 2, 4]
    assert flipd_here(*estimate_args(model, table, "--resume")).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
    assert_chunks_loaded_not_recomputed(table, marks)


def test_a_chunked_run_deals_the_unfinished_chunks_in_turn(tmp_path):
    from flipd.jobs.curve import CurveSettings

    settings = CurveSettings(times=(0.1, 0.2, 0.3), chunk_size=10)
    run = open_chunked_run(tmp_path / "run", {"data": "x"}, settings, 95)
    assert run.n_chunks == 10 and run.owned == tuple(range(10)) and run.finished == ()
    assert run.bounds(9) == (90, 95) and run.points_owned == 95


# --------------------------------------------------------------------------- two processes = one process


@pytest.mark.parametrize("method", ["flipd", "nb"])
def test_two_processes_give_the_table_of_one(model, tmp_path, method):
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    extra = ("--method", method) if method != "flipd" else ()
    if method == "nb":
        extra = (*extra, "-n", "30")  # NB draws many noisy copies per point
    assert flipd_here(*estimate_args(model, one, *extra)).exit_code == 0
    completed = torchrun(*estimate_args(model, two, *extra))
    assert completed.returncode == 0, completed.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(two), pd.read_parquet(one))  # bitwise: no tolerance
    metadata = json.loads(two.with_suffix(".json").read_text())
    assert metadata["processes"] == {"world_size": 2, "backend": "gloo"}
    ranks = metadata["chunks"]["ranks"]
    assert ranks == [index % 2 for index in range(len(ranks))]  # rank r took chunks r, r + 2, ...
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("two", ".two")))
    assert leftovers == ["two.json", "two.parquet"]  # one table, one sidecar; no chunks, lock or temporary files


def test_two_processes_give_the_curves_of_one(model, tmp_path):
    args = ["curve", "lollipop", "-m", model, "-n", "20", "--chunk-size", "6", "--trace", "hutchinson", "--probes",
            "2", "--steps", "8", "--t-min", "0.02", "--t-max", "0.5", "--threads", "1", "--quiet"]
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert flipd_here(*args, "-o", one).exit_code == 0
    completed = torchrun(*args, "-o", two, "--plot", tmp_path / "plots")
    assert completed.returncode == 0, completed.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(two), pd.read_parquet(one))
    assert json.loads(two.with_suffix(".json").read_text())["chunks"]["ranks"] == [0, 1, 0, 1]
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["lollipop_curves.png"]


def test_an_error_on_rank_0_stops_every_process(model, tmp_path):
    table = tmp_path / "taken.parquet"
    table.write_text("not ours")
    (status0, stderr0), (status1, stderr1) = launch_by_hand(*estimate_args(model, table), timeout=120)
    assert status0 == 2 and error_lines(stderr0) == [
        f"error: {str(table)!r} already exists; pass --force to overwrite it, or choose another --out."]
    assert status1 == 1 and len(error_lines(stderr1)) == 1
    assert "stopped while checking the outputs: rank 0 of 2 failed (FileExistsError" in stderr1
    assert table.read_text() == "not ours" and not table.with_name(table.name + ".chunks").exists()


def test_a_rank_whose_partner_never_comes_stops_after_the_timeout(model, tmp_path):
    port = free_port()
    environment = {**launch_environment(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    alone = subprocess.run([sys.executable, "-m", "flipd", *map(str, estimate_args(model, tmp_path / "x.parquet")),
                            "--dist-timeout", "0.05"], env=environment, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 1 and len(error_lines(alone.stderr)) == 1, alone.stderr
    assert "rank 0 of 2 could not meet the other processes at 127.0.0.1:" in alone.stderr
    assert "within 0.05 minutes" in alone.stderr and not (tmp_path / "x.parquet").exists()


@pytest.mark.slow
def test_a_frozen_rank_makes_the_other_stop_after_the_timeout(model, tmp_path):
    """Rank 1 stops answering (SIGSTOP) after its first chunk: rank 0 does its chunks, waits
    --dist-timeout at the last meeting point and fails, naming the step."""
    table = tmp_path / "run.parquet"
    port = free_port()
    args = [*map(str, estimate_args(model, table, "-n", "400", "--probes", "64")), "--dist-timeout", "0.1"]
    ranks = [
        subprocess.Popen([sys.executable, "-m", "flipd", *args], stderr=subprocess.PIPE, text=True,
                         env={**launch_environment(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        for rank in range(2)
    ]
    try:
        chunk = table.with_name(table.name + ".chunks") / "chunk-000001.npz"
        deadline = time.monotonic() + 240
        while not chunk.exists() and ranks[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ranks[1].poll() is None, "rank 1 ended before it could be frozen"
        os.kill(ranks[1].pid, signal.SIGSTOP)
        status = ranks[0].wait(timeout=240)
        stderr = ranks[0].stderr.read()
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert status == 1 and "did not answer while computing the chunks" in stderr, stderr
    assert not table.exists()


def test_interrupted_processes_then_resume_with_two(model, tmp_path):
    reference, table = tmp_path / "reference.parquet", tmp_path / "run.parquet"
    assert flipd_here(*estimate_args(model, reference)).exit_code == 0
    interrupted = torchrun(*estimate_args(model, table, "--stop-after-chunks", "2"))
    assert interrupted.returncode != 0 and "--resume" in interrupted.stderr
    assert not table.exists()
    marks = mark_chunks(table.with_name(table.name + ".chunks"))
    assert len(marks) >= 2
    resumed = torchrun(*estimate_args(model, table, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
    assert_chunks_loaded_not_recomputed(table, marks)


# --------------------------------------------------------------------------- a killed rank


def _workers(launcher: int) -> dict[int, int]:
    """Rank -> process id of the workers that the torchrun process ``launcher`` started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            variables = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher:
            for variable in variables:
                if variable.startswith(b"RANK="):
                    found[int(variable[5:])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank processes through /proc")
def test_a_killed_rank_then_resume_recomputes_no_finished_chunk(model, tmp_path):
    """SIGKILL rank 1 after its first chunk; torchrun stops the job; --resume finishes it."""
    table, reference = tmp_path / "killed.parquet", tmp_path / "reference.parquet"
    args = ["estimate", "lollipop", "-m", model, "-n", "1600", "--chunk-size", "20", "--trace", "hutchinson",
            "--probes", "128", "--batch-size", "10", "--threads", "1", "--quiet"]
    chunks = table.with_name(table.name + ".chunks")
    launcher = subprocess.Popen(torchrun_command(*args, "-o", table), env=launch_environment(),
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (chunks / "chunk-000001.npz").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _workers(launcher.pid)
        if launcher.poll() is not None or 1 not in workers:
            pytest.fail(f"the job ended before rank 1 could be killed: {launcher.communicate()[1]}")
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0 and not table.exists()
    marks = mark_chunks(chunks)
    assert 1 in marks and len(marks) < 80, stderr  # rank 1 had finished a chunk; the job had not
    resumed = torchrun(*args, "-o", table, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert flipd_here(*args, "-o", reference).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
    assert_chunks_loaded_not_recomputed(table, marks)


def test_a_rank_that_fails_mid_run_stops_the_other(model, tmp_path):
    """Rank 1 cannot save its chunk (a folder is in the way); rank 0 stops with rank 1's message."""
    table = tmp_path / "run.parquet"
    assert flipd_here(*estimate_args(model, table, "--stop-after-chunks", "2")).exit_code == 130
    chunks = table.with_name(table.name + ".chunks")
    (chunks / "chunk-000003.npz").mkdir()  # left: chunks 2..7; rank 1 takes 3, 5, 7
    (status0, stderr0), (status1, stderr1) = launch_by_hand(*estimate_args(model, table, "--resume"))
    assert status1 == 2 and len(error_lines(stderr1)) == 1 and "Is a directory" in stderr1
    assert status0 == 1 and len(error_lines(stderr0)) == 1, stderr0
    assert "rank 1 of 2 failed (IsADirectoryError" in stderr0 and "--resume to continue" in stderr0
    assert not list(chunks.glob("failed-rank-*")) and not table.exists()
    (chunks / "chunk-000003.npz").rmdir()
    resumed = torchrun(*estimate_args(model, table, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference.parquet"
    assert flipd_here(*estimate_args(model, reference)).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
