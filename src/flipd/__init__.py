"""flipd: local intrinsic dimension of data points from diffusion models."""

__version__ = "0.1.0"
