"""FLIPD as a scikit-learn estimator, with scikit-dimension's conventions.

>>> from flipd import FLIPD
>>> estimator = FLIPD(steps=2000).fit(X)          # doctest: +SKIP
>>> estimator.dimension_pw_                        # LID of every point of X, [N]   # doctest: +SKIP
>>> estimator.dimension_                           # their mean, as skdim's local estimators  # doctest: +SKIP
>>> estimator.transform(X_new)                     # LID of new points, [M, 1]     # doctest: +SKIP

:class:`FLIPD` takes only hyper-parameters in ``__init__`` (so ``sklearn.base.clone``,
``get_params`` and ``set_params`` work and it fits in a ``Pipeline`` or a grid search);
``fit(X)`` trains a diffusion model on X with :func:`flipd.train_diffusion` (or wraps the
model passed as ``model=``) and estimates the LID of X's points; ``transform`` estimates it for
new points. Like scikit-dimension's local estimators (``skdim._commonfuncs.LocalEstimator``)
it sets ``dimension_pw_`` (one estimate per point) and ``dimension_`` (their mean), and
``fit_transform_pw`` / ``transform_pw`` return the per-point estimates as a flat array. As a
scikit-learn transformer, ``transform`` returns a 2-d array [N, 1] with the one feature "lid"
(so ``set_output(transform="pandas")`` gives a DataFrame with a ``lid`` column).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .estimator import estimate
from .noise import DATA_SET_RULES, rule_named
from .models.mlp import MLPUNetConfig
from .models.spec import NetworkSpec
from .recipes import DEFAULT_LOW_T_FRACTION
from .train import TrainConfig, train_diffusion

__all__ = ["FLIPD"]


class FLIPD(TransformerMixin, BaseEstimator):
    """Local intrinsic dimension by FLIPD, as a scikit-learn transformer.

    Args:
        t0: noise level as a time of the model's schedule, or a rule: "knee" (the knee
            rule, per point), "plateau" (per point), "calibrated" (one level, chosen from the
            fitted X and kept as ``level_``, at which ``transform`` reads new points) or "band"
            or "auto" (the calibrated level's band, chosen and kept the same way); with
            ``sigma`` and ``delta`` None as well, the library's default noise level
            (:func:`flipd.default_noise_level`: t0 = 0.05 of the reference VP schedule). At most
            one of ``t0``, ``sigma`` (noise standard deviation) and ``delta`` (log sigma/psi).
        trace: "auto", "exact", "hutchinson" or "gaussian" (see :func:`flipd.flipd`).
        n_probes: Hutchinson probes per point.
        seed: seed of the probes and of training (data split, batches, noise, initial weights).
        batch_size: points per forward pass of the estimator (None: the library's default).
        model: a :class:`flipd.Model` (or a callable ``model(y, t)``) to use instead of
            training one; ``fit`` then only estimates. Points may then be images [N, C, H, W].
        steps: training steps (upper bound; early stopping may end sooner).
        widths: hidden widths of the MLP U-net that is trained.
        train_batch_size: points per training step.
        lr: peak learning rate of training.
        standardize: how the data are rescaled before training ("per_coordinate", "scalar" or
            "none"); None: :class:`flipd.TrainConfig`'s default.
        low_t_fraction: fraction of each training batch drawn at small noise (reference times
            below 0.2), where FLIPD reads the score (default: ``flipd train``'s,
            :data:`flipd.recipes.DEFAULT_LOW_T_FRACTION`).
        max_seconds: stop training after this many seconds (None: no limit).
        device: where to train and estimate ("cpu", "cuda", ...).
        progress: show a progress bar while training.

    Attributes (after ``fit``):
        dimension_pw_: LID of every point of the fitted X, float64 [N] (dimensions).
        dimension_: their mean, a float.
        stderr_pw_: standard error of each Hutchinson estimate, float64 [N] (0 for the exact
            trace, NaN for one probe).
        result_: the :class:`flipd.FLIPDResult` of the fitted X (noise levels per point, ...).
        model_: the model used (trained by ``fit`` or the ``model`` given).
        level_: with ``t0="calibrated"`` or ``"band"``, the :class:`flipd.CalibratedLevel` chosen from the
            fitted X (None otherwise).
        n_features_in_: number of features of X.
    """

    def __init__(
        self,
        *,
        t0: float | str | None = None,
        sigma: float | None = None,
        delta: float | None = None,
        trace: str = "auto",
        n_probes: int = 1,
        seed: int = 0,
        batch_size: int | None = None,
        model: Any = None,
        steps: int = 4000,
        widths: tuple[int, ...] = (256, 256, 256),
        train_batch_size: int = 512,
        lr: float = 2e-3,
        standardize: str | None = None,
        low_t_fraction: float = DEFAULT_LOW_T_FRACTION,
        max_seconds: float | None = None,
        device: str = "cpu",
        progress: bool = False,
    ) -> None:
        self.t0 = t0
        self.sigma = sigma
        self.delta = delta
        self.trace = trace
        self.n_probes = n_probes
        self.seed = seed
        self.batch_size = batch_size
        self.model = model
        self.steps = steps
        self.widths = widths
        self.train_batch_size = train_batch_size
        self.lr = lr
        self.standardize = standardize
        self.low_t_fraction = low_t_fraction
        self.max_seconds = max_seconds
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ scikit-learn API

    def fit(self, X, y=None) -> "FLIPD":
        """Train a model on X (unless ``model`` was given) and estimate the LID of X's points.

        Args:
            X: points [N, D] (array-like; [N, C, H, W] images with ``model=``), in data units.
            y: ignored.

        Returns:
            self, with ``dimension_pw_``, ``dimension_``, ``model_`` and the other attributes set.
        """
        X = self._validate(X, reset=True)
        self.model_ = self._train(X) if self.model is None else self.model
        self.level_ = None
        self.result_ = self._estimate(X)
        if self._calibrated():  # learnt from X, reused by transform
            self.level_ = self.result_.level
        self.dimension_pw_ = self.result_.lid.detach().cpu().to(torch.float64).numpy()
        self.stderr_pw_ = self.result_.stderr.detach().cpu().to(torch.float64).numpy()
        self.dimension_ = float(np.mean(self.dimension_pw_))
        return self

    def transform(self, X) -> np.ndarray:
        """LID of new points: float64 [M, 1] (one feature, "lid"), the same estimate per point as
        ``fit`` gives (probes depend on the seed and each point's row in X)."""
        check_is_fitted(self, "model_")
        X = self._validate(X, reset=False)
        return self._estimate(X).lid.detach().cpu().to(torch.float64).numpy()[:, None]

    def fit_transform(self, X, y=None, **fit_params: Any) -> np.ndarray:
        """``fit(X)`` and return ``dimension_pw_`` as [N, 1] (equal to ``fit(X).transform(X)``)."""
        return self.fit(X, y).dimension_pw_[:, None].copy()

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The one output feature: ``["lid"]``."""
        check_is_fitted(self, "model_")
        return np.asarray(["lid"], dtype=object)

    # ------------------------------------------------------------------ scikit-dimension API

    def fit_transform_pw(self, X, y=None) -> np.ndarray:
        """``fit(X)`` and return ``dimension_pw_``, float64 [N] (scikit-dimension's name)."""
        return self.fit(X, y).dimension_pw_.copy()

    def transform_pw(self, X=None) -> np.ndarray:
        """Per-point LID as a flat array [N]: of the fitted X when ``X`` is None, else of ``X``."""
        check_is_fitted(self, "model_")
        return self.dimension_pw_.copy() if X is None else self.transform(X)[:, 0]

    # ------------------------------------------------------------------ internals

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    def _validate(self, X, *, reset: bool) -> np.ndarray:
        return validate_data(
            self, X, reset=reset, dtype=[np.float64, np.float32], ensure_min_samples=2 if reset else 1,
            allow_nd=self.model is not None, ensure_all_finite=True,
        )

    def _train(self, X: np.ndarray):
        options: dict[str, Any] = {} if self.standardize is None else {"standardize": self.standardize}
        config = TrainConfig(
            steps=self.steps, batch_size=self.train_batch_size, lr=self.lr, seed=self.seed,
            max_seconds=self.max_seconds, low_t_fraction=self.low_t_fraction, low_t_max=0.2,
            warmup_steps=min(500, max(1, self.steps // 10)), eval_every=max(1, min(500, self.steps // 4)), **options,
        )
        network = NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=X.shape[1], widths=tuple(self.widths)).to_json())
        points = torch.tensor(X, dtype=torch.float32)
        return train_diffusion(points, network=network, config=config, progress=self.progress, device=self.device)

    def _calibrated(self) -> bool:
        """Whether t0 is the calibrated or band rule with no other noise level given (else estimate refuses)."""
        return (isinstance(self.t0, str) and rule_named(self.t0) in DATA_SET_RULES and self.sigma is None
                and self.delta is None)

    def _estimate(self, X: np.ndarray):
        noise = {name: value for name, value in (("t0", self.t0), ("sigma", self.sigma), ("delta", self.delta))
                 if value is not None}
        if self._calibrated() and getattr(self, "level_", None) is not None:
            noise["t0"] = self.level_
        points = torch.tensor(X, dtype=_input_dtype(self.model_, X), device=self.device)
        return estimate(self.model_, points, **noise, trace=self.trace, n_probes=self.n_probes, seed=self.seed,
                        batch_size=self.batch_size)


def _input_dtype(model: Any, X: np.ndarray) -> torch.dtype:
    """The dtype to hand ``model`` its points in: a flipd checkpoint's, a module's parameters', else X's."""
    shift = getattr(model, "shift", None)
    if isinstance(shift, torch.Tensor):
        return shift.dtype
    if isinstance(model, torch.nn.Module):
        parameter = next(model.parameters(), None)
        if parameter is not None:
            return parameter.dtype
    return torch.float64 if X.dtype == np.float64 else torch.float32
