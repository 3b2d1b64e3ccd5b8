"""flipd: local intrinsic dimension of data points from diffusion models.

>>> import flipd
>>> lid = flipd.flipd(model, x, t0=0.05)  # doctest: +SKIP

The public contract: :func:`flipd`, :func:`flipd_curve`, :func:`knee`, :func:`estimate`,
:mod:`flipd.schedules` and :class:`ModelAdapter`; :func:`from_diffusers` for pre-trained
diffusers models (needs the ``images`` extra).
"""

from . import schedules
from .adapters import ModelAdapter
from .estimator import FLIPDResult, estimate, flipd, flipd_curve
from .knee import KneeResult, knee
from .parameterization import PREDICTIONS
from .pretrained import DiffusersModel, from_diffusers

__version__ = "0.1.0"

__all__ = [
    "DiffusersModel",
    "FLIPDResult",
    "KneeResult",
    "ModelAdapter",
    "PREDICTIONS",
    "estimate",
    "flipd",
    "flipd_curve",
    "from_diffusers",
    "knee",
    "schedules",
]
