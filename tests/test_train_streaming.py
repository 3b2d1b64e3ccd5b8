"""Training from streamed points (image folders, .npy, tables): the same weights as from a
tensor, whatever the number of reading workers; values checked before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flipd.cli import app
from flipd.datasets.moments import point_moments
from flipd.datasets.sources import load_points
from flipd.datasets.streaming import PointStream, materialize
from flipd.datasets.tables import ArrayRows
from flipd.jobs.train import train_model
from flipd.models import MLPUNetConfig, NetworkSpec
from flipd.train import TrainConfig, train_diffusion

runner = CliRunner()



def _table(n: int, seed: int = 0) -> np.ndarray:
    """Off-centre points in R³ with uneven spreads (float32)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) * [1.0, 2.5, 0.4] + [3.0, -1.0, 7.0]).astype(np.float32)


def _image_folder(folder: Path, count: int, size: int = 8, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def _same_weights(a, b) -> bool:
    first, second = a.network.state_dict(), b.network.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# --------------------------------------------------------------------------- the statistics pass


def test_moments_of_a_stream_equal_those_of_its_tensor_over_several_blocks(tmp_path):
    values = _table(9000)  # 4096 rows per block: three blocks
    np.save(tmp_path / "x.npy", values)
    stream = load_points(str(tmp_path / "x.npy"), stream=True).x
    keep = torch.rand(9000, generator=torch.Generator().manual_seed(1)) > 0.1
    streamed, held = point_moments(stream, keep), point_moments(torch.from_numpy(values), keep)
    assert torch.equal(streamed.mean, held.mean) and torch.equal(streamed.m2, held.m2)
    assert (streamed.count, streamed.low, streamed.high) == (held.count, held.low, held.high)
    reference = torch.from_numpy(values).double()[keep]
    assert torch.allclose(streamed.mean, reference.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(streamed.variance, reference.var(0), rtol=1e-12)
    assert streamed.low == float(reference.min()) and streamed.high == float(reference.max())
    shift, scale = reference.mean(0).float(), torch.full((3,), 2.0)
    assert streamed.standardized_std(shift, scale) == pytest.approx(float(((reference - shift) / scale).std()), rel=1e-9)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("standardize", ["auto", "per_coordinate"])
def test_training_from_a_streamed_npy_gives_the_weights_of_the_tensor(tmp_path, standardize):
    values = _table(600)
    np.save(tmp_path / "x.npy", values)
    stream = load_points(str(tmp_path / "x.npy"), stream=True)
    assert stream.streamed
    network = NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=3, widths=(16, 16), time_embedding_dim=8).to_json())
    # 540 training points in batches of 64: a new permutation every 8 steps, as in memory
    config = TrainConfig(steps=30, batch_size=64, warmup_steps=3, eval_every=10, val_fraction=0.1, patience=None,
                         seed=3, standardize=standardize, low_t_fraction=0.5)
    from_tensor = train_diffusion(torch.from_numpy(values), network=network, config=config, progress=False)
    from_stream = train_diffusion(stream.x, network=network, config=config, progress=False)
    assert _same_weights(from_tensor, from_stream)
    assert torch.equal(from_tensor.shift, from_stream.shift) and torch.equal(from_tensor.scale, from_stream.scale)
    assert from_tensor.metadata["history"] == [
        {**record, "seconds": tensor_record["seconds"]}
        for record, tensor_record in zip(from_stream.metadata["history"], from_tensor.metadata["history"])
    ]
    assert from_stream.metadata["n_val"] == 60 and from_stream.metadata["n_train"] == 540


def test_a_png_folder_trains_a_unet_from_the_stream_the_same_with_any_workers(tmp_path):
    folder = _image_folder(tmp_path / "images", 48)
    options = ["--network", "unet", "--channels", "8,16", "--steps", "4", "--batch-size", "16", "--threads", "1", "--quiet"]
    for workers in (0, 2):
        result = runner.invoke(app, ["train", str(folder), "-o", str(tmp_path / f"w{workers}"), *options,
                                     "--workers", str(workers)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    weights = [(tmp_path / f"w{workers}" / "model.safetensors").read_bytes() for workers in (0, 2)]
    assert weights[0] == weights[1]
    config = json.loads((tmp_path / "w2" / "config.json").read_text())
    data = config["metadata"]["data"]
    streamed = load_points(str(folder), stream=True)
    assert data["fingerprint"] == streamed.fingerprint() and data["n_points"] == 48
    # the same images held in memory train the same network
    in_memory = load_points(str(folder))
    assert not in_memory.streamed and torch.equal(in_memory.x, materialize(streamed.x))
    settings = dict(network="unet", channels=(8, 16), steps=4, batch_size=16, progress=False)
    assert _same_weights(train_model(streamed, tmp_path / "a", **settings), train_model(in_memory, tmp_path / "b", **settings))


def test_an_mlp_trains_on_a_streamed_folder_flattened(tmp_path):
    folder = _image_folder(tmp_path / "images", 40, size=4)
    streamed, in_memory = load_points(str(folder), stream=True), load_points(str(folder))
    settings = dict(widths=(16, 16), steps=5, batch_size=8, progress=False)
    from_stream = train_model(streamed, tmp_path / "a", **settings)
    assert from_stream.metadata["train_config"]["standardize"] == "none"  # 8-bit images lie in [-1, 1]
    assert tuple(from_stream.shift.shape) == (16,)
    assert _same_weights(from_stream, train_model(in_memory, tmp_path / "b", **settings))


def test_a_non_finite_value_in_a_streamed_table_is_named_by_row_before_training(tmp_path):
    values = _table(50).astype(np.float64)
    table = tmp_path / "points.csv"
    rows = [",".join(map(str, row)) for row in values]
    rows[7] = "1.0,inf,2.0"
    table.write_text("a,b,c\n" + "\n".join(rows) + "\n")
    result = runner.invoke(app, ["train", str(table), "-o", str(tmp_path / "model"), "--steps", "5", "--quiet"])
    assert result.exit_code == 2 and "row 7" in result.stderr and "Traceback" not in result.output, result.output
    assert not (tmp_path / "model").exists()
    # a stream whose reader did not check its values: the training pass names the points
    values[[3, 41]] = np.nan
    np.save(tmp_path / "x.npy", values)
    unchecked = PointStream(ArrayRows(tmp_path / "x.npy"))
    seen = []
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) at points \[3, 41\]"):
        train_diffusion(unchecked, config=TrainConfig(steps=5, batch_size=8), progress=False, callback=seen.append)
    assert seen == []
