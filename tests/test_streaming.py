"""Streaming input, devices and precision: points read lazily from folders, memory-mapped
arrays and tables; torch Datasets and DataLoaders in the estimator; a batch that runs out of
GPU memory halved; reduced precision against float32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

import flipd
from flipd.analytic import GaussianMixture
from flipd.schedules import VP
from flipd.datasets.sources import load_points
from flipd.datasets.streaming import PointStream, materialize
from flipd.datasets.tables import scan_table
from flipd.models.checkpoint import DiffusionModel
from flipd.models.mlp import MLPUNet, MLPUNetConfig

SOURCE = Path(__file__).resolve().parents[1] / "src"


def _tiny_checkpoint(folder: Path, dim: int, widths=(8, 8), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    network = MLPUNet(MLPUNetConfig(data_dim=dim, widths=widths))
    return DiffusionModel(network, shift=torch.zeros(dim), scale=torch.ones(dim)).save(folder)


def _image_folder(root: Path, count: int, size: int = 8, seed: int = 0) -> Path:
    """Greyscale noise images as PNG, lossless WebP and JPEG files, half in a subfolder."""
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        folder = root / "sub" if i % 2 else root
        if i % 3 == 0:
            Image.fromarray(pixels).convert("RGB").save(folder / f"im{i:04d}.webp", lossless=True)
        elif i % 3 == 1:
            Image.fromarray(pixels).save(folder / f"im{i:04d}.png")
        else:
            Image.fromarray(pixels).save(folder / f"im{i:04d}.jpg", quality=95)
    return root


# --------------------------------------------------------------------------- sources


def test_npy_stream_is_memory_mapped_and_equals_the_array(tmp_path):
    values = np.random.default_rng(0).normal(size=(103, 4))
    np.save(tmp_path / "x.npy", values)
    streamed = load_points(str(tmp_path / "x.npy"), stream=True)
    assert isinstance(streamed.x, PointStream) and streamed.x.shape == (103, 4)
    stream = PointStream(streamed.x.reader, workers=2, read_rows=10)  # read in two worker processes
    expected = torch.from_numpy(values.astype(np.float32))
    assert torch.equal(stream[0:103], expected)
    assert torch.equal(stream[17:64], expected[17:64]) and torch.equal(stream[5], expected[5])
    assert torch.equal(torch.cat(list(stream.batches(3, 50))), expected[3:50])
    assert torch.equal(load_points(str(tmp_path / "x.npy")).x, expected)  # in memory: the same
    subset, full = load_points(str(tmp_path / "x.npy"), n=20, seed=3, stream=True), load_points(str(tmp_path / "x.npy"), n=20, seed=3)
    assert np.array_equal(subset.index, full.index) and torch.equal(materialize(subset.x), full.x)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_stream_equals_in_memory_loading_and_pandas(tmp_path, suffix):
    import pandas as pd

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=250), "b": rng.normal(size=250) * 1e3, "lid": rng.integers(1, 3, 250),
                          "component": rng.integers(0, 2, 250), "note": ["x"] * 250})
    file = tmp_path / f"t{suffix}"
    frame.to_csv(file, index=False) if suffix == ".csv" else frame.to_parquet(file)
    streamed, in_memory = load_points(str(file), stream=True), load_points(str(file))
    reference = torch.from_numpy(frame[["a", "b"]].to_numpy(np.float32))
    assert streamed.streamed and not in_memory.streamed
    assert torch.equal(materialize(streamed.x), reference) and torch.equal(in_memory.x, reference)
    assert torch.equal(PointStream(streamed.x.reader, workers=2, read_rows=32)[100:230], reference[100:230])
    for name in ("lid_true", "component", "index"):
        assert np.array_equal(getattr(streamed, name), getattr(in_memory, name))
    blocks: list[np.ndarray] = []
    found = scan_table(file, {}, str(file), blocks.append, block_rows=64)  # 4 blocks: same values
    assert len(blocks) == 4 and np.array_equal(np.concatenate(blocks), reference.numpy())
    assert found.coordinates == ["a", "b"] and np.array_equal(found.lid_true, frame["lid"].to_numpy(float))


def test_a_bad_cell_in_a_later_block_is_named_by_its_row_in_the_table(tmp_path):
    file = tmp_path / "t.csv"
    rows = [f"{i},{i + 1}" for i in range(200)]
    rows[150] = "150,oops"
    rows[170] = "170,inf"
    file.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"column 'y'.*'oops'.*row 150 "):
        scan_table(file, {}, str(file), lambda block: None, block_rows=64)
    rows[150] = "150,151"
    file.write_text("x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"float32.*row 170,"):
        scan_table(file, {}, str(file), lambda block: None, block_rows=64)


def test_image_folder_is_read_recursively_lazily_and_in_workers(tmp_path):
    root = _image_folder(tmp_path / "images", 12)
    streamed = load_points(f"{root}:channels=1", stream=True, workers=2)
    in_memory = load_points(f"{root}:channels=1")
    assert streamed.streamed and streamed.x.shape == (12, 1, 8, 8)
    assert streamed.names == in_memory.names and "sub/im0001.png" in streamed.names
    assert {Path(name).suffix for name in streamed.names} == {".png", ".webp", ".jpg"}
    assert torch.equal(materialize(streamed.x), in_memory.x) and torch.equal(streamed.x[3:9], in_memory.x[3:9])
    assert np.array_equal(streamed.png_bytes, in_memory.png_bytes) and (streamed.png_bytes > 0).all()
    png = sorted(i for i, name in enumerate(streamed.names) if name.endswith(".png"))[0]
    pixels = np.asarray(Image.open(root / streamed.names[png]))
    assert np.array_equal(streamed.images_uint8([png])[0, :, :, 0], pixels)  # decoded exactly


def test_resize_and_center_crop_give_one_size(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(root / "wide.png")
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(root / "square.png")
    with pytest.raises(ValueError, match="different sizes.*--resize N --center-crop N"):
        load_points(str(root), stream=True)
    points = load_points(str(root), stream=True, resize=12, center_crop=12)
    assert points.x.shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="apply to image folders"):
        np.save(tmp_path / "x.npy", np.ones((3, 2)))
        load_points(str(tmp_path / "x.npy"), resize=8)


def test_an_unreadable_image_is_named(tmp_path):
    root = _image_folder(tmp_path / "images", 4)
    (root / "broken.png").write_bytes(b"\x89PNG not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_points(str(root), stream=True, workers=2)


# --------------------------------------------------------------------------- the estimator on streams


class _Items(Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 3  # (point, label), as image datasets yield


class _Stream(IterableDataset):  # no __len__: read to its end
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __iter__(self):
        yield from self.x


def test_datasets_iterable_datasets_and_dataloaders_equal_the_tensor():
    mixture = GaussianMixture.random([2, 4], ambient_dim=6, seed=0)
    x, _ = mixture.sample(70, seed=1)
    model = flipd.as_model(mixture.as_model(VP(), prediction="epsilon"))
    options = dict(t0=0.05, trace="hutchinson", n_probes=3, seed=4, batch_size=16)
    expected = flipd.estimate(model, x, **options)
    for data in (_Items(x), _Stream(x), DataLoader(_Items(x), batch_size=9), DataLoader(_Stream(x), batch_size=11)):
        result = flipd.estimate(model, data, **options)
        assert torch.allclose(result.lid, expected.lid, atol=1e-5), type(data).__name__
        assert torch.allclose(result.stderr, expected.stderr, atol=1e-5, equal_nan=True)
    subset = flipd.flipd(model, DataLoader(_Items(x[10:30]), batch_size=7), indices=range(10, 30), **options)
    assert torch.allclose(subset, expected.lid[10:30], atol=1e-5)
    curve = flipd.flipd_curve(model, _Stream(x), [0.02, 0.1], trace="hutchinson", seed=4)
    assert torch.allclose(curve, flipd.flipd_curve(model, x, [0.02, 0.1], trace="hutchinson", seed=4), atol=1e-5)


class _RunsOutOfMemory:
    """An epsilon network that raises CUDA's out-of-memory error for inputs of more than
    ``limit`` rows, as a GPU does when a batch does not fit (vmapped probes count as rows)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.sizes = limit, []

    def __call__(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.sizes.append(y.shape[0])
        if y.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (a batch of {y.shape[0]})")
        return torch.tanh(y) * 0.5 + 0.1 * y.sum(dim=1, keepdim=True)


def test_a_batch_that_runs_out_of_gpu_memory_is_halved_and_the_size_reported():
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    network = _RunsOutOfMemory(limit=8)
    with pytest.warns(RuntimeWarning, match="continuing with batches of 8 points"):
        result = flipd.estimate(network, x, t0=0.1, trace="hutchinson", n_probes=2, batch_size=32, chunk_rows=32)
    assert result.batch_size == 8 and max(size for size in network.sizes[-3:]) <= 8
    expected = flipd.estimate(_RunsOutOfMemory(limit=1000), x, t0=0.1, trace="hutchinson", n_probes=2, batch_size=8)
    assert torch.allclose(result.lid, expected.lid, atol=1e-6)  # the same numbers: probes follow the points
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing left to halve
        flipd.estimate(_RunsOutOfMemory(limit=0), x, t0=0.1, trace="hutchinson", batch_size=4)


# --------------------------------------------------------------------------- precision


def test_bfloat16_and_float16_on_cpu_agree_with_float32(tmp_path):
    """FLIPD (exact trace, t0 = 0.05, D = 10) of 300 points with a 64-64 MLP U-net, reduced
    precision against float32. Measured over network seeds 0, 1, 2: bfloat16 max |difference|
    0.075, 0.020, 0.023 (mean 0.008 at most), float16 0.0063, 0.0026, 0.0041 (mean 0.0009 at
    most), Spearman at least 0.9992. The bounds below are twice the worst of those."""
    from scipy.stats import spearmanr

    model = flipd.load(_tiny_checkpoint(tmp_path / "m", 10, widths=(64, 64)))
    x = GaussianMixture.random([2, 4, 8], ambient_dim=10, seed=0).sample(300, seed=1)[0]
    reference = flipd.flipd(model, x, t0=0.05, trace="exact")
    for dtype, largest, mean in ((torch.bfloat16, 0.15, 0.016), (torch.float16, 0.013, 0.0018)):
        low = flipd.flipd(flipd.load(tmp_path / "m", dtype=dtype), x, t0=0.05, trace="exact")
        assert low.dtype == torch.float32  # traces, norms and sums in float32
        difference = (low - reference).abs()
        assert float(difference.max()) < largest and float(difference.mean()) < mean, (dtype, difference.max())
        assert float(difference.max()) > 0  # reduced precision did run
        assert spearmanr(low.numpy(), reference.numpy()).statistic > 0.998
    assert model.compute_dtype is None and not torch.is_autocast_enabled()  # nothing global changed


# --------------------------------------------------------------------------- the command line


def _cli(*arguments: str | Path):
    """The command line, in this process."""
    from typer.testing import CliRunner

    from flipd.cli import app

    return CliRunner().invoke(app, [str(a) for a in arguments], catch_exceptions=False)


def test_estimate_streams_a_folder_with_workers_and_gives_the_in_process_table(tmp_path):
    import pandas as pd

    root = _image_folder(tmp_path / "images", 30)
    model = _tiny_checkpoint(tmp_path / "model", 64)
    common = ("-m", model, "--trace", "hutchinson", "--quiet", "--threads", "1")
    first = _cli("estimate", f"{root}:channels=1", *common, "--workers", "2", "--chunk-size", "8", "-o", tmp_path / "a.csv")
    second = _cli("estimate", f"{root}:channels=1", *common, "--chunk-size", "13", "-o", tmp_path / "b.csv")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a.equals(b) and len(a) == 30 and "sub/im0001.png" in a["name"].tolist()
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["resolved"]["streamed"] is True and record["resolved"]["workers"] == 2
    assert record["resolved"]["batch_size"] == 256 and record["resolved"]["dtype"] == "float32"
    low = _cli("estimate", f"{root}:channels=1", *common, "--dtype", "bfloat16", "-o", tmp_path / "c.csv")
    assert low.exit_code == 0 and json.loads((tmp_path / "c.json").read_text())["resolved"]["dtype"] == "bfloat16"
    assert np.abs(pd.read_csv(tmp_path / "c.csv")["lid"] - a["lid"]).max() < 0.5
    np.save(tmp_path / "x.npy", np.ones((3, 64)))
    for option, value, fragment in (("--dtype", "float8", "--dtype"), ("--resize", "8", "image folders")):
        bad = _cli("estimate", tmp_path / "x.npy" if option == "--resize" else f"{root}:channels=1", *common,
                   option, value, "-o", tmp_path / "d.csv")
        assert bad.exit_code == 2 and fragment in bad.stderr and "Traceback" not in bad.output, bad.output


_MEASURE_PEAK_RSS = """
import resource, sys
from pathlib import Path
import torch
from flipd.datasets.sources import load_points
from flipd.jobs.estimate import plan_estimate
from flipd.jobs.inputs import LoadedModel
from flipd.models.checkpoint import DiffusionModel
from flipd.runs import estimate_in_chunks

class Halving(torch.nn.Module):  # an epsilon network as cheap as can be: 0.5 y
    def forward(self, y, t):
        return 0.5 * y

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
model = DiffusionModel(Halving(), shift=torch.zeros(1, 256, 256), scale=torch.ones(1, 256, 256))
loaded = LoadedModel(model=model, kind="flipd", path=out, description="0.5 y", fingerprint="none")
points = load_points(str(folder), stream=True)
plan = plan_estimate("flipd", loaded, points, trace="hutchinson", batch_size=16, chunk_size=32)
result = estimate_in_chunks(plan.estimator, plan.x, plan.settings, out, identity={})
assert result.columns["lid"].shape == (points.n,)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_of_estimate(folder: Path, out: Path) -> int:
    """Peak resident memory (bytes) of a child process that runs the estimate job (the
    command's loading, planning and chunk loop) on every image of ``folder``."""
    # glibc returns large freed blocks to the system at once, so the peak measures what is held,
    # not how the allocator's heap happened to fragment over more chunks
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1",
                   "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run([sys.executable, "-c", _MEASURE_PEAK_RSS, str(folder), str(out)], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024


@pytest.mark.slow
def test_a_folder_larger_than_the_memory_it_may_use_is_streamed(tmp_path):
    """800 noise images of 256 x 256 are 210 MB as float32 points (the in-memory loader held
    them all, and their uint8 pixels besides); 80 of them are 21 MB. Streamed, the peak RSS
    of the larger run exceeds the smaller one's by less than a quarter of the 189 MB between
    them: the memory the run may use is much smaller than the data."""
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, count in ((small, 80), (large, 800)):
        folder.mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size=(256, 256), dtype=np.uint8)).save(folder / f"{i:05d}.png", compress_level=1)
    data_gap = (800 - 80) * 256 * 256 * 4
    peak_small = _peak_rss_of_estimate(small, tmp_path / "small.run")
    peak_large = _peak_rss_of_estimate(large, tmp_path / "large.run")
    assert peak_large - peak_small < data_gap / 4, (peak_small, peak_large, data_gap)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_members_are_streamed_and_equal_the_array(tmp_path, save):
    values = np.random.default_rng(0).normal(size=(5000, 6))  # float64 rows, cast like the in-memory loader
    file = tmp_path / "data.npz"
    save(file, x=values, lid=np.arange(5000) % 3, component=np.arange(5000) % 2)
    streamed, in_memory = load_points(str(file), stream=True), load_points(str(file))
    assert streamed.streamed and not in_memory.streamed
    assert torch.equal(materialize(streamed.x), torch.from_numpy(values.astype(np.float32)))
    assert torch.equal(materialize(streamed.x), in_memory.x) and streamed.description == in_memory.description
    assert np.array_equal(streamed.lid_true, in_memory.lid_true) and np.array_equal(streamed.component, in_memory.component)
    picked, picked_in_memory = load_points(f"{file}:key=x", n=300, seed=4, stream=True), load_points(str(file), n=300, seed=4)
    assert np.array_equal(picked.index, picked_in_memory.index) and torch.equal(materialize(picked.x), picked_in_memory.x)
    values[2345, 1] = np.inf
    save(file, x=values)
    with pytest.raises(ValueError, match="row 2345"):
        load_points(str(file), stream=True)


_PEAK_OF_NPZ_STREAM = """
import resource, sys
from flipd.datasets.sources import load_points
points = load_points(sys.argv[1], stream=True)
assert points.streamed and points.x[-3:].shape == (3, points.point_shape[0])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_of_npz_stream(file: Path) -> int:
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1",
                   "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
    done = subprocess.run([sys.executable, "-c", _PEAK_OF_NPZ_STREAM, str(file)], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) * 1024


@pytest.mark.slow
def test_a_compressed_npz_larger_than_the_memory_it_may_use_is_streamed(tmp_path):
    """A compressed member of 120 000 x 128 float32 values is 61 MB (the in-memory loader held
    it, decompressed, and its float32 copy); one of 1 200 rows, 0.6 MB. Streamed, the peak RSS
    of the larger exceeds the smaller one's by less than a quarter of the difference."""
    rng = np.random.default_rng(0)
    small, large = tmp_path / "small.npz", tmp_path / "large.npz"
    np.savez_compressed(small, x=rng.normal(size=(1200, 128)).astype(np.float32))
    np.savez_compressed(large, x=rng.normal(size=(120_000, 128)).astype(np.float32))
    data_gap = (120_000 - 1200) * 128 * 4
    peak_small, peak_large = _peak_rss_of_npz_stream(small), _peak_rss_of_npz_stream(large)
    assert peak_large - peak_small < data_gap / 4, (peak_small, peak_large, data_gap)


def test_only_the_images_n_picks_are_opened(tmp_path):
    root = _image_folder(tmp_path / "images", 20)
    everything = load_points(f"{root}:channels=1", stream=True)
    picked = load_points(f"{root}:channels=1", n=6, seed=2, stream=True)
    assert picked.n == 6 and set(picked.names) <= set(everything.names)
    rows = [everything.names.index(name) for name in picked.names]
    assert torch.equal(materialize(picked.x), everything.x[rows])
    assert np.array_equal(picked.png_bytes, everything.png_bytes[rows])
    for name in set(everything.names) - set(picked.names):  # damage every image not picked
        (root / name).write_bytes(b"not an image")
    again = load_points(f"{root}:channels=1", n=6, seed=2, stream=True)
    assert again.names == picked.names and torch.equal(materialize(again.x), materialize(picked.x))
