"""Points read lazily: a data set larger than memory as a sliceable stream of rows.

A :class:`PointStream` looks to the code that uses it like a tensor of points [N, ...]: it
has a length and a ``shape``, and ``stream[start:stop]`` returns those rows as a float32
tensor. Only the rows asked for are read: a torch ``DataLoader`` hands lists of rows to a
:class:`RowReader` (a map-style torch ``Dataset`` whose item is a batch of rows), in
``workers`` worker processes when ``workers > 0``, so decoding, resizing and PNG sizes
happen in the workers. Readers send compact batches (uint8 pixels for images) and the
stream converts them to float32 in the calling process.

:class:`PreparedPoints` puts a transform on top of a stream (e.g. a model's
standardisation or VAE encoder, run batch by batch on the model's device), which is how
jobs hand points to the chunk loop: it reads them only through ``len(x)`` and
``x[start:stop]``.

Errors met while reading in a worker (an unreadable file) come back as :class:`ReadProblem`
values and are raised here as one-line ``ValueError`` messages naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset

__all__ = ["FlatRows", "OrderedBatches", "PointStream", "PreparedPoints", "ReadProblem", "RowReader", "READ_BATCH_BYTES",
           "block_rows", "materialize"]

#: Target size in bytes of one batch of float32 points read at a time (the unit of a worker's work).
READ_BATCH_BYTES = 16 * 2**20
#: Most rows in one read batch.
MAX_READ_ROWS = 4096


def block_rows(point_shape: Sequence[int]) -> int:
    """Rows of float32 points of ``point_shape`` in one read batch: about :data:`READ_BATCH_BYTES`,
    at most :data:`MAX_READ_ROWS`."""
    point_bytes = 4 * max(1, math.prod(point_shape))
    return int(min(MAX_READ_ROWS, max(1, READ_BATCH_BYTES // point_bytes)))


@dataclass(frozen=True)
class ReadProblem:
    """What went wrong reading a batch in a worker: a message for the user (file and fix)."""

    message: str


class RowReader(Dataset):
    """A map-style torch Dataset whose item is a list of source rows, returned as one batch.

    Subclasses set ``point_shape`` and ``n_rows`` and implement :meth:`read` (rows ->
    a compact array, e.g. uint8 pixels) and :meth:`to_points` (that array -> float32 points).
    They must pickle cheaply (paths, not open files), since DataLoader workers receive a copy.
    ``value_range`` is (low, high) when every point is known to lie in it without reading
    (8-bit images: [-1, 1]), else None.
    """

    point_shape: tuple[int, ...] = ()
    n_rows: int = 0
    value_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return self.n_rows

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """The rows (increasing source row numbers) as one array [len(rows), ...]."""
        raise NotImplementedError

    def to_points(self, batch: np.ndarray) -> Tensor:
        """A batch from :meth:`read` as float32 points [k, *point_shape]."""
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))

    def __getitem__(self, rows: Sequence[int]) -> np.ndarray | ReadProblem:
        try:
            return self.read(rows)
        except ValueError as error:  # raised in the calling process by PointStream, as one line
            return ReadProblem(str(error))

    def identity(self) -> dict[str, Any]:
        """JSON-serialisable description of the source (files and options), for fingerprints."""
        return {}


def _raise_problem(batch: Any) -> Any:
    if isinstance(batch, ReadProblem):
        raise ValueError(batch.message)
    return batch


def read_batches(
    dataset: Dataset, rows: Sequence[int] | np.ndarray, *, batch_rows: int, workers: int,
) -> Iterator[Any]:
    """``dataset[list of rows]`` for consecutive groups of ``batch_rows`` of ``rows``, in order,
    read in ``workers`` DataLoader worker processes (in this process when 0)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    if workers == 0 or rows.size <= batch_rows:
        for start in range(0, rows.size, batch_rows):
            yield _raise_problem(dataset[rows[start:start + batch_rows].tolist()])
        return
    loader = DataLoader(
        dataset, sampler=BatchSampler(rows.tolist(), batch_rows, drop_last=False), batch_size=None,
        num_workers=workers, collate_fn=_no_collate,
    )
    for batch in loader:
        yield _raise_problem(batch)


def _no_collate(batch: Any) -> Any:
    return batch


class PointStream:
    """Points of a :class:`RowReader`, read on demand; indexed like a tensor [N, ...].

    Args:
        reader: where the rows come from.
        rows: source rows of the stream's points in order (default every row): ``-n`` picks.
        workers: DataLoader worker processes that read and decode (0: read in this process).
        read_rows: rows per read batch (default: about :data:`READ_BATCH_BYTES` of float32).
    """

    def __init__(self, reader: RowReader, rows: np.ndarray | None = None, *, workers: int = 0,
                 read_rows: int | None = None) -> None:
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be a non-negative integer; got {workers!r}.")
        self.reader = reader
        self.rows = np.arange(reader.n_rows, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.workers = workers
        self.read_rows = read_rows or block_rows(reader.point_shape)

    # ------------------------------------------------------------------ tensor-like

    @property
    def shape(self) -> torch.Size:
        """(N, *point_shape)."""
        return torch.Size((len(self.rows), *self.reader.point_shape))

    dtype = torch.float32

    @property
    def value_range(self) -> tuple[float, float] | None:
        """(low, high) bounding every value when the reader knows it without reading (else None)."""
        return self.reader.value_range

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray | Tensor) -> Tensor:
        """Points at ``key`` (an int, a slice with step 1, or integer positions) as float32."""
        if isinstance(key, (int, np.integer)):
            position = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= position < len(self):
                raise IndexError(f"point {key} is out of range for {len(self)} points.")
            return self._read(self.rows[position:position + 1])[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("a point stream is sliced with step 1 only.")
            return self._read(self.rows[start:max(start, stop)])
        positions = np.asarray(key.cpu() if isinstance(key, Tensor) else key, dtype=np.int64)
        return self._read(self.rows[positions])

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[Tensor]:
        """The points ``start..stop-1`` as consecutive float32 batches of up to ``read_rows``."""
        stop = len(self) if stop is None else min(stop, len(self))
        for batch in self._read_batches(self.rows[start:stop]):
            yield batch

    def _read_batches(self, rows: np.ndarray) -> Iterator[Tensor]:
        order = np.argsort(rows, kind="stable")
        if np.all(order == np.arange(rows.size)):  # increasing rows: read as they come
            for batch in read_batches(self.reader, rows, batch_rows=self.read_rows, workers=self.workers):
                yield self.reader.to_points(batch)
            return
        yield self._read(rows)

    def _read(self, rows: np.ndarray) -> Tensor:
        if rows.size == 0:
            return torch.empty((0, *self.reader.point_shape), dtype=torch.float32)
        order = np.argsort(rows, kind="stable")
        parts = [self.reader.to_points(batch) for batch in read_batches(
            self.reader, rows[order], batch_rows=self.read_rows, workers=self.workers)]
        points = torch.cat(parts) if len(parts) > 1 else parts[0]
        if np.all(order == np.arange(rows.size)):
            return points
        unsorted = torch.empty_like(points)
        unsorted[torch.from_numpy(order)] = points
        return unsorted

    # ------------------------------------------------------------------ streams

    def subset(self, positions: Sequence[int] | np.ndarray) -> PointStream:
        """The points at ``positions`` (in that order) as a stream over the same reader."""
        return PointStream(self.reader, self.rows[np.asarray(positions, dtype=np.int64)], workers=self.workers,
                           read_rows=self.read_rows)

    def flattened(self) -> PointStream:
        """The same points as vectors [N, prod(point_shape)] (e.g. images for an MLP)."""
        return PointStream(FlatRows(self.reader), self.rows, workers=self.workers, read_rows=self.read_rows)

    def identity(self) -> dict[str, Any]:
        """What identifies these points: the source, its options and the rows taken."""
        from ..runs.files import fingerprint_array

        return {**self.reader.identity(), "rows": fingerprint_array(self.rows)}

    def __repr__(self) -> str:
        return f"PointStream({type(self.reader).__name__}, shape={tuple(self.shape)}, workers={self.workers})"


class FlatRows(RowReader):
    """The rows of ``reader`` with each point flattened to a vector [prod(point_shape)]."""

    def __init__(self, reader: RowReader) -> None:
        self.source = reader
        self.n_rows = reader.n_rows
        self.point_shape = (math.prod(reader.point_shape),)
        self.value_range = reader.value_range

    def read(self, rows: Sequence[int]) -> np.ndarray:
        return self.source.read(rows)

    def to_points(self, batch: np.ndarray) -> Tensor:
        points = self.source.to_points(batch)
        return points.reshape(points.shape[0], -1)

    def identity(self) -> dict[str, Any]:
        return self.source.identity()


class _RowsInOrder(Dataset):
    """A Dataset over a reader whose item is ``(increasing rows, order)``: the rows read as one
    batch, returned with ``order`` (the positions that put them back in the order asked for)."""

    def __init__(self, reader: RowReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return self.reader.n_rows

    def __getitem__(self, item: tuple[list[int], np.ndarray]) -> tuple[np.ndarray | ReadProblem, np.ndarray]:
        rows, order = item
        return self.reader[rows], order


class _Requests:
    """The sampler of :class:`OrderedBatches`: the requests of the current pass (an iterable
    made lazily, so no list of every row is held), replaced before each pass."""

    def __init__(self) -> None:
        self.items: Iterable[tuple[list[int], np.ndarray]] = ()

    def __iter__(self) -> Iterator[tuple[list[int], np.ndarray]]:
        return iter(self.items)


class OrderedBatches:
    """Batches of a stream's points at given positions, in the order given, read ahead.

    ``reads(batches)`` yields, for each array of positions (into the stream), those points
    [len(positions), *point_shape] as float32 in that order. With ``stream.workers > 0`` the
    stream's DataLoader workers (kept between calls) decode the next ``prefetch`` batches each
    while the caller works on the current one; the batches come back in order, so what is
    read does not depend on the number of workers. One pass at a time: a call to ``reads``
    ends the previous one.
    """

    def __init__(self, stream: PointStream, *, prefetch: int = 2) -> None:
        self.stream = stream
        self._requests = _Requests()
        self._pass: Iterator[Tensor] | None = None
        workers = stream.workers
        self._loader: DataLoader | None = DataLoader(
            _RowsInOrder(stream.reader), sampler=self._requests, batch_size=None, num_workers=workers,
            collate_fn=_no_collate, persistent_workers=workers > 0, prefetch_factor=prefetch if workers else None,
        )

    def _request(self, positions: np.ndarray) -> tuple[list[int], np.ndarray]:
        rows = self.stream.rows[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        return rows[order].tolist(), order

    def reads(self, batches: Iterable[np.ndarray]) -> Iterator[Tensor]:
        """The points at each array of ``batches`` (positions into the stream), in turn."""
        if self._loader is None:
            raise RuntimeError("these batches were closed.")
        if self._pass is not None:
            self._pass.close()
        self._requests.items = (self._request(positions) for positions in batches)
        self._pass = self._points(self._loader)
        return self._pass

    def _points(self, loader: DataLoader) -> Iterator[Tensor]:
        for batch, order in loader:
            points = self.stream.reader.to_points(_raise_problem(batch))
            in_order = torch.empty_like(points)
            in_order[torch.from_numpy(order)] = points
            yield in_order

    def close(self) -> None:
        """End the pass under way and stop the worker processes."""
        if self._pass is not None:
            self._pass.close()
        self._pass, self._loader = None, None


class PreparedPoints:
    """A stream of points passed through ``transform`` batch by batch on ``device``.

    ``transform`` maps float32 points [k, *point_shape] on ``device`` to the model's
    coordinates [k, ...] (standardisation, a VAE encoder); ``x[start:stop]`` reads, moves and
    transforms only those rows and returns them on ``device``. ``check(prepared, start, stop)``,
    if given, is called on every slice so prepared (e.g. ``start..stop-1``) before it is
    returned (to refuse points that become non-finite, naming them).
    """

    def __init__(self, source: PointStream, transform: Callable[[Tensor], Tensor], device: torch.device | str = "cpu",
                 check: Callable[[Tensor, int, int], None] | None = None) -> None:
        self.source = source
        self.transform = transform
        self.device = torch.device(device)
        self.check = check
        self._point_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> torch.Size:
        if self._point_shape is None:
            self._point_shape = tuple(self[0:1].shape[1:])
        return torch.Size((len(self), *self._point_shape))

    dtype = torch.float32

    def _prepare(self, batch: Tensor) -> Tensor:
        with torch.no_grad():
            return self.transform(batch.to(self.device))

    def __getitem__(self, key: int | slice) -> Tensor:
        if isinstance(key, (int, np.integer)):
            position = int(key) + (len(self) if key < 0 else 0)
            return self[position:position + 1][0]
        if not isinstance(key, slice):
            raise IndexError("prepared points are indexed by an int or a slice.")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("prepared points are sliced with step 1 only.")
        parts = [self._prepare(batch) for batch in self.source.batches(start, stop)]
        if not parts:
            return self._prepare(self.source[0:1])[:0]
        prepared = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.check is not None:
            self.check(prepared, start, start + prepared.shape[0])
        return prepared

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[Tensor]:
        """Consecutive prepared batches of the points ``start..stop-1``."""
        first = start
        for batch in self.source.batches(start, stop):
            prepared = self._prepare(batch)
            if self.check is not None:
                self.check(prepared, first, first + prepared.shape[0])
            first += prepared.shape[0]
            yield prepared

    def __repr__(self) -> str:
        return f"PreparedPoints({self.source!r}, device={self.device})"


def materialize(points: Tensor | PointStream | PreparedPoints) -> Tensor:
    """All points as one tensor (reads the whole stream: for data that fit in memory)."""
    if isinstance(points, Tensor):
        return points
    return points[0:len(points)]
