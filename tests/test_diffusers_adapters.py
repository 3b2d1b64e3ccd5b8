"""diffusers models as flipd models, checked against hand computations from the same networks.

Every model here is a tiny random network built from a config, saved with save_pretrained and
loaded back from the local folder: nothing is downloaded. Checks run in float64, where FLIPD
through flipd must equal a dense-Jacobian computation to 1e-5 relative.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import flipd  # noqa: E402
from flipd.models.diffusers import DiffusersModel, scheduler_settings  # noqa: E402

RTOL = 1e-5
DTYPE = torch.float64
diffusers.utils.logging.set_verbosity_error()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny networks gain nothing from threads, and under pytest-xdist extra threads oversubscribe
    # the cores (spinning OpenMP workers slow every test down many times over).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_batching_warnings():
    # vmap over the CPU attention backward warns that it falls back to a loop; that is expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        yield


# --------------------------------------------------------------------------- tiny models


def tiny_unet2d(out_channels: int = 3) -> "diffusers.UNet2DModel":
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=4, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
    )


def tiny_conditional_unet() -> "diffusers.UNet2DConditionModel":
    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
    )


def tiny_vae(shift_factor: float | None = None) -> "diffusers.AutoencoderKL":
    torch.manual_seed(2)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
        norm_num_groups=4, sample_size=8, scaling_factor=0.18215, shift_factor=shift_factor,
    )


def tiny_sd3_transformer() -> "diffusers.SD3Transformer2DModel":
    torch.manual_seed(3)
    return diffusers.SD3Transformer2DModel(
        sample_size=4, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
        attention_head_dim=4, num_attention_heads=2, joint_attention_dim=12,
        caption_projection_dim=8, pooled_projection_dim=6, pos_embed_max_size=8,
    )


def tiny_clip(folder: Path):
    """A random CLIP text encoder and a letters-only CLIP tokenizer with context length 7."""
    transformers = pytest.importorskip("transformers")
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=7)
    torch.manual_seed(4)
    config = transformers.CLIPTextConfig(
        vocab_size=len(tokens), hidden_size=12, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=7, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return tokenizer, transformers.CLIPTextModel(config)


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddpm")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    diffusers.DDPMPipeline(unet=tiny_unet2d(), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd")
    tokenizer, text_encoder = tiny_clip(folder / "clip_source")
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipeline = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_conditional_unet(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


# --------------------------------------------------------------------------- hand computations


def output_and_trace(fn, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(y) and the trace of its dense input Jacobian, for one point y [1, ...]."""
    output = fn(y)
    jacobian = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(y.shape)).flatten(), y.flatten())
    return output.detach(), jacobian.diagonal().sum()


def hand_flipd(fn, x: torch.Tensor, psi: float, sigma: float, prediction: str, t: float | None = None) -> torch.Tensor:
    """FLIPD per point from the formulas of the method notes, §2."""
    dim = x[0].numel()
    lids = []
    for point in x:
        y = psi * point[None]
        output, trace = output_and_trace(fn, y)
        if prediction == "epsilon":
            eps, eps_trace = output, trace
        elif prediction == "v_prediction":  # eps = sigma·y + psi·v
            eps, eps_trace = sigma * y + psi * output, sigma * dim + psi * trace
        elif prediction == "flow_velocity":  # eps = y + (1 - t)·u
            eps, eps_trace = y + (1 - t) * output, dim + (1 - t) * trace
        elif prediction == "sample":
            lids.append(psi * trace + (y - psi * output).pow(2).sum() / sigma**2)
            continue
        else:
            raise AssertionError(prediction)
        lids.append(dim - sigma * eps_trace + eps.pow(2).sum())
    return torch.stack(lids)


def clean_points(shape, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(shape, generator=generator, dtype=DTYPE)


def random_images(n: int = 2, seed: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=generator, dtype=DTYPE) * 2 - 1


# --------------------------------------------------------------------------- pixel UNet2DModel


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_unet2d_matches_hand_computation(ddpm_folder, tmp_path, prediction):
    folder = tmp_path / "pipeline"
    shutil.copytree(ddpm_folder, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": prediction}))

    model = flipd.from_diffusers(folder, dtype=DTYPE)
    assert isinstance(model, DiffusersModel) and not model.is_latent
    assert model.prediction == prediction

    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet", torch_dtype=DTYPE)
    alphas_cumprod = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod.to(DTYPE)
    step = 120
    psi, sigma = alphas_cumprod[step].sqrt().item(), (1 - alphas_cumprod[step]).sqrt().item()
    x = clean_points((2, 3, 4, 4))
    timestep = torch.tensor([float(step)], dtype=DTYPE)
    expected = hand_flipd(lambda y: unet(y, timestep).sample, x, psi, sigma, prediction)

    got = flipd.flipd(model, x, t0=step, trace="exact", **model.options)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)
    by_sigma = flipd.flipd(model, x, sigma=sigma, trace="exact", **model.options)
    torch.testing.assert_close(by_sigma, expected, rtol=RTOL, atol=0)
    images = x.clamp(-1, 1)
    torch.testing.assert_close(
        model.flipd_images(images, t0=step, n_probes=2),
        flipd.flipd(model, images, t0=step, n_probes=2, **model.options),
    )


def test_fractional_timestep_interpolates_log_snr(ddpm_folder):
    model = flipd.from_diffusers(ddpm_folder, dtype=DTYPE)
    unet = diffusers.UNet2DModel.from_pretrained(ddpm_folder / "unet", torch_dtype=DTYPE)
    alphas_cumprod = diffusers.DDPMScheduler.from_pretrained(ddpm_folder / "scheduler").alphas_cumprod.to(DTYPE)
    t = 75.25
    delta_table = 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)
    delta = 0.75 * delta_table[75] + 0.25 * delta_table[76]
    psi = torch.rsqrt(1 + torch.exp(2 * delta)).item()
    sigma = (torch.exp(delta) * psi).item()
    x = clean_points((1, 3, 4, 4), seed=7)
    timestep = torch.tensor([t], dtype=DTYPE)
    expected = hand_flipd(lambda y: unet(y, timestep).sample, x, psi, sigma, "epsilon")
    got = flipd.flipd(model, x, t0=t, trace="exact", **model.options)
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)


def test_pipeline_object_and_model_folder_load_the_same_model(ddpm_folder):
    from_folder = flipd.from_diffusers(ddpm_folder, dtype=DTYPE)
    pipeline = diffusers.DDPMPipeline.from_pretrained(ddpm_folder)
    from_object = flipd.from_diffusers(pipeline, dtype=DTYPE)
    from_parts = flipd.from_diffusers(ddpm_folder / "unet", scheduler=ddpm_folder / "scheduler", dtype=DTYPE)
    y = clean_points((2, 3, 4, 4), seed=8)
    t = torch.tensor([10.0, 500.5], dtype=DTYPE)
    with torch.no_grad():
        reference = from_folder(y, t)
        torch.testing.assert_close(from_object(y, t), reference)
        torch.testing.assert_close(from_parts(y, t), reference)
    assert not any(p.requires_grad for p in from_folder.network.parameters())


def test_float32_network_keeps_the_inputs_dtype(ddpm_folder):
    model = flipd.from_diffusers(ddpm_folder)
    lid = flipd.flipd(model, clean_points((2, 3, 4, 4)), t0=50, n_probes=2, **model.options)
    assert lid.dtype == DTYPE and torch.isfinite(lid).all()


def test_learned_variance_output_keeps_the_prediction_half():
    unet = tiny_unet2d(out_channels=6).to(DTYPE)
    model = flipd.from_diffusers(unet, scheduler=diffusers.DDPMScheduler(variance_type="learned_range"))
    y, t = clean_points((2, 3, 4, 4)), torch.tensor([3.0, 40.0], dtype=DTYPE)
    with torch.no_grad():
        torch.testing.assert_close(model(y, t), unet(y, t).sample[:, :3])


# --------------------------------------------------------------------------- latent, text-conditioned


def hand_prompt_embedding(folder: Path, prompt: str) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tokenizer(prompt, padding="max_length", max_length=7, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state.to(DTYPE)


@pytest.mark.parametrize("prompt", ["", "a cat"])
def test_latent_path_equals_flipd_on_hand_encoded_latents(sd_folder, prompt):
    pytest.importorskip("transformers")
    model = flipd.from_diffusers(sd_folder, prompt=prompt, dtype=DTYPE)
    assert model.is_latent and model.conditioning_source == "prompt"

    vae = diffusers.AutoencoderKL.from_pretrained(sd_folder / "vae", torch_dtype=DTYPE)
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd_folder / "unet", torch_dtype=DTYPE)
    alphas_cumprod = diffusers.PNDMScheduler.from_pretrained(sd_folder / "scheduler").alphas_cumprod.to(DTYPE)
    embedding = hand_prompt_embedding(sd_folder, prompt)
    images = random_images()
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(model.encode(images, batch_size=1), latents, rtol=1e-12, atol=1e-12)

    step = 300
    psi, sigma = alphas_cumprod[step].sqrt().item(), (1 - alphas_cumprod[step]).sqrt().item()
    timestep = torch.tensor([float(step)], dtype=DTYPE)
    expected = hand_flipd(
        lambda y: unet(y, timestep, encoder_hidden_states=embedding).sample, latents, psi, sigma, "epsilon"
    )
    got = model.flipd_images(images, t0=step, trace="exact")
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)


def test_zero_and_given_prompt_embeddings_load_no_text_encoder(sd_folder, tmp_path):
    folder = tmp_path / "no_text"
    shutil.copytree(sd_folder, folder)
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    zeros = flipd.from_diffusers(folder, prompt=None, dtype=DTYPE)
    assert zeros.conditioning_source == "zeros"
    assert zeros.conditioning["encoder_hidden_states"].shape == (1, 77, 12)
    assert not zeros.conditioning["encoder_hidden_states"].any()
    given = flipd.from_diffusers(folder, prompt_embeds=torch.ones(5, 12), dtype=DTYPE)
    assert given.conditioning["encoder_hidden_states"].shape == (1, 5, 12)
    with pytest.raises(FileNotFoundError, match="'tokenizer' subfolder"):
        flipd.from_diffusers(folder, prompt="")


# --------------------------------------------------------------------------- flow matching (SD3 style)


@pytest.fixture(scope="module")
def sd3_parts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sd3")
    tiny_sd3_transformer().save_pretrained(folder / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")
    tiny_vae(shift_factor=0.1).save_pretrained(folder / "vae")
    return folder


@pytest.mark.parametrize("conditioning", ["zeros", "embeddings"])
def test_flow_matching_matches_hand_computation(sd3_parts, conditioning):
    generator = torch.Generator().manual_seed(9)
    if conditioning == "zeros":
        prompt_embeds = torch.zeros(1, 77, 12, dtype=DTYPE)
        pooled = torch.zeros(1, 6, dtype=DTYPE)
        options = {"prompt": None}
    else:
        prompt_embeds = torch.randn(1, 5, 12, generator=generator, dtype=DTYPE)
        pooled = torch.randn(1, 6, generator=generator, dtype=DTYPE)
        options = {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
    model = flipd.from_diffusers(
        sd3_parts / "transformer", scheduler=sd3_parts / "scheduler", vae=sd3_parts / "vae", dtype=DTYPE, **options
    )
    assert model.prediction == "flow_velocity" and model.time_scale == 1000
    assert model.conditioning_source == conditioning

    transformer = diffusers.SD3Transformer2DModel.from_pretrained(sd3_parts / "transformer").to(DTYPE)
    vae = diffusers.AutoencoderKL.from_pretrained(sd3_parts / "vae", torch_dtype=DTYPE)
    images = random_images(seed=10)
    with torch.no_grad():
        latents = (vae.encode(images).latent_dist.mean - 0.1) * 0.18215
    torch.testing.assert_close(model.encode(images), latents, rtol=1e-12, atol=1e-12)

    t = 0.2  # sigma of x_t = (1 - t)·x0 + t·noise; the network sees timestep 1000·t
    timestep = torch.tensor([1000 * t], dtype=DTYPE)

    def velocity(y):
        return transformer(
            hidden_states=y, timestep=timestep, encoder_hidden_states=prompt_embeds, pooled_projections=pooled
        ).sample

    expected = hand_flipd(velocity, latents, 1 - t, t, "flow_velocity", t=t)
    got = model.flipd_images(images, t0=t, trace="exact")
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=0)


def test_sd3_needs_explicit_conditioning(sd3_parts):
    with pytest.raises(ValueError, match="prompt=None"):
        flipd.from_diffusers(sd3_parts / "transformer", scheduler=sd3_parts / "scheduler")
    with pytest.raises(ValueError, match="both"):
        flipd.from_diffusers(
            sd3_parts / "transformer", scheduler=sd3_parts / "scheduler", prompt_embeds=torch.zeros(1, 5, 12)
        )


# --------------------------------------------------------------------------- errors


def test_unknown_prediction_type_is_rejected():
    scheduler = diffusers.DDPMScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="prediction_type='flow_prediction'"):
        flipd.from_diffusers(tiny_unet2d(), scheduler=scheduler)


def test_scheduler_without_alphas_cumprod_is_rejected():
    with pytest.raises(TypeError, match="no alphas_cumprod"):
        scheduler_settings(diffusers.EDMEulerScheduler())
    with pytest.raises(TypeError, match="no alphas_cumprod"):
        flipd.from_diffusers(tiny_unet2d(), scheduler=object())


def test_missing_scheduler_and_subfolders_are_named(ddpm_folder, tmp_path):
    with pytest.raises(ValueError, match="scheduler="):
        flipd.from_diffusers(tiny_unet2d())
    folder = tmp_path / "broken"
    shutil.copytree(ddpm_folder, folder)
    shutil.rmtree(folder / "scheduler")
    with pytest.raises(FileNotFoundError, match="'scheduler' subfolder"):
        flipd.from_diffusers(folder)
    with pytest.raises(FileNotFoundError, match="neither model_index.json"):
        flipd.from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        flipd.from_diffusers(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="absent is not a folder"):
        flipd.from_diffusers(ddpm_folder, scheduler=tmp_path / "absent")


def test_bad_networks_and_inputs_are_rejected(ddpm_folder, sd_folder):
    with pytest.raises(TypeError, match="not a supported denoiser"):
        flipd.from_diffusers(torch.nn.Linear(2, 2), scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="takes no text conditioning"):
        flipd.from_diffusers(ddpm_folder, prompt_embeds=torch.zeros(1, 7, 12))
    pixel = flipd.from_diffusers(ddpm_folder)
    images = random_images()
    assert pixel.encode(images) is images  # a pixel model's coordinates are the images'
    assert isinstance(pixel, flipd.Model) and isinstance(latent_model := flipd.from_diffusers(sd_folder, prompt=None), flipd.Model)
    with pytest.raises(TypeError, match="from_diffusers"):
        flipd.flipd(pixel.network, images, t0=10)  # a bare diffusers network names the fix
    with pytest.raises(ValueError, match="fixed by the diffusers scheduler"):
        pixel.flipd_images(random_images(), t0=10, prediction="epsilon")
    latent = flipd.from_diffusers(sd_folder, prompt=None)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        latent.encode(random_images() * 127.5 + 127.5)
    with pytest.raises(ValueError, match=r"shape \[N, 3, H, W\]"):
        latent.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="prompt_embeds must have shape"):
        flipd.from_diffusers(sd_folder, prompt_embeds=torch.zeros(1, 7, 5))
