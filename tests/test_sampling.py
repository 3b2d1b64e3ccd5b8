"""Sampling through diffusers schedulers: exact for a closed-form model, near the data for a trained one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")

import flipd  # noqa: E402
from flipd.analytic import GaussianMixture  # noqa: E402
from flipd.cli import app  # noqa: E402
from flipd.models.mlp import MLPUNetConfig  # noqa: E402
from flipd.models.sampling import diffusers_scheduler, sample_model  # noqa: E402
from flipd.models.spec import NetworkSpec  # noqa: E402
from flipd.schedules import VE, VP, Cosine, RectifiedFlow  # noqa: E402

ROTATION = torch.tensor([[0.8, -0.6], [0.6, 0.8]], dtype=torch.float64)
VARIANCES = torch.tensor([4.0, 0.25], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
GAUSSIAN = GaussianMixture(MEAN[None], [ROTATION], [VARIANCES])
CENTRE, RADIUS = torch.tensor([3.0, -1.0]), 2.0


def gaussian_model(schedule, prediction):
    return flipd.as_model(GAUSSIAN.as_model(schedule, prediction), schedule=schedule, prediction=prediction)


@pytest.mark.parametrize(("schedule", "prediction", "sampler", "steps"), [
    (VP(), "epsilon", "ddim", 200),
    (VP(), "epsilon", "ddpm", 400),
    (Cosine(), "v_prediction", "ddim", 200),
    (VE(), "sample", "ddim", 200),
    (RectifiedFlow(), "flow_velocity", "ddpm", 400),
    (VP(), "score", "ddim", 200),
])
def test_the_closed_form_gaussian_samples_with_its_covariance(schedule, prediction, sampler, steps):
    # 4000 samples: each eigenvalue of the sample covariance has a relative sampling error of
    # sqrt(2/4000) = 2.2%; DDIM with 200 steps shrinks the variance by about 1.5% (with 50
    # steps by about 5%). Tolerance: 10% on each eigenvalue, 0.15 on the mean (5 standard errors).
    x = sample_model(gaussian_model(schedule, prediction), 4000, (2,), steps=steps, sampler=sampler, seed=1,
                     dtype=torch.float64)
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    eigenvalues = torch.linalg.eigvalsh(torch.cov(x.T))
    assert torch.allclose(eigenvalues, VARIANCES.flip(0), rtol=0.10), eigenvalues
    assert (x.mean(0) - MEAN).abs().max() < 0.15
    major = torch.linalg.eigh(torch.cov(x.T)).eigenvectors[:, 1]
    assert abs(float(major @ ROTATION[:, 0])) > 0.99  # the long axis points the right way


def test_samples_are_seeded_and_leave_the_global_random_state_alone():
    model = gaussian_model(VP(), "epsilon")
    state = torch.random.get_rng_state()
    first = sample_model(model, 64, (2,), steps=20, seed=3, sampler="ddpm")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, sample_model(model, 64, (2,), steps=20, seed=3, sampler="ddpm"))
    assert not torch.allclose(first, sample_model(model, 64, (2,), steps=20, seed=4, sampler="ddpm"))
    batched = sample_model(model, 64, (2,), steps=20, seed=3, batch_size=16)
    assert batched.shape == (64, 2) and torch.isfinite(batched).all()


def test_bad_requests_name_the_setting():
    model = gaussian_model(VP(), "epsilon")
    with pytest.raises(ValueError, match="sampler"):
        sample_model(model, 4, (2,), sampler="euler")
    with pytest.raises(ValueError, match="eta"):
        sample_model(model, 4, (2,), sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="steps"):
        sample_model(model, 4, (2,), steps=0)
    with pytest.raises(ValueError, match="n must be"):
        sample_model(model, 0, (2,))


def test_the_scheduler_levels_follow_the_schedule_within_its_range():
    reference = diffusers_scheduler(VP()).alphas_cumprod.double()
    assert torch.allclose(reference, VP().psi(torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2, rtol=1e-4)
    ve = diffusers_scheduler(VE(), "ddpm").alphas_cumprod.double()
    assert float(ve[-1]) == pytest.approx(1 / (1 + 80.0**2), rel=1e-3)  # VE stops at sigma_max = 80


@pytest.fixture(scope="module")
def circle_model(tmp_path_factory):
    """An MLP trained 300 steps on 2000 points of a circle of radius 2 around (3, -1)."""
    generator = torch.Generator().manual_seed(0)
    angle = 2 * math.pi * torch.rand(2000, generator=generator)
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * RADIUS + CENTRE
    config = flipd.TrainConfig(steps=300, batch_size=256, standardize="scalar", warmup_steps=30, eval_every=100,
                               low_t_fraction=0.5, low_t_max=0.2, patience=None)
    spec = NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=2, widths=(64, 64)).to_json())
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        model = flipd.train_diffusion(x, network=spec, config=config, progress=False)
    directory = tmp_path_factory.mktemp("circle")
    model.save(directory / "model")
    np.save(directory / "circle.npy", x.numpy())
    return model, directory


@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 50), ("ddpm", 200)])
def test_a_model_trained_briefly_samples_near_its_circle(circle_model, sampler, steps):
    # Measured with this model and seed: 94% (DDIM) and 99% (DDPM) of the samples lie within
    # 0.2 of the circle; tolerance 85%, every eighth of the circle holding at least 6% (12.5% if uniform).
    model, _ = circle_model
    samples = model.sample(1000, steps=steps, sampler=sampler, seed=0)
    assert samples.shape == (1000, 2)
    offset = samples - CENTRE
    radius = offset.norm(dim=1)
    assert float(((radius - RADIUS).abs() < 0.2).float().mean()) >= 0.85
    assert float((samples.mean(0) - CENTRE).abs().max()) < 0.25
    sector = ((torch.atan2(offset[:, 1], offset[:, 0]) + math.pi) / (2 * math.pi) * 8).long().clamp(0, 7)
    assert torch.bincount(sector, minlength=8).min() >= 60


runner = CliRunner()


def run_flipd(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_the_sample_command_writes_points_and_a_figure(circle_model, tmp_path):
    _, directory = circle_model
    out, plots = tmp_path / "samples.npy", tmp_path / "plots"
    result = run_flipd("sample", directory / "model", "-n", "200", "--out", out, "--plot", plots,
                       "--data", directory / "circle.npy", "--quiet", "--threads", "1")
    assert result.exit_code == 0, result.output
    samples = np.load(out)
    assert samples.shape == (200, 2) and samples.dtype == np.float32
    assert np.median(np.abs(np.linalg.norm(samples - CENTRE.numpy(), axis=1) - RADIUS)) < 0.1
    assert (plots / "model_samples_ddim.png").read_bytes()[:4] == b"\x89PNG"
    again = run_flipd("sample", directory / "model", "-n", "200", "--out", out, "--quiet")
    assert again.exit_code == 2 and "--force" in again.stderr


@pytest.mark.parametrize(("arguments", "fragment"), [
    (("--out", "{tmp}/s.png"), "a PNG grid needs an image model"),
    (("--out", "{tmp}/s.txt"), "--out"),
    (("--out", "{tmp}/s.npy", "--plot", "{tmp}/plots"), "--data"),
    (("--out", "{tmp}/s.npy", "--sampler", "euler"), "--sampler"),
    (("--out", "{tmp}/s.npy", "--sampler", "ddpm", "--eta", "0.5"), "--eta"),
])
def test_sample_mistakes_are_one_line_user_errors(circle_model, tmp_path, arguments, fragment):
    _, directory = circle_model
    result = run_flipd("sample", directory / "model", "-n", "5", *(a.format(tmp=tmp_path) for a in arguments), "--quiet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("error:") and fragment in result.stderr


@pytest.mark.slow
def test_an_image_model_samples_to_a_png_grid(tmp_path):
    model = tmp_path / "digits"
    result = run_flipd("train", "digits8", "--out", model, "-n", "200", "--steps", "5", "--widths", "16", "--quiet",
                       "--threads", "1")
    assert result.exit_code == 0, result.output
    result = run_flipd("sample", model, "-n", "12", "--steps", "5", "--out", tmp_path / "grid.png",
                       "--plot", tmp_path / "plots", "--quiet", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "plots" / "digits_samples_ddim.png").is_file()  # beside digits8, which the checkpoint names
    result = run_flipd("sample", model, "-n", "3", "--steps", "2", "--out", tmp_path / "s.npy", "--quiet")
    assert np.load(tmp_path / "s.npy").shape == (3, 1, 8, 8)  # trained flattened, returned as images
