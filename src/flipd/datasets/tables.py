"""Tables of points read in blocks: CSV (pandas chunks), parquet (pyarrow batches), ``.npy``
(memory-mapped), with every cell checked and problems named by column and row.

:func:`scan_table` reads a CSV or parquet table block by block (:data:`TABLE_BLOCK_ROWS` rows
at a time), checks each block (text in a number column, missing or fractional whole
numbers, values beyond float32) with rows counted over the whole table, and hands the
float32 coordinates of each block to a sink: a list (in-memory loading) or a spool file
(:class:`SpooledRows`, streaming), so peak memory does not grow with the table. The
coordinate columns are chosen from the first block. :func:`scan_array` checks a 2-d ``.npy``
the same way through memory maps opened per block; :class:`ArrayRows` then reads rows of
either file on demand.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .streaming import RowReader

__all__ = ["ArrayRows", "TABLE_BLOCK_ROWS", "TableScan", "as_float32", "integer_column", "numeric_column",
           "scan_array", "scan_table", "spool_file"]

#: What a scan run into a spool file returns (:func:`spool_file`).
Found = TypeVar("Found")
#: Rows of a table read and checked at a time.
TABLE_BLOCK_ROWS = 65536
#: Table columns that describe a point rather than being one of its coordinates.
NON_COORDINATE_COLUMNS = ("index", "label", "lid", "lid_true", "component")


# --------------------------------------------------------------------------- cell checks


def rows_text(bad: np.ndarray) -> str:
    """Row numbers (counted from 0, header excluded) for a message: the first ten and the count."""
    shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
    return f"row {shown}" if bad.size == 1 else f"rows {shown} ({bad.size} rows)"


def as_float32(values: np.ndarray, spec: str, first_row: int = 0) -> np.ndarray:
    """The coordinates as float32, refusing rows that are missing, non-finite or beyond float32's
    range (checked after the cast: 1e39 is a fine float64 but inf in float32). Rows are
    numbered from ``first_row``."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = np.ascontiguousarray(values, dtype=np.float32)
    finite = np.isfinite(single).reshape(single.shape[0], -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite) + first_row
        raise ValueError(
            f"{spec!r} has missing, non-finite or too large values (beyond float32's ±3.4e38) in "
            f"{rows_text(bad)}, counting data rows from 0; remove, fill or rescale them."
        )
    return single


def numeric_column(values: Any, name: str, spec: str, first_row: int = 0) -> np.ndarray:
    """A column of numbers as float64, refusing text cells by column and row."""
    import pandas as pd

    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":  # numbers already
        return values.astype(np.float64)
    if isinstance(values, pd.Series) and values.dtype.kind in "iuf":  # also nullable integers
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    series = series.reset_index(drop=True)
    numbers = pd.to_numeric(series, errors="coerce")
    text = numbers.isna() & series.notna() & ~series.astype(str).str.strip().str.lower().isin(("nan", ""))
    if text.any():
        bad = np.flatnonzero(text.to_numpy())
        raise ValueError(
            f"{spec!r}: column {name!r} has a value that is not a number, {series.iloc[bad[0]]!r}, in "
            f"{rows_text(bad + first_row)} (counting data rows from 0); fix or remove it."
        )
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def integer_column(values: Any, name: str, spec: str, first_row: int = 0) -> np.ndarray:
    """A column of whole numbers as int64, refusing missing or fractional values by row (a
    missing value must not become -2^63)."""
    numbers = numeric_column(values, name, spec, first_row)
    whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (np.abs(numbers) < 2.0**62)
    if not whole.all():
        bad = np.flatnonzero(~whole) + first_row
        raise ValueError(
            f"{spec!r}: column {name!r} needs a whole number in every row; {rows_text(bad)} (counting "
            "data rows from 0) hold missing or fractional values."
        )
    return numbers.astype(np.int64)


def _mostly_numbers(column: Any) -> bool:
    """Whether a text column is numbers with a few bad cells (so a coordinate, whose bad cells
    must be reported) rather than a column of text (names, notes: not a coordinate)."""
    import pandas as pd

    present = column.dropna()
    if present.empty:
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().mean() >= 0.5)


# --------------------------------------------------------------------------- tables


@dataclass
class TableScan:
    """What a scan of a table found besides its coordinates (small, one value per row).

    Attributes:
        n_rows: rows of data.
        coordinates: the coordinate column names, in order.
        lid_true: [N] float64 ground truth (a ``lid_true`` or ``lid`` column), or None.
        component: [N] int64 ground-truth component, or None.
        index: [N] int64 the table's own ``index`` column, or None.
        passthrough: the other columns (ids, names, notes, labels), [N] each, in table order,
            to be written beside the estimates unchanged.
    """

    n_rows: int
    coordinates: list[str]
    lid_true: np.ndarray | None
    component: np.ndarray | None
    index: np.ndarray | None
    passthrough: dict[str, np.ndarray] = field(default_factory=dict)


def _header(file: Path) -> tuple[list[str], list[str]]:
    """(column names, pandas index columns stored as columns) of a table file."""
    if file.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        schema = pq.ParquetFile(file).schema_arrow
        stored_index = [name for name in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(name, str)]
        return [name for name in schema.names if name not in stored_index], stored_index
    import pandas as pd

    return [str(c) for c in pd.read_csv(file, sep=_separator(file), nrows=0).columns], []


def _separator(file: Path) -> str:
    return "\t" if file.suffix.lower() == ".tsv" else ","


def _blocks(file: Path, rows: int) -> Iterator[Any]:
    """The table as pandas frames of up to ``rows`` rows."""
    if file.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        _, stored_index = _header(file)
        for batch in pq.ParquetFile(file).iter_batches(batch_size=rows):
            frame = batch.to_pandas(ignore_metadata=True)
            yield frame.drop(columns=[c for c in stored_index if c in frame.columns])
        return
    import pandas as pd

    with pd.read_csv(file, sep=_separator(file), chunksize=rows) as reader:
        yield from reader


def _choose_coordinates(frame: Any, options: dict[str, str], file: Path, columns: list[str]) -> list[str]:
    import pandas as pd

    if "columns" in options:
        wanted = [c for c in options["columns"].split("+") if c]
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(f"{str(file)!r} has no column(s) {', '.join(missing)}; its columns: {', '.join(columns)}.")
        return wanted
    chosen = [
        c for c in frame.columns
        if str(c) not in NON_COORDINATE_COLUMNS and not pd.api.types.is_bool_dtype(frame[c])
        and (pd.api.types.is_numeric_dtype(frame[c]) or _mostly_numbers(frame[c]))
    ]
    if not chosen:
        raise ValueError(
            f"{str(file)!r} has no numeric coordinate columns (columns: {', '.join(map(str, frame.columns))}); "
            "name them with columns=a+b+c."
        )
    return chosen


def scan_table(
    file: Path, options: dict[str, str], spec: str, sink: Callable[[np.ndarray], None], *,
    block_rows: int = TABLE_BLOCK_ROWS,
) -> TableScan:
    """Read a CSV/TSV or parquet table block by block, check every cell, and pass the float32
    coordinates of each block [k, D] to ``sink`` in row order.

    Args:
        file: the table.
        options: ``{"columns": "a+b+c"}`` to pick the coordinates, or {}.
        spec: the name the user gave (for messages).
        sink: receives each block's coordinates.
        block_rows: rows read and checked at a time.

    Raises:
        ValueError: the file cannot be read, has no rows or no coordinates, or a cell is bad
            (the message names the column and the rows, counted over the whole table).
    """
    suffix = file.suffix.lower()
    try:
        columns, _ = _header(file)
    except Exception as error:  # pandas and pyarrow raise many parser-specific types
        raise ValueError(f"Cannot read {str(file)!r} as a {suffix[1:]} table: {error}") from error
    coordinates: list[str] | None = None
    truth_column = None
    lids, components, indices = [], [], []
    kept: dict[str, list[np.ndarray]] = {}
    n_rows = 0
    blocks = _blocks(file, block_rows)
    while True:
        try:
            frame = next(blocks)
        except StopIteration:
            break
        except Exception as error:  # a damaged row or file part-way through
            raise ValueError(f"Cannot read {str(file)!r} as a {suffix[1:]} table: {error}") from error
        if len(frame) == 0:
            continue
        if coordinates is None:
            coordinates = _choose_coordinates(frame, options, file, columns)
            truth_column = next((c for c in ("lid_true", "lid") if c in frame.columns and c not in coordinates), None)
        first = n_rows
        if truth_column:
            lids.append(numeric_column(frame[truth_column], truth_column, spec, first))
        if "index" in frame.columns and "index" not in coordinates:
            indices.append(integer_column(frame["index"], "index", spec, first))
        values = np.column_stack([numeric_column(frame[c], str(c), spec, first) for c in coordinates])
        sink(as_float32(values, spec, first))
        if "component" in frame.columns and "component" not in coordinates:
            components.append(integer_column(frame["component"], "component", spec, first))
        for name in frame.columns:  # ids, names and notes travel to the output unchanged
            if name not in coordinates and name not in (truth_column, "index", "component"):
                kept.setdefault(str(name), []).append(frame[name].to_numpy())
        n_rows += len(frame)
    if n_rows == 0 or coordinates is None:
        raise ValueError(f"{str(file)!r} has no rows of data (columns: {', '.join(columns) or 'none'}).")
    return TableScan(
        n_rows=n_rows, coordinates=[str(c) for c in coordinates],
        lid_true=np.concatenate(lids) if lids else None,
        component=np.concatenate(components) if components else None,
        index=np.concatenate(indices) if indices else None,
        passthrough={name: np.concatenate(parts) for name, parts in kept.items()},
    )


# --------------------------------------------------------------------------- arrays


class ArrayRows(RowReader):
    """Rows of a 2-d float array on disk (a ``.npy`` file, or a raw float32 spool), memory-mapped
    anew for every read so that no pages stay mapped between reads.

    Args:
        path: the file.
        kind: "npy" or "raw" (float32, C order, no header).
        shape: (N, D) of a raw file (read from the header of a .npy).
        identity: what identifies the source (file fingerprint, options), for resuming.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str = "npy", shape: tuple[int, int] | None = None,
                 identity: dict[str, Any] | None = None) -> None:
        self.path = str(path)
        self.kind = kind
        if kind == "npy":
            values = self._open()
            shape = tuple(int(s) for s in values.shape)
            del values
        if shape is None or len(shape) != 2:
            raise ValueError(f"ArrayRows needs a 2-d array; got shape {shape}.")
        self.array_shape = shape
        self.n_rows, self.point_shape = shape[0], (shape[1],)
        self._identity = identity or {}

    def _open(self) -> np.ndarray:
        if self.kind == "npy":
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=self.array_shape)

    def read(self, rows: Sequence[int]) -> np.ndarray:
        values = self._open()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:  # consecutive rows: one slice
            block = np.array(values[rows[0]:rows[-1] + 1], dtype=np.float32)
        else:
            block = np.array(values[rows], dtype=np.float32)
        del values
        return block

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


def scan_array(reader: ArrayRows, spec: str, block_rows: int = TABLE_BLOCK_ROWS) -> None:
    """Check every row of an array file block by block (finite, within float32's range)."""
    for start in range(0, reader.n_rows, block_rows):
        values = reader._open()
        block = np.array(values[start:start + block_rows])
        del values
        as_float32(block, spec, start)


def _remove(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker
        try:
            os.unlink(path)
        except OSError:
            pass


class SpooledRows:
    """A sink for :func:`scan_table` that appends float32 blocks to a temporary raw file;
    :meth:`reader` then reads its rows on demand. The file is deleted with the reader."""

    def __init__(self) -> None:
        handle, self.path = tempfile.mkstemp(prefix="flipd-table-", suffix=".f32")
        self._file = os.fdopen(handle, "wb")
        self.width: int | None = None
        self.rows = 0

    def __call__(self, block: np.ndarray) -> None:
        self.width = block.shape[1]
        self._file.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
        self.rows += block.shape[0]

    def reader(self, identity: dict[str, Any]) -> ArrayRows:
        self._file.close()
        rows = ArrayRows(self.path, kind="raw", shape=(self.rows, int(self.width or 0)), identity=identity)
        weakref.finalize(rows, _remove, self.path, os.getpid())
        return rows

    def discard(self) -> None:
        self._file.close()
        _remove(self.path, os.getpid())


def spool_file(scan: Callable[[Callable[[np.ndarray], None]], Found], identity: dict[str, Any]) -> tuple[Found, ArrayRows]:
    """Run ``scan(sink)`` into a spool file; what the scan returns (the table found) and a
    reader of its rows."""
    spool = SpooledRows()
    try:
        found = scan(spool)
    except BaseException:
        spool.discard()
        raise
    return found, spool.reader(identity)
