"""Every model concept, one surface: the :class:`Model` protocol and what implements it.

- :mod:`.base`: :class:`Model` (callable, schedule, prediction, coordinate map) and
  :func:`as_model` for a user's callable.
- :mod:`.checkpoint`: :class:`DiffusionModel`, a model trained by flipd, saved as safetensors + JSON.
- :mod:`.diffusers`: :class:`DiffusersModel` and :func:`from_diffusers` for diffusers models.
- :mod:`.loading`: :func:`load`, a model from a path (a flipd checkpoint or a diffusers folder)
  or a Hugging Face Hub id (:mod:`.hub`).
- :mod:`.export`: a flipd image model as a diffusers pipeline folder; :mod:`.card`: model cards.
- :mod:`.adapter`: :class:`ModelAdapter`, for networks with another call signature.
- networks: :mod:`.mlp` (MLP U-net), :mod:`.unet` (convolutional U-net), :mod:`.spec` and
  :mod:`.registry` (how checkpoints name and rebuild them).
"""

from .adapter import ModelAdapter
from .base import CallableModel, Model, as_model
from .checkpoint import CheckpointError, DiffusionModel
from .diffusers import DiffusersModel, from_diffusers
from .export import ExportError
from .hub import HubUnavailableError
from .loading import load
from .mlp import MLPUNet, MLPUNetConfig, SinusoidalEmbedding, count_parameters, mlp_unet
from .registry import build_network, network_kinds, register_network
from .spec import NetworkSpec

__all__ = [
    "CallableModel",
    "CheckpointError",
    "DiffusersModel",
    "DiffusionModel",
    "ExportError",
    "HubUnavailableError",
    "MLPUNet",
    "MLPUNetConfig",
    "Model",
    "ModelAdapter",
    "NetworkSpec",
    "SinusoidalEmbedding",
    "as_model",
    "build_network",
    "count_parameters",
    "from_diffusers",
    "load",
    "mlp_unet",
    "network_kinds",
    "register_network",
]
