"""PIL images as inputs of flipd.flipd / estimate / flipd_curve and of DiffusersModel (flipd.pil_images)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

import flipd  # noqa: E402
from flipd.pil_images import as_tensor_if_pil, pil_to_tensor  # noqa: E402

from test_cli import PACKAGE_ROOT  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*batching rule.*")  # vmap over CPU attention falls back to a loop


def pixels(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_conversion_is_pixel_over_127_5_minus_1_channels_first():
    colour = [pixels((5, 4, 3), seed) for seed in range(3)]  # H=5, W=4
    tensor = pil_to_tensor([Image.fromarray(p) for p in colour])
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 3, 5, 4)
    expected = torch.from_numpy(np.stack(colour).transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(tensor, expected, rtol=0, atol=0)
    assert tensor.min() >= -1 and tensor.max() <= 1
    grey = pil_to_tensor(Image.fromarray(pixels((5, 4))))  # one image: N = 1, C = 1
    assert grey.shape == (1, 1, 5, 4)
    assert pil_to_tensor(Image.fromarray(np.full((2, 2), 255, np.uint8))).unique().tolist() == [1.0]
    assert pil_to_tensor(Image.fromarray(np.zeros((2, 2), np.uint8))).unique().tolist() == [-1.0]


def test_other_inputs_pass_through_unchanged():
    array = np.zeros((2, 3))
    assert as_tensor_if_pil(array) is array
    assert as_tensor_if_pil([]) == []


@pytest.mark.parametrize(
    ("images", "error", "fragments"),
    [
        (lambda: [Image.fromarray(pixels((4, 4, 3))), Image.fromarray(pixels((4, 4)))], ValueError,
         ["different modes", "image 0: 'RGB'", "image 1: 'L'", "convert('RGB')"]),
        (lambda: [Image.fromarray(pixels((4, 4))), Image.fromarray(pixels((4, 6)))], ValueError,
         ["different sizes", "4x4", "6x4", "resize"]),
        (lambda: [Image.fromarray(pixels((4, 4, 4)))], ValueError, ["mode 'RGBA'", "convert('RGB')"]),
        (lambda: [Image.fromarray(pixels((4, 4))), np.zeros((4, 4))], TypeError, ["item 1 is a ndarray"]),
    ],
)
def test_bad_batches_are_named(images, error, fragments):
    with pytest.raises(error) as caught:
        flipd.flipd(lambda y, t: y, images())
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_flipd_estimate_and_curve_take_pil_images():
    images = [Image.fromarray(pixels((4, 4, 3), seed)) for seed in range(3)]
    tensor = pil_to_tensor(images)
    model = flipd.as_model(lambda y, t: 0.3 * y * torch.tanh(y), schedule=flipd.schedules.VP())
    torch.testing.assert_close(flipd.flipd(model, images, n_probes=2), flipd.flipd(model, tensor, n_probes=2))
    torch.testing.assert_close(flipd.estimate(model, images).lid, flipd.estimate(model, tensor).lid)
    grid = [0.05, 0.2]
    torch.testing.assert_close(flipd.flipd_curve(model, images, grid), flipd.flipd_curve(model, tensor, grid))


def test_diffusers_model_encodes_pil_images():
    diffusers = pytest.importorskip("diffusers")
    from test_diffusers_adapters import tiny_unet2d, tiny_vae

    pixel = flipd.from_diffusers(tiny_unet2d(), scheduler=diffusers.DDPMScheduler())
    images = [Image.fromarray(pixels((4, 4, 3), seed)) for seed in range(2)]
    torch.testing.assert_close(pixel.encode(images), pil_to_tensor(images))
    torch.testing.assert_close(pixel.flipd_images(images, t0=100), pixel.flipd_images(pil_to_tensor(images), t0=100))
    latent = flipd.models.DiffusersModel(network=pixel.network, schedule=pixel.schedule, prediction="epsilon",
                                         vae=tiny_vae().eval(), latent_scale=0.18215)  # encode only: the VAE path
    big = [Image.fromarray(pixels((8, 8, 3), seed)) for seed in range(2)]
    torch.testing.assert_close(latent.encode(big), latent.encode(pil_to_tensor(big)))


def test_the_estimator_does_not_import_pil():
    code = "import sys, flipd, flipd.estimator; assert 'PIL' not in sys.modules, 'PIL imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": PACKAGE_ROOT, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
