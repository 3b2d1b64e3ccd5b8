"""The MLP U-net: flipd's denoising network for vectors (tabular or flattened data).

A network is any ``torch.nn.Module`` called as ``network(y, t)`` with ``y`` of shape [N, ...]
(noised data) and ``t`` a float tensor [N] of diffusion times in [0, 1]; it returns a tensor
shaped like ``y`` (for :mod:`flipd.train`, the predicted noise epsilon).

The network records how to rebuild it as ``network.spec`` (kind ``"mlp_unet"``, see
:mod:`flipd.models.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .spec import NetworkSpec

__all__ = [
    "MLPUNet",
    "MLPUNetConfig",
    "SinusoidalEmbedding",
    "count_parameters",
    "mlp_unet",
]


# --------------------------------------------------------------------------- time embedding


class SinusoidalEmbedding(nn.Module):
    """Sines and cosines of ``t`` at geometrically spaced angular frequencies.

    Args:
        dim: embedding size (even).
        max_frequency: the highest angular frequency, in radians per unit of t; the lowest is
            1. With t in [0, 1] the default 200 resolves changes of t down to about 0.005.

    Input t [N] (any float dtype), output [N, dim] float32 (or the default dtype).
    """

    def __init__(self, dim: int, max_frequency: float = 200.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"The time embedding size must be even and at least 2; got {dim}.")
        frequencies = torch.exp(torch.linspace(0.0, math.log(max_frequency), dim // 2))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.to(self.frequencies.dtype)[:, None] * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


# --------------------------------------------------------------------------- MLP U-net


@dataclass
class MLPUNetConfig:
    """Options of :class:`MLPUNet`.

    Attributes:
        data_dim: D, the size of each data vector.
        widths: hidden sizes of the encoder; the decoder mirrors them (without repeating the
            innermost). The FLIPD paper's reference is (4096, 2048, 1024, 1024, 512, 512),
            about 48M parameters; the default here is sized for CPUs.
        time_embedding_dim: size of the sinusoidal embedding of t.
        max_frequency: highest angular frequency of the time embedding (radians per unit t).
        data_std: if given, the input is divided by its expected spread under the VP schedule
            (beta_min, beta_max), ``sqrt(psi(t)²·data_std² + sigma(t)²)``, so that the first
            layer sees inputs of unit scale at every t (a fixed preconditioning; it does not
            change what the network can represent). Useful for data that are not standardised.
        beta_min, beta_max: the VP schedule used by ``data_std``.
        fourier_features: if positive, the (preconditioned) input is also fed through this
            many random Fourier features ``sin(B·y), cos(B·y)`` with fixed Gaussian frequencies
            ``B ~ N(0, fourier_scale²)``, which helps small networks resolve fine detail of
            low-dimensional data. B is part of the saved weights.
        fourier_scale: standard deviation of the Fourier frequencies (radians per input unit).
        time_conditioning: "add" (a projection of the time embedding is added to every
            layer's pre-activation) or "film" (every pre-activation is also scaled by
            ``1 + gamma(t)``, so the network can change its amplitude with the noise level).
    """

    data_dim: int
    widths: tuple[int, ...] = (256, 256, 256)
    time_embedding_dim: int = 64
    max_frequency: float = 200.0
    data_std: float | None = None
    beta_min: float = 0.1
    beta_max: float = 20.0
    fourier_features: int = 0
    fourier_scale: float = 1.0
    time_conditioning: str = "film"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if int(self.data_dim) < 1:
            raise ValueError(f"data_dim must be a positive integer; got {self.data_dim}.")
        self.data_dim = int(self.data_dim)
        if self.time_conditioning not in ("add", "film"):
            raise ValueError(f"time_conditioning must be 'add' or 'film'; got {self.time_conditioning!r}.")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty sequence of positive sizes; got {self.widths}.")

    def to_json(self) -> dict[str, Any]:
        options = asdict(self)
        options["widths"] = list(self.widths)
        return options


class MLPUNet(nn.Module):
    """A fully-connected U-net for vectors: ``network(y [N, D], t [N]) -> [N, D]``.

    The encoder maps ``y`` through layers of the configured widths; the decoder mirrors them
    and concatenates each mirrored encoder activation (skip connections), and the output layer
    also sees ``y`` itself. Every layer adds a learned projection of the sinusoidal time
    embedding to its pre-activation; activations are SiLU.
    """

    def __init__(self, config: MLPUNetConfig | None = None, **options: Any) -> None:
        super().__init__()
        if config is None:
            config = MLPUNetConfig(**options)
        elif options:
            raise TypeError("Pass either an MLPUNetConfig or keyword options, not both.")
        self.config = config
        self.spec = NetworkSpec("mlp_unet", config.to_json())
        dim, widths = config.data_dim, config.widths
        self.embedding = SinusoidalEmbedding(config.time_embedding_dim, config.max_frequency)
        hidden = 2 * config.time_embedding_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        features = dim
        if config.fourier_features > 0:
            frequencies = torch.randn(dim, config.fourier_features) * config.fourier_scale
            self.register_buffer("fourier_frequencies", frequencies)
            features += 2 * config.fourier_features
        encoder_in = [features, *widths[:-1]]
        decoder_out = list(reversed(widths[:-1]))
        # Decoder layer j maps [previous activation, encoder activation L-2-j] to width L-2-j.
        levels = len(widths)
        decoder_in = [widths[levels - 1 - j] + widths[levels - 2 - j] for j in range(levels - 1)]
        self.encoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip(encoder_in, widths))
        self.decoder = nn.ModuleList(nn.Linear(i, o) for i, o in zip(decoder_in, decoder_out))
        per_width = 2 if config.time_conditioning == "film" else 1
        self.time_projections = nn.ModuleList(
            nn.Linear(hidden, per_width * o) for o in [*widths, *decoder_out]
        )
        last = decoder_out[-1] if decoder_out else widths[-1]
        self.output = nn.Linear(last + dim, dim)
        self.activation = nn.SiLU()

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        if y.ndim != 2 or y.shape[1] != self.config.data_dim:
            raise ValueError(
                f"MLPUNet expects y of shape [N, {self.config.data_dim}]; got {tuple(y.shape)}."
            )
        if t.ndim == 0:
            t = t.expand(y.shape[0])
        time = self.time_mlp(self.embedding(t).to(y.dtype))
        if self.config.data_std is not None:
            y = y * self._input_gain(t).to(y.dtype)[:, None]
        projections = iter(self.time_projections)
        h, skips = y, []
        if self.config.fourier_features > 0:
            angles = y @ self.fourier_frequencies
            h = torch.cat([y, torch.sin(angles), torch.cos(angles)], dim=-1)
        for layer in self.encoder:
            h = self.activation(self._condition(layer(h), next(projections)(time)))
            skips.append(h)
        skips.pop()  # the innermost activation is h itself
        for layer in self.decoder:
            h = self.activation(self._condition(layer(torch.cat([h, skips.pop()], dim=-1)), next(projections)(time)))
        return self.output(torch.cat([h, y], dim=-1))


    def _condition(self, pre_activation: Tensor, projection: Tensor) -> Tensor:
        if self.config.time_conditioning == "add":
            return pre_activation + projection
        gain, shift = projection.chunk(2, dim=-1)
        return pre_activation * (1 + gain) + shift

    def _input_gain(self, t: Tensor) -> Tensor:
        """1 / sqrt(psi(t)²·data_std² + sigma(t)²) for the VP schedule of the config, [N]."""
        config = self.config
        t = t.to(torch.float32)
        integrated_beta = config.beta_min * t + 0.5 * (config.beta_max - config.beta_min) * t**2
        signal = torch.exp(-integrated_beta)  # psi²
        return torch.rsqrt(signal * config.data_std**2 + (1 - signal))


def count_parameters(network: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in network.parameters())


def mlp_unet(data_dim: int, widths: Sequence[int] = (256, 256, 256), **options: Any) -> MLPUNet:
    """Shorthand for ``MLPUNet(MLPUNetConfig(data_dim, widths, ...))``."""
    return MLPUNet(MLPUNetConfig(data_dim=data_dim, widths=tuple(widths), **options))
