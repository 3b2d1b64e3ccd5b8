"""Baseline estimators of local intrinsic dimension that FLIPD is compared with.

Model-based (use the same diffusion model as FLIPD):

- :func:`estimate_nb`: the normal-bundle estimator (Stanczuk et al., ICML 2024).
- :func:`estimate_fpregress`: LIDL's regression with log densities from the Fokker-Planck ODE.

Model-free, from scikit-dimension (``pip install flipd[bench]``):

- :func:`estimate_classical` with ``method`` "lpca", "mle", "ess" or "twonn".

:data:`BASELINES` lists them all with their default settings; every entry is callable as
``BASELINES[name](x, model=..., schedule=..., prediction=...) -> np.ndarray [N]``.
:data:`flipd.methods.METHODS` puts FLIPD and these behind one calling convention returning one
result type (:class:`flipd.LIDResult`, with the resolved settings): use that to compare methods.
"""

from .classical import CLASSICAL_METHODS, DEFAULT_NEIGHBORS, estimate_classical
from .fpregress import (
    DEFAULT_STDS,
    DEFAULT_SUBSTEPS,
    estimate_fpregress,
    fokker_planck_log_density,
    regression_lid,
    stds_around,
)
from .normal_bundle import NB_REFERENCE_DELTA, NB_REFERENCE_T, estimate_nb, lid_from_spectrum, normal_bundle_spectrum
from .registry import BASELINES, Baseline

__all__ = [
    "BASELINES",
    "Baseline",
    "CLASSICAL_METHODS",
    "DEFAULT_NEIGHBORS",
    "DEFAULT_STDS",
    "DEFAULT_SUBSTEPS",
    "NB_REFERENCE_DELTA",
    "NB_REFERENCE_T",
    "estimate_classical",
    "estimate_fpregress",
    "estimate_nb",
    "fokker_planck_log_density",
    "lid_from_spectrum",
    "normal_bundle_spectrum",
    "regression_lid",
    "stds_around",
]
