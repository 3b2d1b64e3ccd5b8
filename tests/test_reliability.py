"""A catalogue of bad inputs and faults: each is refused with a message that names the problem
(the file, field, row or fix), and nothing the user had is lost."""

from __future__ import annotations

import dataclasses

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import flipd
from flipd.bench.__main__ import BENCHMARKS
from test_cli import PACKAGE_ROOT, TINY_TRAIN, assert_user_error
from test_cli import flipd as run_flipd


class _Tripwire:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _write_tripwire(file: Path, tripwire: Path) -> None:
    file.write_bytes(pickle.dumps(_Tripwire(str(tripwire))))


# --------------------------------------------------------------------------- 1. no pickle ever loaded


try:
    from test_diffusers_adapters import ddpm_folder, sd_folder  # noqa: F401  (fixtures)
except pytest.skip.Exception:  # diffusers is not installed

    @pytest.fixture
    def ddpm_folder():
        pytest.skip("needs diffusers")

    sd_folder = ddpm_folder


@pytest.fixture
def no_torch_load(monkeypatch):
    """Make any call of torch.load fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


def test_pickled_weights_next_to_safetensors_are_never_opened(ddpm_folder, tmp_path, no_torch_load):
    folder = tmp_path / "ddpm"
    shutil.copytree(ddpm_folder, folder)
    tripwire = tmp_path / "unpickled"
    _write_tripwire(folder / "unet" / "diffusion_pytorch_model.bin", tripwire)
    for load in (flipd.from_diffusers, flipd.load):
        model = load(folder)
        assert type(model.network).__name__ == "UNet2DModel"
    assert not tripwire.exists()


def test_component_with_only_pickled_weights_is_refused(ddpm_folder, tmp_path, no_torch_load):
    folder = tmp_path / "ddpm"
    shutil.copytree(ddpm_folder, folder)
    tripwire = tmp_path / "unpickled"
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _write_tripwire(folder / "unet" / "diffusion_pytorch_model.bin", tripwire)
    for load in (flipd.from_diffusers, flipd.load):
        with pytest.raises(ValueError, match="diffusion_pytorch_model.bin.*never unpickles"):
            load(folder)
    with pytest.raises(ValueError, match=r"model\.ckpt"):  # a model folder given directly
        (folder / "unet" / "diffusion_pytorch_model.bin").rename(folder / "unet" / "model.ckpt")
        flipd.from_diffusers(folder / "unet", scheduler=folder / "scheduler")
    assert not tripwire.exists()


def test_every_weight_loading_call_asks_for_safetensors(sd_folder, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    calls: list[tuple[str, dict]] = []

    def recording(base):
        original = base.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            calls.append((cls.__name__, kwargs))
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(base, "from_pretrained", classmethod(from_pretrained))

    recording(diffusers.ModelMixin)
    recording(transformers.PreTrainedModel)
    flipd.from_diffusers(sd_folder, prompt="a cat")  # the UNet, the VAE and the text encoder
    assert {name for name, _ in calls} >= {"UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"}
    assert all(kwargs.get("use_safetensors") is True for _, kwargs in calls), calls


# --------------------------------------------------------------------------- 2. checkpoint configs


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from flipd.models.checkpoint import DiffusionModel
    from flipd.models.mlp import MLPUNet, MLPUNetConfig

    torch.manual_seed(0)
    network = MLPUNet(MLPUNetConfig(data_dim=3, widths=(8, 8)))
    return DiffusionModel(network, shift=torch.zeros(3), scale=torch.ones(3)).save(tmp_path / "model")


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("weights", lambda c: c.update(weights="/etc/passwd")),
        ("weights", lambda c: c.update(weights="../model/model.safetensors")),
        ("weights", lambda c: c.update(weights="sub/model.safetensors")),
        ("weights", lambda c: c.update(weights=None)),
        ("schedule", lambda c: c.update(schedule=None)),
        ("schedule", lambda c: c.update(schedule="VP")),
        ("schedule.beta_min", lambda c: c["schedule"].update(beta_min="0.1")),
        ("schedule.beta_max", lambda c: c["schedule"].pop("beta_max")),
        ("prediction", lambda c: c.update(prediction=["epsilon"])),
        ("network", lambda c: c.update(network=[])),
        ("network.options", lambda c: c["network"].update(options=[1])),
        ("network.options", lambda c: c["network"]["options"].update(widths="8,8")),
        ("network.options", lambda c: c["network"]["options"].update(widths=8)),
        ("network.options", lambda c: c["network"]["options"].update(beta_min="0.1")),
        ("network.options", lambda c: c["network"]["options"].update(colour="blue")),
        ("standardization", lambda c: c.update(standardization=None)),
    ],
)
def test_bad_checkpoint_fields_are_named(checkpoint, field, edit):
    from flipd.models.checkpoint import CheckpointError, DiffusionModel

    _edit_config(checkpoint, edit)
    with pytest.raises(CheckpointError, match=f"the field '{field}'"):
        DiffusionModel.load(checkpoint)


def test_unknown_and_mistyped_network_options_are_named(checkpoint):
    from flipd.models.checkpoint import CheckpointError, DiffusionModel

    _edit_config(checkpoint, lambda c: c["network"]["options"].update(colour="blue"))
    with pytest.raises(CheckpointError, match="unknown option.*colour"):
        DiffusionModel.load(checkpoint)
    _edit_config(checkpoint, lambda c: (c["network"]["options"].pop("colour"), c["network"]["options"].update(widths="8,8")))
    with pytest.raises(CheckpointError, match="option 'widths' is '8,8'"):
        DiffusionModel.load(checkpoint)


def test_bad_checkpoint_field_is_a_user_error_on_the_command_line(checkpoint, tmp_path):
    _edit_config(checkpoint, lambda c: c.update(weights="../../secret.safetensors"))
    result = run_flipd("estimate", "lollipop", "-m", checkpoint, "-n", "4", "-o", tmp_path / "x.csv")
    assert_user_error(result, "'weights'", "inside the checkpoint folder")
    assert not (tmp_path / "x.csv").exists()


def test_checkpoint_files_follow_the_umask(tmp_path):
    from flipd.models.checkpoint import DiffusionModel
    from flipd.models.mlp import MLPUNet, MLPUNetConfig

    network = MLPUNet(MLPUNetConfig(data_dim=2, widths=(4,)))
    model = DiffusionModel(network, shift=torch.zeros(2), scale=torch.ones(2))
    previous = os.umask(0o027)
    try:
        directory = model.save(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"config.json": 0o640, "model.safetensors": 0o640, "README.md": 0o640}
    assert DiffusionModel.load(directory).data_shape == (2,)


# --------------------------------------------------------------------------- 3-4. outputs, before the work


@pytest.fixture
def no_training(monkeypatch):
    """Make training fail the test: the refusals below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("flipd.jobs.train.train_diffusion", refuse)


@pytest.fixture
def no_estimation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("estimation started")

    monkeypatch.setattr("flipd.runs.estimate_in_chunks", refuse)
    monkeypatch.setattr("flipd.runs.open_chunked_run", refuse)  # what the command line opens its runs with


@pytest.mark.parametrize("force", [False, True])
def test_train_force_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, no_training, force):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    (folder / "flipd_model.json").write_text(json.dumps({"format": "something-else"}))
    result = run_flipd("train", "lollipop", "--out", folder, *TINY_TRAIN, *(["--force"] if force else []))
    assert_user_error(result, str(folder), "not a flipd checkpoint", "choose another --out")
    assert "pass --force" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["chapter1.tex", "flipd_model.json"]
    assert (folder / "chapter1.tex").read_text() == "precious"


def test_train_refuses_a_file_and_suggests_force_only_for_a_checkpoint(tmp_path, checkpoint, no_training):
    file = tmp_path / "notes.txt"
    file.write_text("precious")
    for force in ([], ["--force"]):
        result = run_flipd("train", "lollipop", "--out", file, *TINY_TRAIN, *force)
        assert_user_error(result, str(file), "is a file")
        assert "--force" not in result.stderr and file.read_text() == "precious"
    result = run_flipd("train", "lollipop", "--out", checkpoint, *TINY_TRAIN)
    assert_user_error(result, "already exists", "--force")


def test_train_force_replaces_a_checkpoint_and_fills_an_empty_folder(tmp_path, checkpoint):
    before = (checkpoint / "model.safetensors").read_bytes()
    result = run_flipd("train", "lollipop", "--out", checkpoint, *TINY_TRAIN, "--force")
    assert result.exit_code == 0, result.output
    assert (checkpoint / "model.safetensors").read_bytes() != before
    empty = tmp_path / "empty"
    empty.mkdir()
    from flipd.jobs.train import check_checkpoint_target

    assert check_checkpoint_target(empty, force=False) == empty


def test_library_training_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, no_training):
    from flipd.datasets.sources import load_points
    from flipd.jobs.train import train_model

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "keep.csv").write_text("x\n1\n")
    with pytest.raises(FileExistsError, match="not a flipd checkpoint"):
        train_model(load_points("lollipop", n=10), folder, steps=1)
    assert (folder / "keep.csv").read_text() == "x\n1\n"


def test_train_into_an_unwritable_place_fails_before_training(tmp_path, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_flipd("train", "lollipop", "--out", blocker / "models" / "m", *TINY_TRAIN)
    assert_user_error(result, str(blocker), "is a file, not a folder")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = run_flipd("train", "lollipop", "--out", locked / "m", *TINY_TRAIN)
        assert_user_error(result, str(locked), "cannot be created")
    if Path("/proc/self").is_dir():  # a file system where nobody can create files
        result = run_flipd("train", "lollipop", "--out", "/proc/flipd-model", *TINY_TRAIN)
        assert_user_error(result, "/proc", "cannot be created")


def test_estimate_with_an_unusable_plot_folder_fails_before_estimating(tmp_path, checkpoint, no_estimation):
    blocker = tmp_path / "plots.png"
    blocker.write_text("")
    table = tmp_path / "x.csv"
    for plot in (blocker, blocker / "sub", *([Path("/proc/flipd-plots")] if Path("/proc/self").is_dir() else [])):
        result = run_flipd("estimate", "lollipop", "-m", checkpoint, "-n", "4", "-o", table, "--plot", plot)
        assert_user_error(result, "--plot", str(plot if plot.parent == Path("/proc") else blocker))
    result = run_flipd("estimate", "lollipop", "-m", checkpoint, "-n", "4", "-o", blocker / "x.csv")
    assert_user_error(result, "result table", str(blocker))
    assert not table.exists() and blocker.read_text() == ""


# --------------------------------------------------------------------------- 5. one run per output


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    from flipd.runs.files import lock_path_for

    table = tmp_path / "x.csv"
    lock = lock_path_for(table)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid}\n")  # a live run holds the output
        result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--quiet")
        assert_user_error(result, str(table), f"process {holder.pid}", str(lock), "choose another --out")
        assert lock.read_text() == f"{holder.pid}\n" and not table.exists()
        result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--force", "--quiet")
        assert_user_error(result, "is being written by")  # --force does not break a live lock either
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_is_removed_at_the_end(tmp_path):
    from flipd.runs.files import lock_path_for, output_lock

    table = tmp_path / "x.csv"
    lock_path_for(table).write_text(f"{_dead_pid()}\n")
    result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--quiet")
    assert result.exit_code == 0, result.output
    assert table.is_file() and not lock_path_for(table).exists()
    with output_lock(table) as lock:  # the library helper: held inside, gone after, also on errors
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(FileExistsError, match=f"process {os.getpid()}"):
            with output_lock(table):
                pass
    assert not lock.exists()
    with pytest.raises(RuntimeError), output_lock(table):
        raise RuntimeError
    assert not lock.exists()


def test_a_second_training_run_on_one_checkpoint_is_refused_before_any_work(tmp_path):
    """flipd train holds the checkpoint's lock: a second run writing the same --out while one
    is going on is refused at once, and the first run's checkpoint is untouched."""
    from flipd.runs.files import lock_path_for, output_lock

    target = tmp_path / "model"
    with output_lock(target):  # a training run in progress (this process)
        result = run_flipd("train", "lollipop", "--out", target, "--steps", "5", "-n", "200", "--quiet")
        assert_user_error(result, str(target), "is being written by process")
        assert not target.exists()
    result = run_flipd("train", "lollipop", "--out", target, "--steps", "5", "-n", "200", "--quiet")
    assert result.exit_code == 0, result.output
    assert (target / "config.json").is_file() and not lock_path_for(target).exists()


def test_two_concurrent_estimations_one_wins(tmp_path):
    """Two processes start together on one output: one writes the table, the other is refused."""
    table = tmp_path / "x.csv"
    command = [sys.executable, "-c", "from flipd.cli import main; main()", "estimate", "lollipop", "--method", "twonn", "-n", "200",
               "-o", str(table), "--quiet", "--threads", "1"]
    environment = {**os.environ, "PYTHONPATH": PACKAGE_ROOT, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(status for status, _ in outcomes) == [0, 2], outcomes
    refused = next(err for status, err in outcomes if status == 2)
    # refused by the lock, or (had the first finished already) by the finished table
    assert "is being written by" in refused or "already exists" in refused, refused
    assert table.is_file() and not (tmp_path / "x.csv.lock").exists()


# --------------------------------------------------------------------------- 6. data


def _estimate_file(file: Path, tmp_path: Path, *extra: str):
    return run_flipd("estimate", file, "--method", "twonn", "-o", tmp_path / "out.csv", "--quiet", *extra)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("x,y\n1,2\n3,abc\n5,6\n7,8\n", ["column 'y'", "'abc'", "row 1"]),
        ("x,y\n1,2\n3,4\n5,1e39\n", ["row 2", "float32"]),
        ("x,y,lid\n1,2,1\n3,4,one\n5,6,1\n", ["column 'lid'", "'one'", "row 1"]),
        ("x,y,component\n1,2,0\n3,4,\n5,6,1\n", ["column 'component'", "row 1", "missing"]),
        ("x,y,component\n1,2,0\n3,4,0.5\n5,6,1\n", ["column 'component'", "row 1", "fractional"]),
        ("x,y,index\n1,2,10\n3,4,\n5,6,12\n", ["column 'index'", "row 1"]),
        ("x,y\n", ["no rows of data", "data.csv"]),
    ],
)
def test_bad_table_cells_are_named(tmp_path, text, fragments):
    from flipd.datasets.sources import load_points

    file = tmp_path / "data.csv"
    file.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_points(str(file))
    assert all(fragment in str(caught.value) for fragment in fragments), str(caught.value)
    result = _estimate_file(file, tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "out.csv").exists() and file.read_text() == text


def test_explicit_columns_with_text_are_named(tmp_path):
    from flipd.datasets.sources import load_points

    file = tmp_path / "data.csv"
    file.write_text("x,y,note\n1,2,a\n3,4,b\n")
    assert load_points(str(file)).point_shape == (2,)  # a column of text is not a coordinate
    with pytest.raises(ValueError, match="column 'note'.*'a'.*rows 0, 1"):
        load_points(f"{file}:columns=x+note")


def test_large_but_float32_values_load_and_an_own_index_is_kept(tmp_path):
    from flipd.datasets.sources import load_points

    file = tmp_path / "data.csv"
    file.write_text("index,x,y,component\n7,1e30,2,0\n3,3,4,1\n9,5,6,1\n")
    points = load_points(str(file))
    assert points.index.tolist() == [7, 3, 9]
    assert points.component.tolist() == [0, 1, 1] and points.component.dtype == np.int64
    assert float(points.x[0, 0]) == pytest.approx(1e30, rel=1e-6)
    assert load_points(str(file), n=2, seed=0).index.tolist()[0] in (7, 3, 9)
    import pandas as pd

    rng = np.random.default_rng(0)
    own = rng.permutation(1000)[:30]
    pd.DataFrame({"index": own, "x": rng.normal(size=30), "y": rng.normal(size=30)}).to_csv(file, index=False)
    result = _estimate_file(file, tmp_path)
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "out.csv")["index"].tolist() == own.tolist()


def test_float32_overflow_in_arrays_is_named(tmp_path):
    from flipd.datasets.sources import load_points

    file = tmp_path / "data.npy"
    values = np.ones((5, 2))
    values[3, 1] = -1e39
    np.save(file, values)
    with pytest.raises(ValueError, match="data.npy.*float32.*row 3,"):
        load_points(str(file))


@pytest.mark.parametrize("kind", ["empty", "object", "garbage"])
def test_unreadable_npy_files_are_named(tmp_path, kind):
    file = tmp_path / "data.npy"
    tripwire = tmp_path / "unpickled"
    if kind == "empty":
        file.write_bytes(b"")
    elif kind == "object":
        np.save(file, np.array([[_Tripwire(str(tripwire)), 1]], dtype=object), allow_pickle=True)
    else:
        file.write_bytes(b"\x93NUMPY not really")
    result = _estimate_file(file, tmp_path)
    assert_user_error(result, str(file), "Cannot read")
    if kind == "empty":
        assert "empty (0 bytes)" in result.stderr
    assert not tripwire.exists() and not (tmp_path / "out.csv").exists()


# --------------------------------------------------------------------------- 7. models without a Jacobian


class _Linear(torch.nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 3)
        self.how = how

    def forward(self, y, t):
        if self.how == "no_grad":
            with torch.no_grad():
                return self.layer(y)
        if self.how == "inference_mode":
            with torch.inference_mode():
                return self.layer(y)
        if self.how == "detach":
            return self.layer(y.detach())
        return self.layer(y)


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detach"])
@pytest.mark.parametrize(
    "options",
    [{"trace": "exact"}, {"trace": "hutchinson", "n_probes": 4}, {"trace": "hutchinson", "n_probes": 1},
     {"trace": "exact", "mode": "forward"}],
)
def test_a_model_output_that_ignores_its_input_is_refused(how, options):
    model = _Linear(how)
    x = torch.randn(5, 3)
    if how == "no_grad" and options.get("mode") == "forward":  # forward-mode AD ignores no_grad: right answer
        expected = flipd.flipd(_Linear("plain"), x, t0=0.05, **options)
        assert torch.allclose(flipd.flipd(model, x, t0=0.05, **options), expected)
        return
    with pytest.raises(ValueError, match="does not depend on its input.*no_grad"):
        flipd.flipd(model, x, t0=0.05, **options)
    # with trainable parameters the output still requires grad: the lost input is still found
    model.requires_grad_(True)
    with pytest.raises(ValueError, match="does not depend on its input"):
        flipd.flipd(model, x, t0=0.05, **options)


def test_a_model_with_a_zero_jacobian_is_not_refused():
    x = torch.randn(4, 3)
    lid = flipd.flipd(lambda y, t: 0.0 * y, x, t0=0.05, trace="exact")
    assert torch.allclose(lid, torch.full((4,), 3.0), atol=1e-4)
    assert torch.isfinite(flipd.flipd(_Linear("plain"), x, t0=0.05, trace="hutchinson", n_probes=4)).all()


# --------------------------------------------------------------------------- 8. results checked


def test_non_finite_estimates_are_reported_and_counted(tmp_path, monkeypatch):
    import pandas as pd

    from flipd.jobs import estimate as job

    original = job.METHOD_REGISTRY["twonn"]

    def with_holes(x, model, noise, common, settings):  # a fault injected into a real estimator's output
        result = original.run(x, model, noise, common, settings)
        result.lid[3], result.lid[17] = float("nan"), float("inf")
        return result

    monkeypatch.setattr(job, "METHOD_REGISTRY", {**job.METHOD_REGISTRY, "twonn": dataclasses.replace(original, run=with_holes)})
    table = tmp_path / "x.csv"
    result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "not finite" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 2 of 40 LID estimates are not finite"), result.stderr
    assert "index 3, 17" in warnings[0]
    rows = pd.read_csv(table)
    assert len(rows) == 40 and rows["lid"].isna().sum() == 1  # nothing lost: every row is written
    summary = json.loads(table.with_suffix(".json").read_text())["summary"]
    assert summary["n_non_finite"] == 2 and summary["non_finite_index"] == [3, 17]
    assert np.isfinite(summary["lid_mean"])
    monkeypatch.undo()
    result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--force", "--quiet")
    assert result.exit_code == 0 and "not finite" not in result.stderr
    assert json.loads(table.with_suffix(".json").read_text())["summary"]["n_non_finite"] == 0


def test_out_of_range_estimates_are_reported_and_counted(tmp_path, monkeypatch):
    import pandas as pd

    from flipd.estimator import out_of_range
    from flipd.jobs import estimate as job

    original = job.METHOD_REGISTRY["twonn"]

    def beyond(x, model, noise, common, settings):  # a fault injected into a real estimator's output
        result = original.run(x, model, noise, common, settings)
        result.lid[5], result.lid[8] = -3.0, 7.0  # D = 2
        return result

    monkeypatch.setattr(job, "METHOD_REGISTRY", {**job.METHOD_REGISTRY, "twonn": dataclasses.replace(original, run=beyond)})
    table = tmp_path / "x.csv"
    result = run_flipd("estimate", "lollipop", "--method", "twonn", "-n", "40", "-o", table, "--quiet")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(table)
    outside = out_of_range(rows["lid"].to_numpy(), None, 2)
    warning = next(line for line in result.stderr.splitlines() if "outside [0, D = 2]" in line)
    assert warning.startswith(f"warning: {outside.sum()} of 40 LID estimates lie outside")
    assert outside[[5, 8]].all() and rows["lid"].tolist()[5] == -3.0  # reported, and written as it is
    summary = json.loads(table.with_suffix(".json").read_text())["summary"]
    assert summary["n_out_of_range"] == outside.sum() and {5, 8} <= set(summary["out_of_range_index"])


# --------------------------------------------------------------------------- 9. more data files


@pytest.mark.parametrize("member", ["x", "lid", "images"])
def test_object_and_record_members_of_npz_files_are_named(tmp_path, member):
    file = tmp_path / "data.npz"
    tripwire = tmp_path / "unpickled"
    arrays = {"x": np.ones((6, 2)), "lid": np.ones(6)}
    if member == "images":
        arrays = {"images": np.array([[[_Tripwire(str(tripwire))] * 4] * 4] * 2, dtype=object)}
    else:
        arrays[member] = np.array([_Tripwire(str(tripwire))] * 6, dtype=object)
    np.savez(file, **arrays)
    result = _estimate_file(file, tmp_path)
    assert_user_error(result, f"the array '{member}' of '{file}'", "Python objects", "numpy.save")
    records = tmp_path / "records.npz"
    np.savez(records, x=np.zeros(4, dtype=[("a", "f4"), ("b", "f4")]))
    assert_user_error(_estimate_file(records, tmp_path), "the array 'x'", "records", "numpy.save")
    assert not tripwire.exists() and not (tmp_path / "out.csv").exists()


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height greyscale pixels but holds almost no data (a bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(20_000, 20_000), (10_000, 10_000)])  # beyond Pillow's error and warning limits
def test_decompression_bomb_images_are_refused_naming_file_and_limit(tmp_path, size):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    _png_header(folder / "bomb.png", *size)
    limit = Image.MAX_IMAGE_PIXELS
    result = _estimate_file(folder, tmp_path)
    assert_user_error(result, str(folder / "bomb.png"), f"{size[0] * size[1]} pixels", "89478485", f"{folder}:max_pixels=")
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's own setting is left as it was
    assert not (tmp_path / "out.csv").exists()


def test_a_raised_image_limit_lets_a_large_image_be_decoded(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _png_header(folder / "large.png", 100, 100)  # declares 10000 pixels, holds too few: truncated
    assert_user_error(_estimate_file(Path(f"{folder}:max_pixels=9999"), tmp_path), "10000 pixels", "limit of 9999")
    result = _estimate_file(Path(f"{folder}:max_pixels=10000"), tmp_path)
    assert_user_error(result, "cannot read image", str(folder / "large.png"))


def test_image_size_limit_is_an_option_of_the_folder(tmp_path):
    from PIL import Image

    from flipd.datasets.sources import load_points

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    assert load_points(str(folder)).point_shape == (1, 8, 8)
    assert load_points(f"{folder}:max_pixels=64").n == 3
    with pytest.raises(ValueError, match=r"0.png' is 8x8 = 64 pixels, more than the limit of 63"):
        load_points(f"{folder}:max_pixels=63")
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_points(f"{folder}:max_pixels=0")
    (folder / "3.png").write_bytes(b"not a png")
    assert_user_error(_estimate_file(folder, tmp_path), "cannot read image", str(folder / "3.png"))


# --------------------------------------------------------------------------- 10. diffusers folders


def _images_file(tmp_path: Path, size: int = 4) -> Path:
    file = tmp_path / "images.npy"
    np.save(file, np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8))
    return file


def test_a_unet_folder_without_a_scheduler_says_how_to_give_one(ddpm_folder, tmp_path):
    unet = tmp_path / "ddpm" / "unet"
    shutil.copytree(ddpm_folder, tmp_path / "ddpm")
    weights = unet / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"damaged")  # the message must come before the network is read
    for load in (flipd.load, flipd.from_diffusers):
        with pytest.raises(ValueError, match="without a noise scheduler.*--scheduler DIR.*scheduler=DIR") as caught:
            load(unet)
        assert str(tmp_path / "ddpm") in str(caught.value)  # the pipeline folder around it is offered too
    images, table = _images_file(tmp_path), tmp_path / "x.csv"
    result = run_flipd("estimate", images, "-m", unet, "-o", table)
    assert_user_error(result, str(unet), "--scheduler DIR", "scheduler_config.json")
    result = run_flipd("curve", images, "-m", unet, "-o", table)
    assert_user_error(result, "--scheduler DIR")
    assert not table.exists()


def test_the_scheduler_option_completes_a_unet_folder(ddpm_folder, tmp_path, checkpoint):
    import pandas as pd

    unet, scheduler = ddpm_folder / "unet", ddpm_folder / "scheduler"
    images, table = _images_file(tmp_path), tmp_path / "x.csv"
    common = ("-o", table, "--trace", "hutchinson", "--quiet", "--threads", "1")
    result = run_flipd("estimate", images, "-m", unet, "--scheduler", scheduler, *common)
    assert result.exit_code == 0, result.output
    whole = tmp_path / "whole.csv"
    result = run_flipd("estimate", images, "-m", ddpm_folder, *common[2:], "-o", whole)
    assert result.exit_code == 0, result.output
    assert np.allclose(pd.read_csv(table)["lid"], pd.read_csv(whole)["lid"])  # the same model as the pipeline
    record = json.loads(table.with_suffix(".json").read_text())
    assert record["model"]["fingerprint"].count("+") == 1 and "scheduler from" in record["model"]["description"]
    assert_user_error(run_flipd("estimate", images, "-m", unet, "--scheduler", tmp_path / "nothing", "-o", tmp_path / "y.csv"),
                      str(tmp_path / "nothing"))
    assert_user_error(run_flipd("estimate", "lollipop", "-m", checkpoint, "--scheduler", scheduler, "-o", tmp_path / "y.csv"),
                      "--scheduler", "applies only to diffusers models")
    assert_user_error(run_flipd("estimate", images, "--method", "lpca", "--scheduler", scheduler, "-o", tmp_path / "y.csv"),
                      "--scheduler", "--model")
    assert not (tmp_path / "y.csv").exists()


# --------------------------------------------------------------------------- 11. options, before the work


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        (("estimate", "NOSUCH.csv", "-m", "MODEL", "--t0", "abc"), ["--t0", "'abc'"]),
        (("estimate", "NOSUCH.csv", "--method", "lpca", "--trace", "exact"), ["lpca", "--trace"]),
        (("estimate", "NOSUCH.csv", "--method", "twonn", "--probes", "4"), ["twonn", "--probes"]),
        (("estimate", "NOSUCH.csv", "--method", "nb", "-m", "MODEL", "--neighbors", "5"), ["--neighbors", "nb"]),
        (("estimate", "NOSUCH.csv", "--method", "nb", "-m", "MODEL", "--t0", "auto"), ["'auto'", "flipd"]),
        (("estimate", "NOSUCH.csv", "--method", "mle", "-m", "MODEL"), ["--model", "mle"]),
        (("estimate", "NOSUCH.csv", "-m", "MODEL", "--t0", "5"), ["--t0", "not a noise level"]),
        (("estimate", "NOSUCH.csv", "-m", "MODEL", "--sigma", "-1"), ["--sigma"]),
        (("curve", "NOSUCH.csv", "-m", "MODEL", "--t-min", "0.5", "--t-max", "0.1"), ["--t-min/--t-max", "empty"]),
        (("curve", "NOSUCH.csv", "-m", "MODEL", "--t-min", "-1"), ["--t-min/--t-max", "outside"]),
        (("train", "NOSUCH.csv", "--lr", "0"), ["--lr", "positive"]),
        (("bench", "nosuch"), ["unknown benchmark 'nosuch'", ", ".join(sorted(BENCHMARKS))]),
    ],
)
def test_options_are_checked_before_the_data_is_read(tmp_path, checkpoint, arguments, fragments):
    """The data file does not exist: the option's error must come first."""
    arguments = [str(checkpoint) if a == "MODEL" else str(tmp_path / a) if a == "NOSUCH.csv" else a for a in arguments]
    if arguments[0] in ("estimate", "curve", "train"):
        arguments += ["-o", str(tmp_path / ("out" if arguments[0] == "train" else "out.csv"))]
    result = run_flipd(*arguments)
    assert_user_error(result, *fragments)
    assert "NOSUCH" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["images", "--threads", "0"], "--threads: 0 is not a positive integer"),
        (["synthetic", "--suite", "toy", "--n-eval", "-5"], "--n-eval: -5 is not a positive integer"),
        (["scale", "--repeats", "0"], "--repeats: 0 is not a positive integer"),
        (["images", "--preset", "tiny", "--out", "BLOCKED/results"], "--out"),
        (["synthetic", "--suite", "toy", "--tiny", "--out-dir", "BLOCKED/r", "--cache-dir", "CACHE"], "--out-dir"),
        (["scale", "--out", "BLOCKED/results"], "--out"),
    ],
)
def test_benchmark_options_are_checked_before_the_work(tmp_path, arguments, fragment, capsys):
    from flipd.bench.__main__ import main

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    arguments = [a.replace("BLOCKED", str(blocker)).replace("CACHE", str(tmp_path / "cache")) for a in arguments]
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2
    assert fragment in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


class _RefusedEncode:
    """A coordinate map that must not run: the options are wrong and must be refused first."""

    def __call__(self, x):
        raise AssertionError("encode ran before the options were checked")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, x: flipd.flipd(m, x, seed=None), TypeError, "seed"),
        (lambda m, x: flipd.flipd(m, x, chunk_rows=-1), ValueError, "chunk_rows"),
        (lambda m, x: flipd.flipd(m, x, trace="nosuch"), ValueError, "trace"),
        (lambda m, x: flipd.flipd(m, x, n_probes=0), ValueError, "n_probes"),
        (lambda m, x: flipd.flipd(m, x, t0=5.0), ValueError, "t0"),
        (lambda m, x: flipd.flipd(m, x, indices=[1, 2]), ValueError, "indices"),
        (lambda m, x: flipd.estimate(m, x, t0="nosuch"), ValueError, "t0"),
        (lambda m, x: flipd.flipd_curve(m, x, [0.1, 2.0]), ValueError, "t_grid"),
        (lambda m, x: flipd.flipd_curve(m, x, [0.1, 0.2], mode="sideways"), ValueError, "mode"),
        (lambda m, x: flipd.baselines.estimate_nb(m, x, seed=None), TypeError, "seed"),
        (lambda m, x: flipd.baselines.estimate_nb(m, x, rows_per_forward=0), ValueError, "rows_per_forward"),
        (lambda m, x: flipd.baselines.estimate_fpregress(m, x, stds=[0.1, 0.05]), ValueError, "stds"),
    ],
)
def test_api_options_are_checked_before_the_model_runs(call, error, message):
    import flipd.baselines  # noqa: F401

    model = flipd.as_model(lambda y, t: y, encode=_RefusedEncode())
    with pytest.raises(error, match=message):
        call(model, torch.randn(4, 3))


# --------------------------------------------------------------------------- 12. models that break the rules


def _through_numpy(y, t):
    return torch.from_numpy(np.tanh(y.numpy()))


def _detached_numpy(y, t):
    return torch.from_numpy(np.tanh(y.detach().cpu().numpy()))


@pytest.mark.parametrize("fn", [_through_numpy, _detached_numpy])
@pytest.mark.parametrize(
    "options",
    [{"trace": "exact"}, {"trace": "hutchinson", "n_probes": 4}, {"trace": "hutchinson", "n_probes": 1},
     {"trace": "exact", "mode": "forward"}],
)
def test_a_model_that_goes_through_numpy_is_named(fn, options):
    with pytest.raises(ValueError, match=r"out of torch.*\.numpy\(\).*differentiable torch"):
        flipd.flipd(fn, torch.randn(5, 3), t0=0.05, **options)


def test_non_finite_outputs_are_reported_for_every_batch():
    x = torch.randn(700, 3, generator=torch.Generator().manual_seed(0))

    def poisoned(y, t):  # NaN wherever the first coordinate is large
        return torch.where(y[:, :1] > 1.0, torch.full_like(y, math.nan), y)

    psi = float(flipd.schedules.VP().psi(torch.tensor(0.05, dtype=torch.float64)))
    expected = torch.nonzero(psi * x[:, 0] > 1.0).flatten()
    assert len(expected) > 50 and int(expected.min()) < 64 < int(expected.max())
    with pytest.raises(flipd.NonFiniteOutputError) as caught:
        flipd.flipd(poisoned, x, t0=0.05, batch_size=64)
    assert caught.value.indices == expected.tolist() and caught.value.n_points == 700
    assert f"for {len(expected)} of 700 points" in str(caught.value)
    shifted = (expected + 1000).tolist()
    with pytest.raises(flipd.NonFiniteOutputError) as caught:  # by the caller's indices
        flipd.flipd(poisoned, x, t0=0.05, batch_size=64, indices=range(1000, 1700), trace="hutchinson")
    assert caught.value.indices == shifted
    with pytest.raises(flipd.NonFiniteOutputError) as caught:
        flipd.flipd_curve(poisoned, x, [0.05, 0.1], batch_size=64)
    assert caught.value.indices == expected.tolist()


def test_non_finite_outputs_on_the_command_line_name_every_row_by_the_index(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "model.safetensors"
    tensors = load_file(weights)  # the network's output bias NaN: every output NaN, the inputs fine
    save_file({**tensors, "ema.output.bias": torch.full_like(tensors["ema.output.bias"], math.nan)}, weights)
    file = tmp_path / "points.csv"
    index = [30 + 7 * i for i in range(10)]
    file.write_text("index,a,b,c\n" + "".join(f"{i},{i % 3},{i % 5},{i % 7}\n" for i in index))
    table = tmp_path / "x.csv"
    for chunking in (["--chunk-size", "4", "--batch-size", "2"], []):  # later chunks scanned; one chunk
        result = run_flipd("estimate", file, "-m", checkpoint, *chunking, "-o", table)
        assert_user_error(result, "non-finite values", "for 10 of 10 points", ", ".join(map(str, index[:10])))
    result = run_flipd("curve", file, "-m", checkpoint, "-n", "10", "-o", table)
    assert_user_error(result, "non-finite values", "for 10 of 10 points", str(index[0]))
    assert not table.exists() and not (tmp_path / "x.csv.chunks").exists()


def test_api_warns_about_estimates_out_of_range():
    from flipd.analytic import GaussianMixture

    x = torch.randn(6, 3)
    with pytest.warns(flipd.EstimateWarning, match=r"points \[0, 1, 2, 3, 4, 5\] .* lie outside \[0, D = 3\]"):
        flipd.flipd(lambda y, t: 50.0 * y, x, t0=0.05, prediction="score", trace="exact")
    with pytest.warns(flipd.EstimateWarning, match=r"the curves of points"):
        flipd.flipd_curve(lambda y, t: 50.0 * y, x, [0.05, 0.1], prediction="score")
    mixture = GaussianMixture.random([1, 2], ambient_dim=3, seed=0)
    points, _ = mixture.sample(50, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", flipd.EstimateWarning)  # a perfect model's estimates are in range
        flipd.flipd(mixture.as_model(flipd.schedules.VP(), prediction="epsilon"), points, t0=0.01, trace="exact")


# --------------------------------------------------------------------------- 13. one run per output: curves


def test_a_second_curve_run_on_the_same_output_is_refused(tmp_path, checkpoint):
    from flipd.runs.files import lock_path_for

    table = tmp_path / "curves.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path_for(table).write_text(f"{holder.pid}\n")
        result = run_flipd("curve", "lollipop", "-m", checkpoint, "-n", "4", "-o", table, "--quiet")
        assert_user_error(result, str(table), f"process {holder.pid}")
        assert not table.exists()
    finally:
        holder.kill()
        holder.wait()


def test_points_that_overflow_in_model_coordinates_are_named_by_index(tmp_path):
    from flipd.models.checkpoint import DiffusionModel
    from flipd.models.mlp import MLPUNet, MLPUNetConfig

    torch.manual_seed(0)
    network = MLPUNet(MLPUNetConfig(data_dim=3, widths=(8,)))
    narrow = DiffusionModel(network, shift=torch.zeros(3), scale=torch.full((3,), 1e-36)).save(tmp_path / "narrow")
    file = tmp_path / "points.csv"
    file.write_text("index,a,b,c\n" + "".join(f"{100 + i},{1e3 if i == 4 else 0.5},1,1\n" for i in range(8)))
    for command in ("estimate", "curve"):  # 1e3 / 1e-36 overflows float32; 0.5 / 1e-36 does not
        result = run_flipd(command, file, "-m", narrow, "-o", tmp_path / "x.csv")
        assert_user_error(result, "1 of 8 points", "at index 104", "NaN or inf in the coordinates of the model")
    assert not (tmp_path / "x.csv").exists()


def test_curve_takes_all_points_of_a_file_smaller_than_its_default(checkpoint, tmp_path):
    import pandas as pd

    file = tmp_path / "points.csv"
    file.write_text("a,b,c\n" + "".join(f"{i % 3},{i % 5},{i % 7}\n" for i in range(10)))
    table = tmp_path / "curves.csv"
    result = run_flipd("curve", file, "-m", checkpoint, "--steps", "4", "--t-min", "0.1", "--t-max", "0.5", "-o", table, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(set(pd.read_csv(table)["index"])) == list(range(10))
    result = run_flipd("curve", file, "-m", checkpoint, "-n", "11", "-o", tmp_path / "y.csv")
    assert_user_error(result, "has only 10 points")  # asked for explicitly: more than there are is refused
