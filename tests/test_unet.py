"""The diffusers UNet as a flipd network: configuration, registry, training, checkpoints, FLIPD."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import flipd
from flipd.models import NetworkSpec, build_network, network_kinds
from flipd.train import TrainConfig, load, train_diffusion
from flipd.models.unet import UNET_KIND, ImageUNet, UNetConfig, unet2d

SHAPE = (1, 8, 8)
SMALL = {"block_out_channels": (8, 16), "norm_num_groups": 4, "attention_head_dim": 4}


def small_unet(seed: int = 0, **options) -> ImageUNet:
    torch.manual_seed(seed)
    return ImageUNet(UNetConfig(image_shape=SHAPE, **{**SMALL, **options}))


def blob_images(n: int, seed: int = 0) -> torch.Tensor:
    """n greyscale 8×8 images in [-1, 1]: a bright square of random size and place on black."""
    generator = torch.Generator().manual_seed(seed)
    images = -torch.ones(n, *SHAPE)
    for i in range(n):
        size = int(torch.randint(2, 5, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, 8 - size + 1, (2,), generator=generator))
        images[i, 0, top : top + size, left : left + size] = 1.0
    return images


def test_config_defaults_and_json_round_trip():
    config = UNetConfig(image_shape=(1, 28, 28))
    assert config.block_out_channels == (16, 32, 64)
    assert config.attention_levels == (2,)  # the lowest resolution
    options = config.to_json()
    assert options["image_shape"] == [1, 28, 28]
    assert UNetConfig(**options) == config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_shape": (1, 28, 28), "block_out_channels": (16, 32, 64, 64)}, "divisible by 8"),
        ({"image_shape": (1, 8, 8), "block_out_channels": (12, 16)}, "does not divide"),
        ({"image_shape": (1, 8, 8), "attention_levels": (3,)}, "outside"),
        ({"image_shape": (8, 8)}, "image_shape"),
        ({"image_shape": (1, 8, 8), "time_scale": 0.0}, "time_scale"),
    ],
)
def test_config_rejects_impossible_networks(options, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**options)


def test_forward_shape_and_timestep_scaling():
    network = small_unet().eval()
    y = torch.randn(3, *SHAPE)
    t = torch.tensor([0.01, 0.3, 0.9])
    with torch.no_grad():
        output = network(y, t)
        direct = network.unet(y, 1000 * t).sample
        scalar = network(y, torch.tensor(0.3))
        repeated = network(y, torch.full((3,), 0.3))
    assert output.shape == y.shape
    torch.testing.assert_close(output, direct, rtol=0, atol=0)
    torch.testing.assert_close(scalar, repeated, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        network(torch.randn(3, 1, 16, 16), t)


def test_attention_levels_choose_the_diffusers_blocks():
    network = small_unet(attention_levels=(0,), mid_attention=False)
    names = [type(block).__name__ for block in network.unet.down_blocks]
    assert names == ["AttnDownBlock2D", "DownBlock2D"]
    assert [type(block).__name__ for block in network.unet.up_blocks] == ["UpBlock2D", "AttnUpBlock2D"]
    assert network.unet.mid_block.attentions[0] is None


def test_registered_kind_builds_the_network():
    assert UNET_KIND in network_kinds()
    network = build_network(NetworkSpec(UNET_KIND, UNetConfig(image_shape=SHAPE, **SMALL).to_json()))
    assert isinstance(network, ImageUNet)
    assert network.spec.kind == UNET_KIND
    assert unet2d(SHAPE, (8, 16), norm_num_groups=4).config.block_out_channels == (8, 16)


def _denoising_loss(model, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> float:
    schedule = flipd.schedules.VP()
    psi = schedule.psi(t).float()[:, None, None, None]
    sigma = schedule.sigma(t).float()[:, None, None, None]
    with torch.no_grad():
        prediction = model(psi * z + sigma * noise, t.float())
    return float((prediction - noise).pow(2).flatten(1).sum(1).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images = blob_images(128)
    spec = small_unet().spec
    config = TrainConfig(
        steps=40, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=20, standardize="none",
        patience=None, val_fraction=0.1, seed=0,
    )
    model = train_diffusion(images, network=spec, config=config, progress=False)
    return images, spec, config, model


def test_training_through_flipd_train_lowers_the_loss(trained):
    images, spec, config, model = trained
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)  # train_diffusion initialises specs from the config's seed
        initial = build_network(spec).eval()
    generator = torch.Generator().manual_seed(1)
    t = 0.02 + 0.96 * torch.rand(128, generator=generator, dtype=torch.float64)
    noise = torch.randn(images.shape, generator=generator)
    before = _denoising_loss(initial, images, t, noise)
    after = _denoising_loss(model, images, t, noise)
    assert after < 0.8 * before, (before, after)


def test_save_and_load_give_identical_outputs(trained, tmp_path):
    images, _, _, model = trained
    directory = model.save(tmp_path / "unet")
    assert (directory / "model.safetensors").exists()
    assert not list(directory.glob("*.pt")) and not list(directory.glob("*.pkl"))
    loaded = load(directory)
    assert isinstance(loaded.network, ImageUNet)
    y = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.05, 0.1, 0.5, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, t), model(y, t), rtol=0, atol=0)


def test_the_wrapped_model_saves_in_diffusers_format(trained, tmp_path):
    _, _, _, model = trained
    model.network.unet.save_pretrained(tmp_path / "diffusers")
    from diffusers import UNet2DModel

    reloaded = UNet2DModel.from_pretrained(tmp_path / "diffusers")
    y = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model.network.unet(y, torch.tensor([50.0, 500.0])).sample
        torch.testing.assert_close(reloaded(y, torch.tensor([50.0, 500.0])).sample, expected)


def test_flipd_runs_on_images_through_the_unet(trained):
    images, _, _, model = trained
    lid, stderr = flipd.flipd(model, images[:4], t0=0.1, trace="hutchinson", n_probes=3, return_stderr=True)
    assert lid.shape == (4,)
    assert torch.isfinite(lid).all() and torch.isfinite(stderr).all()
    assert ((lid > -64) & (lid < 2 * 64)).all()


def test_exact_trace_through_the_unet_matches_the_full_jacobian(trained):
    images, _, _, model = trained
    x = images[:1]
    t0 = 0.2
    schedule = flipd.schedules.VP()
    psi, sigma = float(schedule.psi(t0)), float(schedule.sigma(t0))
    y = psi * x

    def epsilon(flat: torch.Tensor) -> torch.Tensor:
        return model(flat.reshape(1, *SHAPE), torch.tensor([t0])).flatten()

    jacobian = torch.autograd.functional.jacobian(epsilon, y.flatten())
    with torch.no_grad():
        eps = epsilon(y.flatten())
    expected = 64 - sigma * torch.trace(jacobian) + eps.pow(2).sum()  # method notes §2, epsilon row
    lid = flipd.flipd(model, x, t0=t0, trace="exact")
    torch.testing.assert_close(lid, expected.reshape(1), rtol=1e-4, atol=1e-3)
