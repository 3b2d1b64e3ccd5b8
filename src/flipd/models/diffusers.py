"""Pre-trained diffusers models as flipd models.

:func:`from_diffusers` turns a diffusers denoiser and its scheduler into a
:class:`DiffusersModel`: a callable ``model(y, t)`` for :func:`flipd.flipd`, together with the
noise schedule and parameterisation the network was trained with, and (for latent diffusion)
the VAE that maps images to the latents FLIPD is computed on.

>>> model = flipd.from_diffusers("path/to/stable-diffusion-v1-5")  # doctest: +SKIP
>>> lid = model.flipd_images(images, t0=300)                        # doctest: +SKIP

is the same as

>>> latents = model.encode(images)                                  # doctest: +SKIP
>>> lid = flipd.flipd(model, latents, t0=300, **model.options)     # doctest: +SKIP

Supported denoisers: ``UNet2DModel`` (pixel space, e.g. DDPM), ``UNet2DConditionModel`` (Stable
Diffusion v1/v2 style, text-conditioned) and ``SD3Transformer2DModel`` (Stable Diffusion 3 style,
flow matching). Supported schedulers: every scheduler with ``alphas_cumprod`` (DDPM, DDIM, PNDM,
Euler, DPM-Solver, ...; prediction_type "epsilon", "v_prediction" or "sample") and the
flow-matching schedulers (``FlowMatchEulerDiscreteScheduler``, ...).

Time units. For an ``alphas_cumprod`` scheduler the flipd time is the diffusers timestep index
``k ∈ [0, T-1]`` (fractional values interpolate log(sigma/psi)); psi_k = sqrt(alphas_cumprod[k]),
sigma_k = sqrt(1 - alphas_cumprod[k]). For flow matching diffusers noises as
``x_t = (1 - s)·x_0 + s·noise`` with ``s ∈ [0, 1]``, gives the network ``timestep = s·T``
(T = ``num_train_timesteps``; a ``shift`` only moves the sampling grid, not this relation) and
trains it to predict ``noise - x_0``; the flipd time is ``s`` (:class:`flipd.schedules.RectifiedFlow`).
Either way the noise level can instead be given schedule-free as ``sigma=`` or ``delta=``.

Paths are local folders (``save_pretrained`` output or a downloaded snapshot); a string
``owner/name`` that names nothing on disk is a Hugging Face Hub id, fetched into the hub cache
(safetensors, JSON and text files only; ``HF_HUB_OFFLINE=1`` uses the cache alone, see
:mod:`flipd.models.hub`). diffusers (and, for text prompts, transformers) are imported only when needed.
Weights are read only from safetensors files (``use_safetensors=True``); a component with only
pickled weights (``.bin``, ``.pt``, ``.ckpt``) is refused, and pickled files next to safetensors
ones are never opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..pil_images import as_tensor_if_pil
from ..schedules import Discrete, RectifiedFlow, Schedule
from .hub import hub_snapshot, is_hub_id
from .weights import check_safetensors_only

__all__ = [
    "DiffusersModel",
    "SchedulerSettings",
    "SUPPORTED_NETWORKS",
    "from_diffusers",
    "encode_prompt",
    "scheduler_settings",
]

#: Denoiser classes that :func:`from_diffusers` knows how to call.
SUPPORTED_NETWORKS: tuple[str, ...] = ("UNet2DModel", "UNet2DConditionModel", "SD3Transformer2DModel")
#: Predictions a diffusers ``prediction_type`` may name for an ``alphas_cumprod`` scheduler.
DIFFUSERS_PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
#: Token count of the all-zero text conditioning used with ``prompt=None`` (CLIP's context length).
ZERO_PROMPT_TOKENS = 77
#: Pipeline subfolders that may hold the denoiser, in the order they are looked for.
DENOISER_SUBFOLDERS: tuple[str, ...] = ("unet", "transformer")


# --------------------------------------------------------------------------- schedulers


@dataclass(frozen=True)
class SchedulerSettings:
    """What flipd needs to know from a diffusers scheduler.

    Attributes:
        schedule: the noise schedule, in flipd time units.
        prediction: what the network outputs (a name from :data:`flipd.PREDICTIONS`).
        time_scale: the network's ``timestep`` is ``time_scale · t`` for flipd time ``t``.
    """

    schedule: Schedule
    prediction: str
    time_scale: float


def scheduler_settings(scheduler: Any) -> SchedulerSettings:
    """Schedule, prediction and time scale of a diffusers scheduler.

    Args:
        scheduler: a diffusers scheduler object. DDPM/DDIM-family schedulers (anything with
            ``alphas_cumprod``) give a :class:`~flipd.schedules.Discrete` schedule with time =
            timestep index; flow-matching schedulers give :class:`~flipd.schedules.RectifiedFlow`
            with time = sigma ∈ (0, 1) and network timestep = ``num_train_timesteps · sigma``.

    Raises:
        TypeError: the scheduler is neither kind.
        ValueError: its ``prediction_type`` is not one flipd understands, or it inverts sigmas.
    """
    name = type(scheduler).__name__
    config = getattr(scheduler, "config", {})
    if name.startswith("FlowMatch"):
        if config.get("invert_sigmas", False):
            raise ValueError(
                f"{name} has invert_sigmas=True (noise at sigma = 0); flipd expects the usual "
                "direction, x_t = (1 - sigma)·x0 + sigma·noise. Load it with invert_sigmas=False."
            )
        steps = float(config.get("num_train_timesteps", 1000))
        return SchedulerSettings(RectifiedFlow(), "flow_velocity", steps)
    if not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(
            f"{name} has no alphas_cumprod and is not a flow-matching scheduler, so flipd cannot "
            "read its noise schedule. Use a DDPM/DDIM-family scheduler (e.g. DDPMScheduler."
            "from_pretrained(path, subfolder='scheduler')) or a FlowMatch scheduler, or wrap the "
            "network yourself with flipd.ModelAdapter and a flipd.schedules schedule."
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in DIFFUSERS_PREDICTIONS:
        raise ValueError(
            f"{name} has prediction_type={prediction!r}; flipd supports "
            f"{', '.join(DIFFUSERS_PREDICTIONS)} for alphas_cumprod schedulers. Fix the "
            "scheduler config or wrap the network with flipd.ModelAdapter."
        )
    return SchedulerSettings(Discrete(scheduler.alphas_cumprod), prediction, 1.0)


# --------------------------------------------------------------------------- the model


@dataclass(eq=False)
class DiffusersModel:
    """A diffusers denoiser that flipd can call as ``model(y, t)``.

    Build it with :func:`from_diffusers`. Call it as a flipd model with ``**model.options`` (or
    use :meth:`flipd_images`, which also encodes images for latent models).

    Attributes:
        network: the denoiser (UNet2DModel, UNet2DConditionModel or SD3Transformer2DModel).
        schedule: its noise schedule in flipd time units (see the module notes).
        prediction: what the network outputs ("epsilon", "v_prediction", "sample" or "flow_velocity").
        time_scale: network timestep = ``time_scale · t``.
        conditioning: keyword arguments for every network call, each with batch size 1 and
            broadcast to the batch (e.g. ``encoder_hidden_states`` [1, L, C]).
        conditioning_source: how the conditioning was made: "none", "prompt" (encoded text),
            "embeddings" (given by the caller) or "zeros".
        vae: the autoencoder of a latent model, else None.
        latent_scale: latents = (VAE posterior mean - latent_shift) · latent_scale.
        latent_shift: see ``latent_scale`` (0 for Stable Diffusion v1/v2).
    """

    network: nn.Module
    schedule: Schedule
    prediction: str
    time_scale: float = 1.0
    conditioning: dict[str, Tensor] = field(default_factory=dict)
    conditioning_source: str = "none"
    vae: nn.Module | None = None
    latent_scale: float = 1.0
    latent_shift: float = 0.0

    @property
    def options(self) -> dict[str, Any]:
        """``schedule`` and ``prediction`` keyword arguments for :func:`flipd.flipd`."""
        return {"schedule": self.schedule, "prediction": self.prediction}

    @property
    def is_latent(self) -> bool:
        """Whether FLIPD runs on VAE latents (True) or directly on pixels (False)."""
        return self.vae is not None

    @property
    def _network_kind(self) -> str:
        return type(self.network).__name__

    def __call__(self, y: Tensor, t: Tensor) -> Tensor:
        """Network output for noised inputs ``y`` [N, C, H, W] at flipd times ``t`` [N].

        Runs in the network's dtype and device and returns a tensor shaped, typed and placed
        like ``y``. Learned-variance outputs (twice the input channels) keep the first half.
        """
        parameter = next(self.network.parameters())
        inputs = y.to(device=parameter.device, dtype=parameter.dtype)
        timestep = (t * self.time_scale).to(device=parameter.device, dtype=parameter.dtype)
        n = inputs.shape[0]
        extra = {name: value.expand(n, *value.shape[1:]) for name, value in self.conditioning.items()}
        if self._network_kind == "SD3Transformer2DModel":
            output = self.network(hidden_states=inputs, timestep=timestep, return_dict=False, **extra)[0]
        else:
            output = self.network(inputs, timestep, return_dict=False, **extra)[0]
        if output.shape[1] == 2 * inputs.shape[1]:  # learned variance: [prediction, variance]
            output = output[:, : inputs.shape[1]]
        return output.to(device=y.device, dtype=y.dtype)

    def encode(self, images: Tensor, *, batch_size: int = 8) -> Tensor:
        """The model's coordinates of ``images``: for a latent model the latents, (VAE mean -
        shift) · scaling factor; for a pixel model the images themselves.

        Args:
            images: [N, C, H, W] in [-1, 1] (C the VAE's input channels, 3 for RGB), or PIL
                images (one or a list; converted with :func:`flipd.pil_images.pil_to_tensor`).
            batch_size: images per VAE call.

        Returns:
            Latents [N, c, H/f, W/f] (f the VAE's downsampling factor) in ``images``' dtype,
            or the images [N, C, H, W] for a pixel model.
        """
        images = as_tensor_if_pil(images)
        if self.vae is None:  # a pixel model: its coordinates are the images'
            return images
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size}.")
        images = _check_images(images, self.vae.config.in_channels, "the VAE")
        parameter = next(self.vae.parameters())
        chunks = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device=parameter.device, dtype=parameter.dtype)
                mean = self.vae.encode(batch).latent_dist.mean
                chunks.append((mean - self.latent_shift) * self.latent_scale)
        return torch.cat(chunks).to(device=images.device, dtype=images.dtype)

    def flipd_images(self, images: Tensor, *, encode_batch_size: int = 8, **kwargs) -> Tensor:
        """FLIPD of images (as ``flipd.flipd(self, images)``, with the VAE batch size given).

        Args:
            images: [N, C, H, W] in [-1, 1], or PIL images (one or a list).
            encode_batch_size: images per VAE call.
            **kwargs: arguments of :func:`flipd.flipd` (``t0``/``sigma``/``delta``, ``trace``,
                ``n_probes``, ...) except ``schedule`` and ``prediction``, which come from the model.

        Returns:
            LID estimates [N], in latent dimensions for a latent model (out of c·h·w).
        """
        from ..estimator import flipd

        for name in ("schedule", "prediction"):
            if name in kwargs:
                raise ValueError(f"{name}= is fixed by the diffusers scheduler; do not pass it to flipd_images.")
        return flipd(self, self.encode(images, batch_size=encode_batch_size), encoded=True, **kwargs)

    def __repr__(self) -> str:
        return (
            f"DiffusersModel({self._network_kind}, {self.schedule!r}, prediction={self.prediction!r}, "
            f"latent={self.is_latent}, conditioning={self.conditioning_source!r})"
        )


def _check_images(images: Tensor, channels: int, consumer: str) -> Tensor:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError("images must be a floating-point torch.Tensor of shape [N, C, H, W] in [-1, 1].")
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"images must have shape [N, {channels}, H, W] for {consumer}; got {tuple(images.shape)}."
        )
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"images must lie in [-1, 1]; got values in [{low:g}, {high:g}]. Map [0, 1] images "
            "with 2·x - 1 and [0, 255] images with x / 127.5 - 1."
        )
    return images


# --------------------------------------------------------------------------- text conditioning


def encode_prompt(tokenizer: Any, text_encoder: nn.Module, prompt: str) -> Tensor:
    """Text embedding [1, L, C] of one prompt, as Stable Diffusion v1/v2 pipelines compute it.

    The prompt is padded to the tokenizer's ``model_max_length`` (77 for CLIP) and encoded; the
    embedding is the text encoder's last hidden state.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string; got {type(prompt).__name__}.")
    tokens = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    parameter = next(text_encoder.parameters())
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(parameter.device)
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(parameter.device), attention_mask=mask)[0]


def _as_embedding(value: Tensor, ndim: int, width: int | None, name: str, fix: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}.")
    if value.ndim == ndim - 1:
        value = value.unsqueeze(0)
    if value.ndim != ndim or value.shape[0] != 1 or (width is not None and value.shape[-1] != width):
        expected = "[1, L, " if ndim == 3 else "[1, "
        raise ValueError(
            f"{name} must have shape {expected}{width if width is not None else 'C'}] (one "
            f"conditioning shared by all points); got {tuple(value.shape)}. {fix}"
        )
    return value


def _conditioning(
    network: nn.Module,
    *,
    prompt: str | None,
    prompt_embeds: Tensor | None,
    pooled_prompt_embeds: Tensor | None,
    text_encoder_loader,
) -> tuple[dict[str, Tensor], str]:
    """Conditioning keyword arguments (batch size 1) for the network, and how they were made."""
    kind = type(network).__name__
    config = network.config
    if kind == "UNet2DModel":
        if prompt_embeds is not None or pooled_prompt_embeds is not None:
            raise ValueError("UNet2DModel takes no text conditioning; drop prompt_embeds/pooled_prompt_embeds.")
        return {}, "none"
    if kind == "UNet2DConditionModel":
        if config.get("addition_embed_type") is not None:
            raise ValueError(
                f"UNet2DConditionModel with addition_embed_type={config.addition_embed_type!r} "
                "(e.g. SDXL) needs extra conditioning flipd does not build; wrap it with "
                "flipd.ModelAdapter(unet, kwargs=...) instead."
            )
        if pooled_prompt_embeds is not None:
            raise ValueError("UNet2DConditionModel takes no pooled_prompt_embeds; drop it.")
        width = config.cross_attention_dim if isinstance(config.cross_attention_dim, int) else None
        if prompt_embeds is not None:
            fix = "Encode the prompt with the matching text encoder."
            return {"encoder_hidden_states": _as_embedding(prompt_embeds, 3, width, "prompt_embeds", fix)}, "embeddings"
        if prompt is None:
            if width is None:
                raise ValueError("cross_attention_dim varies per block; pass prompt_embeds= explicitly.")
            return {"encoder_hidden_states": torch.zeros(1, ZERO_PROMPT_TOKENS, width)}, "zeros"
        tokenizer, text_encoder = text_encoder_loader()
        return {"encoder_hidden_states": encode_prompt(tokenizer, text_encoder, prompt)}, "prompt"
    # SD3Transformer2DModel
    width, pooled_width = config.joint_attention_dim, config.pooled_projection_dim
    given = (prompt_embeds is not None, pooled_prompt_embeds is not None)
    if given == (True, True):
        fix = "Compute them with diffusers' StableDiffusion3Pipeline.encode_prompt."
        return {
            "encoder_hidden_states": _as_embedding(prompt_embeds, 3, width, "prompt_embeds", fix),
            "pooled_projections": _as_embedding(pooled_prompt_embeds, 2, pooled_width, "pooled_prompt_embeds", fix),
        }, "embeddings"
    if any(given):
        raise ValueError("SD3Transformer2DModel needs both prompt_embeds and pooled_prompt_embeds, or neither.")
    if prompt is not None:
        raise ValueError(
            "flipd does not run SD3's three text encoders. Pass prompt_embeds= and "
            "pooled_prompt_embeds= (from StableDiffusion3Pipeline.encode_prompt), or prompt=None "
            "for all-zero conditioning."
        )
    return {
        "encoder_hidden_states": torch.zeros(1, ZERO_PROMPT_TOKENS, width),
        "pooled_projections": torch.zeros(1, pooled_width),
    }, "zeros"


# --------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _class_by_name(library: str, name: str):
    if library == "transformers":
        try:
            import transformers
        except ImportError as error:
            raise ImportError(
                "Encoding a text prompt needs the transformers package: pip install transformers "
                "(or pass prompt_embeds=, or prompt=None for all-zero conditioning)."
            ) from error
        module = transformers
    elif library == "diffusers":
        import diffusers

        module = diffusers
    else:
        raise ValueError(f"Cannot load a component of library {library!r}; only diffusers and transformers.")
    if not hasattr(module, name):
        raise ValueError(f"{library} has no class {name!r}; upgrade {library} or check the config.")
    return getattr(module, name)


def _load_component(
    folder: Path,
    subfolder: str | None,
    *,
    library: str | None = None,
    name: str | None = None,
    dtype: torch.dtype | None = None,
):
    """Load one component from ``folder/subfolder`` by the class named in its config.

    ``dtype`` is passed on as ``torch_dtype`` (for models, not schedulers or tokenizers).
    """
    where = folder / subfolder if subfolder else folder
    if subfolder is None and not where.is_dir():
        raise FileNotFoundError(f"{where} is not a folder; pass a local diffusers model or scheduler folder.")
    if not where.is_dir():
        raise FileNotFoundError(
            f"{folder} has no {subfolder!r} subfolder; it is needed here. Check the path (a local "
            "pipeline folder as written by save_pretrained), or pass the component yourself."
        )
    if name is None:
        for config_name in ("config.json", "scheduler_config.json"):
            if (where / config_name).is_file():
                name = _read_json(where / config_name).get("_class_name")
                break
        if name is None:
            raise FileNotFoundError(f"{where} has no config.json or scheduler_config.json naming a diffusers class.")
        library = "diffusers"
    cls = _class_by_name(library or "diffusers", name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):  # a scheduler or tokenizer: no weights
        return cls.from_pretrained(str(where))
    check_safetensors_only(where)
    options: dict[str, Any] = {"use_safetensors": True}  # never unpickle, even where .bin files lie too
    if dtype is not None:
        options["torch_dtype"] = dtype
    return cls.from_pretrained(str(where), **options)


def _missing_scheduler_message(folder: Path) -> str:
    """Why a single diffusers model folder cannot be used alone, and the fixes."""
    pipeline = folder.parent if (folder.parent / "model_index.json").is_file() else None
    also = f" Or give the whole pipeline folder {str(pipeline)!r}, which has one." if pipeline else ""
    return (
        f"{str(folder)!r} holds a single diffusers model without a noise scheduler, which flipd needs for "
        "the noise schedule. Give its scheduler: on the command line --scheduler DIR, in Python "
        "from_diffusers(folder, scheduler=DIR), with DIR a folder holding scheduler_config.json (e.g. the "
        f"scheduler/ folder of the pipeline the model came from, or one written by DDPMScheduler().save_pretrained(DIR)).{also}"
    )


def _check_network(network: Any) -> nn.Module:
    name = type(network).__name__
    if name not in SUPPORTED_NETWORKS:
        raise TypeError(
            f"{name} is not a supported denoiser ({', '.join(SUPPORTED_NETWORKS)}). Wrap it with "
            "flipd.ModelAdapter and pick the schedule from flipd.schedules yourself."
        )
    return network


def _freeze(module: nn.Module | None, dtype: torch.dtype | None, device: torch.device | str | None) -> None:
    if module is None:
        return
    module.eval().requires_grad_(False)
    if dtype is not None or device is not None:
        module.to(device=device, dtype=dtype)


def from_diffusers(
    source: str | os.PathLike | nn.Module | Any,
    *,
    scheduler: Any | str | os.PathLike | None = None,
    vae: nn.Module | str | os.PathLike | None = None,
    prompt: str | None = "",
    prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    extra_inputs: Mapping[str, Tensor] | None = None,
) -> DiffusersModel:
    """Make a flipd model from a diffusers pipeline folder, pipeline object or denoiser.

    Args:
        source: one of
            - a local pipeline folder (with ``model_index.json``), or its Hugging Face Hub id
              ``owner/name`` (fetched into the hub cache when not there, see :mod:`flipd.models.hub`): the denoiser (``unet/`` or
              ``transformer/``), ``scheduler/``, and ``vae/`` if the pipeline has one are loaded;
              ``text_encoder/`` and ``tokenizer/`` only when a prompt must be encoded; nothing else;
            - a local model folder (``config.json`` naming a supported denoiser), with ``scheduler=``;
            - a loaded ``DiffusionPipeline``;
            - a denoiser module (UNet2DModel, UNet2DConditionModel, SD3Transformer2DModel), with
              ``scheduler=``.
        scheduler: a diffusers scheduler or its local folder (``scheduler_config.json``);
            overrides the pipeline's, and is needed with a model folder or a denoiser module
            (a model folder without one is refused before its weights are read).
        vae: an ``AutoencoderKL`` or its local folder, making the model latent; overrides the
            pipeline's.
        prompt: text for a text-conditioned UNet (default the empty prompt, as Stable Diffusion
            LID studies use), encoded once here with the pipeline's tokenizer and text encoder
            (needs transformers). ``None`` gives all-zero conditioning [1, 77, C] and loads no
            text encoder. SD3 transformers accept only ``None`` or embeddings.
        prompt_embeds: ready text embeddings [1, L, C] instead of ``prompt``.
        pooled_prompt_embeds: SD3's pooled embeddings [1, P], with ``prompt_embeds``.
        dtype: cast the network and VAE to this dtype (e.g. torch.float64 for checks); default
            as loaded. Inputs are cast to it per call and outputs back to the inputs' dtype.
        device: move the network and VAE here; default where they are.
        extra_inputs: further keyword arguments for every network call, each with batch size 1
            (e.g. ``{"class_labels": torch.tensor([3])}`` for a class-conditional UNet2DModel).

    Returns:
        A :class:`DiffusersModel`. Its modules are put in eval mode with gradients switched off.

    Raises:
        FileNotFoundError: a path or a needed subfolder is missing, or a hub id cannot be fetched
            (:class:`flipd.models.hub.HubUnavailableError`).
        TypeError: an unsupported denoiser or scheduler.
        ValueError: an unsupported ``prediction_type``, inconsistent conditioning arguments, or a
            component with only pickled weights (weights are only ever read from safetensors).
    """
    tokenizer = text_encoder = None
    folder: Path | None = None
    if isinstance(scheduler, (str, os.PathLike)):  # cheap, so checked before any network is loaded
        scheduler = _load_component(Path(scheduler), None)
    if isinstance(source, (str, os.PathLike)):
        folder = hub_snapshot(os.fspath(source)) if is_hub_id(source) else Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; pass a local diffusers pipeline or model folder.")
        check_safetensors_only(folder)
        if scheduler is None and not (folder / "model_index.json").is_file() and (folder / "config.json").is_file():
            raise ValueError(_missing_scheduler_message(folder))
        if (folder / "model_index.json").is_file():
            index = _read_json(folder / "model_index.json")
            present = {key for key, value in index.items() if isinstance(value, list) and value[0] is not None}
            denoiser = next((name for name in DENOISER_SUBFOLDERS if name in present), None)
            if denoiser is None:
                raise ValueError(f"{folder} is a pipeline without a unet or transformer; flipd needs a denoiser.")
            network = _check_network(_load_component(folder, denoiser, dtype=dtype))
            if scheduler is None:
                scheduler = _load_component(folder, "scheduler")
            if vae is None and "vae" in present:
                vae = _load_component(folder, "vae", dtype=dtype)
        elif (folder / "config.json").is_file():
            network = _check_network(_load_component(folder, None, dtype=dtype))
            folder = None
        else:
            raise FileNotFoundError(
                f"{folder} has neither model_index.json (a pipeline) nor config.json (a model)."
            )
    elif isinstance(source, nn.Module):
        network = _check_network(source)
    elif hasattr(source, "components"):  # a DiffusionPipeline
        components = source.components
        network = next((components[name] for name in DENOISER_SUBFOLDERS if components.get(name) is not None), None)
        if network is None:
            raise ValueError(f"{type(source).__name__} has no unet or transformer; flipd needs a denoiser.")
        network = _check_network(network)
        scheduler = components.get("scheduler") if scheduler is None else scheduler
        vae = components.get("vae") if vae is None else vae
        tokenizer, text_encoder = components.get("tokenizer"), components.get("text_encoder")
    else:
        raise TypeError(
            f"source must be a local folder, a DiffusionPipeline or a diffusers denoiser; got {type(source).__name__}."
        )

    if scheduler is None:
        raise ValueError(
            "A scheduler is needed for the noise schedule: pass scheduler= (e.g. "
            "DDPMScheduler.from_pretrained(path, subfolder='scheduler'), or its folder)."
        )
    if isinstance(vae, (str, os.PathLike)):
        vae = _load_component(Path(vae), None, dtype=dtype)
    settings = scheduler_settings(scheduler)

    def load_text_encoder():
        nonlocal tokenizer, text_encoder
        if tokenizer is None or text_encoder is None:
            if folder is None:
                raise ValueError(
                    "A prompt needs a tokenizer and text encoder, which only a pipeline has; pass "
                    "prompt_embeds=, or prompt=None for all-zero conditioning."
                )
            index = _read_json(folder / "model_index.json")
            for name in ("tokenizer", "text_encoder"):
                if not (isinstance(index.get(name), list) and index[name][0] is not None):
                    raise ValueError(
                        f"{folder} has no {name}; pass prompt_embeds=, or prompt=None for all-zero conditioning."
                    )
            tokenizer = _load_component(folder, "tokenizer", library=index["tokenizer"][0], name=index["tokenizer"][1])
            text_encoder = _load_component(
                folder, "text_encoder", library=index["text_encoder"][0], name=index["text_encoder"][1]
            )
        _freeze(text_encoder, None, device)
        return tokenizer, text_encoder

    conditioning, source_of_conditioning = _conditioning(
        network, prompt=prompt, prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled_prompt_embeds, text_encoder_loader=load_text_encoder,
    )
    for name, value in (extra_inputs or {}).items():
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != 1:
            raise ValueError(f"extra_inputs[{name!r}] must be a tensor with batch size 1, shape [1, ...].")
        conditioning[name] = value

    _freeze(network, dtype, device)
    _freeze(vae, dtype, device)
    parameter = next(network.parameters())
    conditioning = {
        name: value.to(device=parameter.device, dtype=parameter.dtype if value.is_floating_point() else value.dtype)
        for name, value in conditioning.items()
    }
    latent_scale, latent_shift = 1.0, 0.0
    if vae is not None:
        latent_scale = float(getattr(vae.config, "scaling_factor", None) or 1.0)
        latent_shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return DiffusersModel(
        network=network, schedule=settings.schedule, prediction=settings.prediction,
        time_scale=settings.time_scale, conditioning=conditioning,
        conditioning_source=source_of_conditioning, vae=vae,
        latent_scale=latent_scale, latent_shift=latent_shift,
    )
