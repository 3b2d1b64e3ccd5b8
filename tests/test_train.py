"""Training, saving and loading diffusion models (flipd.train, flipd.models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import flipd
from flipd.models import MLPUNetConfig, NetworkSpec, build_network, mlp_unet, register_network
from flipd.schedules import VP
from flipd.train import CheckpointError, DiffusionModel, TrainConfig, load, train_diffusion

TINY = MLPUNetConfig(data_dim=2, widths=(64, 64), time_embedding_dim=16)


def circle(n: int, seed: int = 0) -> torch.Tensor:
    """Points on an ellipse in R² (a 1-dimensional manifold), off-centre and anisotropic."""
    angle = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 * math.pi
    return torch.stack([3 + 2 * torch.cos(angle), -1 + 0.5 * torch.sin(angle)], dim=1)


def tiny_config(**overrides) -> TrainConfig:
    options = dict(steps=300, batch_size=256, lr=3e-3, warmup_steps=20, eval_every=50, patience=None, seed=0)
    options.update(overrides)
    return TrainConfig(**options)



@pytest.fixture(scope="module")
def trained() -> DiffusionModel:
    # Per-coordinate scaling turns the ellipse into a circle, which 300 steps learn well; the
    # default (scalar) scaling is tested in test_scaling.py.
    config = tiny_config(standardize="per_coordinate")
    return train_diffusion(circle(4000), network=NetworkSpec("mlp_unet", TINY.to_json()), config=config, progress=False)


def fixed_noise_loss(predict, z: torch.Tensor, seed: int = 5) -> float:
    """Mean epsilon loss of ``predict(y, t)`` on fixed draws of noise and t ~ U(0.01, 0.3)."""
    generator = torch.Generator().manual_seed(seed)
    t = 0.01 + 0.29 * torch.rand(z.shape[0], generator=generator, dtype=torch.float64)
    noise = torch.randn(z.shape, generator=generator)
    schedule = VP()
    psi, sigma = schedule.psi(t).float()[:, None], schedule.sigma(t).float()[:, None]
    with torch.no_grad():
        prediction = predict(psi * z + sigma * noise, t.float())
    return float((prediction - noise).pow(2).sum(1).mean())


def test_training_lowers_the_loss_and_beats_trivial_denoisers(trained):
    history = trained.metadata["history"]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    z = trained.standardize(circle(2000, seed=1))
    learned = fixed_noise_loss(trained, z)
    zero = fixed_noise_loss(lambda y, t: torch.zeros_like(y), z)
    # The best linear denoiser for standardised data, E[eps | y] if the data were N(0, I).
    schedule = VP()
    gaussian = fixed_noise_loss(lambda y, t: schedule.sigma(t).float()[:, None] * y, z)
    assert zero == pytest.approx(2.0, rel=0.1)
    assert learned < 0.85 * gaussian < zero


def test_standardisation_is_fitted_on_the_training_split(trained):
    z = trained.standardize(circle(4000))
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=0.05)
    assert torch.allclose(z.std(0), torch.ones(2), atol=0.05)
    x = circle(10, seed=3)
    assert torch.allclose(trained.destandardize(trained.standardize(x)), x, atol=1e-5)


@pytest.mark.parametrize("mode", ["scalar", "none"])
def test_other_standardisations(mode):
    from flipd.train import fit_standardization

    x = circle(1000)
    shift, scale = fit_standardization(x, mode)
    if mode == "none":
        assert torch.equal(shift, torch.zeros(2)) and torch.equal(scale, torch.ones(2))
    else:  # one scale for all coordinates keeps the data's shape
        assert scale[0] == scale[1]
        assert torch.allclose(shift, x.mean(0))


def test_save_and_load_give_identical_outputs(trained, tmp_path):
    trained.save(tmp_path / "model")
    loaded = load(tmp_path / "model")
    y, t = torch.randn(64, 2), torch.rand(64) * 0.99 + 0.01
    assert torch.equal(trained(y, t), loaded(y, t))
    assert torch.equal(trained.shift, loaded.shift) and torch.equal(trained.scale, loaded.scale)
    assert loaded.metadata["steps_run"] == trained.metadata["steps_run"]
    online = DiffusionModel.load(tmp_path / "model", weights="online")
    assert torch.equal(online(y, t), trained.online_network(y, t))
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["network"]["kind"] == "mlp_unet"
    assert config["schedule"] == {"kind": "VP", "beta_min": 0.1, "beta_max": 20.0}
    assert config["metadata"]["seed"] == 0 and "torch" in config["metadata"]["versions"]
    assert not list(tmp_path.glob("model/*.pt")) and not list(tmp_path.glob("model/*.pkl"))


def test_trained_model_plugs_into_flipd(trained):
    x = circle(200, seed=2)
    # A trained model is a flipd.Model: flipd.flipd standardises x itself.
    lid = flipd.flipd(trained, x, t0=0.05)
    assert lid.shape == (200,) and torch.isfinite(lid).all()
    assert torch.equal(trained.lid(x, t0=0.05), lid)
    assert torch.equal(flipd.flipd(trained, trained.standardize(x), t0=0.05, encoded=True), lid)
    assert torch.equal(flipd.flipd(trained, x), lid)  # the library's default noise level is t0 = 0.05
    # A circle is 1-dimensional; even this briefly trained model lands near 1 on average.
    assert 0.5 < float(lid.mean()) < 1.6
    result = trained.estimate(x[:20], t0="knee")
    assert torch.isfinite(result.lid).all()
    with pytest.raises(ValueError, match="contradicts the model's own prediction"):
        trained.lid(x, t0=0.05, prediction="score")


def test_early_stopping_triggers():
    # Demanding a 50% drop of the validation loss at every check stops training at once.
    config = tiny_config(steps=1000, eval_every=10, patience=2, min_improvement=0.5)
    model = train_diffusion(circle(1000), network=NetworkSpec("mlp_unet", TINY.to_json()), config=config, progress=False)
    assert model.metadata["stopped_early"] and model.metadata["stop_reason"] == "patience"
    assert model.metadata["steps_run"] < 100


def test_seeds_reproduce_and_leave_the_global_rng_alone():
    data = circle(600)
    spec = NetworkSpec("mlp_unet", TINY.to_json())
    state = torch.get_rng_state()
    first = train_diffusion(data, network=spec, config=tiny_config(steps=40), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_diffusion(data, network=spec, config=tiny_config(steps=40), progress=False)
    other = train_diffusion(data, network=spec, config=tiny_config(steps=40, seed=1), progress=False)
    y, t = torch.randn(16, 2), torch.full((16,), 0.3)
    assert torch.equal(first(y, t), second(y, t))
    assert not torch.allclose(first(y, t), other(y, t))


def test_default_network_and_progress_bar():
    model = train_diffusion(circle(300).numpy(), config=tiny_config(steps=5, eval_every=5), progress=True)
    assert model.network.config.data_dim == 2 and model.network.config.data_std is not None
    assert torch.isfinite(model.lid(circle(5), t0=0.1)).all()


class TinyConv(nn.Module):
    """A small convolutional epsilon network for [N, 1, 4, 4] images (tests only)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.spec = NetworkSpec("test_tiny_conv", {"channels": channels})
        self.inner = nn.Conv2d(2, channels, 3, padding=1)
        self.outer = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = t.reshape(-1, 1, 1, 1).expand(-1, 1, *y.shape[2:])
        return self.outer(torch.nn.functional.silu(self.inner(torch.cat([y, time], dim=1))))


def test_image_networks_reuse_the_training_loop(tmp_path):
    register_network("test_tiny_conv", lambda options: TinyConv(**options), overwrite=True)
    images = torch.rand(200, 1, 4, 4)
    spec = NetworkSpec("test_tiny_conv", {"channels": 8})
    model = train_diffusion(images, network=spec, config=tiny_config(steps=20, standardize="none"), progress=False)
    model.save(tmp_path / "conv")
    loaded = load(tmp_path / "conv")
    y, t = torch.randn(3, 1, 4, 4), torch.full((3,), 0.5)
    assert torch.equal(model(y, t), loaded(y, t))
    assert model.lid(images[:4], t0=0.1, trace="hutchinson", n_probes=4).shape == (4,)
    with pytest.raises(ValueError, match="Pass network="):
        train_diffusion(images, config=tiny_config(steps=1), progress=False)


@pytest.mark.parametrize("options", [
    {"time_conditioning": "add"},
    {"fourier_features": 8, "fourier_scale": 3.0, "data_std": 2.0},
])
def test_network_options_survive_save_and_load(options, tmp_path):
    config = MLPUNetConfig(data_dim=3, widths=(16, 8), time_embedding_dim=8, **options)
    network = build_network(NetworkSpec("mlp_unet", config.to_json()))
    model = DiffusionModel(network, shift=torch.zeros(3), scale=torch.ones(3))
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    y, t = torch.randn(5, 3), torch.rand(5)
    assert torch.equal(model(y, t), loaded(y, t))
    assert loaded.network.config == config


def test_network_registry():
    network = build_network({"kind": "mlp_unet", "options": TINY.to_json()})
    assert network(torch.randn(3, 2), torch.rand(3)).shape == (3, 2)
    with pytest.raises(ValueError, match="Unknown network kind 'nope'"):
        build_network(NetworkSpec("nope"))
    with pytest.raises(ValueError, match="already registered"):
        register_network("mlp_unet", lambda options: mlp_unet(2))


def test_loading_something_else_fails_clearly(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a flipd checkpoint.*config.json"):
        load(tmp_path / "empty")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("config.json", "flipd_model.json"):  # this version's layout and format version 1's
        (wrong / name).write_text(json.dumps({"format": "something-else"}))
        with pytest.raises(CheckpointError, match="'format' is 'something-else'"):
            load(wrong)
        (wrong / name).write_text("{not json")
        with pytest.raises(CheckpointError, match="not valid JSON"):
            load(wrong)
        (wrong / name).unlink()
    trained.save(tmp_path / "good")
    (tmp_path / "good" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file model.safetensors is missing"):
        load(tmp_path / "good")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="non-finite"):
        train_diffusion(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), progress=False)
    with pytest.raises(ValueError, match="shape \\[N, D\\]"):
        train_diffusion(torch.zeros(10), progress=False)
    with pytest.raises(ValueError, match="standardize"):
        TrainConfig(standardize="zscore")
    model = DiffusionModel(mlp_unet(2, (8,)), shift=torch.zeros(2), scale=torch.ones(2))
    with pytest.raises(ValueError, match="shape \\[N, 2\\]"):
        model.standardize(torch.zeros(4, 3))
