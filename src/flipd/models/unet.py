"""A diffusers ``UNet2DModel`` as a denoising network for images, trainable by :mod:`flipd.train`.

:class:`ImageUNet` follows flipd's network convention: ``network(y, t)`` with ``y`` of shape
[N, C, H, W] (noised images) and ``t`` a float tensor [N] of diffusion times in [0, 1]; it
returns a tensor shaped like ``y`` (the predicted noise, for :func:`flipd.train.train_diffusion`).
Inside, the diffusers network is called with ``timestep = time_scale·t`` (1000·t by default, as
the FLIPD authors' image models), so fractional timesteps reach its sinusoidal embedding.

The network kind ``"unet2d"`` is registered in :mod:`flipd.models.registry`, so checkpoints written by
:meth:`flipd.train.DiffusionModel.save` (safetensors + JSON, no pickle) load back with
:func:`flipd.train.load`. The wrapped diffusers model is ``network.unet``; it can also be saved
in diffusers' own format with ``network.unet.save_pretrained(directory)``.

Sizes. The reference greyscale network of the FLIPD paper has channels (128, 256, 256) with
attention in the lower-resolution blocks (method notes §9). The default here, channels
(16, 32, 64) with attention only at the lowest resolution, has about 0.7M parameters and is
sized for CPUs; every option is configurable through :class:`UNetConfig`.

Requires the ``images`` extra (``pip install 'flipd[images]'``: diffusers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .spec import NetworkSpec

__all__ = ["UNET_KIND", "ImageUNet", "UNetConfig", "build_unet2d", "unet2d"]

#: Registry kind of :class:`ImageUNet` in :mod:`flipd.models.registry`.
UNET_KIND = "unet2d"


@dataclass
class UNetConfig:
    """Options of :class:`ImageUNet` (all JSON-serialisable).

    Attributes:
        image_shape: (C, H, W) of one image; C channels in and out. H and W must be divisible
            by 2**(levels − 1), levels = len(block_out_channels) (each level but the last halves
            the resolution).
        block_out_channels: channels per resolution level, from full resolution down.
        attention_levels: indices of the levels (0 = full resolution) whose down and up blocks
            have self-attention layers. Default: the lowest-resolution level only.
        mid_attention: self-attention in the middle block (at the lowest resolution).
        layers_per_block: residual blocks per down block (up blocks have one more).
        norm_num_groups: groups of the group normalisations; divides every channel count.
        attention_head_dim: channels per attention head.
        time_scale: the network sees ``timestep = time_scale·t`` for t in [0, 1].
        dropout: dropout probability in the residual blocks.
    """

    image_shape: tuple[int, int, int]
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    attention_levels: tuple[int, ...] | None = None
    mid_attention: bool = True
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    time_scale: float = 1000.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(v) for v in self.image_shape)  # type: ignore[assignment]
        self.block_out_channels = tuple(int(v) for v in self.block_out_channels)
        levels = len(self.block_out_channels)
        if self.attention_levels is None:
            self.attention_levels = (levels - 1,) if levels else ()
        self.attention_levels = tuple(sorted({int(v) for v in self.attention_levels}))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes; got {self.image_shape}.")
        if levels < 1 or min(self.block_out_channels) < 1:
            raise ValueError(
                f"block_out_channels must be a non-empty sequence of positive sizes; got {self.block_out_channels}."
            )
        bad_groups = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if self.norm_num_groups < 1 or bad_groups:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every channel count; "
                f"it does not divide {bad_groups}."
            )
        bad_levels = [v for v in self.attention_levels if not 0 <= v < levels]
        if bad_levels:
            raise ValueError(f"attention_levels {bad_levels} are outside the {levels} levels 0..{levels - 1}.")
        _, height, width = self.image_shape
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"Images of size {height}x{width} cannot be halved {levels - 1} times; with "
                f"{levels} levels H and W must be divisible by {factor}. Use fewer levels."
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be a positive integer; got {self.layers_per_block}.")
        if self.attention_head_dim < 1:
            raise ValueError(f"attention_head_dim must be a positive integer; got {self.attention_head_dim}.")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive; got {self.time_scale}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}.")

    def to_json(self) -> dict[str, Any]:
        options = asdict(self)
        for name in ("image_shape", "block_out_channels", "attention_levels"):
            options[name] = list(options[name])
        return options


class ImageUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``network(y [N, C, H, W], t [N]) -> [N, C, H, W]``.

    ``t`` holds diffusion times in [0, 1]; the diffusers model receives ``time_scale·t``.
    Attributes: ``config`` (:class:`UNetConfig`), ``spec`` (its :class:`flipd.models.NetworkSpec`)
    and ``unet`` (the diffusers model).
    """

    def __init__(self, config: UNetConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**options)
        elif options:
            raise TypeError("Pass either a UNetConfig or keyword options, not both.")
        try:
            from diffusers import UNet2DModel
        except ImportError as error:  # an optional dependency
            raise ImportError(
                f"ImageUNet needs diffusers; install it with `pip install 'flipd[images]'`: {error}"
            ) from error
        self.config = config
        self.spec = NetworkSpec(UNET_KIND, config.to_json())
        channels, _, _ = config.image_shape
        levels = range(len(config.block_out_channels))
        attention = set(config.attention_levels or ())
        down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels)
        up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels))
        self.unet = UNet2DModel(
            sample_size=config.image_shape[1:],
            in_channels=channels,
            out_channels=channels,
            block_out_channels=config.block_out_channels,
            down_block_types=down,
            up_block_types=up,
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            attention_head_dim=config.attention_head_dim,
            add_attention=config.mid_attention,
            dropout=config.dropout,
        )

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        """Predicted noise for noised images ``y`` [N, C, H, W] at times ``t`` [N] (or a scalar)."""
        if y.ndim != 4 or tuple(y.shape[1:]) != self.config.image_shape:
            shape = ", ".join(map(str, self.config.image_shape))
            raise ValueError(f"ImageUNet expects y of shape [N, {shape}]; got {tuple(y.shape)}.")
        t = torch.as_tensor(t, device=y.device)
        if t.ndim == 0:
            t = t.expand(y.shape[0])
        timestep = t.to(y.dtype) * self.config.time_scale
        return self.unet(y, timestep).sample


def build_unet2d(options: dict[str, Any]) -> ImageUNet:
    """Builder of the ``"unet2d"`` network kind: ``ImageUNet(UNetConfig(**options))``."""
    return ImageUNet(UNetConfig(**options))


def unet2d(
    image_shape: Sequence[int],
    block_out_channels: Sequence[int] = (16, 32, 64),
    **options: Any,
) -> ImageUNet:
    """Shorthand for ``ImageUNet(UNetConfig(image_shape, block_out_channels, ...))``.

    Example:
        >>> network = unet2d((1, 28, 28))  # doctest: +SKIP
        >>> model = flipd.train.train_diffusion(images, network=network.spec)  # doctest: +SKIP
    """
    return ImageUNet(
        UNetConfig(image_shape=tuple(image_shape), block_out_channels=tuple(block_out_channels), **options)
    )
