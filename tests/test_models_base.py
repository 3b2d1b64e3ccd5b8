"""The one model concept: flipd.Model, flipd.as_model, flipd.load, and seeds indexed by point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flipd
from flipd.analytic import GaussianMixture
from flipd.schedules import VE, VP, Cosine


class TimeMLP(torch.nn.Module):
    """A small random network model(y, t) on vectors."""

    def __init__(self, dim: int, width: int = 32) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = torch.nn.Linear(dim + 1, width)
        self.second = torch.nn.Linear(width, dim)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5

    def forward(self, y, t):
        return self.second(torch.tanh(self.first(torch.cat([y, t[:, None].to(y)], dim=1))))


@pytest.fixture(scope="module")
def network():
    return TimeMLP(6).eval()


@pytest.mark.parametrize("trace, n_probes", [("hutchinson", 4), ("gaussian", 3), ("hutchinson", 1)])
def test_probes_depend_on_the_point_not_on_the_batching(network, trace, n_probes):
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    options = dict(t0=0.1, trace=trace, n_probes=n_probes, seed=7)
    small = flipd.flipd(network, x, batch_size=7, **options)
    large = flipd.flipd(network, x, batch_size=512, **options)
    assert torch.allclose(small, large, rtol=0, atol=1e-5)
    rows = flipd.flipd(network, x[10:20], indices=range(10, 20), **options)
    assert torch.allclose(rows, large[10:20], rtol=0, atol=1e-5)
    shuffled = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    permuted = flipd.flipd(network, x[shuffled], indices=shuffled, batch_size=9, **options)
    assert torch.allclose(permuted, large[shuffled], rtol=0, atol=1e-5)
    other_seed = flipd.flipd(network, x, batch_size=512, **{**options, "seed": 8})
    assert not torch.allclose(other_seed, large)


def test_per_point_probes_are_exactly_equal_in_double_precision(network):
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = TimeMLP(6).double().eval()
    a = flipd.flipd(model, x, t0=0.2, trace="hutchinson", n_probes=5, batch_size=7)
    b = flipd.flipd(model, x, t0=0.2, trace="hutchinson", n_probes=5, batch_size=512)
    c = flipd.flipd(model, x[5:9], t0=0.2, trace="hutchinson", n_probes=5, indices=[5, 6, 7, 8])
    assert torch.allclose(a, b, rtol=0, atol=1e-12) and torch.allclose(c, b[5:9], rtol=0, atol=1e-12)


def test_nb_noise_depends_on_the_point_not_on_the_batching():
    from flipd.baselines import estimate_nb, normal_bundle_spectrum

    mixture = GaussianMixture.random([1, 2], ambient_dim=4, seed=0)
    x, _ = mixture.sample(12, seed=1)
    model = mixture.as_model(VP(), prediction="epsilon")
    full = normal_bundle_spectrum(model, x, rows_per_forward=16)
    part = normal_bundle_spectrum(model, x[4:8], indices=np.arange(4, 8), rows_per_forward=1000)
    assert np.allclose(part, full[4:8], atol=1e-9)
    assert np.array_equal(estimate_nb(model, x), estimate_nb(model, x, rows_per_forward=5))


def test_indices_are_checked(network):
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="one entry per point"):
        flipd.flipd(network, x, indices=[0, 1])
    with pytest.raises(TypeError, match="integers"):
        flipd.flipd(network, x, indices=[0.5, 1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        flipd.flipd(network, x, indices=[-1, 1, 2, 3])


def test_a_wrapped_callable_is_a_model_with_its_schedule_and_prediction():
    mixture = GaussianMixture.random([2], ambient_dim=5, seed=0)
    x, _ = mixture.sample(20, seed=1)
    schedule = Cosine()
    network = mixture.as_model(schedule, prediction="v_prediction")
    model = flipd.as_model(network, schedule=schedule, prediction="v_prediction")
    assert isinstance(model, flipd.Model) and not isinstance(network, flipd.Model)
    expected = flipd.flipd(network, x, schedule=schedule, prediction="v_prediction", delta=-2.0)
    assert torch.equal(flipd.flipd(model, x, delta=-2.0), expected)
    assert torch.equal(flipd.flipd(model, x, delta=-2.0, schedule=Cosine(), prediction="v_prediction"), expected)
    with pytest.raises(ValueError, match="contradicts the model's own schedule"):
        flipd.flipd(model, x, schedule=VP())
    with pytest.raises(ValueError, match="contradicts the model's own prediction"):
        flipd.flipd(model, x, prediction="epsilon")
    assert flipd.as_model(model) is model


def test_a_models_coordinate_map_is_applied_once():
    mixture = GaussianMixture.random([2], ambient_dim=5, seed=0)
    z, _ = mixture.sample(20, seed=1)
    scale = 3.0
    network = mixture.as_model(VE(), prediction="score")
    model = flipd.as_model(network, schedule=VE(), prediction="score", encode=lambda x: x / scale)
    in_user_units = z * scale
    expected = flipd.flipd(network, z, schedule=VE(), prediction="score", t0=0.1)
    assert torch.allclose(flipd.flipd(model, in_user_units, t0=0.1), expected)
    assert torch.allclose(flipd.flipd(model, z, t0=0.1, encoded=True), expected)
    curve = flipd.flipd_curve(model, in_user_units, [0.1, 0.2])
    assert torch.allclose(curve[:, 0], expected)


def test_load_then_flipd_equals_the_lid_column_of_flipd_estimate(tmp_path):
    from typer.testing import CliRunner

    from flipd.cli import app
    from flipd.datasets.sources import load_points

    runner = CliRunner()
    model_dir, table = tmp_path / "model", tmp_path / "lid.parquet"
    train = runner.invoke(app, ["train", "lollipop", "--out", str(model_dir), "-n", "1000", "--steps", "30",
                                "--batch-size", "128", "--widths", "32,32", "--quiet"], catch_exceptions=False)
    assert train.exit_code == 0, train.output
    estimate = runner.invoke(app, ["estimate", "lollipop", "-m", str(model_dir), "-n", "300", "-o", str(table),
                                   "--trace", "hutchinson", "--probes", "3", "--chunk-size", "128", "--quiet"],
                             catch_exceptions=False)
    assert estimate.exit_code == 0, estimate.output
    import pandas as pd

    lid_column = pd.read_parquet(table)["lid"].to_numpy()
    model = flipd.load(model_dir)
    assert isinstance(model, flipd.Model)
    x_raw = load_points("lollipop", n=300, seed=0).x  # the same points, in the data's own units
    lid = flipd.flipd(model, x_raw, t0=0.05, trace="hutchinson", n_probes=3)
    assert np.allclose(lid.double().numpy(), lid_column, rtol=0, atol=1e-4)
    assert np.allclose(flipd.flipd(model, x_raw, trace="hutchinson", n_probes=3).double().numpy(), lid_column,
                       rtol=0, atol=1e-4)  # the library's default noise level is the command's


def test_diffusers_objects_passed_straight_to_flipd_name_from_diffusers():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(TypeError, match="from_diffusers"):
        flipd.flipd(unet, torch.zeros(2, 1, 8, 8), t0=10)
