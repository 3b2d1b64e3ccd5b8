"""Launch modes: one process, or many started by torchrun or ``accelerate launch``.

Standard launchers start one process per device and describe the job in environment
variables: ``RANK`` (this process, 0..W-1), ``WORLD_SIZE`` (W), ``LOCAL_RANK`` (this process
on its machine, which picks its GPU) and ``MASTER_ADDR``/``MASTER_PORT`` (where the processes
meet). :func:`rank_group` reads them, joins the processes with
:func:`torch.distributed.init_process_group` (gloo on CPU; on CUDA gloo for the small
coordination messages and NCCL for CUDA tensors) and hands out a :class:`RankGroup`; without
those variables it is a group of one process whose synchronisation points do nothing.

The processes only coordinate, they never exchange results: each writes its finished chunks
to the shared run directory (:mod:`.chunks`) and rank 0 assembles them. Every step where the
processes meet goes through :meth:`RankGroup.agree`: each process says whether its part of the
step failed (and with what message), so an error on one process stops all of them at the next
meeting point instead of leaving the others waiting. A process that dies outright (killed, its
machine lost) is noticed by torchrun, which stops the rest; failing that, the others give up
after the process-group timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_TIMEOUT_MINUTES",
    "LAUNCH_VARIABLES",
    "Launch",
    "RankFailed",
    "RankGroup",
    "detect_launch",
    "rank_group",
]

#: Environment variables a launcher sets for every process it starts.
LAUNCH_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a process waits for the others at a meeting point before giving up, in minutes.
DEFAULT_TIMEOUT_MINUTES = 30.0
#: Bytes of an error message passed between processes (longer ones are cut).
MESSAGE_BYTES = 1024


@dataclass(frozen=True)
class Launch:
    """Where this process stands in its job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when the job has more than one process."""
        return self.world_size > 1


class RankFailed(RuntimeError):
    """Another process of the job failed (or stopped answering); the message says which and why."""


def _integer_variable(environ: Mapping[str, str], name: str, default: int | None) -> int:
    text = environ.get(name)
    if text is None or text.strip() == "":
        if default is None:
            raise ValueError(f"{name} is not set although WORLD_SIZE is; start the job with torchrun or accelerate launch.")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"The environment variable {name}={text!r} is not an integer; unset it or start the job with torchrun.") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """Read the launcher's variables (:data:`LAUNCH_VARIABLES`) from ``environ`` (default: the process's).

    No ``WORLD_SIZE`` (or ``WORLD_SIZE=1``) means a single process.

    Raises:
        ValueError: the variables are inconsistent (rank outside 0..W-1, a missing rank or
            rendezvous address); the message names the variable.
    """
    environ = os.environ if environ is None else environ
    world_size = _integer_variable(environ, "WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1; got {world_size}.")
    if world_size == 1:
        return Launch()
    rank = _integer_variable(environ, "RANK", None)
    local_rank = _integer_variable(environ, "LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size}).")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must not be negative; got {local_rank}.")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not environ.get(name):
            raise ValueError(f"{name} is not set although WORLD_SIZE={world_size}; start the job with torchrun or accelerate launch.")
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


class RankGroup:
    """The processes of one job, as :func:`rank_group` joined them (a group of one without a launcher).

    Attributes:
        launch: this process's rank, world size and local rank.
        device: the device this process computes on (``cuda:LOCAL_RANK`` for CUDA under a launcher).
        backend: the torch.distributed backend ("gloo", "cpu:gloo,cuda:nccl"), None for one process.
        timeout_minutes: how long a meeting point waits for the other processes.
    """

    def __init__(self, launch: Launch, device: torch.device, backend: str | None,
                 timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES, group: Any = None) -> None:
        self._group = group  # the torch.distributed group of the CPU messages (None: the default one)
        self.launch = launch
        self.device = device
        self.backend = backend
        self.timeout_minutes = timeout_minutes

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes a job's outputs."""
        return self.launch.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a run's metadata records about its processes."""
        return {"world_size": self.world_size, "backend": self.backend}

    def _collective(self, step: str, operation: Any, *args: Any, **kwargs: Any) -> None:
        try:
            operation(*args, group=self._group, **kwargs)
        except RuntimeError as error:  # gloo and NCCL report timeouts and lost peers this way
            raise RankFailed(
                f"rank {self.rank} of {self.world_size}: the other processes did not answer while {step} within "
                f"{self.timeout_minutes:g} minutes ({' '.join(str(error).split())[:300]}); one of them may have "
                "died or hung: see its output (a slow one needs a larger --dist-timeout)"
            ) from None

    def _exchange(self, step: str, message: str | None) -> list[str | None]:
        """Every process's message at ``step`` (None where a process had none), in rank order."""
        import torch.distributed as dist

        mine = torch.zeros(MESSAGE_BYTES + 1, dtype=torch.uint8)
        if message is not None:
            encoded = message.encode("utf-8")[:MESSAGE_BYTES]
            mine[0] = 1
            mine[1 : 1 + len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self._collective(step, dist.all_gather, gathered, mine)
        return [
            bytes(row[1:].tolist()).rstrip(b"\0").decode("utf-8", errors="replace") if int(row[0]) else None
            for row in gathered
        ]

    @contextlib.contextmanager
    def agree(self, step: str) -> Iterator[None]:
        """Run one step of the job on every process and meet at its end.

        Each process's exception, if any, is re-raised on that process; the processes where
        the step succeeded raise :class:`RankFailed` naming the failed ranks and their first
        message. With one process this is a plain block. ``step`` describes the step in
        messages ("loading the model", ...).
        """
        if not self.launch.distributed:
            yield
            return
        try:
            yield
        except BaseException as error:
            text = " ".join(str(error).split()) or type(error).__name__
            with contextlib.suppress(RankFailed):  # the others gone too: this process's own error says more
                self._exchange(step, f"{type(error).__name__}: {text}")
            raise
        failures = [(rank, message) for rank, message in enumerate(self._exchange(step, None)) if message is not None]
        if failures:
            # ranks that stopped because of another one (RankFailed) are not the cause
            causes = [failure for failure in failures if not failure[1].startswith(f"{RankFailed.__name__}:")] or failures
            ranks = ", ".join(str(rank) for rank, _ in causes)
            raise RankFailed(f"stopped while {step}: rank {ranks} of {self.world_size} failed ({causes[0][1]})")

    def share(self, values: Sequence[int] | None, count: int) -> list[int]:
        """Rank 0's ``count`` integers, on every process (other ranks pass None). One process: ``values``."""
        if not self.launch.distributed:
            return [int(v) for v in values or ()]
        import torch.distributed as dist

        if self.is_main:
            if values is None or len(values) != count:
                raise ValueError(f"rank 0 must share exactly {count} values.")
            tensor = torch.tensor([int(v) for v in values], dtype=torch.int64)
        else:
            tensor = torch.zeros(count, dtype=torch.int64)
        self._collective("sharing rank 0's decision", dist.broadcast, tensor, src=0)
        return [int(v) for v in tensor.tolist()]


def rank_device(device: torch.device, launch: Launch) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when ``device`` is CUDA without an index
    under a launcher (one GPU per process), else ``device``."""
    if device.type == "cuda" and device.index is None and launch.distributed:
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK={launch.local_rank} has no GPU: this machine has {count}; start at most {count} "
                "processes per machine (torchrun --nproc-per-node)."
            )
        return torch.device("cuda", launch.local_rank)
    return device


@contextlib.contextmanager
def rank_group(device: torch.device | str = "cpu", *, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Iterator[RankGroup]:
    """Join the processes of a launched job for the duration of the block (one process: nothing to join).

    Args:
        device: the device asked for; under a launcher CUDA becomes ``cuda:LOCAL_RANK``.
        timeout_minutes: how long joining the others and each meeting point
            (:meth:`RankGroup.agree`) wait for the other processes before this one fails.

    The launcher's variables are read from the process's environment (``env://``, which under
    torchrun also reaches the launcher's own store).

    A process group created here is destroyed at the end, also on errors; one that already
    exists (made by the caller, e.g. under accelerate) is used and left as it was.

    Raises:
        ValueError: bad launcher variables, a non-positive timeout, or a process group whose
            rank or size disagrees with them.
        RankFailed: the other processes did not join within the timeout.
    """
    if not timeout_minutes > 0:
        raise ValueError(f"The process timeout must be a positive number of minutes; got {timeout_minutes!r}.")
    device = torch.device(device)
    launch = detect_launch()
    if not launch.distributed:
        yield RankGroup(launch, device, None, timeout_minutes)
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("This build of torch has no torch.distributed; run one process, or install a torch that has it.")
    device = rank_device(device, launch)
    created = not dist.is_initialized()
    if created:
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(
                backend=backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                timeout=datetime.timedelta(minutes=timeout_minutes),
            )
        except RuntimeError as error:  # the others did not come (in time), or the address is wrong
            address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            raise RankFailed(
                f"rank {launch.rank} of {launch.world_size} could not meet the other processes at {address} within "
                f"{timeout_minutes:g} minutes ({' '.join(str(error).split())[:300]}); start all of them, with the same "
                "MASTER_ADDR and MASTER_PORT."
            ) from None
    else:
        backend = str(dist.get_backend())
        if dist.get_rank() != launch.rank or dist.get_world_size() != launch.world_size:
            raise ValueError(
                f"The existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) disagrees with "
                f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}."
            )
    messages = None
    if "gloo" not in backend:  # an NCCL-only group (made by the caller) cannot carry CPU tensors
        messages = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    finished = False
    try:
        yield RankGroup(launch, device, backend, timeout_minutes, group=messages)
        finished = True
    finally:
        if finished and dist.is_initialized():
            # Leave together: a process that tears its connections down while another is still
            # using them can abort in gloo's teardown ("terminate called without an active
            # exception"). After an error the others may be gone, so no meeting then.
            dist.barrier(group=messages)
        if created and dist.is_initialized():
            dist.destroy_process_group()
        elif messages is not None and dist.is_initialized():
            dist.destroy_process_group(messages)
