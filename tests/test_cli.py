"""End-to-end tests of the ``flipd`` command line on tiny configurations."""

from __future__ import annotations

import json
import os
import pickle
import signal
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

runner = CliRunner()
#: The folder holding the flipd package under test, for subprocesses.
PACKAGE_ROOT = str(Path(flipd.__file__).resolve().parents[1])
COMMANDS = ("info", "train", "estimate", "curve", "sample", "bench", "demo")
#: A deliberately tiny training run: enough for a valid checkpoint, not for good estimates.
TINY_TRAIN = ("-n", "1500", "--steps", "40", "--batch-size", "256", "--widths", "32,32", "--threads", "1", "--quiet")


def flipd(*args: str | Path):
    """Run the command line in-process; return click's Result."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> None:
    """Exit status 2, one line on stderr naming the problem, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    message = errors[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="session")
def lollipop_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("models") / "lollipop"
    result = flipd("train", "lollipop", "--out", directory, *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    return directory


# --------------------------------------------------------------------------- help and info


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = flipd(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"flipd {command}" in result.output


def test_bench_lists_the_benchmarks_and_forwards_options():
    from flipd.bench.__main__ import BENCHMARKS

    result = flipd("bench")
    assert result.exit_code == 2 and all(name in result.stdout for name in BENCHMARKS)
    name = sorted(BENCHMARKS)[0]
    result = runner.invoke(app, ["bench", name, "--help"])
    assert result.exit_code == 0 and "usage:" in result.output


def test_version_and_info_json():
    result = flipd("--version")
    assert result.exit_code == 0 and result.output.startswith("flipd ")
    result = flipd("info", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["versions"]["torch"]
    assert record["threads"]["torch"] >= 1
    assert "lollipop" in record["datasets"]["synthetic"]
    assert set(record["caches"]) >= {"demo_models", "huggingface_hub"}


def test_module_entry_point_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "flipd.cli", "--version"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": PACKAGE_ROOT},
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("flipd ")


# --------------------------------------------------------------------------- train -> estimate -> curve


def test_checkpoint_is_safetensors_and_json(lollipop_model):
    names = sorted(p.name for p in lollipop_model.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((lollipop_model / "config.json").read_text())
    assert config["metadata"]["data"]["spec"] == "lollipop"
    assert not any(p.name.startswith(".") for p in lollipop_model.parent.iterdir())  # no staging left


def test_estimate_writes_table_metadata_and_plots(lollipop_model, tmp_path):
    table = tmp_path / "out" / "lollipop.parquet"
    plots = tmp_path / "plots"
    result = flipd("estimate", "lollipop", "--model", lollipop_model, "-n", "64", "--out", table,
                   "--plot", plots, "--seed", "3", "--threads", "1")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    assert len(frame) == 64
    for column in ("index", "lid", "t0", "sigma", "delta", "method", "trace", "stderr", "lid_true", "component"):
        assert column in frame.columns
    assert np.isfinite(frame["lid"]).all()
    assert (frame["method"] == "flipd").all() and (frame["trace"] == "exact").all()
    assert np.allclose(frame["t0"], 0.05)
    assert set(frame["lid_true"]) <= {0.0, 1.0, 2.0}
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert metadata["settings"]["seed"] == 3
    assert metadata["data"]["spec"] == "lollipop"
    assert metadata["versions"]["torch"] and metadata["machine"]["cpu_count"]
    assert "total_s" in metadata["timings"]
    assert metadata["summary"]["mae"] >= 0
    assert not table.with_name(table.name + ".chunks").exists()
    assert not [p for p in table.parent.iterdir() if p.name.startswith(".")]  # no temporary files
    figures = sorted(p.name for p in plots.iterdir())
    assert figures == ["lollipop_flipd_t0_0.05_lid_histogram.png", "lollipop_flipd_t0_0.05_lid_scatter.png"]
    for figure in plots.iterdir():
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(figure) as image:
            assert image.size[0] > 100


def test_estimate_hutchinson_to_csv_with_stderr(lollipop_model, tmp_path):
    table = tmp_path / "lid.csv"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "20", "-o", table, "--trace", "hutchinson",
                   "--probes", "4", "--sigma", "0.1", "--quiet")
    assert result.exit_code == 0, result.output
    # --quiet: no progress or summary; only warnings about the results (this tiny model's
    # estimates often lie outside [0, D]) are shown
    assert all(line.startswith("warning: ") for line in result.output.splitlines()), result.output
    frame = pd.read_csv(table)
    assert (frame["trace"] == "hutchinson").all() and (frame["n_probes"] == 4).all()
    assert frame["stderr"].notna().all() and (frame["stderr"] >= 0).all() and (frame["stderr"] > 0).any()
    assert np.allclose(frame["sigma"], 0.1)


def test_estimate_knee_t0_reports_the_knee(lollipop_model, tmp_path):
    table = tmp_path / "knee.parquet"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "8", "-o", table, "--t0", "knee", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    chosen = frame["t0"].dropna()
    assert ((chosen > 0.05) & (chosen < 0.5)).all() and "knee_found" in frame.columns


def test_estimate_auto_t0_is_the_band_rule_and_is_stored_as_it(lollipop_model, tmp_path):
    tables = {rule: tmp_path / f"{rule}.csv" for rule in ("auto", "band")}
    for rule, table in tables.items():
        result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "20", "-o", table, "--t0", rule, "--quiet")
        assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tables["auto"]), pd.read_csv(tables["band"]))
    metadata = json.loads(tables["auto"].with_suffix(".json").read_text())
    assert metadata["settings"]["t0"] == "band" and "read_t0" in metadata["resolved"]["calibrated_level"]


def test_estimate_plateau_reports_the_scale_and_its_flatness(lollipop_model, tmp_path):
    table = tmp_path / "plateau.csv"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "8", "-o", table, "--t0", "plateau", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(table)
    assert {"plateau_found", "flatness"} <= set(frame.columns)
    from flipd.noise import plateau_grid

    grid = plateau_grid().numpy()
    assert np.isin(frame["t0"].dropna().round(12), grid.round(12)).all()
    assert (frame["flatness"] >= 0).all()
    summary = json.loads(table.with_suffix(".json").read_text())["summary"]
    assert summary["n_scale_not_found"] == int((~frame["plateau_found"]).sum())


def test_estimate_calibrated_reads_the_table_at_one_level_and_resumes_at_it(lollipop_model, tmp_path):
    table = tmp_path / "calibrated.csv"
    args = ("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--t0", "calibrated",
            "--chunk-size", "16", "--quiet")
    result = flipd(*args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(table)
    assert frame["t0"].nunique() == 1 and "reliable" in frame.columns
    from flipd.noise import plateau_grid

    assert np.isclose(plateau_grid().numpy(), frame["t0"].iloc[0]).any()
    metadata = json.loads(table.with_suffix(".json").read_text())
    level = metadata["resolved"]["calibrated_level"]
    assert level["t0"] == pytest.approx(frame["t0"].iloc[0]) and level["n_points"] == 40
    assert metadata["summary"]["n_scale_not_found"] == int((~frame["reliable"]).sum())
    assert len(level["times"]) == len(level["median_calibration"]) == plateau_grid().numel()
    # a run stopped after one chunk resumes at the same level, to the same table
    _assert_a_stopped_run_resumes_to(args, tmp_path / "again.csv", frame)


def test_estimate_band_reads_the_table_as_the_library_does_and_resumes_at_it(lollipop_model, tmp_path):
    table = tmp_path / "band.csv"
    args = ("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--t0", "band",
            "--chunk-size", "16", "--quiet")
    result = flipd(*args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(table)
    metadata = json.loads(table.with_suffix(".json").read_text())
    level = metadata["resolved"]["calibrated_level"]
    assert np.allclose(frame["t0"], level["t0"]) and level["read_t0"][0] == pytest.approx(level["t0"])
    assert set(level["read_t0"]) <= set(level["times"]) and "band_contrast" in level
    assert {"load_data_s", "plan_s", "estimate_s"} <= set(metadata["timings"])  # the choice timed on its own
    # the library's band rule on the same points and model: the same levels read, the same estimates
    import flipd as library
    from flipd.datasets import get_dataset

    model = library.load(lollipop_model)
    points = get_dataset("lollipop", 40, seed=0).x
    direct = library.estimate(model, points, t0="band")
    assert direct.settings["read_t0"] == pytest.approx(level["read_t0"])
    assert np.allclose(frame["lid"], direct.lid.double().numpy(), atol=1e-4)
    _assert_a_stopped_run_resumes_to(args, tmp_path / "again.csv", frame)


def _assert_a_stopped_run_resumes_to(args: tuple, again: Path, frame: pd.DataFrame) -> None:
    """The run of ``args`` (its table the 8th) written to ``again``: stopped after one chunk, it
    writes nothing, and resumed it writes ``frame``."""
    stopped = flipd(*args[:7], again, *args[8:], "--stop-after-chunks", "1")
    assert stopped.exit_code == 130 and not again.exists()
    resumed = flipd(*args[:7], again, *args[8:], "--resume")
    assert resumed.exit_code == 0, resumed.output
    pd.testing.assert_frame_equal(pd.read_csv(again), frame)


def test_a_resume_that_would_choose_another_calibrated_level_is_refused(lollipop_model, tmp_path, monkeypatch):
    import flipd.jobs.estimate as job

    table = tmp_path / "c.csv"
    args = ("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--t0", "calibrated",
            "--chunk-size", "16", "--quiet")
    assert flipd(*args, "--stop-after-chunks", "1").exit_code == 130
    chosen = job.calibrated_t0

    def another(*call, **options):  # as if the level came out differently this time (another device, ...)
        level = chosen(*call, **options)
        index = (level.index + 1) % level.times.numel()
        return level._replace(index=index, t0=float(level.times[index]))

    monkeypatch.setattr(job, "calibrated_t0", another)
    refused = flipd(*args, "--resume")
    assert refused.exit_code == 2 and "calibrated_t0" in refused.stderr and not table.exists()


def test_estimate_calibrated_plots_why_it_chose_its_level(lollipop_model, tmp_path):
    plots = tmp_path / "plots"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "64", "-o", tmp_path / "c.csv",
                   "--t0", "calibrated", "--plot", plots, "--quiet")
    assert result.exit_code == 0, result.output
    figure = plots / "lollipop_calibrated_level.png"
    assert figure.stat().st_size > 10_000
    outputs = json.loads((tmp_path / "c.json").read_text())["outputs"]["plots"]
    assert str(figure) in outputs


def test_estimate_rejects_an_unknown_rule(lollipop_model, tmp_path):
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "4", "-o", tmp_path / "x.csv", "--t0", "flat")
    assert_user_error(result, "--t0", "plateau")


def test_estimate_from_table_files(lollipop_model, tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    pd.DataFrame({"u": points[:, 0], "v": points[:, 1], "lid_true": 1}).to_csv(tmp_path / "points.csv", index=False)
    np.savez(tmp_path / "points.npz", x=points, lid=np.full(30, 2), component=np.zeros(30, dtype=int))
    for source in ("points.csv", "points.npz"):
        table = tmp_path / f"{source}.parquet"
        result = flipd("estimate", tmp_path / source, "-m", lollipop_model, "-n", "12", "-o", table, "--quiet")
        assert result.exit_code == 0, result.output
        frame = pd.read_parquet(table)
        assert len(frame) == 12 and frame["index"].is_monotonic_increasing
        assert "lid_true" in frame.columns


def test_curve_writes_long_table_and_figure(lollipop_model, tmp_path):
    table = tmp_path / "curves.parquet"
    plots = tmp_path / "plots"
    result = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "6", "-o", table, "--plot", plots, "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    levels = frame["t0"].nunique()
    assert levels >= 20 and len(frame) == 6 * levels
    assert frame.groupby("index")["knee"].sum().le(1).all()
    assert frame.groupby("index")["t0"].apply(lambda t: t.is_monotonic_increasing).all()
    assert (plots / "lollipop_curves.png").read_bytes()[:4] == b"\x89PNG"
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert len(metadata["settings"]["times"]) == levels


def test_curve_marks_the_plateau(lollipop_model, tmp_path):
    table = tmp_path / "curves.parquet"
    plots = tmp_path / "plots"
    result = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "5", "-o", table, "--rule", "plateau",
                   "--plot", plots, "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    from flipd.noise import plateau_grid

    assert frame["t0"].nunique() == plateau_grid().numel()  # the plateau rule's own grid
    assert frame.groupby("index")["plateau"].sum().eq(1).all()
    assert {"flatness", "reliable", "plateau_found"} <= set(frame.columns)
    assert (plots / "lollipop_curves.png").read_bytes()[:4] == b"\x89PNG"
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert metadata["plateaus"]["found"] == int(frame.groupby("index")["plateau_found"].first().sum())
    bad = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "2", "-o", tmp_path / "c.csv", "--rule", "elbow")
    assert_user_error(bad, "--rule")


def test_curve_marks_the_calibrated_level_as_estimate_chooses_it(lollipop_model, tmp_path):
    table, plots = tmp_path / "curves.parquet", tmp_path / "plots"
    result = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--rule", "calibrated",
                   "--chunk-size", "16", "--plot", plots, "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    from flipd.noise import plateau_grid

    assert frame["t0"].nunique() == plateau_grid().numel()
    chosen = frame[frame["calibrated"]]
    assert chosen.groupby("index").size().eq(1).all() and chosen["t0"].nunique() == 1  # one level for all
    assert {"calibration", "reliable"} <= set(frame.columns)
    assert (plots / "lollipop_calibrated_level.png").stat().st_size > 10_000
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert metadata["calibrated_level"]["t0"] == pytest.approx(chosen["t0"].iloc[0])
    # the same level and estimates as flipd estimate --t0 calibrated on the same points
    estimated = tmp_path / "estimate.csv"
    assert flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", estimated, "--t0", "calibrated",
                 "--quiet").exit_code == 0
    reference = pd.read_csv(estimated)
    assert np.allclose(reference["t0"], chosen["t0"].to_numpy())
    assert np.allclose(reference["lid"], chosen.sort_values("index")["lid"].to_numpy(), atol=1e-5)
    assert (reference["reliable"].to_numpy() == chosen.sort_values("index")["reliable"].to_numpy()).all()


def test_curve_marks_the_band_rules_levels_as_estimate_reads_them(lollipop_model, tmp_path):
    table = tmp_path / "curves.csv"
    result = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--rule", "band",
                   "--chunk-size", "16", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(table)
    read = frame[frame["band"]]
    level = json.loads(table.with_suffix(".json").read_text())["calibrated_level"]
    assert sorted(read["t0"].unique()) == pytest.approx(level["read_t0"])
    estimated = tmp_path / "estimate.csv"
    assert flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", estimated, "--t0", "band",
                 "--quiet").exit_code == 0
    reference = pd.read_csv(estimated)
    assert json.loads(estimated.with_suffix(".json").read_text())["resolved"]["calibrated_level"]["read_t0"] == \
        pytest.approx(level["read_t0"])
    assert np.allclose(reference["lid"], read.groupby("index")["lid"].mean().to_numpy(), atol=1e-4)


def test_calibrated_ratio_sets_the_rule_tolerance_in_estimate_and_curve(lollipop_model, tmp_path):
    # ratio 1: the level where the model denoises best, in both commands and as the library chooses it
    estimated = tmp_path / "estimate.csv"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", estimated, "--t0", "calibrated",
                   "--calibrated-ratio", "1", "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads(estimated.with_suffix(".json").read_text())["resolved"]["calibrated_level"]
    assert record["ratio"] == 1.0 and record["t0"] == pytest.approx(record["best_t0"])
    assert np.allclose(pd.read_csv(estimated)["t0"], record["t0"])
    table = tmp_path / "curves.parquet"
    assert flipd("curve", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--rule", "calibrated",
                 "--calibrated-ratio", "1", "--quiet").exit_code == 0
    curve_record = json.loads(table.with_suffix(".json").read_text())["calibrated_level"]
    assert curve_record["ratio"] == 1.0 and curve_record["t0"] == pytest.approx(record["t0"])
    default = tmp_path / "default.csv"
    assert flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", default, "--t0", "calibrated",
                 "--quiet").exit_code == 0
    default_record = json.loads(default.with_suffix(".json").read_text())["resolved"]["calibrated_level"]
    assert default_record["ratio"] == 1.5 and default_record["t0"] <= record["t0"]  # more tolerance, no more noise
    assert default_record["t0"] != default_record["best_t0"]  # on this model the two ratios choose differently
    # misuse: without the calibrated rule, or below 1
    assert_user_error(flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "5", "-o", tmp_path / "a.csv",
                            "--calibrated-ratio", "2"), "--calibrated-ratio", "--t0 calibrated")
    assert_user_error(flipd("curve", "lollipop", "-m", lollipop_model, "-n", "5", "-o", tmp_path / "b.csv",
                            "--calibrated-ratio", "2"), "--calibrated-ratio", "--rule calibrated")
    assert_user_error(flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "5", "-o", tmp_path / "c.csv",
                            "--t0", "calibrated", "--calibrated-ratio", "0.5"), "--calibrated-ratio", ">= 1")


def test_curve_with_explicit_grid(lollipop_model, tmp_path):
    table = tmp_path / "curves.csv"
    result = flipd("curve", "lollipop", "-m", lollipop_model, "-n", "3", "-o", table, "--t-min", "0.02",
                   "--t-max", "0.6", "--steps", "7", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(table)
    assert np.allclose(sorted(frame["t0"].unique()), np.linspace(0.02, 0.6, 7))


# --------------------------------------------------------------------------- resume


def _estimate_args(model: Path, table: Path, *extra: str) -> list:
    return ["estimate", "lollipop", "-m", model, "-n", "50", "-o", table, "--chunk-size", "16", "--trace",
            "hutchinson", "--probes", "3", "--batch-size", "8", "--seed", "5", "--quiet", *extra]


def test_resume_after_interruption_matches_uninterrupted_run(lollipop_model, tmp_path):
    reference = tmp_path / "reference.parquet"
    assert flipd(*_estimate_args(lollipop_model, reference)).exit_code == 0

    table = tmp_path / "resumed.parquet"
    interrupted = flipd(*_estimate_args(lollipop_model, table, "--stop-after-chunks", "2"))
    assert interrupted.exit_code == 130
    assert "--resume" in interrupted.stderr and "Traceback" not in interrupted.output
    chunks = table.with_name(table.name + ".chunks")
    assert sorted(p.name for p in chunks.glob("chunk-*.npz")) == ["chunk-000000.npz", "chunk-000001.npz"]
    assert not table.exists()
    finished = {p.name: p.stat().st_mtime_ns for p in chunks.glob("chunk-*.npz")}

    again = flipd(*_estimate_args(lollipop_model, table))  # without --resume: refuses to discard the chunks
    assert_user_error(again, "--resume")

    resumed = flipd(*_estimate_args(lollipop_model, table, "--resume", "--threads", "1"))
    assert resumed.exit_code == 0, resumed.output
    assert not chunks.exists()
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert metadata["chunks"]["resumed_chunks"] == 2 and metadata["chunks"]["n_chunks"] == 4
    assert len(finished) == 2


def test_resume_refuses_different_settings(lollipop_model, tmp_path):
    table = tmp_path / "run.parquet"
    assert flipd(*_estimate_args(lollipop_model, table, "--stop-after-chunks", "1")).exit_code == 130
    changed = flipd(*_estimate_args(lollipop_model, table, "--resume", "--probes", "5", "--sigma", "0.2"))
    assert_user_error(changed, "n_probes: 3 -> 5", "sigma")
    assert table.with_name(table.name + ".chunks").joinpath("chunk-000000.npz").is_file()
    restarted = flipd(*_estimate_args(lollipop_model, table, "--force"))
    assert restarted.exit_code == 0, restarted.output


def test_resume_of_a_finished_run_changes_nothing(lollipop_model, tmp_path):
    table = tmp_path / "done.parquet"
    assert flipd(*_estimate_args(lollipop_model, table)).exit_code == 0
    before = table.read_bytes()
    result = flipd(*_estimate_args(lollipop_model, table, "--resume"))
    assert result.exit_code == 0
    assert table.read_bytes() == before


@pytest.mark.slow
def test_resume_after_the_process_is_killed(lollipop_model, tmp_path):
    """A real SIGKILL part-way through, then --resume: the same table as a run without a kill."""
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    reference, table = tmp_path / "reference.parquet", tmp_path / "killed.parquet"

    def command(out: Path, *extra: str) -> list[str]:
        args = ["estimate", "lollipop", "-m", str(lollipop_model), "-n", "600", "-o", str(out), "--chunk-size", "40",
                "--trace", "hutchinson", "--probes", "64", "--batch-size", "20", "--threads", "1", "--quiet", *extra]
        return [sys.executable, "-m", "flipd.cli", *args]

    process = subprocess.Popen(command(table), env=env)
    chunks = table.with_name(table.name + ".chunks")
    deadline = time.monotonic() + 300
    while len(list(chunks.glob("chunk-*.npz"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is not None:
        assert process.returncode == 0, "the run failed before it could be killed"
        pytest.skip("the run finished before it could be killed")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not table.exists()
    kept = len(list(chunks.glob("chunk-*.npz")))
    assert kept >= 2
    subprocess.run(command(table, "--resume"), env=env, check=True, timeout=600)
    subprocess.run(command(reference), env=env, check=True, timeout=600)
    pd.testing.assert_frame_equal(pd.read_parquet(table), pd.read_parquet(reference))
    assert json.loads(table.with_suffix(".json").read_text())["chunks"]["resumed_chunks"] >= 2


# --------------------------------------------------------------------------- user errors


def test_missing_data_file(lollipop_model, tmp_path):
    result = flipd("estimate", tmp_path / "missing.csv", "-m", lollipop_model, "-o", tmp_path / "x.parquet")
    assert_user_error(result, "missing.csv")


def test_unknown_data_set(lollipop_model, tmp_path):
    result = flipd("estimate", "lolipop", "-m", lollipop_model, "-o", tmp_path / "x.parquet")
    assert_user_error(result, "Unknown data set 'lolipop'", "lollipop")


def test_bad_data_parameter(tmp_path):
    result = flipd("train", "mixture:affine:D=10", "--out", tmp_path / "m", *TINY_TRAIN)
    assert_user_error(result, "dims")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (("--trace", "bogus"), "--trace"),
        (("--t0", "soon"), "--t0"),
        (("--t0", "0.05", "--sigma", "0.1"), "once"),
        (("--t0", "7"), "not a noise level"),
        (("--delta", "40"), "not a noise level"),
        (("-o", "results.txt"), ".parquet or .csv"),
        (("--device", "cuda:7"), "cuda"),
    ],
)
def test_bad_estimate_options(lollipop_model, tmp_path, options, fragment):
    args = ["estimate", "lollipop", "-m", lollipop_model, "-n", "4", "-o", tmp_path / "x.parquet", *options]
    result = flipd(*args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_a_bad_noise_level_leaves_no_run_behind(lollipop_model, tmp_path):
    table = tmp_path / "x.parquet"
    assert_user_error(flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "4", "-o", table, "--sigma", "1e6"), "--sigma")
    assert not table.with_name(table.name + ".chunks").exists()
    assert flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "4", "-o", table, "--quiet").exit_code == 0


def test_model_and_data_dimensions_differ(lollipop_model, tmp_path):
    result = flipd("estimate", "doughnut", "-m", lollipop_model, "-n", "4", "-o", tmp_path / "x.parquet")
    assert_user_error(result, "D = 2", "D = 3", "flipd train doughnut")


def test_missing_model(tmp_path):
    result = flipd("estimate", "lollipop", "-m", tmp_path / "nothing", "-o", tmp_path / "x.parquet")
    assert_user_error(result, "No model", "flipd train")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("hello")
    result = flipd("estimate", "lollipop", "-m", tmp_path / "model", "-o", tmp_path / "x.parquet")
    assert_user_error(result, "not a flipd checkpoint")


def test_damaged_checkpoint_config(lollipop_model, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "model.safetensors").write_bytes((lollipop_model / "model.safetensors").read_bytes())
    (damaged / "flipd_model.json").write_text(json.dumps({"format": "something-else"}))
    result = flipd("estimate", "lollipop", "-m", damaged, "-o", tmp_path / "x.parquet")
    assert_user_error(result, "format")


class _Tripwire:
    """Unpickling this creates a file: proof that a checkpoint was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_checkpoints_are_never_unpickled(tmp_path):
    tripwire = tmp_path / "unpickled"
    for name in ("model.pt", "weights/model.ckpt"):
        file = tmp_path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(pickle.dumps(_Tripwire(str(tripwire))))
        result = flipd("estimate", "lollipop", "-m", file, "-o", tmp_path / "x.parquet")
        assert_user_error(result, "never unpickles")
    weights = tmp_path / "weights"
    result = flipd("estimate", "lollipop", "-m", weights, "-o", tmp_path / "x.parquet")
    assert_user_error(result, "not a flipd checkpoint")
    assert not tripwire.exists()


def test_existing_outputs_are_not_overwritten(lollipop_model, tmp_path):
    table = tmp_path / "x.parquet"
    table.write_text("precious")
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "4", "-o", table)
    assert_user_error(result, "--force")
    assert table.read_text() == "precious"
    result = flipd("train", "lollipop", "--out", lollipop_model, *TINY_TRAIN)
    assert_user_error(result, "--force")


def test_debug_shows_the_traceback(lollipop_model, tmp_path):
    args = ["estimate", "lolipop", "-m", lollipop_model, "-o", tmp_path / "x.parquet"]
    result = flipd("--debug", *args)
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "Unknown data set" in result.stderr
    result = flipd(*args, "--debug")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    assert_user_error(flipd(*args), "Unknown data set")  # --debug does not stick to later invocations


# --------------------------------------------------------------------------- images and demo


@pytest.mark.slow
def test_images_train_estimate_and_figures(tmp_path):
    model = tmp_path / "digits"
    result = flipd("train", "digits8", "--out", model, "-n", "400", "--steps", "30", "--widths", "64,64", "--quiet")
    assert result.exit_code == 0, result.output
    # Flattened for the MLP, they are still images: no scaling under the default.
    assert json.loads((model / "config.json").read_text())["standardization"]["mode"] == "none"
    table, plots = tmp_path / "digits.parquet", tmp_path / "plots"
    result = flipd("estimate", "digits8", "-m", model, "-n", "40", "-o", table, "--plot", plots, "--trace",
                   "hutchinson", "--probes", "2", "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    assert {"name", "label", "png_bytes"} <= set(frame.columns) and len(frame) == 40
    assert {p.name for p in plots.iterdir()} == {
        f"digits8_flipd_t0_0.05_{figure}.png" for figure in ("lid_histogram", "images_by_lid", "lid_vs_png_size")
    }


@pytest.mark.slow
def test_demo_on_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    result = flipd("demo", "--out", out, "--steps", "30", "--n-train", "800", "--n-eval", "60", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "MAE" in result.stdout and "lollipop" in result.stdout and "doughnut" in result.stdout
    for name in ("lollipop", "doughnut"):
        frame = pd.read_parquet(out / f"{name}_lid.parquet")
        assert len(frame) == 60 and {"lid", "lid_true", "component"} <= set(frame.columns)
        for figure in ("flipd_t0_0.05_lid_histogram", "flipd_t0_0.05_lid_scatter", "curves"):
            assert (out / "plots" / f"{name}_{figure}.png").is_file()
    again = flipd("demo", "--out", out, "--n-eval", "60", "--threads", "1", "--quiet")
    assert again.exit_code == 0 and again.output == ""


def test_tables_keep_their_shape_and_uneven_spreads_are_warned_about(tmp_path):
    angle = np.random.default_rng(0).uniform(0, 2 * np.pi, 1500)
    jitter = 0.001 * np.random.default_rng(1).standard_normal(1500)
    np.save(tmp_path / "circle.npy", np.stack([np.cos(angle), np.sin(angle), jitter], 1))
    result = flipd("train", tmp_path / "circle.npy", "--out", tmp_path / "model", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "spreads differ by a factor" in warnings[0] and "per_coordinate" in warnings[0]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["standardization"]["mode"] == "scalar"


def test_convolutional_unet_on_images(tmp_path):
    model = tmp_path / "unet"
    result = flipd("train", "digits8", "--network", "unet", "--channels", "8,16", "-n", "200", "--steps", "5",
                   "--batch-size", "32", "--out", model, "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((model / "config.json").read_text())
    assert config["network"]["kind"] == "unet2d"
    assert config["standardization"]["mode"] == "none"  # images in [-1, 1] are left as they are
    assert config["prediction"] == "sample"  # --prediction auto: the unet predicts the clean image
    table = tmp_path / "unet.csv"
    result = flipd("estimate", "digits8", "-m", model, "-n", "4", "-o", table, "--trace", "hutchinson", "--quiet")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(table)) == 4
    assert_user_error(flipd("train", "lollipop", "--network", "unet", "--out", tmp_path / "x", *TINY_TRAIN), "mlp")
    epsilon = tmp_path / "unet-epsilon"
    result = flipd("train", "digits8", "--network", "unet", "--channels", "8,16", "-n", "64", "--steps", "2",
                   "--batch-size", "32", "--prediction", "epsilon", "--out", epsilon, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((epsilon / "config.json").read_text())["prediction"] == "epsilon"
    assert_user_error(flipd("train", "digits8", "--prediction", "x0", "--out", tmp_path / "y", *TINY_TRAIN),
                      "not one of auto, ")


@pytest.mark.parametrize("method", ["nb", "fpregress", "lpca", "twonn"])
def test_baseline_methods(lollipop_model, tmp_path, method):
    table = tmp_path / f"{method}.parquet"
    model_args = ["-m", lollipop_model] if method in ("nb", "fpregress") else []
    extra = ["--neighbors", "20"] if method in ("lpca", "twonn") else []
    result = flipd("estimate", "lollipop", "--method", method, *model_args, "-n", "40", "-o", table, "--chunk-size", "16",
                   *extra, "--quiet")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    assert len(frame) == 40 and (frame["method"] == method).all()
    assert frame["stderr"].isna().all()
    assert np.isfinite(frame["lid"]).sum() >= 35
    if method == "nb":
        assert np.allclose(frame["t0"], 0.01)
    metadata = json.loads(table.with_suffix(".json").read_text())
    assert metadata["settings"]["method"] == method
    assert metadata["chunks"]["n_chunks"] == (3 if model_args else 1)


def test_model_methods_need_a_model(tmp_path):
    assert_user_error(flipd("estimate", "lollipop", "-n", "10", "-o", tmp_path / "x.csv"), "--model")
    assert_user_error(flipd("estimate", "lollipop", "--method", "lpca", "--t0", "0.1", "-n", "10", "-o", tmp_path / "x.csv"), "noise level")
    assert_user_error(flipd("estimate", "lollipop", "--method", "pca", "-o", tmp_path / "x.csv"), "--method")


def test_train_records_the_small_time_emphasis(lollipop_model, tmp_path):
    # By default 80% of each batch is drawn at small times; --low-t-fraction 0 restores uniform times.
    import json

    from flipd.recipes import DEFAULT_LOW_T_FRACTION

    saved = json.loads((lollipop_model / "config.json").read_text())
    assert saved["metadata"]["train_config"]["low_t_fraction"] == DEFAULT_LOW_T_FRACTION == 0.8
    uniform = tmp_path / "uniform"
    result = flipd("train", "lollipop", "--out", uniform, *TINY_TRAIN, "--low-t-fraction", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((uniform / "config.json").read_text())["metadata"]["train_config"]["low_t_fraction"] == 0.0
    rejected = flipd("train", "lollipop", "--out", tmp_path / "bad", *TINY_TRAIN, "--low-t-fraction", "2")
    assert rejected.exit_code == 2 and "--low-t-fraction" in rejected.output


def test_resume_with_a_truncated_chunk_names_the_file(lollipop_model, tmp_path):
    table = tmp_path / "truncated.parquet"
    assert flipd(*_estimate_args(lollipop_model, table, "--stop-after-chunks", "2")).exit_code == 130
    chunk = table.with_name(table.name + ".chunks") / "chunk-000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:40])  # a chunk file cut short
    assert_user_error(flipd(*_estimate_args(lollipop_model, table, "--resume")), "chunk-000001.npz", "delete it")


def test_figures_of_flipd_and_nb_on_the_same_data_do_not_overwrite_each_other(lollipop_model, tmp_path):
    plots = tmp_path / "plots"
    for method in ("flipd", "nb"):
        result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "--method", method,
                       "-o", tmp_path / f"{method}.csv", "--plot", plots, "--quiet", "--threads", "1")
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in plots.iterdir())
    histograms = [name for name in names if name.endswith("lid_histogram.png")]
    assert len(histograms) == 2 and histograms[0].startswith("lollipop_flipd_t0_0.05_")
    assert histograms[1].startswith("lollipop_nb_t0_")  # NB's own default level, named by its time


def test_a_tables_own_columns_pass_through_and_the_summary_ranks_against_the_truth(tmp_path):
    """Ids and notes travel to the result table unchanged (a clash with a result column is kept
    as input_<name>); with a known truth the summary holds Harrell's concordance and Spearman."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 60
    angle = rng.uniform(0, 2 * np.pi, n)
    plane = rng.uniform(-1, 1, (n, 2))
    on_circle = np.arange(n) % 2 == 0
    x = np.where(on_circle[:, None], np.c_[np.cos(angle), np.sin(angle), np.zeros(n)], np.c_[plane, np.zeros(n) + 3])
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                          "method": ["note"] * n, "lid_true": np.where(on_circle, 1.0, 2.0)})
    table = tmp_path / "points.csv"
    frame.to_csv(table, index=False)
    out = tmp_path / "lid.csv"
    result = flipd("estimate", table, "--method", "lpca", "--neighbors", "10", "-o", out)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert rows["id"].tolist() == frame["id"].tolist() and (rows["input_method"] == "note").all()
    assert (rows["method"] == "lpca").all() and (rows["ambient_dim"] == 3).all()
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    assert 0.5 < summary["concordance_harrell"] <= 1.0 and summary["spearman"] > 0.3
    assert "concordance (Harrell)" in result.stdout


def test_estimate_band_reads_each_point_once_at_each_level_across_chunks(lollipop_model, tmp_path, monkeypatch):
    """The table's first points (the rule's sample) keep the FLIPD the choice computed, also in
    a chunk that holds both kept and new points: the same rows as the library computes, and
    the same estimates."""
    import flipd as library
    import flipd.estimator as estimator
    import flipd.jobs.estimate as job
    from flipd.datasets import get_dataset

    monkeypatch.setattr(estimator, "CALIBRATION_POINTS", 24)
    monkeypatch.setattr(job, "CALIBRATION_POINTS", 24)
    rows: list[int] = []
    original = estimator._estimate_fixed
    monkeypatch.setattr(estimator, "_estimate_fixed",
                        lambda fn, x, times, **options: rows.append(int(x.shape[0])) or original(fn, x, times, **options))
    table = tmp_path / "band.csv"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--t0", "band",
                   "--chunk-size", "16", "--quiet")  # chunks 0-15 and 16-31 hold kept points, 32-39 none
    assert result.exit_code == 0, result.output
    table_rows = sum(rows)
    rows.clear()
    direct = library.estimate(library.load(lollipop_model), get_dataset("lollipop", 40, seed=0).x, t0="band")
    assert sum(rows) == table_rows
    frame = pd.read_csv(table)
    assert np.allclose(frame["lid"], direct.lid.double().numpy(), atol=1e-4)
    assert np.array_equal(frame["reliable"].to_numpy(), direct.reliable.numpy())
    # the chunk estimator reports every row done, kept or computed (the progress bar's count)
    from flipd.jobs.estimate import EstimateSettings, method_chunks

    model = library.load(lollipop_model)
    points = get_dataset("lollipop", 40, seed=0).x
    head = library.estimate(model, points[:24], t0="band")  # the first 24 rows, kept
    run = method_chunks(EstimateSettings(method="flipd", t0="band", chunk_size=16), model, None, head.level, head)
    done: list[int] = []
    x = model.encode(torch.as_tensor(points))
    for start in range(0, 40, 16):
        arrays, _ = run(x[start:start + 16], np.arange(start, min(40, start + 16)), done.append)
        assert np.allclose(arrays["lid"], direct.lid.double().numpy()[start:start + 16], atol=1e-4)
    assert sum(done) == 40


@pytest.mark.parametrize("rule, column", [("plateau", "plateau_found"), ("band", "reliable")])
def test_points_without_a_scale_are_one_warning_over_the_table_not_one_per_chunk(lollipop_model, tmp_path, rule, column):
    table = tmp_path / f"{rule}.csv"
    result = flipd("estimate", "lollipop", "-m", lollipop_model, "-n", "40", "-o", table, "--t0", rule,
                   "--chunk-size", "16", "--quiet")
    assert result.exit_code == 0, result.output
    missing = int((~pd.read_csv(table)[column].astype(bool)).sum())
    assert missing == json.loads(table.with_suffix(".json").read_text())["summary"]["n_scale_not_found"]
    said = [line for line in result.stderr.splitlines() if "found no scale" in line]
    assert 0 < missing < 40, "the lollipop model finds a scale for some points and not for others"
    assert len(said) == 1 and f"the {rule} rule found no scale for {missing} of 40 points" in said[0], result.stderr
