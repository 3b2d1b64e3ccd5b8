"""A trained flipd diffusion model and its checkpoint format (safetensors + JSON, never pickle).

:class:`DiffusionModel` is a diffusion network in *standardised coordinates*: with
``z = (x − shift) / scale`` fitted once on the training data, ``model(y, t)`` gives its
prediction (the noise by default; any of :data:`flipd.parameterization.PREDICTIONS`) for
``y = psi(t)·z + sigma(t)·eps`` under its schedule (any :mod:`flipd.schedules` schedule). FLIPD must be computed in the coordinates the model was
trained in (the trace and norm terms scale differently under a rescaling), so the model carries
the map from the user's coordinates to its own: :meth:`DiffusionModel.encode` (= standardize).
:func:`flipd.flipd` applies it itself, so ``flipd.flipd(model, x_raw, t0=0.05)`` is right. The
local intrinsic dimension is unchanged by the invertible affine map ``x → z``; only the noise
level is measured in standardised units.

A checkpoint directory is in the Hugging Face layout: ``config.json`` (the flipd config: its
``format`` field, network spec, schedule, prediction, standardisation, training record),
``model.safetensors`` (EMA weights, raw weights, standardisation tensors) and ``README.md``
(a model card, :mod:`flipd.models.card`). :meth:`DiffusionModel.save_pretrained` writes it,
:meth:`DiffusionModel.from_pretrained` reads it from a folder or a Hugging Face Hub id, and
:meth:`DiffusionModel.push_to_hub` uploads it. Checkpoints of format version 1 hold the same
config as ``flipd_model.json`` and no card; they still load. A flipd ``config.json`` is told
from a diffusers one by its ``format`` field (diffusers configs have ``_class_name``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..noise import REFERENCE_SCHEDULE, is_reference, to_reference_time
from ..parameterization import check_prediction
from ..runs.files import atomic_path, write_text
from ..schedules import VP, Schedule
from .card import model_card
from .registry import build_network, check_network_options
from .spec import NetworkSpec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "LEGACY_CONFIG_FILE",
    "MODEL_CARD_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "DiffusionModel",
    "checkpoint_config_path",
    "fit_standardization",
    "standardization_from_moments",
    "load",
    "reference_inputs",
]

Standardize = Literal["per_coordinate", "scalar", "none"]
STANDARDIZE_MODES: tuple[str, ...] = ("per_coordinate", "scalar", "none")

#: Value of the "format" field that marks a directory as a flipd checkpoint.
CHECKPOINT_FORMAT = "flipd.diffusion_model"
#: 2: the Hugging Face layout (config.json + model card); 1: flipd_model.json. Both load.
CHECKPOINT_VERSION = 2
CONFIG_FILE = "config.json"
#: Where format version 1 kept the config.
LEGACY_CONFIG_FILE = "flipd_model.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"


class CheckpointError(ValueError):
    """A directory is not a valid flipd checkpoint (the message says what is wrong)."""


def checkpoint_config_path(directory: str | os.PathLike) -> Path | None:
    """The flipd config file of a checkpoint directory, or None if it holds none.

    ``config.json`` when it is a JSON object with a ``format`` field and no ``_class_name``
    (which marks a diffusers config), or is not valid JSON at all (a damaged checkpoint, which
    :meth:`DiffusionModel.load` then reports); else ``flipd_model.json`` (format version 1) if
    present.
    """
    directory = Path(directory)
    config = directory / CONFIG_FILE
    if config.is_file():
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return config
        if isinstance(fields, dict) and "format" in fields and "_class_name" not in fields:
            return config
    legacy = directory / LEGACY_CONFIG_FILE
    return legacy if legacy.is_file() else None


#: How a :class:`DiffusionModel` feeds its network: "reference" (new models: every schedule is
#: presented as the reference VP, see :func:`reference_inputs`) or "schedule" (checkpoints
#: written before schedules other than VP could be trained: ``y`` and ``t`` as they come).
NETWORK_INPUTS: tuple[str, ...] = ("reference", "schedule")


def reference_inputs(schedule: Schedule, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The network's inputs for ``y`` [N, ...] at times ``t`` [N] of ``schedule``.

    The network sees every schedule as the reference VP (``flipd.noise.REFERENCE_SCHEDULE``):
    the time is the reference time with the same smoothing, ``u = to_reference_time(schedule,
    t)`` (in [0, 1] whatever the schedule; VE times run up to 80), and ``y`` is rescaled to the
    reference signal scale, ``y·psi_ref(u)/psi(t)``, so that the network's input has the
    distribution of a reference-VP noisy point at ``u`` (a fixed preconditioning; for the VP
    family psi is fixed by delta and the factor is 1 up to rounding). For the reference
    schedule itself both are returned unchanged (the same tensors).

    Returns:
        ``(y_in, u)``: ``y_in`` like ``y`` (its dtype and device); ``u`` float64 [N] on the CPU.
    """
    if is_reference(schedule):
        return y, t
    u = to_reference_time(schedule, t.detach())
    gain = (REFERENCE_SCHEDULE.psi(u) / schedule.psi(t.detach())).to(device=y.device, dtype=y.dtype)
    return y * gain.reshape((-1,) + (1,) * (y.ndim - 1)), u


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_config_fields(config: dict[str, Any], config_path: Path) -> Path:
    """Check the types of a checkpoint config's fields; return the weights file's path.

    The weights must be a plain file name inside the checkpoint folder (no absolute path, no
    ``..``, no subfolder); ``schedule`` an object with a string ``kind`` (and numeric betas for
    VP); ``network`` a spec whose options fit its kind (:func:`check_network_options`).

    Raises:
        CheckpointError: naming the field that is wrong.
    """
    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{config_path}: the field {field!r} {problem}; the checkpoint is damaged.")

    name = config["weights"]
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise bad("weights", f"is {name!r}; it must be a file name inside the checkpoint folder (e.g. {WEIGHTS_FILE!r})")
    schedule = config["schedule"]
    if not isinstance(schedule, dict) or not isinstance(schedule.get("kind"), str):
        raise bad("schedule", f"is {schedule!r}; expected an object with a 'kind', e.g. {{'kind': 'VP', ...}}")
    if schedule["kind"] == "VP":
        for key in ("beta_min", "beta_max"):
            if not _is_number(schedule.get(key)):
                raise bad(f"schedule.{key}", f"is {schedule.get(key)!r}; expected a number")
    if not isinstance(config.get("prediction", "epsilon"), str):
        raise bad("prediction", f"is {config['prediction']!r}; expected a string such as 'epsilon'")
    network = config["network"]
    if not isinstance(network, dict) or not isinstance(network.get("kind"), str):
        raise bad("network", f"is {network!r}; expected an object with a 'kind' and 'options'")
    options = network.get("options", {})
    if not isinstance(options, dict):
        raise bad("network.options", f"is {options!r}; expected an object")
    try:
        check_network_options(network["kind"], options)
    except ValueError as error:
        raise bad("network.options", f"is not valid: {error}") from None
    if not isinstance(config["standardization"], dict):
        raise bad("standardization", f"is {config['standardization']!r}; expected an object")
    return config_path.parent / name




class DiffusionModel(nn.Module):
    """A trained diffusion model in standardised coordinates.

    ``model(y, t)`` returns the network's prediction (``model.prediction``: the noise by
    default) for ``y = psi(t)·z + sigma(t)·eps`` where ``z = model.standardize(x)`` and ``t``
    is a time of ``model.schedule``; it is a :class:`flipd.Model`, so :func:`flipd.flipd` takes
    the schedule, the prediction and the standardisation from it. :meth:`lid` does exactly that.

    Attributes:
        network: the EMA network, called as ``network(*reference_inputs(schedule, y, t))``
            (see :func:`reference_inputs`; with ``network_input="schedule"``, ``network(y, t)``).
        schedule: the schedule it was trained with (default the reference ``VP()``).
        prediction: what the network outputs, one of :data:`flipd.parameterization.PREDICTIONS`.
        network_input: "reference" or "schedule" (:data:`NETWORK_INPUTS`).
        standardize_mode: how the data were standardised.
        shift, scale: the standardisation, tensors shaped like one data point.
        metadata: training record: "train_config", "steps_run", "stopped_early", "stop_reason"
            ("steps", "patience" or "max_seconds"), "best_step", "best_val_loss",
            "final_train_loss", "final_val_loss", "history" (one entry per validation),
            "n_train", "n_val", "seed", "seconds" (wall clock), "cpu_seconds" (CPU time of the
            process, all threads), "threads", "parameters" and "versions".
        online_network: the raw (non-averaged) weights, kept for saving; may be None.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        shift: Tensor,
        scale: Tensor,
        schedule: Schedule | None = None,
        prediction: str = "epsilon",
        network_input: str = "reference",
        standardize_mode: str = "per_coordinate",
        metadata: dict[str, Any] | None = None,
        online_network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a flipd.schedules.Schedule; got {type(schedule).__name__}.")
        if network_input not in NETWORK_INPUTS:
            raise ValueError(f"network_input must be one of {', '.join(NETWORK_INPUTS)}; got {network_input!r}.")
        self.network = network
        self.online_network = online_network
        self.schedule = VP() if schedule is None else schedule
        self.prediction = check_prediction(prediction)
        self.network_input = network_input
        self.standardize_mode = standardize_mode
        self.register_buffer("shift", shift.detach().clone())
        self.register_buffer("scale", scale.detach().clone())
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.compute_dtype: torch.dtype | None = None  # see with_compute_dtype
        self.requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ calling

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one data point (D,) or (C, H, W)."""
        return tuple(self.shift.shape)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        """The network's prediction [N, *data_shape] (``self.prediction``) for ``y`` [N, *data_shape]
        in standardised coordinates at times ``t`` [N] (or a scalar) of ``self.schedule``."""
        if tuple(y.shape[1:]) != self.data_shape:
            raise ValueError(
                f"The model was trained on points of shape {self.data_shape}; got a batch of shape "
                f"{tuple(y.shape)}. Pass y of shape [N, {', '.join(map(str, self.data_shape))}]."
            )
        if t.ndim == 0:
            t = t.expand(y.shape[0])
        if self.network_input == "reference":
            y, t = reference_inputs(self.schedule, y, t)
        t = t.to(device=y.device, dtype=y.dtype)
        if self.compute_dtype is None:
            return self.network(y, t)
        with torch.autocast(device_type=y.device.type, dtype=self.compute_dtype):
            output = self.network(y, t)
        return output.to(y.dtype)

    def with_compute_dtype(self, dtype: torch.dtype | None) -> "DiffusionModel":
        """Run the network in ``dtype`` (torch.bfloat16 or torch.float16) under ``torch.autocast``:
        matrix products and convolutions in ``dtype``, the weights, the time embedding and the
        output in float32 (so traces, norms and sums stay float32). None or float32 undoes it.
        Returns the model itself; the autocast region is entered per call, so no global state
        changes."""
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compute dtype must be float32, bfloat16 or float16; got {dtype}.")
        self.compute_dtype = None if dtype in (None, torch.float32) else dtype
        return self

    def _as_points(self, x) -> Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor or numpy array; got {type(x).__name__}.")
        if tuple(x.shape[1:]) != self.data_shape or x.ndim != len(self.data_shape) + 1:
            raise ValueError(
                f"x must have shape [N, {', '.join(map(str, self.data_shape))}] like the training data; "
                f"got {tuple(x.shape)}."
            )
        return x.to(device=self.shift.device, dtype=self.shift.dtype)

    def standardize(self, x) -> Tensor:
        """Map data points x [N, *data_shape] (original units) to the model's coordinates."""
        return (self._as_points(x) - self.shift) / self.scale

    def destandardize(self, z) -> Tensor:
        """Inverse of :meth:`standardize`."""
        return self._as_points(z) * self.scale + self.shift

    def encode(self, x) -> Tensor:
        """The :class:`flipd.Model` coordinate map: :meth:`standardize`."""
        return self.standardize(x)

    def lid(self, x, **flipd_kwargs: Any) -> Tensor:
        """FLIPD estimates [N] for data points ``x`` in original units: ``flipd.flipd(self, x, ...)``.

        Give the noise level with ``t0=`` (e.g. 0.05 or "auto"), ``sigma=`` or ``delta=``
        (measured in standardised coordinates), or none for the default.
        """
        from ..estimator import flipd

        return flipd(self, x, **flipd_kwargs)

    def estimate(self, x, **flipd_kwargs: Any):
        """Like :meth:`lid`, returning :class:`flipd.FLIPDResult` (noise levels, stderr, ...)."""
        from ..estimator import estimate

        return estimate(self, x, **flipd_kwargs)

    def sample(
        self,
        n: int,
        *,
        steps: int = 50,
        sampler: str = "ddim",
        eta: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
        progress=None,
    ) -> Tensor:
        """Draw ``n`` points from the model, in the user's coordinates (standardisation undone).

        Runs a diffusers ``DDIMScheduler`` (``sampler="ddim"``, deterministic for ``eta=0``) or
        ``DDPMScheduler`` (``"ddpm"``) for ``steps`` steps on the model's own schedule and
        prediction (:func:`flipd.models.sampling.sample_model`; needs diffusers). Seeded by
        ``seed``; the global random state is left alone.

        Returns:
            Samples [n, *data_shape] in data units, the model's dtype, on its device.
        """
        from .sampling import sample_model

        z = sample_model(
            self, n, self.data_shape, steps=steps, sampler=sampler, eta=eta, seed=seed, batch_size=batch_size,
            dtype=self.shift.dtype, device=self.shift.device, progress=progress,
        )
        return self.destandardize(z)

    # ------------------------------------------------------------------ saving

    def save(self, directory: str | Path) -> Path:
        """Write the checkpoint in the Hugging Face layout: ``config.json``, ``model.safetensors``
        and the model card ``README.md`` in ``directory`` (a ``flipd_model.json`` of an older
        checkpoint there is removed).

        Returns the directory. Only networks with a registered spec (``network.spec``, see
        :func:`flipd.models.register_network`) can be saved.
        """
        from safetensors.torch import save_file

        spec = getattr(self.network, "spec", None)
        if not isinstance(spec, NetworkSpec):
            raise CheckpointError(
                f"Cannot save a {type(self.network).__name__}: it has no NetworkSpec in its .spec "
                "attribute. Register a builder with flipd.models.register_network and set "
                "network.spec = NetworkSpec(kind, options)."
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"ema.{k}": v for k, v in self.network.state_dict().items()}
        if self.online_network is not None:
            tensors.update({f"online.{k}": v for k, v in self.online_network.state_dict().items()})
        tensors["standardization.shift"] = self.shift
        tensors["standardization.scale"] = self.scale
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        config = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "weights": WEIGHTS_FILE,
            "network": spec.to_json(),
            "prediction": self.prediction,
            "schedule": self.schedule.to_config(),
            "network_input": self.network_input,
            "standardization": {
                "mode": self.standardize_mode,
                "data_shape": list(self.data_shape),
                "tensors": ["standardization.shift", "standardization.scale"],
                "formula": "z = (x - shift) / scale",
            },
            "dtype": str(self.shift.dtype).removeprefix("torch."),
            "metadata": self.metadata,
        }
        # Both files are written atomically and get the process umask's permissions (safetensors
        # alone would leave the weights private to their owner).
        with atomic_path(directory / WEIGHTS_FILE) as temporary:
            save_file(tensors, str(temporary), metadata={"format": CHECKPOINT_FORMAT})
        write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_text(directory / MODEL_CARD_FILE, model_card(config))
        (directory / LEGACY_CONFIG_FILE).unlink(missing_ok=True)
        return directory

    def save_pretrained(self, directory: str | Path) -> Path:
        """Hugging Face name of :meth:`save`: write ``config.json``, ``model.safetensors`` and
        ``README.md`` to ``directory``; returns it."""
        return self.save(directory)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        weights: Literal["ema", "online"] = "ema",
        device: str | torch.device = "cpu",
        revision: str | None = None,
    ) -> "DiffusionModel":
        """Load a checkpoint from a local folder or a Hugging Face Hub id ``owner/name``.

        A hub id (a string naming nothing on disk) is fetched into the hub cache, safetensors,
        JSON and text files only (``HF_HUB_OFFLINE=1``: the cache alone; see
        :mod:`flipd.models.hub`). ``revision`` picks a branch, tag or commit of a hub model.

        Raises:
            flipd.models.hub.HubUnavailableError: a hub id that cannot be fetched.
            CheckpointError: what :meth:`load` raises.
        """
        from .hub import hub_snapshot, is_hub_id

        if is_hub_id(source):
            source = hub_snapshot(os.fspath(source), revision=revision)
        elif revision is not None:
            raise ValueError(f"revision= applies to Hugging Face Hub ids; {str(source)!r} is a local path.")
        return cls.load(source, weights=weights, device=device)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload flipd diffusion model",
    ) -> str:
        """Upload the checkpoint (``config.json``, ``model.safetensors``, ``README.md``) to the
        Hugging Face Hub model repository ``repo_id``, creating it if needed.

        Args:
            repo_id: ``owner/name``.
            private: make a new repository private (None: the hub's default).
            token: a hub token (default the one saved by ``hf auth login``).
            commit_message: the commit's message.

        Returns:
            The URL of the commit.

        Raises:
            ValueError: ``repo_id`` is not ``owner/name``.
            flipd.models.hub.HubUnavailableError: the hub cannot be reached (or HF_HUB_OFFLINE is set).
        """
        from .hub import upload_folder

        with tempfile.TemporaryDirectory(prefix="flipd-push-") as folder:
            self.save(folder)
            return upload_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    def export_diffusers(self, directory: str | Path, *, force: bool = False) -> Path:
        """Write this image model as a diffusers ``DDPMPipeline`` folder (``model_index.json``,
        ``unet/``, ``scheduler/``) that :func:`flipd.from_diffusers` and diffusers load.

        Only convolutional U-nets without standardisation predicting epsilon or sample can be
        exported; the scheduler is a ``DDPMScheduler`` matching the network's VP schedule at
        every integer timestep (see :mod:`flipd.models.export` for the mapping). ``force``
        replaces an existing pipeline folder.

        Raises:
            flipd.models.export.ExportError: the model cannot be exported (the message says why).
            FileExistsError: ``directory`` holds something that may not be replaced.
        """
        from .export import export_diffusers

        return export_diffusers(self, directory, force=force)

    @classmethod
    def load(cls, directory: str | Path, *, weights: Literal["ema", "online"] = "ema", device: str | torch.device = "cpu") -> "DiffusionModel":
        """Load a checkpoint written by :meth:`save` (any format version up to
        :data:`CHECKPOINT_VERSION`; version 1 keeps its config in ``flipd_model.json``).

        Args:
            directory: the checkpoint directory (a local folder; see :meth:`from_pretrained`
                for hub ids).
            weights: "ema" (the averaged weights, used for evaluation) or "online" (raw).
            device: where to put the model.

        Raises:
            FileNotFoundError: the directory does not exist.
            CheckpointError: it is not a flipd checkpoint, or one this version cannot read, or a
                field of its config is wrong (the message names it).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.exists():
            raise FileNotFoundError(f"No checkpoint at {directory}: the directory does not exist.")
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is a file, not a checkpoint directory (expected a directory with {CONFIG_FILE}).")
        config_path = checkpoint_config_path(directory)
        if config_path is None:
            raise CheckpointError(
                f"{directory} is not a flipd checkpoint: it has no {CONFIG_FILE} with a flipd 'format' field "
                f"(nor the {LEGACY_CONFIG_FILE} of older versions). A checkpoint holds {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}, as written by DiffusionModel.save_pretrained or flipd train."
            )
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{config_path} is not valid JSON ({error}); the checkpoint is damaged.") from error
        if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
            found = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise CheckpointError(
                f"{config_path} does not describe a flipd checkpoint: its 'format' is {found!r}, "
                f"expected {CHECKPOINT_FORMAT!r}."
            )
        version = config.get("format_version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{config_path} has format_version {version!r}; this flipd reads up to "
                f"{CHECKPOINT_VERSION}. Upgrade flipd to load it."
            )
        for key in ("network", "schedule", "standardization", "weights"):
            if key not in config:
                raise CheckpointError(f"{config_path} lacks the required field {key!r}; the checkpoint is damaged.")
        weights_path = _check_config_fields(config, config_path)
        schedule, prediction, network_input = _read_schedule_and_prediction(config, config_path)
        if not weights_path.is_file():
            raise CheckpointError(f"{directory} is incomplete: the weights file {config['weights']} is missing.")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"Cannot read {weights_path} as safetensors ({error}); the file is damaged.") from error
        if weights not in ("ema", "online"):
            raise ValueError(f"weights must be 'ema' or 'online'; got {weights!r}.")
        network = build_network(config["network"])
        prefix = f"{weights}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{weights_path} holds no {weights!r} weights (keys starting with {prefix!r}).")
        _load_state(network, state, weights_path)
        online = None
        if weights == "ema" and any(k.startswith("online.") for k in tensors):
            online = build_network(config["network"])
            _load_state(online, {k[7:]: v for k, v in tensors.items() if k.startswith("online.")}, weights_path)
        for key in ("standardization.shift", "standardization.scale"):
            if key not in tensors:
                raise CheckpointError(f"{weights_path} lacks the tensor {key!r}; the checkpoint is damaged.")
        model = cls(
            network,
            shift=tensors["standardization.shift"],
            scale=tensors["standardization.scale"],
            schedule=schedule,
            prediction=prediction,
            network_input=network_input,
            standardize_mode=config["standardization"].get("mode", "per_coordinate"),
            metadata=config.get("metadata", {}),
            online_network=online,
        )
        return model.to(device)


def _read_schedule_and_prediction(config: dict[str, Any], path: Path) -> tuple[Schedule, str, str]:
    """The checkpoint's ``schedule``, ``prediction`` and ``network_input``, checked.

    Checkpoints written before other schedules could be trained hold ``{"kind": "VP",
    "beta_min": ..., "beta_max": ...}``, no prediction (epsilon) and no network_input (the
    network took the schedule's time as is: "schedule").
    """
    try:
        schedule = Schedule.from_config(config["schedule"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid 'schedule' field {config['schedule']!r}: {error}") from None
    prediction = config.get("prediction", "epsilon")
    try:
        check_prediction(prediction)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid 'prediction' field: {error}") from None
    network_input = config.get("network_input", "schedule")
    if network_input not in NETWORK_INPUTS:
        raise CheckpointError(
            f"{path} has an invalid 'network_input' field {network_input!r}; expected one of {', '.join(NETWORK_INPUTS)}."
        )
    return schedule, prediction, network_input


def _load_state(network: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    expected = set(network.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"The weights in {path} do not match the network in its config: missing "
            f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}."
        )
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"The weights in {path} do not fit the network in its config: {error}") from error


def load(directory: str | Path, **kwargs: Any) -> DiffusionModel:
    """Load a checkpoint written by :meth:`DiffusionModel.save` (see :meth:`DiffusionModel.load`)."""
    return DiffusionModel.load(directory, **kwargs)



def fit_standardization(x: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` shaped like one point of x [N, ...] for the standardisation ``mode``."""
    if mode == "none":
        return torch.zeros_like(x[0]), torch.ones_like(x[0])
    return standardization_from_moments(x.mean(dim=0), x.var(dim=0), mode, stacklevel=4)


def standardization_from_moments(mean: Tensor, variance: Tensor, mode: str, *, stacklevel: int = 3) -> tuple[Tensor, Tensor]:
    """``(shift, scale)`` [*point_shape] for the standardisation ``mode`` of points with
    per-coordinate ``mean`` and unbiased ``variance`` [*point_shape] (returned in their dtype:
    pass float32 for float32 statistics, or cast float64 ones afterwards)."""
    if mode == "none":
        return torch.zeros_like(mean), torch.ones_like(mean)
    shift = mean
    if mode == "per_coordinate":
        scale = variance.sqrt()
        constant = scale <= 1e-12 * (1 + shift.abs())
        if constant.any():
            warnings.warn(
                f"{int(constant.sum())} coordinate(s) are constant in the training data; they are "
                "centred but not rescaled.",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
        scale = torch.where(constant, torch.ones_like(scale), scale)
    elif mode == "scalar":
        spread = float(variance.mean().sqrt())
        scale = torch.full_like(shift, spread if spread > 0 else 1.0)
    else:
        raise ValueError(f"Unknown standardisation {mode!r}; use one of {', '.join(STANDARDIZE_MODES)}.")
    return shift, scale
