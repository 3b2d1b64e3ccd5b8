"""flipd: local intrinsic dimension of data points from diffusion models.

>>> import flipd
>>> model = flipd.load("models/lollipop")            # doctest: +SKIP
>>> lid = flipd.flipd(model, x)                      # doctest: +SKIP

The public contract: :func:`flipd`, :func:`estimate`, :func:`flipd_curve`, :func:`knee`,
:func:`knee_grid`, :func:`plateau`, :func:`plateau_grid` and :func:`calibrated_t0`; one result type :class:`LIDResult` (``to_pandas()``) and one registry of every
estimator, :data:`METHODS` (FLIPD and the baselines, one calling convention); the model concept :class:`Model` with :func:`load`, :func:`as_model`,
:class:`ModelAdapter` and :func:`from_diffusers` (needs the ``images`` extra);
:func:`train_diffusion`; :class:`FLIPD`, the scikit-learn estimator (needs scikit-learn; imported on
first use); :mod:`flipd.schedules`, :mod:`flipd.analytic`, :mod:`flipd.baselines`,
:mod:`flipd.datasets`. ``docs/architecture.md`` describes the layers.
"""

from ._version import __version__

from . import schedules
from .calibrated import CalibratedLevel, calibrated_band
from .estimator import (EstimateWarning, NonFiniteOutputError, ScaleNotFoundWarning, calibrated_t0, estimate, flipd,
                        flipd_curve)
from .methods import METHODS
from .knee import KneeResult, knee
from .models import DiffusersModel, DiffusionModel, Model, ModelAdapter, as_model, from_diffusers, load
from .noise import default_noise_level, knee_grid, plateau_grid
from .plateau import PlateauResult, plateau
from .parameterization import PREDICTIONS
from .results import FLIPDResult, LIDResult
from .train import TrainConfig, train_diffusion

__all__ = [
    "CalibratedLevel",
    "DiffusersModel",
    "FLIPD",
    "DiffusionModel",
    "EstimateWarning",
    "FLIPDResult",
    "KneeResult",
    "LIDResult",
    "METHODS",
    "Model",
    "ModelAdapter",
    "NonFiniteOutputError",
    "PREDICTIONS",
    "PlateauResult",
    "ScaleNotFoundWarning",
    "TrainConfig",
    "as_model",
    "calibrated_band",
    "calibrated_t0",
    "default_noise_level",
    "estimate",
    "flipd",
    "flipd_curve",
    "from_diffusers",
    "knee",
    "knee_grid",
    "load",
    "plateau",
    "plateau_grid",
    "schedules",
    "train_diffusion",
]


def __getattr__(name: str):
    # The scikit-learn estimator is imported on first use: scikit-learn is optional and slow to import.
    if name == "FLIPD":
        from .sklearn import FLIPD

        return FLIPD
    raise AttributeError(f"module 'flipd' has no attribute {name!r}")
