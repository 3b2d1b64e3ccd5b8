"""flipd image models exported as diffusers pipelines (flipd.models.export, flipd export).

The models are tiny random U-nets (a random network is as good as a trained one for checking
that two wrappings compute the same function). The exported pipeline must give the same FLIPD
as the original on the same points, and diffusers' DDPMPipeline must load and run it.
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import flipd  # noqa: E402
from flipd.models.export import ExportError, ddpm_alphas_cumprod  # noqa: E402
from flipd.models.unet import ImageUNet, UNetConfig  # noqa: E402
from flipd.noise import REFERENCE_SCHEDULE  # noqa: E402
from flipd.schedules import VE, VP, Discrete  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*batching rule.*")  # vmap over CPU attention falls back to a loop
SHAPE = (1, 8, 8)


def assert_agree(original: torch.Tensor, exported: torch.Tensor) -> None:
    """FLIPD of a float32 model and of its float32 export: equal up to float32 rounding of the
    schedule and the network's arithmetic (relative 1e-4; flipd.bench export
    measures at most 2.2e-5 on a trained model)."""
    torch.testing.assert_close(exported, original, rtol=1e-4, atol=1e-3)


def image_model(schedule=None, prediction: str = "epsilon", seed: int = 0, standardize: str = "none") -> flipd.DiffusionModel:
    torch.manual_seed(seed)
    network = ImageUNet(UNetConfig(image_shape=SHAPE, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4))
    with torch.no_grad():  # make the output layer non-trivial and larger than at initialisation
        for parameter in network.unet.conv_out.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    shift, scale = torch.zeros(SHAPE), torch.ones(SHAPE)
    if standardize != "none":
        shift, scale = shift + 0.1, scale * 0.5
    return flipd.DiffusionModel(network, shift=shift, scale=scale, schedule=schedule, prediction=prediction,
                                standardize_mode=standardize)


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_trained_betas_match_the_continuous_schedule():
    """The numbers in flipd.models.export's notes."""
    exact = ddpm_alphas_cumprod(REFERENCE_SCHEDULE, 1000)
    assert exact[1:].tolist() == pytest.approx((REFERENCE_SCHEDULE.psi(torch.arange(1, 1000, dtype=torch.float64) / 1000) ** 2).tolist(), rel=1e-12)
    assert exact[0] == pytest.approx(float(REFERENCE_SCHEDULE.psi(0.0005) ** 2))
    betas = 1 - exact / torch.cat([torch.ones(1, dtype=torch.float64), exact[:-1]])
    stored = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.tolist()).alphas_cumprod.double()
    assert ((stored - exact) / exact).abs().max() < 1e-6
    linear = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                     beta_end=0.02).alphas_cumprod.double()
    drift = ((linear - exact) / exact).abs()
    assert [round(float(drift[k]), 4) for k in (50, 500, 999)] == [0.0006, 0.016, 0.084]


@pytest.mark.parametrize(("schedule", "prediction"), [(None, "epsilon"), (VE(), "epsilon"), (VP(0.2, 10.0), "sample")])
def test_exported_pipeline_gives_the_same_flipd(tmp_path, schedule, prediction):
    model = image_model(schedule, prediction)
    folder = model.export_diffusers(tmp_path / "pipeline")
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert [p.suffix for p in (folder / "unet").iterdir() if p.name.startswith("diffusion")] == [".safetensors"]
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler" and config["num_train_timesteps"] == 1000
    assert config["prediction_type"] == prediction

    exported = flipd.from_diffusers(folder)
    assert isinstance(exported.schedule, Discrete) and exported.prediction == prediction
    x = images()
    options = dict(trace="hutchinson", n_probes=4, seed=3)
    original = flipd.flipd(model, x, **options)  # the default noise level: one delta for both
    assert_agree(original, flipd.flipd(exported, x, **options))
    assert original.abs().min() > 1  # not a trivially small function
    assert_agree(flipd.flipd(model, x, delta=-2.0, **options), flipd.flipd(exported, x, delta=-2.0, **options))
    if schedule is None:  # reference VP: time u is timestep 1000·u, also between integer timesteps
        assert_agree(flipd.flipd(model, x, t0=0.0503, **options), flipd.flipd(exported, x, t0=50.3, **options))


def test_ddpm_pipeline_loads_and_samples_the_export(tmp_path):
    folder = image_model().export_diffusers(tmp_path / "pipeline")
    pipeline = diffusers.DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipeline.scheduler, diffusers.DDPMScheduler)
    result = pipeline(batch_size=2, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (2, 8, 8, 1) and ((0 <= result.images) & (result.images <= 1)).all()


def test_what_cannot_be_exported_is_refused_with_the_reason(tmp_path):
    from flipd.models import mlp_unet

    mlp = flipd.DiffusionModel(mlp_unet(4, (8,)), shift=torch.zeros(4), scale=torch.ones(4))
    cases = [
        (mlp, "MLP U-net.*--network unet"),
        (image_model(standardize="per_coordinate"), "standardises its inputs.*'per_coordinate'.*--standardize none"),
        (image_model(prediction="v_prediction"), "predicts 'v_prediction'.*epsilon, sample"),
    ]
    legacy = image_model(VE())
    legacy.network_input = "schedule"
    cases.append((legacy, "older checkpoint.*only VP"))
    for model, message in cases:
        with pytest.raises(ExportError, match=message):
            model.export_diffusers(tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_export_never_replaces_other_folders(tmp_path):
    model = image_model()
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    for force in (False, True):
        with pytest.raises(FileExistsError, match="not a diffusers pipeline"):
            model.export_diffusers(other, force=force)
    assert [p.name for p in other.iterdir()] == ["chapter1.tex"]
    folder = model.export_diffusers(tmp_path / "pipeline")
    with pytest.raises(FileExistsError, match="already exists"):
        model.export_diffusers(folder)
    image_model(seed=5).export_diffusers(folder, force=True)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left


def test_cli_export(tmp_path):
    from test_cli import assert_user_error, flipd as run_cli

    checkpoint = image_model().save(tmp_path / "model")
    result = run_cli("export", checkpoint, "--out", tmp_path / "pipeline")
    assert result.exit_code == 0, result.output
    assert "wrote diffusers pipeline" in result.stderr
    exported = flipd.load(tmp_path / "pipeline")
    x = images()
    assert_agree(flipd.flipd(flipd.load(checkpoint), x, n_probes=2), flipd.flipd(exported, x, n_probes=2))
    assert_user_error(run_cli("export", checkpoint, "--out", tmp_path / "pipeline"), "already exists", "--force")
    assert_user_error(run_cli("export", tmp_path / "pipeline", "--out", tmp_path / "again"), "a diffusers model already")
    mlp = flipd.DiffusionModel(flipd.models.mlp_unet(4, (8,)), shift=torch.zeros(4), scale=torch.ones(4)).save(tmp_path / "mlp")
    assert_user_error(run_cli("export", mlp, "--out", tmp_path / "x"), "MLP U-net")
    result = run_cli("export", "--help")
    assert result.exit_code == 0 and "Example" in result.output and "flipd export" in result.output
