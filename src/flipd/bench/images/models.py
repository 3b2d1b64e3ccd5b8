"""The image study's data and networks: loading a data set, choosing the evaluated images,
building a network, training it or loading its checkpoint, and the record of a trained model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .plan import TRAIN_DEFAULTS, DatasetPlan, ModelKind, ModelPlan

__all__ = ["load_images", "train_or_load"]


def load_images(plan: DatasetPlan, seed: int = 0):
    """The :class:`flipd.datasets.images.ImageData` of a data set of the study."""
    from flipd.datasets import images

    if plan.name == "mnist":
        return images.mnist_subset(plan.n_images, seed=seed)
    if plan.name == "digits8":
        return images.digits8(plan.n_images, seed=seed)
    if plan.name == "patches":
        return images.natural_patches(plan.n_images or 512, size=plan.patch_size, seed=seed)
    raise ValueError(f"Unknown data set {plan.name!r}; use mnist, patches or digits8.")


def eval_indices(n_available: int, n_eval: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``n_eval`` image indices, in random order (prefixes are random too)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_available)[: min(n_eval, n_available)]


def _network_spec(model_plan: ModelPlan, image_shape: tuple[int, int, int], data_std: float | None = None):
    """The :class:`flipd.models.NetworkSpec` of a model; the MLP's input is scaled by the
    pixels' overall standard deviation ``data_std`` (its ``data_std`` preconditioning)."""
    from flipd.models import NetworkSpec

    if model_plan.kind == "unet":
        from flipd.models.unet import UNET_KIND, UNetConfig

        return NetworkSpec(UNET_KIND, UNetConfig(image_shape=image_shape, **model_plan.architecture).to_json())
    if model_plan.kind == "mlp":
        from flipd.models import MLPUNetConfig

        dim = int(np.prod(image_shape))
        options = dict(model_plan.architecture)
        if data_std is not None:
            options.setdefault("data_std", round(float(data_std), 4))
        return NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=dim, **options).to_json())
    raise ValueError(f"Unknown model kind {model_plan.kind!r}; use unet or mlp.")


def model_input(kind: ModelKind, images: torch.Tensor) -> torch.Tensor:
    """What a model of ``kind`` takes: images [N, C, H, W] (UNet) or flattened [N, D] (MLP)."""
    return images if kind == "unet" else images.flatten(1)


def _plan_digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def train_or_load(
    model_plan: ModelPlan,
    images: torch.Tensor,
    *,
    dataset: str,
    seed: int,
    checkpoints: Path | None,
    retrain: bool = False,
    log=print,
):
    """Train the model of ``model_plan`` on ``images`` [N, C, H, W], or load it from ``checkpoints``.

    A checkpoint is reused when it was written for the same data set, plan and seed (its
    directory name carries a digest of them). Returns ``(model, reused)``.
    """
    from flipd.models.checkpoint import checkpoint_config_path
    from flipd.train import TrainConfig, load, train_diffusion

    spec = _network_spec(model_plan, tuple(images.shape[1:]), data_std=float(images.std()))
    config = TrainConfig(**{**TRAIN_DEFAULTS, **model_plan.training, "seed": seed})
    digest = _plan_digest({
        "dataset": dataset, "n": int(images.shape[0]), "network": spec.to_json(), "train": config.to_json(),
        "data": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
    })
    directory = None if checkpoints is None else checkpoints / f"{dataset}-{model_plan.label}-{digest}"
    if directory is not None and not retrain and checkpoint_config_path(directory) is not None:
        log(f"  {model_plan.label}: reusing checkpoint {directory}")
        return load(directory), True
    log(f"  {model_plan.label}: training {config.steps} steps (batch {config.batch_size}) ...")
    model = train_diffusion(
        model_input(model_plan.kind, images), network=spec, config=config, progress=False,
    )
    if directory is not None:
        model.save(directory)
    return model, False


def model_record(model, model_plan: ModelPlan, reused: bool) -> dict[str, Any]:
    """What a data set's record keeps of a trained ``model``: network, size, training budget and
    losses, training time, and whether it came from a checkpoint."""
    meta = model.metadata
    spec = model.network.spec
    return {
        "kind": model_plan.kind,
        "label": model_plan.label,
        "network": spec.to_json(),
        "parameters": meta.get("parameters"),
        "train_config": meta.get("train_config"),
        "steps_run": meta.get("steps_run"),
        "best_step": meta.get("best_step"),
        "best_val_loss": meta.get("best_val_loss"),
        "final_train_loss": meta.get("final_train_loss"),
        "train_seconds": meta.get("seconds"),
        "train_threads": meta.get("threads"),
        "n_train": meta.get("n_train"),
        "n_val": meta.get("n_val"),
        "reused_checkpoint": reused,
    }


def untrained_network(spec, seed: int) -> torch.nn.Module:
    """The network of ``spec`` at a random initialisation drawn with torch seed ``seed``."""
    from flipd.models import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(spec)
    return network.eval().requires_grad_(False)
