"""The ``flipd`` command line: train, estimate, curve, sample, bench, demo, info.

A thin shell over the library: options are parsed here, the work is done by the jobs of
:mod:`flipd.jobs` (estimate, curve, train, demo), with data from :mod:`flipd.datasets.sources`,
models from :mod:`flipd.models`, files and resumable runs from :mod:`flipd.runs`, and figures
from :mod:`flipd.plots`.

User errors (a missing file, an unknown data set, a bad option, a model that does not fit the
data, a directory that is not a checkpoint) print one line and exit with status 2; ``--debug``
shows the traceback as well. An interrupted estimation exits with status 130 and can be
continued with ``--resume``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .baselines.classical import DEFAULT_NEIGHBORS
from .jobs.train import NETWORK_CHOICES, SCALING_CHOICES
from .recipes import DEFAULT_LOW_T_FRACTION, DEFAULT_TIME_SAMPLING, TIME_SAMPLINGS
from .runs.environment import DEMO_DEFAULT_OUT

__all__ = ["app", "main"]

#: Exit status of a user error (bad input), of an unexpected failure, and of an interruption.
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _debug_from_environment() -> bool:
    return os.environ.get("FLIPD_DEBUG", "") not in ("", "0")


class _State:
    """Settings of the current invocation that the error handler needs."""

    debug: bool = _debug_from_environment()


state = _State()

app = typer.Typer(
    name="flipd",
    help=(
        "Local intrinsic dimension (LID) of data points from diffusion models (FLIPD, Kamkari et al., "
        "NeurIPS 2024).\n\n"
        "Typical session: [bold]flipd train lollipop --out models/lollipop[/] then "
        "[bold]flipd estimate lollipop --model models/lollipop --plot plots/[/]. "
        "Start with [bold]flipd demo[/]."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --------------------------------------------------------------------------- errors


class OptionError(ValueError):
    """An option has a value the command cannot use."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"invalid value for {option}: {message}")


class Interrupted(Exception):
    """A run was interrupted; the message says how to continue it."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
            PermissionError, KeyError, ImportError, TypeError)


def _one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, ModuleNotFoundError) and error.name and not error.name.startswith("flipd"):
        message = (
            f"the optional package {error.name!r} is not installed; install flipd with its extras: "
            "pip install 'flipd[all]'"
        )
    return " ".join(str(message).split()) or type(error).__name__


def _fail(message: str, status: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(status)


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions of a command into one-line messages and exit statuses (see module notes)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = state.debug or bool(kwargs.get("debug"))
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Interrupted as error:
            if debug:
                traceback.print_exc()
            raise _fail(str(error), EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            if debug:
                traceback.print_exc()
            raise _fail("interrupted", EXIT_INTERRUPTED) from None
        except _user_error_types() as error:
            if debug:
                traceback.print_exc()
            raise _fail(_one_line(error), EXIT_USER_ERROR) from None
        except Exception as error:  # an unexpected failure: say so, keep the traceback behind --debug
            if debug:
                traceback.print_exc()
            from .runs.distributed import RankFailed

            if isinstance(error, RankFailed):  # another process's error, already named in the message
                raise _fail(_one_line(error), EXIT_FAILURE) from None
            raise _fail(
                f"{type(error).__name__}: {_one_line(error)} (run again with --debug for the traceback)",
                EXIT_FAILURE,
            ) from None

    return wrapper


# --------------------------------------------------------------------------- shared options

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback of errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries; errors only.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of every random choice (points, probes, training).")]
Threads = Annotated[
    Optional[int], typer.Option("--threads", min=1, help="CPU threads for torch (default: torch's choice).")
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
RunDevice = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps: where the network, the VAE, the prepared points and the probes live.")
]
Workers = Annotated[
    int, typer.Option("--workers", min=0, help="DataLoader worker processes that read and decode the data files (0: read in the main process).")
]
DType = Annotated[
    str, typer.Option("--dtype", help="Precision of the network and VAE: float32, bfloat16 or float16 (traces, norms and sums stay float32).")
]
Resize = Annotated[
    Optional[int], typer.Option("--resize", min=1, help="Image folders: scale each image's shorter side to this many pixels.", show_default=False)
]
CenterCrop = Annotated[
    Optional[int], typer.Option("--center-crop", min=1, help="Image folders: keep the central N x N pixels (after --resize).", show_default=False)
]
Points = Annotated[
    Optional[int],
    typer.Option("--n-points", "-n", min=1, help="Number of points (default: all of a file; 4096 of a synthetic set)."),
]
DataArgument = Annotated[
    str,
    typer.Argument(
        metavar="DATA",
        help="Data set name (lollipop, doughnut, swiss_roll, mixture:affine:D=10:dims=2,4,8, mnist-subset, "
        "digits8, ...) or a path (image folder, .npy, .npz, .csv, .parquet).",
        show_default=False,
    ),
]
ModelOption = Annotated[
    Path,
    typer.Option("--model", "-m", help="A flipd checkpoint directory (from flipd train), a diffusers folder, or a Hugging Face Hub id owner/name.", show_default=False),
]
Prompt = Annotated[
    Optional[str],
    typer.Option("--prompt", help="Text conditioning of a text-conditioned diffusers model (default: the empty prompt).", show_default=False),
]
SchedulerOption = Annotated[
    Optional[Path],
    typer.Option("--scheduler", help="Noise scheduler of a diffusers model folder that has none (a single UNet, not a pipeline): "
                 "a folder with scheduler_config.json, e.g. the pipeline's scheduler/.", show_default=False),
]
Trace = Annotated[str, typer.Option("--trace", help="auto (exact for vectors with D <= 256, Hutchinson for images and larger D), exact, hutchinson or gaussian.")]
Probes = Annotated[int, typer.Option("--probes", min=1, help="Hutchinson probes per point (ignored by the exact trace).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Points per forward pass.")]
PlotDir = Annotated[Optional[Path], typer.Option("--plot", help="Write PNG figures into this folder.", show_default=False)]
DistTimeout = Annotated[
    float,
    typer.Option("--dist-timeout", min=0.01, help="Under torchrun or accelerate launch: minutes a process waits for the "
                 "others at each meeting point (the slowest one's chunks included) before it stops."),
]
ChunkSize = Annotated[int, typer.Option("--chunk-size", min=1, help="Points per saved chunk (the unit of --resume and of the work each process takes).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run; finished chunks are not computed again.")]
CalibratedRatio = Annotated[
    Optional[float],
    typer.Option("--calibrated-ratio", help="With the calibrated rule: how much worse than at its best level the model may "
                 "denoise at the chosen level (>= 1; default 1.5; 1 reads every point where the model denoises best).",
                 show_default=False),
]


def _setup(threads: int | None, device: str, debug: bool = False) -> Any:
    """Apply --threads and --debug, resolve --device."""
    import torch

    from .devices import resolve_device

    if debug:
        state.debug = True
    if not state.debug:
        _quiet_library_chatter()
    if threads is not None:
        torch.set_num_threads(threads)
    return resolve_device(device)


def _quiet_library_chatter() -> None:
    """Hide advice that third-party libraries print while loading models (shown with --debug)."""
    import warnings

    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # vmap over CPU attention's backward falls back to a loop: slower, but correct.
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    warnings.showwarning = _show_warning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Print a warning as one 'warning:' line instead of Python's file-and-line format."""
    err_console.print(f"[yellow]warning:[/] {escape(' '.join(str(message).split()))}", soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with ETA on stderr; yields ``advance(k)``. A no-op when disabled."""
    if not enabled:
        yield lambda _: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda k: progress.advance(task, k)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        err_console.print(message, soft_wrap=True)


def _timed(timings: dict[str, float], name: str) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def timer():
        began = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = round(time.perf_counter() - began, 4)

    return timer()


_NEIGHBOR_DEFAULTS = ", ".join(f"{name} {k}" for name, k in DEFAULT_NEIGHBORS.items())


def _short(value) -> str:
    """A setting as a short string: floats to 4 significant digits, long sequences abridged."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        items = [_short(item) for item in value]
        return "[" + ", ".join(items if len(items) <= 4 else [*items[:2], "...", items[-1]]) + "]"
    return str(value)


def _slug(spec: str) -> str:
    """A file-name friendly version of a data spec or path."""
    stem = Path(spec.split(":")[0]).stem if ("/" in spec or os.sep in spec) else spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "data"


def _parse_t0(text: str | None) -> float | str | None:
    if text is None:
        return None
    from .estimator import AUTO_RULES

    if text.strip().lower() in AUTO_RULES:
        return text.strip().lower()
    try:
        return float(text)
    except ValueError:
        raise OptionError("--t0", f"{text!r} is neither a number nor a rule ({', '.join(AUTO_RULES)}).") from None


def _check_dtype(dtype: str) -> Any:
    from .devices import resolve_dtype

    try:
        return resolve_dtype(dtype)
    except ValueError as error:
        raise OptionError("--dtype", str(error)) from None


def _check_trace(trace: str) -> str:
    from .estimator import TRACES

    if trace not in TRACES:
        raise OptionError("--trace", f"{trace!r} is not one of {', '.join(TRACES)}.")
    return trace


# --------------------------------------------------------------------------- root


def _version_callback(value: bool) -> None:
    if value:
        from ._version import __version__

        console.print(f"flipd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Local intrinsic dimension of data points from diffusion models (FLIPD)."""
    state.debug = debug or _debug_from_environment()


# --------------------------------------------------------------------------- info


@app.command()
@handles_errors
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    device: Device = "auto",
    debug: Debug = False,
) -> None:
    """Versions, threads, devices, data sets and where models are cached.

    [bold]Example[/]: [cyan]flipd info --json > environment.json[/]
    """
    from .datasets.sources import data_source_names
    from .devices import resolve_device
    from .runs.environment import environment_info

    record = environment_info(resolve_device(device))
    with contextlib.suppress(ImportError):
        record["datasets"] = data_source_names()
    if as_json:
        console.print_json(json.dumps(record))
        return
    table = Table(title="flipd environment", show_header=False, title_justify="left")
    table.add_column("item", style="bold")
    table.add_column("value")
    for name, version in record["versions"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    table.add_section()
    table.add_row("torch threads", f"{record['threads']['torch']} (interop {record['threads']['torch_interop']})")
    table.add_row("CPU cores", str(record["machine"]["cpu_count"]))
    table.add_row("platform", record["machine"]["platform"])
    devices = record["device"]
    accelerators = ", ".join(devices.get("cuda_devices", [])) or ("MPS" if devices["mps_available"] else "none")
    table.add_row("device", f"{devices['device']} (accelerators: {accelerators})")
    table.add_section()
    for name, path in record["caches"].items():
        table.add_row(f"cache: {name}", path)
    if "datasets" in record:
        table.add_section()
        for family, names in record["datasets"].items():
            table.add_row(f"data: {family}", ", ".join(names))
    console.print(table)


# --------------------------------------------------------------------------- train


@app.command()
@handles_errors
def train(
    data: DataArgument,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Checkpoint directory to write (default: models/<data>).", show_default=False)
    ] = None,
    n_points: Annotated[int, typer.Option("--n-points", "-n", min=2, help="Training points (all of a file if larger).")] = 20_000,
    steps: Annotated[
        Optional[int],
        typer.Option("--steps", min=1, show_default=False,
                     help="Optimiser steps (early stopping may end sooner). Default: 4000, or with --max-minutes as many as fit the budget (timed on this machine), so the learning-rate schedule ends with it."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Points per optimiser step.")] = 512,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).")] = 2e-3,
    network: Annotated[str, typer.Option("--network", help="mlp (vectors; images are flattened) or unet (convolutional, images only).")] = "mlp",
    widths: Annotated[
        Optional[str],
        typer.Option("--widths", show_default=False,
                     help="Hidden widths of the MLP U-net, comma-separated. Default: 256,256,256 up to 256 coordinates, 512,512,512 above (flattened images)."),
    ] = None,
    channels: Annotated[str, typer.Option("--channels", help="Channels per resolution level of the unet, comma-separated.")] = "16,32,64",
    standardize: Annotated[
        str, typer.Option("--standardize", help="Rescale the data before training: auto (scalar for tables, none for images in [-1, 1]), scalar (one scale, keeps the shape), per_coordinate (for coordinates in different units) or none.")
    ] = "auto",
    max_minutes: Annotated[
        Optional[float],
        typer.Option("--max-minutes", min=0.0, show_default=False,
                     help="Time budget in minutes. Without --steps the step count is fitted to it (the learning-rate schedule ends with the budget); with --steps, training stops when it runs out."),
    ] = None,
    low_t_fraction: Annotated[
        float,
        typer.Option("--low-t-fraction", min=0.0, max=1.0,
                     help="Fraction of each batch trained at small noise, where FLIPD reads the score (0: uniform times)."),
    ] = DEFAULT_LOW_T_FRACTION,
    time_sampling: Annotated[
        str,
        typer.Option("--time-sampling",
                     help="How that fraction draws its times: uniform (uniform in t below 0.2) or log_sigma (log-uniform in sigma/psi over t from 0.002 to 0.3)."),
    ] = DEFAULT_TIME_SAMPLING,
    schedule: Annotated[
        str, typer.Option("--schedule", help="Noise schedule: vp (the reference VP), cosine, ve or rectified-flow, with default parameters.")
    ] = "vp",
    prediction: Annotated[
        str, typer.Option("--prediction", help="What the network outputs: auto (sample, i.e. x0, for the unet; epsilon for the mlp), epsilon, score, sample, v_prediction or flow_velocity.")
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing flipd checkpoint (never another folder).")] = False,
    workers: Workers = 0,
    resize: Resize = None,
    center_crop: CenterCrop = None,
    seed: Seed = 0,
    threads: Threads = None,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train a diffusion model on DATA and save it as a flipd checkpoint (safetensors + JSON).

    The model learns the noise of standardised points (tables centred and divided by one common scale, so their shape is kept; images in [-1, 1] as they are; see --standardize; by default under the reference VP schedule, the MLP predicting the noise and the unet the clean image; see --schedule and --prediction); flipd estimate then works in the same coordinates, with the schedule and prediction saved in the checkpoint. The default network is an MLP U-net (images are flattened; 256 wide up to 256 coordinates, 512 above); --network unet trains a convolutional U-net on images. With --max-minutes and no --steps, the first steps are timed and the number of steps is set (and refitted at every validation) so that the learning-rate schedule ends when the budget does; the step count then depends on the machine, and the checkpoint records it with the measured time per step. Files (image folders, .npy/.npz arrays, CSV/parquet tables) are streamed: values are checked and the standardisation fitted in one pass, and each batch is read as it is needed, by --workers processes that decode ahead; the result does not depend on --workers.

    [bold]Examples[/]:
      [cyan]flipd train lollipop --out models/lollipop --steps 3000[/]
      [cyan]flipd train mixture:affine:D=10:dims=2,4,8 -n 50000 --out models/mix10[/]
      [cyan]flipd train points.csv --out models/mine --max-minutes 10[/]
      [cyan]flipd train mnist-subset --network unet --out models/mnist --steps 2000[/]
      [cyan]flipd train photos/ --resize 64 --center-crop 64 --network unet --workers 4 --out models/photos[/]
      [cyan]flipd train lollipop --schedule ve --prediction sample --out models/lollipop-ve[/]
    """
    from .datasets.sources import load_points
    from .jobs.train import SCHEDULE_CHOICES, check_checkpoint_target, train_model
    from .parameterization import PREDICTIONS
    from .runs import output_lock

    device_used = _setup(threads, device, debug)
    if not lr > 0:
        raise OptionError("--lr", f"the learning rate must be positive; got {lr}.")
    if standardize not in STANDARDIZE_CHOICES:
        raise OptionError("--standardize", f"{standardize!r} is not one of {', '.join(STANDARDIZE_CHOICES)}.")
    requested = check_checkpoint_target(out if out is not None else Path("models") / _slug(data), force=force)
    if time_sampling not in TIME_SAMPLINGS:
        raise OptionError("--time-sampling", f"{time_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}.")
    if max_minutes is not None and not max_minutes > 0:
        raise OptionError("--max-minutes", f"the time budget must be positive; got {max_minutes}.")
    width_list = None if widths is None else _parse_sizes(widths, "--widths")
    channel_list = _parse_sizes(channels, "--channels")
    if network not in NETWORK_CHOICES:
        raise OptionError("--network", f"{network!r} is not one of {', '.join(NETWORK_CHOICES)}.")
    if schedule not in SCHEDULE_CHOICES:
        raise OptionError("--schedule", f"{schedule!r} is not one of {', '.join(SCHEDULE_CHOICES)}.")
    if prediction != "auto" and prediction not in PREDICTIONS:
        raise OptionError("--prediction", f"{prediction!r} is not one of auto, {', '.join(PREDICTIONS)}.")
    with output_lock(requested):  # refuses a second training run writing the same checkpoint
        target = check_checkpoint_target(requested, force=force)  # again: another run may have written it
        points = load_points(data, n=n_points, seed=seed, at_most=True, stream=True, workers=workers, resize=resize,
                             center_crop=center_crop)
        _say(quiet, f"data: {escape(points.description)}")
        trained = train_model(
            points, target, steps=steps, batch_size=batch_size, lr=lr, network=network, widths=width_list,
            channels=channel_list, standardize=standardize,
            max_seconds=None if max_minutes is None else 60.0 * max_minutes, low_t_fraction=low_t_fraction,
            time_sampling=time_sampling,
            schedule=schedule, prediction=prediction, seed=seed, device=device_used, progress=not quiet,
        )
    if not quiet:
        record = trained.metadata
        lines = [f"saved model to [bold]{escape(str(target))}[/]"]
        if record.get("final_val_loss") is not None:
            lines.append(f"validation loss {record['final_val_loss']:.4f} after {record.get('steps_run')} steps "
                         f"({record.get('seconds', math.nan):.1f} s)")
        if record.get("budget"):
            budget = record["budget"]
            lines.append(f"steps fitted to the {budget['seconds'] / 60:g}-minute budget: {budget['chosen_steps']} "
                         f"at {1000 * budget['step_seconds']:.1f} ms per step on this machine")
        lines.append(f"next: flipd estimate {data} --model {target}")
        for line in lines:
            err_console.print(line, soft_wrap=True)


STANDARDIZE_CHOICES = SCALING_CHOICES
#: Points on the curves of flipd curve unless -n says otherwise.
CURVE_POINTS = 32


def _parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """Positive integers from a comma-separated option value such as "256,256,256"."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise OptionError(option, f"{text!r} is not a comma-separated list of integers.") from None
    if not sizes or min(sizes) < 1:
        raise OptionError(option, f"{text!r} must list positive sizes, e.g. 256,256,256.")
    return sizes


# --------------------------------------------------------------------------- estimate


@app.command()
@handles_errors
def estimate(
    data: DataArgument,
    model: Annotated[
        Optional[Path],
        typer.Option("--model", "-m", help="A flipd checkpoint directory (from flipd train), a diffusers folder or a Hugging Face Hub id owner/name; needed by flipd, nb and fpregress.", show_default=False),
    ] = None,
    prompt: Prompt = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Result table, .parquet or .csv (default: <data>_lid.parquet); metadata goes to the same name with .json.", show_default=False),
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="flipd, or a baseline: nb, fpregress (same model), lpca, mle, ess, twonn (no model).")
    ] = "flipd",
    scheduler: SchedulerOption = None,
    n_points: Points = None,
    t0: Annotated[
        Optional[str],
        typer.Option("--t0", help="Noise level in the model's time units, or a rule that picks it: 'knee' (the reference knee rule, per point), 'plateau' (per point, the flattest stretch of the FLIPD curve where the model denoises reliably), 'calibrated' (one level for the data set: the smallest at which the model denoises within 1.5x of its best, or --calibrated-ratio, from the first 2048 points), 'band' (each point's FLIPD averaged over every level within that ratio, unless the points differ in dimension by more than 3x their wobble there: then only the band's levels before the points' spread shrinks) or 'auto' (= band) (default: t0 = 0.05 of the reference VP schedule).", show_default=False),
    ] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="Noise level as a noise standard deviation.", show_default=False)] = None,
    delta: Annotated[Optional[float], typer.Option("--delta", help="Noise level as log(sigma/psi), schedule-free.", show_default=False)] = None,
    calibrated_ratio: CalibratedRatio = None,
    trace: Trace = "auto",
    probes: Probes = 1,
    batch_size: BatchSize = 256,
    chunk_size: ChunkSize = 1024,
    neighbors: Annotated[
        Optional[int], typer.Option("--neighbors", min=2, help=f"Neighbourhood size of lpca, mle, ess, twonn (default: {_NEIGHBOR_DEFAULTS}; at most the number of points - 1).", show_default=False)
    ] = None,
    resume: Resume = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing results and discard an unfinished run.")] = False,
    plot: PlotDir = None,
    workers: Workers = 0,
    dtype: DType = "float32",
    resize: Resize = None,
    center_crop: CenterCrop = None,
    seed: Seed = 0,
    threads: Threads = None,
    device: RunDevice = "auto",
    dist_timeout: DistTimeout = 30.0,
    quiet: Quiet = False,
    debug: Debug = False,
    stop_after_chunks: Annotated[Optional[int], typer.Option("--stop-after-chunks", hidden=True)] = None,
) -> None:
    """Estimate the LID of every point of DATA with FLIPD (or a baseline) and write one row per point.

    The table holds index, lid, the noise level used (t0, sigma, delta), method, trace, probes, the Hutchinson standard error where there is one, and the ground truth and component when known. Finished chunks are kept until the table is written, so an interrupted run goes on with [bold]--resume[/]. Under torchrun (or accelerate launch) the chunks are split over the processes and rank 0 writes the table.

    [bold]Examples[/]:
      [cyan]flipd estimate lollipop --model models/lollipop --out lollipop.parquet --plot plots/[/]
      [cyan]torchrun --standalone --nproc-per-node=4 -m flipd estimate big.npy -m models/big -o big.parquet[/]
      [cyan]flipd estimate lollipop -m models/lollipop --t0 auto[/]   (the band rule; --t0 knee for the knee)
      [cyan]flipd estimate helix -m models/helix --t0 plateau[/]
      [cyan]flipd estimate big.npy -m models/big --trace hutchinson --probes 16 --resume[/]
      [cyan]flipd estimate lollipop -m models/lollipop --method nb -o lollipop_nb.csv[/]
      [cyan]flipd estimate lollipop --method lpca --neighbors 100 -n 2000[/]
      [cyan]flipd estimate photos/ -m sd15/ --resize 512 --center-crop 512 --workers 8 --device cuda --dtype bfloat16[/]
      [cyan]flipd estimate photos/ -m stable-diffusion-v1-5/ --prompt "a photo" --trace hutchinson[/]
    """
    from .jobs.estimate import METHODS, MODEL_METHODS, check_method_options
    from .noise import BAND_CONTRAST, DATA_SET_RULES, check_noise_level, rule_named
    from .calibrated import CALIBRATION_POINTS
    from .runs import (check_table_path, chunk_directory_for, fingerprint_array, metadata_path_for,
                       remove_run_directory, write_json, write_table)
    from .datasets.sources import load_points
    from .estimator import NonFiniteOutputError, scale_not_found_consequence
    from .results import SCALE_FLAGS
    from .jobs.estimate import estimate_table_columns, non_finite_outputs_error, plan_estimate
    from .jobs.records import run_record, summary_record
    from .jobs.inputs import load_model

    began = time.perf_counter()
    device_used = _setup(threads, device, debug)
    precision = _check_dtype(dtype)
    if method not in METHODS:
        raise OptionError("--method", f"{method!r} is not one of {', '.join(METHODS)}.")
    if method in MODEL_METHODS and model is None:
        raise OptionError("--model", f"the {method} method needs a diffusion model: pass --model DIR (a checkpoint from flipd train).")
    if scheduler is not None and model is None:
        raise OptionError("--scheduler", "it is the scheduler of a diffusers model: pass --model DIR with it.")
    if prompt is not None and model is None:
        raise OptionError("--prompt", "a prompt conditions a text-conditioned diffusers model: pass it with --model.")
    table_path = check_table_path(out if out is not None else Path(f"{_slug(data)}_lid.parquet"))
    run_directory = chunk_directory_for(table_path)
    noise_given = [name for name, value in (("--t0", t0), ("--sigma", sigma), ("--delta", delta)) if value is not None]
    if len(noise_given) > 1:
        raise OptionError("--t0/--sigma/--delta", f"give the noise level once; got {' and '.join(noise_given)}.")
    if model is not None and method not in MODEL_METHODS:
        raise OptionError("--model", f"the {method} method uses no model; drop --model.")
    _check_trace(trace)
    noise = {name: value for name, value in (("t0", _parse_t0(t0)), ("sigma", sigma), ("delta", delta)) if value is not None}
    check_method_options(method, noise=noise, n_neighbors=neighbors, trace=trace, n_probes=probes)
    ratio = _check_calibrated_ratio(calibrated_ratio, rule_named(noise.get("t0")) in DATA_SET_RULES,
                                    "--t0 calibrated, band or auto")
    with _processes_of_the_run(device_used, dist_timeout, table_path, run_directory, plot, resume=resume, force=force,
                               quiet=quiet) as group:
        if group is None:
            return
        quiet = quiet or not group.is_main  # one voice: rank 0's
        device_used = group.device
        timings: dict[str, float] = {}
        with group.agree("loading the model and the data"):
            with _timed(timings, "load_model_s"):
                loaded = (load_model(model, device=device_used, scheduler=scheduler, prompt=prompt, dtype=precision)
                          if model is not None else None)
            with _noise_level_options():
                if loaded is not None and noise:  # a level the model cannot reach, refused before the data is read
                    check_noise_level(loaded.schedule, noise)
                with _timed(timings, "load_data_s"):
                    points = load_points(data, n=n_points, seed=seed, stream=True, workers=workers, resize=resize,
                                         center_crop=center_crop)
                if rule_named(noise.get("t0")) in DATA_SET_RULES:
                    _say(quiet or not group.is_main, f"choosing the noise level from the first "
                                                     f"{min(points.n, CALIBRATION_POINTS)} points ...")
                with _timed(timings, "plan_s"):  # the points in the model's coordinates; a data set's level chosen
                    plan = plan_estimate(
                        method, loaded, points, **noise, trace=trace, n_probes=probes,
                        seed=seed, batch_size=batch_size, chunk_size=chunk_size, n_neighbors=neighbors,
                        calibrated_ratio=ratio,
                    )
            identity = {
                "data": {"spec": data, "n_points": points.n,
                         "fingerprint": points.fingerprint() if points.streamed else fingerprint_array(plan.x)},
                "model": {"fingerprint": loaded.fingerprint if loaded else None},  # not the path: a moved model is the same
            }
            if loaded is not None and loaded.dtype != "float32":
                identity["model"]["dtype"] = loaded.dtype
            if plan.level is not None:  # a resume that would choose another level is refused
                identity["calibrated_t0"] = plan.level.t0
                if plan.level.read_times is not None:  # the band rule: and other levels read
                    identity["read_t0"] = plan.level.read_times.tolist()
        if loaded is not None:
            _say(quiet, f"model: {escape(loaded.description)}")
        _say(quiet, f"data: {escape(points.description)}")
        if plan.level is not None:
            level = plan.level
            _say(quiet, f"calibrated rule: t0 = {level.t0:.4g} for every point (the model denoises best at "
                        f"t0 = {level.best_t0:.4g}; median calibration {float(level.median_calibration[level.index]):.3g} "
                        f"at the chosen level, from the first {level.n_points} points)")
            if level.read_times is not None:
                read = level.read_times
                _say(quiet, f"band rule: each point's FLIPD averaged over {read.numel()} level(s), t0 = {float(read[0]):.4g} "
                            f"to {float(read[-1]):.4g} (contrast {level.contrast:.3g}"
                            + ("; the points differ in dimension: the band's levels before their spread shrinks)"
                               if level.contrast > BAND_CONTRAST else ")"))

        with _timed(timings, "estimate_s"):
            try:
                run = _compute_chunks(
                    group, plan.estimator, plan.x, plan.settings, run_directory, identity, resume=resume,
                    label=method.upper() if method == "flipd" else method, quiet=quiet, stop_after_chunks=stop_after_chunks,
                )
            except NonFiniteOutputError as error:  # name every such point, by the table's index
                raise non_finite_outputs_error(error, plan, loaded.model, points) from None
        with group.agree("writing the outputs"):
            if not group.is_main:
                return
            result = _collect_chunks(run, quiet)
            if result.resolved:
                shown = ", ".join(f"{key}={_short(value)}" for key, value in result.resolved.items())
                _say(quiet, f"{method} ran with {escape(shown)}")
            columns = estimate_table_columns(points, result, method=method, knee_rule=plan.settings.t0 in ("auto", "knee"))
            found_column = next((name for name in SCALE_FLAGS if name in columns), None)
            write_table(table_path, columns)
            written_plots: list[Path] = []
            if plot is not None:
                with _timed(timings, "plots_s"):
                    written_plots = _estimate_plots(plot, points, columns, _slug(data), method=method, noise=plan.noise)
                    if plan.level is not None:  # why the calibrated rule chose its level
                        written_plots.append(_calibrated_plot(plot, plan.level, _slug(data), loaded.schedule))
            timings["compute_chunks_s"] = round(sum(result.chunk_seconds), 4)
            timings["total_s"] = round(time.perf_counter() - began, 4)
            metadata_path = metadata_path_for(table_path)
            write_json(metadata_path, run_record(
                "estimate", points=points, data_seed=seed, model=loaded, settings=plan.settings.to_json(),
                resolved={"trace": result.trace, "n_probes": result.n_probes, "mode": result.mode, "noise_level": plan.noise,
                          "method": result.resolved, "batch_size": plan.batch.get("used", batch_size),
                          "dtype": loaded.dtype if loaded else None, "workers": workers, "streamed": points.streamed,
                          **({"calibrated_level": _level_record(plan.level)} if plan.level is not None else {})},
                chunks=_chunks_record(result), processes=group.describe(),
                summary=summary_record(columns["lid"], points, columns["stderr"],
                                       columns[found_column] if found_column else None),
                timings=timings,
                outputs={"table": str(table_path), "plots": [str(p) for p in written_plots]}, device=device_used,
            ))
            remove_run_directory(run_directory)
        if found_column:  # one line over the whole table, not one per chunk
            rule = SCALE_FLAGS[found_column]  # the band rule shares the calibrated rule's check: named as run
            consequence = scale_not_found_consequence(rule, plan.level)
            found = (found_column, columns[found_column], plan.settings.t0 if rule == "calibrated" else rule, consequence)
        _warn_about_estimates(columns["lid"], columns["stderr"], points, found=found if found_column else None)
        if not quiet:
            _print_summary(points, columns["lid"], title=f"{'FLIPD' if method == 'flipd' else method} on {data}")
            err_console.print(f"wrote {escape(str(table_path))} and {escape(str(metadata_path))}"
                              + (f"; {len(written_plots)} figures in {escape(str(plot))}" if written_plots else ""), soft_wrap=True)


def _calibrated_plot(directory: Path, level: Any, prefix: str, schedule: Any) -> Path:
    """The figure of the calibrated rule's choice: ``<prefix>_calibrated_level.png``."""
    from . import plots

    path = Path(directory) / f"{prefix}_calibrated_level.png"
    plots.plot_calibrated_level(
        level.times.numpy(), level.median_calibration.numpy(), level.t0, path, ratio=level.ratio,
        time_label=f"t0 ({schedule!r} time)",
        title=f"{'Band' if level.read_times is not None else 'Calibrated'} rule on {prefix}: t0 = {level.t0:.3g} "
              f"(from {level.n_points} points)",
        read_times=None if level.read_times is None else level.read_times.numpy(),
    )
    return path


def _check_calibrated_ratio(ratio: float | None, calibrated: bool, needs: str) -> float:
    """The calibrated rule's ratio from --calibrated-ratio (the library's default when not given)."""
    from .calibrated import check_ratio
    from .noise import CALIBRATED_RATIO

    if ratio is None:
        return CALIBRATED_RATIO
    if not calibrated:
        raise OptionError("--calibrated-ratio", f"it is the calibrated rule's tolerance: pass it with {needs}.")
    try:
        check_ratio(ratio)
    except ValueError as error:
        raise OptionError("--calibrated-ratio", str(error)) from None
    return ratio


def _level_record(level: Any) -> dict[str, Any]:
    """The calibrated rule's choice, JSON-ready (:class:`flipd.calibrated.CalibratedLevel`)."""
    return {"t0": level.t0, "best_t0": level.best_t0, "ratio": level.ratio, "n_points": level.n_points,
            "reliable": level.reliable, "times": level.times.tolist(), "median_calibration": level.median_calibration.tolist(),
            **({"read_t0": level.read_times.tolist(),
                "band_contrast": level.contrast if math.isfinite(level.contrast) else None}
               if level.read_times is not None else {})}


@contextlib.contextmanager
def _noise_level_options() -> Iterator[None]:
    """Report a noise level the schedule cannot reach as the option that named it (--t0, ...)."""
    from .noise import NoiseLevelError

    try:
        yield
    except NoiseLevelError as error:
        if error.name is None:
            raise
        raise OptionError(f"--{error.name}", str(error)) from None


def _warn_about_estimates(lids: Any, stderr: Any, points: Any, found: tuple[str, Any, str, str] | None = None) -> None:
    """One warning line each for non-finite and out-of-range estimates and, with ``found``
    (a table column's name, its values, the rule, what the LID is where it found no scale),
    for points where the noise-level rule found no scale; shown even with --quiet (the results
    need a look); the table keeps every row."""
    from .jobs.records import non_finite_warning, out_of_range_warning, scale_not_found_warning

    warnings = [non_finite_warning(lids, points), out_of_range_warning(lids, stderr, points)]
    if found is not None:
        warnings.append(scale_not_found_warning(found[1], found[0], points, found[2], found[3]))
    for warning in warnings:
        if warning is not None:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@contextlib.contextmanager
def _processes_of_the_run(device: Any, dist_timeout: float, table: Path, run_directory: Path, plot: Path | None, *,
                          resume: bool, force: bool, quiet: bool) -> Iterator[Any]:
    """The processes of a run writing ``table`` (:func:`flipd.runs.rank_group`: one without a
    launcher). Rank 0 checks the output folders, holds the table's lock for the block and checks
    --resume/--force against what exists; an error there stops every process. Yields the
    :class:`flipd.runs.RankGroup`, or None on every process when a finished run makes --resume a no-op."""
    from .runs import output_lock, rank_group

    with rank_group(device, timeout_minutes=dist_timeout) as group, contextlib.ExitStack() as held:
        proceed = True
        with group.agree("checking the outputs"):
            if group.is_main:
                _check_output_folders(table, plot)
                held.enter_context(output_lock(table))  # refuses a second run writing the same table
                proceed = _outputs_may_be_written(table, run_directory, resume=resume, force=force, quiet=quiet)
        yield group if group.share([int(proceed)] if group.is_main else None, 1)[0] else None


def _compute_chunks(group: Any, estimator: Any, x: Any, settings: Any, run_directory: Path, identity: dict[str, Any], *,
                    resume: bool, label: str, quiet: bool, stop_after_chunks: int | None, columns: Any = None,
                    steps_per_point: int = 1) -> Any:
    """Open the chunked run, compute this process's chunks with a progress bar, and return the
    run (:class:`flipd.runs.ChunkedRun`) once every process is done. An interruption becomes
    :class:`Interrupted`, saying how to continue."""
    from .runs import RankFailed, open_chunked_run
    from .runs.chunks import CHUNK_COLUMNS

    def stop_hook(done: int, total: int) -> None:  # a test hook that simulates an interruption
        if stop_after_chunks is not None and done >= stop_after_chunks and done < total:
            raise KeyboardInterrupt

    try:
        run = open_chunked_run(run_directory, identity, settings, len(x), resume=resume,
                               columns=CHUNK_COLUMNS if columns is None else columns, group=group)
        if group.world_size > 1:
            label = f"{label} (rank {group.rank} of {group.world_size})"
        with progress_bar(label, run.points_owned * steps_per_point, enabled=not quiet) as advance:
            run.compute(estimator, x, progress=advance, on_chunk_done=stop_hook)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; finished chunks are kept in {run_directory}: run the same command with "
            "--resume to continue"
        ) from None
    except RankFailed as error:
        raise RankFailed(f"{error}; finished chunks are kept in {run_directory}: run the same command with --resume "
                         "to continue") from None
    return run


def _collect_chunks(run: Any, quiet: bool) -> Any:
    """All chunks of a finished run joined in point order (rank 0), saying how many were resumed."""
    result = run.collect()
    if result.resumed_chunks:
        _say(quiet, f"resumed: {result.resumed_chunks} of {result.n_chunks} chunks were already finished")
    return result


def _chunks_record(result: Any) -> dict[str, Any]:
    """What a run's metadata records about its chunks."""
    return {"n_chunks": result.n_chunks, "resumed_chunks": result.resumed_chunks,
            "seconds": [round(s, 4) for s in result.chunk_seconds], "ranks": result.chunk_ranks}


def _check_output_folders(table: Path, plot: Path | None) -> None:
    """Fail before any work if the table's folder or the --plot folder cannot be written."""
    from .runs import check_writable_directory

    check_writable_directory(table.parent, "the result table")
    if plot is not None:
        try:
            check_writable_directory(plot, "the figures")
        except OSError as error:
            raise OptionError("--plot", str(error)) from None


def _outputs_may_be_written(table: Path, run_directory: Path, *, resume: bool, force: bool, quiet: bool) -> bool:
    """Check --resume/--force against what exists; False when a finished run makes resuming a no-op."""
    from .runs import remove_run_directory

    if resume and force:
        raise OptionError("--resume/--force", "--resume continues a run and --force discards it; pass one of them.")
    if table.exists() and not (resume or force):
        raise FileExistsError(f"{str(table)!r} already exists; pass --force to overwrite it, or choose another --out.")
    if resume and table.exists() and not run_directory.exists():
        _say(quiet, f"nothing to resume: {escape(str(table))} is complete (pass --force to recompute it).")
        return False
    if force:
        remove_run_directory(run_directory)
    if resume and not run_directory.exists():
        _say(quiet, f"no interrupted run in {escape(str(run_directory))}; starting from the beginning")
    return True


def _load_model_and_points(model: Path, data: str, n_points: int | None, seed: int, device: Any,
                           timings: dict[str, float], quiet: bool, *, scheduler: Path | None = None,
                           prompt: str | None = None,
                           check_model: Callable[[Any], Any] = lambda loaded: None,
                           at_most: bool = False, dtype: Any = None,
                           reading: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """Load the model (first: it is the likelier mistake) in ``dtype``, run ``check_model(loaded)``
    (checks that need the model), then the data (``n_points`` of them, or fewer from a smaller
    file with ``at_most``; files streamed, with ``reading``: workers, resize, center_crop);
    return the points, the model, the points as it takes them, and what ``check_model`` returned."""
    from .datasets.sources import load_points
    from .jobs.inputs import load_model

    with _timed(timings, "load_model_s"):
        loaded = load_model(model, device=device, scheduler=scheduler, prompt=prompt, dtype=dtype)
    checked = check_model(loaded)
    with _timed(timings, "load_data_s"):
        points = load_points(data, n=n_points, seed=seed, at_most=at_most, stream=True, **(reading or {}))
        x = loaded.prepare(points)
    _say(quiet, f"model: {escape(loaded.description)}")
    _say(quiet, f"data: {escape(points.description)}")
    return points, loaded, x, checked


def _estimate_plots(directory: Path, points: Any, columns: dict[str, Any], prefix: str, *, method: str,
                    noise: dict[str, Any]) -> list[Path]:
    """The figures of an estimate run, named and titled by data, method and noise level (the level
    the method used when none was given, e.g. NB's default)."""
    import numpy as np

    from . import plots

    lids = np.asarray(columns["lid"], dtype=np.float64)
    if not noise and np.isfinite(columns["t0"]).all() and np.unique(columns["t0"]).size == 1:
        noise = {"t0": float(columns["t0"][0])}
    scatter = points.kind == "vectors" and points.ambient_dim in (2, 3)
    shown = plots.image_grid_picks(lids) if points.kind == "images" else None  # read only the images shown
    return plots.plot_estimates(
        directory, lids=columns["lid"], x=points.tensor().numpy() if scatter else None,
        lid_true=points.lid_true, component=points.component, labels=points.labels,
        label_names=points.label_names, images_uint8=None if shown is None else points.images_uint8(shown),
        image_lids=None if shown is None else lids[shown],
        png_bytes=points.png_bytes, ambient_dim=points.ambient_dim, method=method, noise_level=noise,
        prefix=f"{prefix}_", title=prefix,
    )


def _print_summary(points: Any, lids: Any, title: str) -> None:
    """Estimated vs true LID per component (when the truth is known), else a short description."""
    import numpy as np

    from .jobs.records import ranking_record, summarize_by_component

    lids = np.asarray(lids, dtype=np.float64)
    if points.lid_true is None:
        table = Table(title=title, title_justify="left")
        for name in ("points", "mean LID", "median", "min", "max"):
            table.add_column(name, justify="right")
        table.add_row(str(lids.size), f"{np.nanmean(lids):.2f}", f"{np.nanmedian(lids):.2f}",
                      f"{np.nanmin(lids):.2f}", f"{np.nanmax(lids):.2f}")
        console.print(table)
        return
    groups, mae = summarize_by_component(lids, points.lid_true, points.component)
    console.print(_summary_table(groups, mae, title))
    ranking = ranking_record(lids, points.lid_true)
    if ranking["concordance_harrell"] is not None:
        console.print(f"ordering against the truth: concordance (Harrell) {ranking['concordance_harrell']:.3f}, "
                      f"Spearman {ranking['spearman']:.3f}")


def _summary_table(groups: list, mae: float, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("component", justify="right")
    table.add_column("points", justify="right")
    table.add_column("true LID", justify="right")
    table.add_column("estimated LID (mean ± sd)", justify="right")
    table.add_column("MAE", justify="right")
    for group in groups:
        table.add_row(
            "-" if group.component is None else str(group.component), str(group.n), f"{group.lid_true:g}",
            f"{group.lid_mean:.2f} ± {group.lid_std:.2f}", f"{group.mae:.2f}",
        )
    table.add_section()
    table.add_row("all", str(sum(g.n for g in groups)), "", "", f"[bold]{mae:.2f}[/]")
    return table


# --------------------------------------------------------------------------- curve


@app.command()
@handles_errors
def curve(
    data: DataArgument,
    model: ModelOption = ...,
    prompt: Prompt = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Curve table, .parquet or .csv, one row per point and noise level (default: <data>_curves.parquet).", show_default=False),
    ] = None,
    scheduler: SchedulerOption = None,
    n_points: Annotated[
        Optional[int], typer.Option("--n-points", "-n", min=1, help="Number of points (default: 32, or all of a smaller file).", show_default=False)
    ] = None,
    t_min: Annotated[Optional[float], typer.Option("--t-min", help="Smallest noise level (model time units).", show_default=False)] = None,
    t_max: Annotated[Optional[float], typer.Option("--t-max", help="Largest noise level (model time units).", show_default=False)] = None,
    steps: Annotated[
        Optional[int], typer.Option("--steps", min=3, help="Noise levels on the curve (default: the knee rule's reference grid).", show_default=False)
    ] = None,
    rule: Annotated[
        str, typer.Option("--rule", help="Which rule's choice to mark: knee, plateau (the flattest stretch where the model denoises reliably), calibrated (one level for all the points, from the first 2048; with --plot also its figure) or band (the levels the band rule, --t0 band or auto, averages over; column band); plateau, calibrated and band default to the plateau rule's grid.")
    ] = "knee",
    calibrated_ratio: CalibratedRatio = None,
    trace: Trace = "auto",
    probes: Probes = 1,
    batch_size: BatchSize = 256,
    chunk_size: ChunkSize = 1024,
    resume: Resume = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing results and discard an unfinished run.")] = False,
    plot: PlotDir = None,
    workers: Workers = 0,
    dtype: DType = "float32",
    resize: Resize = None,
    center_crop: CenterCrop = None,
    seed: Seed = 0,
    threads: Threads = None,
    device: RunDevice = "auto",
    dist_timeout: DistTimeout = 30.0,
    quiet: Quiet = False,
    debug: Debug = False,
    stop_after_chunks: Annotated[Optional[int], typer.Option("--stop-after-chunks", hidden=True)] = None,
) -> None:
    """FLIPD curves: each point's estimate across noise levels, with the knee that --t0 knee picks (or, with --rule plateau, the scale --t0 plateau picks).

    Curves start near the ambient dimension at tiny noise, fall, and plateau at the LID; the knee rule of the FLIPD paper picks the noise level at the start of the plateau, the plateau rule the flattest stretch in log sigma among the levels where the model denoises the point reliably. The table has one row per point and noise level, with the chosen rows flagged (and, for the plateau rule, each point's flatness and the reliable levels). Points are computed in chunks, as by flipd estimate: --resume continues an interrupted run, and under torchrun the chunks are split over the processes.

    [bold]Examples[/]:
      [cyan]flipd curve lollipop --model models/lollipop -n 50 --plot plots/[/]
      [cyan]flipd curve doughnut -m models/doughnut --t-min 0.01 --t-max 0.6 --steps 30 -o curves.csv[/]
      [cyan]torchrun --standalone --nproc-per-node=2 -m flipd curve lollipop -m models/lollipop -n 2000[/]
      [cyan]flipd curve helix -m models/helix --rule plateau --plot plots/[/]
    """
    import numpy as np

    from . import plots
    from .runs import (check_table_path, chunk_directory_for, fingerprint_array, metadata_path_for,
                       remove_run_directory, write_json, write_table)
    from .estimator import NonFiniteOutputError
    from .jobs.curve import CURVE_RULES, CurveSettings, curve_chunks, curve_table_columns, curves_from_chunks
    from .jobs.records import non_finite_output_error, run_record, summary_record
    from .noise import DATA_SET_RULES, curve_times, plateau_grid

    began = time.perf_counter()
    device_used = _setup(threads, device, debug)
    precision = _check_dtype(dtype)
    table_path = check_table_path(out if out is not None else Path(f"{_slug(data)}_curves.parquet"))
    run_directory = chunk_directory_for(table_path)
    _check_trace(trace)
    if rule not in CURVE_RULES:
        raise OptionError("--rule", f"{rule!r} is not a rule; use {', '.join(CURVE_RULES)}.")
    ratio = _check_calibrated_ratio(calibrated_ratio, rule in DATA_SET_RULES, "--rule calibrated or band")
    with _processes_of_the_run(device_used, dist_timeout, table_path, run_directory, plot, resume=resume, force=force,
                               quiet=quiet) as group:
        if group is None:
            return
        quiet = quiet or not group.is_main  # one voice: rank 0's
        device_used = group.device
        timings: dict[str, float] = {}

        def noise_levels(loaded: Any) -> Any:  # checked once the schedule is known, before the data is loaded
            if rule in ("plateau", *DATA_SET_RULES) and t_min is None and t_max is None and steps is None:
                return plateau_grid(loaded.schedule)
            try:
                return curve_times(loaded.schedule, t_min=t_min, t_max=t_max, steps=steps)
            except ValueError as error:
                raise OptionError("--t-min/--t-max", str(error)) from None

        with group.agree("loading the model and the data"):
            points, loaded, x, times = _load_model_and_points(
                model, data, CURVE_POINTS if n_points is None else n_points, seed, device_used, timings, quiet,
                scheduler=scheduler, prompt=prompt, check_model=noise_levels, at_most=n_points is None, dtype=precision,
                reading={"workers": workers, "resize": resize, "center_crop": center_crop},
            )
            settings = CurveSettings(
                times=tuple(times.tolist()), trace=trace, n_probes=probes, seed=seed, batch_size=batch_size,
                chunk_size=chunk_size, rule=rule,
            )
            identity = {
                "job": "curve", "data": {"spec": data, "n_points": points.n,
                                         "fingerprint": points.fingerprint() if points.streamed else fingerprint_array(x)},
                "model": {"fingerprint": loaded.fingerprint},
            }
            if loaded.dtype != "float32":
                identity["model"]["dtype"] = loaded.dtype
        with _timed(timings, "curves_s"):
            try:
                run = _compute_chunks(
                    group, curve_chunks(loaded.model, settings), x, settings, run_directory, identity, resume=resume,
                    label="FLIPD curves", quiet=quiet, stop_after_chunks=stop_after_chunks, columns=settings.columns(),
                    steps_per_point=len(settings.times),
                )
            except NonFiniteOutputError as error:  # name the points by the table's index
                raise non_finite_output_error(error.indices, points, error.time) from None
        with group.agree("writing the outputs"):
            if not group.is_main:
                return
            result = _collect_chunks(run, quiet)
            curves = curves_from_chunks(loaded.schedule, settings, result, calibrated_ratio=ratio)
            plateau_rule = curves.plateau_t0 is not None
            _, chosen_t0, chosen_lid, chosen_found = curves.chosen()
            write_table(table_path, curve_table_columns(points, curves))
            written: list[Path] = []
            if plot is not None:
                curve_figure = Path(plot) / f"{_slug(data)}_curves.png"
                plots.plot_curves(
                    curves.times, curves.curves, curve_figure, knee_times=chosen_t0, knee_lids=chosen_lid,
                    ambient_dim=points.ambient_dim, true_lids=points.lid_true,
                    time_label=f"t0 ({loaded.schedule!r} time)", chosen_label=rule,
                    title=f"FLIPD curves on {data}" + (
                        f", median flatness {np.nanmedian(curves.plateau_flatness):.3g} per unit log sigma"
                        if plateau_rule else ""
                    ),
                )
                written.append(curve_figure)
                if curves.level is not None:  # why the calibrated rule chose its level
                    written.append(_calibrated_plot(plot, curves.level, _slug(data), loaded.schedule))
            timings["total_s"] = round(time.perf_counter() - began, 4)
            metadata_path = metadata_path_for(table_path)
            write_json(metadata_path, run_record(
                "curve", points=points, data_seed=seed, model=loaded,
                settings={"times": curves.times.tolist(), "trace": curves.trace, "n_probes": curves.n_probes,
                          "seed": seed, "batch_size": batch_size, "chunk_size": chunk_size, "rule": rule,
                          "knee_window": curves.window, "dtype": loaded.dtype, "workers": workers},
                knees={"found": int(curves.knee_found.sum()),
                       "median_t0": float(np.nanmedian(curves.knee_t0)) if curves.knee_found.any() else None},
                **({"plateaus": {"found": int(curves.plateau_found.sum()),
                                 "median_t0": float(np.nanmedian(curves.plateau_t0)),
                                 "median_flatness": float(np.nanmedian(curves.plateau_flatness))}}
                   if plateau_rule else {}),
                **({"calibrated_level": _level_record(curves.level)} if curves.level is not None else {}),
                summary=summary_record(chosen_lid, points, scale_found=chosen_found),
                chunks=_chunks_record(result), processes=group.describe(),
                timings=timings, outputs={"table": str(table_path), "plots": [str(p) for p in written]}, device=device_used,
            ))
            remove_run_directory(run_directory)
        _warn_about_estimates(chosen_lid, None, points)
        if not quiet:
            if plateau_rule:
                found = int(curves.plateau_found.sum())
                _print_summary(points, curves.plateau_lid,
                               title=f"FLIPD on the plateau on {data} ({found} of {points.n} points have a plateau)")
            elif curves.level is not None:
                found = int(chosen_found.sum())
                read = int(curves.levels_read().sum())
                where = (f"averaged over the band rule's {read} level(s) from t0 = {curves.level.t0:.4g}" if curves.band
                         else f"at the calibrated level t0 = {curves.level.t0:.4g}")
                _print_summary(points, chosen_lid, title=f"FLIPD {where} on {data} ({found} of {points.n} points "
                                                         "denoised reliably at the level)")
            else:
                found = int(curves.knee_found.sum())
                _print_summary(points, curves.knee_lid, title=f"FLIPD at the knee on {data} ({found} of {points.n} points have a knee)")
            err_console.print(f"wrote {escape(str(table_path))} and {escape(str(metadata_path))}"
                              + (f"; figure {escape(str(written[0]))}" if written else ""), soft_wrap=True)


# --------------------------------------------------------------------------- export


@app.command()
@handles_errors
def export(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help="A flipd checkpoint directory of an image model (flipd train --network unet) or its hub id.", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The diffusers pipeline folder to write.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing diffusers pipeline folder (never another folder).")] = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a flipd image model as a diffusers pipeline folder (DDPMPipeline: model_index.json, unet/, scheduler/).

    The U-net's weights go to unet/ as safetensors; scheduler/ holds a DDPMScheduler whose betas reproduce the model's VP schedule at every integer timestep. flipd estimate --model OUT, flipd.from_diffusers(OUT) and diffusers' DDPMPipeline.from_pretrained(OUT) load it. Only convolutional U-nets trained with --standardize none and --prediction epsilon or sample can be exported.

    [bold]Examples[/]:
      [cyan]flipd train digits8 --network unet --standardize none --out models/digits[/]
      [cyan]flipd export models/digits --out pipelines/digits[/]
    """
    from .jobs.export import export_model

    target, loaded = export_model(model, out, force=force)
    if not quiet:
        err_console.print(f"wrote diffusers pipeline [bold]{escape(str(target))}[/] from {escape(loaded.description)}", soft_wrap=True)
        err_console.print(f"next: flipd estimate DATA --model {escape(str(target))}", soft_wrap=True)


# --------------------------------------------------------------------------- sample


@app.command()
@handles_errors
def sample(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A flipd checkpoint directory (from flipd train).", show_default=False)],
    n_points: Annotated[int, typer.Option("--n-points", "-n", min=1, help="Number of samples.")] = 1000,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Where to write them: .npy (points in data units), or .png (a grid, image models); default <model>_samples.npy.", show_default=False),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="Denoising steps.")] = 50,
    sampler: Annotated[str, typer.Option("--sampler", help="ddim (diffusers DDIMScheduler) or ddpm (DDPMScheduler).")] = "ddim",
    eta: Annotated[float, typer.Option("--eta", min=0.0, help="DDIM noise (0: deterministic given the seed).")] = 0.0,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Write a figure of the samples beside the training data into this folder.", show_default=False)
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option("--data", help="Data to show beside the samples with --plot (default: the data the checkpoint was trained on).", show_default=False),
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Samples denoised together (default: all).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    seed: Seed = 0,
    threads: Threads = None,
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Draw samples from a flipd checkpoint, to see whether it learnt its data before trusting its LID.

    The model is sampled through a diffusers scheduler (DDIM or DDPM steps) under its own schedule and prediction; the samples are in the data's own units (the standardisation is undone). --plot shows them beside the training data the checkpoint records (or --data).

    [bold]Examples[/]:
      [cyan]flipd sample models/lollipop -n 2000 --out lollipop_samples.npy --plot plots/[/]
      [cyan]flipd sample models/mnist -n 64 --out mnist_samples.png --sampler ddpm --steps 250[/]
    """
    from . import plots
    from .jobs.inputs import load_model
    from .jobs.sample import (SAMPLE_SUFFIXES, check_sampleable, check_samples_path, draw_samples, point_shape,
                              training_points, write_samples)
    from .models.sampling import SAMPLERS
    from .runs import check_writable_directory, write_json

    device_used = _setup(threads, device, debug)
    if sampler not in SAMPLERS:
        raise OptionError("--sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}.")
    if eta and sampler != "ddim":
        raise OptionError("--eta", "applies to the ddim sampler only.")
    target = Path(out) if out is not None else Path(f"{_slug(str(model))}_samples.npy")
    if target.suffix.lower() not in SAMPLE_SUFFIXES:
        raise OptionError("--out", f"{str(target)!r} must end in {' or '.join(SAMPLE_SUFFIXES)}.")
    if target.exists() and not force:
        raise FileExistsError(f"{str(target)!r} already exists; pass --force to overwrite it, or choose another --out.")
    _check_output_folders(target, plot)
    check_writable_directory(target.parent, "the samples")
    loaded = load_model(model, device=device_used)
    check_sampleable(loaded)
    try:
        check_samples_path(target, images=len(point_shape(loaded)) == 3)
    except ValueError as error:
        raise OptionError("--out", str(error)) from None
    _say(quiet, f"model: {escape(loaded.description)}")
    with progress_bar(f"sampling ({sampler})", n_points * steps, enabled=not quiet) as advance:
        drawn = draw_samples(loaded, n_points, steps=steps, sampler=sampler, eta=eta, seed=seed,
                             batch_size=batch_size, progress=advance)
    title = f"Samples of {model.name} ({sampler}, {steps} steps)"
    write_samples(target, drawn, title=title)
    written = [str(target)]
    if plot is not None:
        try:
            reference = training_points(loaded, data, n_points, seed=seed)
        except (ValueError, FileNotFoundError) as error:
            raise OptionError("--data", str(error)) from None
        shown = reference.x.numpy()
        if drawn.kind == "vectors":
            shown = shown.reshape(reference.n, -1)
        if shown.shape[1:] != drawn.values.shape[1:]:
            raise OptionError("--data", f"{reference.spec!r} has points of shape {list(shown.shape[1:])}, "
                                        f"the samples {list(drawn.values.shape[1:])}; give the model's own data.")
        figure = plots.plot_samples(drawn.values, shown, title=f"{title} beside {reference.spec}")
        written.append(str(plots.save_figure(figure, Path(plot) / f"{_slug(model.name)}_samples_{sampler}.png")))
    write_json(target.with_suffix(".json"), {
        "command": "sample", "model": {"path": str(model.resolve()), "fingerprint": loaded.fingerprint,
                                       "schedule": repr(loaded.schedule), "prediction": loaded.prediction},
        "settings": drawn.settings, "shape": list(drawn.values.shape), "outputs": written,
    })
    _say(quiet, f"wrote {escape(', '.join(written))}")


# --------------------------------------------------------------------------- bench


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
@handles_errors
def bench(ctx: typer.Context) -> None:
    """Run a benchmark (images, scale, ...): flipd bench NAME [OPTIONS] is python -m flipd.bench NAME [OPTIONS].

    [bold]Examples[/]:
      [cyan]flipd bench images --preset tiny[/]
      [cyan]flipd bench scale --help[/]   (each benchmark's options)
    """
    try:
        from .bench.__main__ import BENCHMARKS, main as bench_main
    except ModuleNotFoundError as error:
        if error.name in ("flipd.bench", "flipd.bench.__main__"):
            raise ValueError("the benchmarks (flipd.bench) are not part of this installation of flipd.") from None
        raise
    arguments = list(ctx.args)
    if not arguments or arguments[0] in ("-h", "--help"):
        console.print("Usage: flipd bench NAME [OPTIONS]\n")
        console.print(f"Benchmarks: {', '.join(sorted(BENCHMARKS))}. Options of one: flipd bench NAME --help")
        console.print("Examples: flipd bench images --preset tiny; flipd bench scale --help")
        raise typer.Exit(0 if arguments else EXIT_USER_ERROR)
    if arguments[0] not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {arguments[0]!r}; choose one of {', '.join(sorted(BENCHMARKS))} "
                         "(flipd bench lists them, flipd bench NAME --help shows one's options).")
    raise typer.Exit(int(bench_main(arguments) or 0))


# --------------------------------------------------------------------------- demo


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for models, tables and figures.")] = Path(DEMO_DEFAULT_OUT),
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps per model.")] = 4000,
    n_train: Annotated[int, typer.Option("--n-train", min=2, help="Training points per data set.")] = 20_000,
    n_eval: Annotated[int, typer.Option("--n-eval", min=1, help="Points whose LID is estimated, per data set.")] = 2000,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train again even if the folder holds demo models.")] = False,
    seed: Seed = 0,
    threads: Threads = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train small models on two data sets with known LID, estimate LID and compare with the truth.

    The data sets are the lollipop (a disk, a stick and a point in the plane) and the string within a doughnut (a torus and its core circle in R^3). Models, tables, metadata and figures go to --out; a second run reuses the trained models unless --retrain. Takes a few minutes on a laptop CPU.

    [bold]Example[/]: [cyan]flipd demo --out runs/demo[/]  (figures in runs/demo/plots)
    """
    from .jobs.demo import DEMO_DATASETS, run_demo

    _setup(threads, "cpu", debug)
    began = time.perf_counter()
    report = run_demo(
        out, steps=steps, n_train=n_train, n_eval=n_eval, seed=seed, retrain=retrain, progress=not quiet,
        progress_bar=lambda description, total: progress_bar(description, total, enabled=not quiet),
        announce=lambda message: _say(quiet, escape(message)),
    )
    if not quiet:
        for entry in report.datasets:
            console.print(_summary_table(entry.groups, entry.mae, f"{entry.name}: estimated vs true LID ({entry.setting})"))
        seconds = time.perf_counter() - began
        err_console.print(f"demo finished in {seconds:.0f} s: tables, metadata and figures in {escape(str(out))} "
                          f"(figures in {escape(str(Path(out) / 'plots'))}); data sets: {', '.join(DEMO_DATASETS)}", soft_wrap=True)


def main() -> None:
    """Entry point for ``python -m flipd.cli`` (the ``flipd`` console script calls ``app`` directly)."""
    app(prog_name="flipd")


if __name__ == "__main__":
    main()
