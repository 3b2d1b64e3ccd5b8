"""Where data points come from, named by a string: the command line's vocabulary for data.

Data (:func:`load_points`) is named by

* a synthetic data set with ground truth: ``lollipop``, ``doughnut``, ``swiss_roll``,
  ``mixture:affine:D=10:dims=2,4,8``, ... (:mod:`flipd.datasets.synthetic`);
* a bundled image data set: ``mnist-subset``, ``digits8``, ``lfw-faces``, ``natural-patches``
  (:mod:`flipd.datasets.images`);
* a path: an image folder; a ``.npy``/``.npz`` array (2-d: a table of points [N, D]; 3-d or
  4-d: images); a ``.csv`` or ``.parquet`` table. Parameters follow a colon, e.g.
  ``points.csv:columns=x+y+z`` or ``arrays.npz:key=x``.

Tables: every numeric column is a coordinate except ``index`` (kept as the points' index),
``label``, ``lid``/``lid_true`` (read as the ground-truth LID) and ``component`` (read as the
ground-truth component); a column of numbers with a cell that is not one is refused by name and
row, and values beyond float32's range are refused by row;
``columns=a+b+c`` picks the coordinates explicitly. In a ``.npz`` the points are the array
``x`` (or the only 2-d array, or ``key=``), with optional arrays ``lid``/``lid_true`` and
``component`` of length N.

With ``stream=True`` (what ``flipd estimate``, ``flipd curve`` and ``flipd train`` use), image
folders, 2-d ``.npy`` arrays, 2-d members of ``.npz`` archives and CSV/parquet tables are
checked up front but not loaded: ``PointSet.x`` is a
:class:`~flipd.datasets.streaming.PointStream` whose slices are read on demand, and only one
small value per point (index, ground truth, PNG size, name) is kept. A ``.npz`` member
(``np.savez`` or ``np.savez_compressed``) is read block by block from its ``.npy`` header on,
every value checked, into a raw float32 spool file the stream reads (as CSV tables are); its
``lid``/``lid_true``/``component`` arrays are small and read whole. A member stored in Fortran
order, and the image arrays (3-d or 4-d) of ``.npy`` and ``.npz`` files, are loaded into memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..runs.files import fingerprint_array, fingerprint_path
from .streaming import PointStream, block_rows, materialize
from .tables import ArrayRows, as_float32, integer_column, numeric_column, scan_array, scan_table, spool_file
from .arrays import MemberHeader, archive_member_blocks, archive_member_header, open_npz, read_archive_member, read_npy

__all__ = [
    "DEFAULT_SYNTHETIC_POINTS",
    "PointSet",
    "data_source_names",
    "load_points",
    "with_subset",
]

#: Points drawn from a synthetic data set when the number is not given.
DEFAULT_SYNTHETIC_POINTS = 4096
TABLE_FILE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
ARRAY_FILE_SUFFIXES = (".npy", ".npz")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class PointSet:
    """Data points and what is known about them.

    Attributes:
        x: the points, float32: vectors [N, D] or images [N, C, H, W] in [-1, 1]; a tensor,
            or a :class:`~flipd.datasets.streaming.PointStream` read on demand (``stream=True``).
        spec: the name or path they were loaded from.
        kind: "vectors" or "images".
        index: [N] int64 position of each point in its source (a table's own ``index``
            column where it has one).
        lid_true: [N] float64 ground-truth LID, or None when unknown.
        component: [N] int64 ground-truth component (submanifold), or None.
        names: N names (image file names), or None.
        labels: [N] int64 class labels (images), or None.
        label_names: names of the label values, or None.
        png_bytes: [N] int64 lossless PNG size of each image, or None.
        description: one line saying what the data are.
        passthrough: a table's other columns (ids, names, notes) by name, [N] each, written
            beside the estimates unchanged; None when there are none.
    """

    x: Tensor | PointStream
    spec: str
    kind: Literal["vectors", "images"]
    index: np.ndarray
    lid_true: np.ndarray | None = None
    component: np.ndarray | None = None
    names: list[str] | None = None
    labels: np.ndarray | None = None
    label_names: tuple[str, ...] | None = None
    png_bytes: np.ndarray | None = None
    description: str = ""
    passthrough: dict[str, np.ndarray] | None = None

    @property
    def n(self) -> int:
        """Number of points N."""
        return int(self.x.shape[0])

    @property
    def point_shape(self) -> tuple[int, ...]:
        """Shape of one point: (D,) or (C, H, W)."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def ambient_dim(self) -> int:
        """Number of coordinates of one point."""
        return int(np.prod(self.point_shape))

    def __len__(self) -> int:
        return self.n

    @property
    def streamed(self) -> bool:
        """Whether the points are read on demand (``x`` is a PointStream)."""
        return isinstance(self.x, PointStream)

    def fingerprint(self) -> str:
        """SHA-256 identifying the points: of their values, or for a stream of its source
        (files' names, sizes and dates or contents, options, rows taken) without reading it."""
        if isinstance(self.x, PointStream):
            return fingerprint_array(np.frombuffer(repr(sorted(self.x.identity().items())).encode(), dtype=np.uint8))
        return fingerprint_array(self.x)

    def tensor(self) -> Tensor:
        """All points as one tensor (reads a stream whole: for data that fit in memory)."""
        return materialize(self.x)

    def images_uint8(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """8-bit pixels [N, H, W, C] of image points, or of those at ``indices`` (for figures)."""
        if self.kind != "images":
            raise ValueError(f"{self.spec!r} holds vectors, not images.")
        images = self.tensor() if indices is None else self.x[np.asarray(indices, dtype=np.int64)]
        pixels = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def data_source_names() -> dict[str, list[str]]:
    """Built-in data set names by family: {"synthetic": [...], "images": [...]}."""
    from . import images, synthetic

    return {"synthetic": list(synthetic.list_datasets()), "images": list(images.IMAGE_DATASET_NAMES)}


def _hint() -> str:
    names = data_source_names()
    return (
        f"use a synthetic data set ({', '.join(names['synthetic'])}, e.g. mixture:affine:D=10:dims=2,4,8), "
        f"an image data set ({', '.join(names['images'])}), or a path to an image folder or a "
        ".npy, .npz, .csv or .parquet file"
    )


def _parse_parameters(text: str, allowed: Sequence[str], spec: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name or not value:
            raise ValueError(f"Bad parameter {item!r} in {spec!r}: write name=value, e.g. columns=x+y.")
        if name not in allowed:
            raise ValueError(
                f"Unknown parameter {name!r} in {spec!r}; valid parameters: {', '.join(allowed) or 'none'}."
            )
        parameters[name] = value
    return parameters


def _subset(n_available: int, n: int | None, seed: int, spec: str) -> np.ndarray:
    """Indices of ``n`` points chosen by ``seed`` (in source order), or all when n is None."""
    if n is None or n == n_available:
        return np.arange(n_available)
    if n < 1:
        raise ValueError(f"The number of points must be positive; got {n}.")
    if n > n_available:
        raise ValueError(f"{spec!r} has only {n_available} points; ask for at most that many (got n = {n}).")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_available, size=n, replace=False))


def _vector_points(
    values: np.ndarray,
    spec: str,
    n: int | None,
    seed: int,
    lid_true: np.ndarray | None = None,
    component: np.ndarray | None = None,
    description: str = "",
    source_index: np.ndarray | None = None,
) -> PointSet:
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{spec!r} must hold points as a 2-d table [N, D] with N, D > 0; got shape {values.shape}.")
    if not (np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.complexfloating)):
        raise ValueError(f"{spec!r} holds {values.dtype} values; the coordinates must be numbers.")
    single = as_float32(values, spec)
    lid_true, component = _point_facts(spec, values.shape[0], lid_true, component, source_index)
    index = _subset(values.shape[0], n, seed, spec)
    return PointSet(
        x=torch.from_numpy(np.ascontiguousarray(single[index])),
        spec=spec,
        kind="vectors",
        index=index.astype(np.int64) if source_index is None else np.asarray(source_index, dtype=np.int64)[index],
        lid_true=None if lid_true is None else lid_true[index],
        component=None if component is None else component[index],
        description=description or f"{values.shape[0]} points in R^{values.shape[1]} from {spec}",
    )


def _point_facts(spec: str, n_rows: int, lid_true: np.ndarray | None, component: np.ndarray | None,
                 source_index: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The ground truth [N] of ``n_rows`` points checked (one value per point; numbers; whole
    numbers for components) as (float64 lid, int64 component)."""
    for name, array in (("lid", lid_true), ("component", component), ("index", source_index)):
        if array is not None and np.shape(array) != (n_rows,):
            raise ValueError(f"{spec!r}: {name} has shape {np.shape(array)}; expected one value per point ({n_rows}).")
    if lid_true is not None:
        lid_true = numeric_column(lid_true, "lid", spec)
    if component is not None:
        component = integer_column(component, "component", spec)
    return lid_true, component


def _table_points(file: Path, parameters: str, spec: str, n: int | None, seed: int, stream: bool) -> PointSet:
    """A CSV/parquet table, checked block by block (:func:`flipd.datasets.tables.scan_table`);
    streamed from a float32 spool file, or held in memory."""
    options = _parse_parameters(parameters, ("columns",), spec)
    if stream:
        found, reader = spool_file(lambda sink: scan_table(file, options, spec, sink),
                                   {"file": fingerprint_path(file), "columns": options.get("columns")})
        values: Tensor | PointStream = PointStream(reader)
    else:
        blocks: list[np.ndarray] = []
        found = scan_table(file, options, spec, blocks.append)
        values = torch.from_numpy(np.concatenate(blocks))
    index = _subset(found.n_rows, n, seed, spec)
    return PointSet(
        x=_take(values, index, found.n_rows),
        spec=spec,
        kind="vectors",
        index=index.astype(np.int64) if found.index is None else found.index[index],
        lid_true=None if found.lid_true is None else found.lid_true[index],
        component=None if found.component is None else found.component[index],
        description=f"{found.n_rows} points in R^{len(found.coordinates)} from {file.name} "
                    f"(columns {', '.join(found.coordinates)})",
        passthrough={name: values[index] for name, values in found.passthrough.items()} or None,
    )


def _take(values: Tensor | PointStream, index: np.ndarray, available: int) -> Tensor | PointStream:
    """The points at ``index`` of all ``available`` (no copy when all are taken)."""
    if index.size == available:
        return values
    if isinstance(values, PointStream):
        return values.subset(index)
    return values[torch.from_numpy(index)]


def _npy_table_points(file: Path, spec: str, n: int | None, seed: int, stream: bool) -> PointSet:
    """A 2-d .npy table, memory-mapped: checked block by block, then streamed or loaded."""
    reader = ArrayRows(file, kind="npy", identity={"file": fingerprint_path(file)})
    values = np.load(file, mmap_mode="r", allow_pickle=False)
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{spec!r} must hold points as a 2-d table [N, D] with N, D > 0; got shape {values.shape}.")
    if not (np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.complexfloating)):
        raise ValueError(f"{spec!r} holds {values.dtype} values; the coordinates must be numbers.")
    del values
    scan_array(reader, spec)
    stream_of_all = PointStream(reader)
    index = _subset(reader.n_rows, n, seed, spec)
    chosen = _take(stream_of_all, index, reader.n_rows)
    return PointSet(
        x=chosen if stream else materialize(chosen),
        spec=spec,
        kind="vectors",
        index=index.astype(np.int64),
        description=f"{reader.n_rows} points in R^{reader.point_shape[0]} from {spec}",
    )


def _folder_points(folder: Path, parameters: str, spec: str, n: int | None, seed: int, stream: bool,
                   reading: dict[str, Any]) -> PointSet:
    """Every image under a folder (:mod:`flipd.datasets.folders`): streamed, or decoded into memory."""
    from .folders import open_image_folder

    from .images import DEFAULT_MAX_PIXELS

    options = _parse_parameters(parameters, ("size", "channels", "max_pixels"), spec)
    try:
        size = int(options["size"]) if "size" in options else None
        channels = int(options["channels"]) if "channels" in options else None
        max_pixels = int(options["max_pixels"]) if "max_pixels" in options else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"size=, channels= and max_pixels= in {spec!r} must be whole numbers.") from None
    workers = reading.get("workers", 0)
    reader, png_bytes = open_image_folder(  # only the images -n picks are opened
        folder, channels=channels, size=None if size is None else (size, size), resize=reading.get("resize"),
        center_crop=reading.get("center_crop"), workers=workers, pick=lambda available: _subset(available, n, seed, spec),
        max_pixels=max_pixels,
    )
    chosen = PointStream(reader, workers=workers)
    c, h, w = reader.point_shape
    return PointSet(
        x=chosen if stream else materialize(chosen),
        spec=spec,
        kind="images",
        index=np.arange(reader.n_rows, dtype=np.int64),
        names=list(reader.names),
        png_bytes=png_bytes,
        description=f"{reader.n_rows} images of {c}x{h}x{w} from {folder}",
    )


def _read_array_file(file: Path) -> Any:
    """``np.load`` of a .npy (memory-mapped) or .npz file, never unpickling; a damaged, empty
    or object-dtype file is refused naming it (.npz members: :func:`read_archive_member`)."""
    return read_npy(file, mmap=True) if file.suffix.lower() == ".npy" else open_npz(file)


def _member_ndim(archive: Any, key: str, file: Path) -> int:
    """Dimensions of member ``key`` from its header (no data read), or from the member itself
    when the header is unusual (which names an object, record or damaged member)."""
    header = archive_member_header(file, key)
    if header is None or header.dtype.hasobject or header.dtype.fields is not None:
        return read_archive_member(archive, key, file).ndim
    return header.ndim


def _streamable(header: MemberHeader | None) -> bool:
    """Whether a member can be streamed: a non-empty C-order 2-d array of real numbers (anything
    else is loaded, and refused with the messages of :func:`_vector_points`)."""
    return (
        header is not None and header.ndim == 2 and not header.fortran_order and min(header.shape) > 0
        and header.dtype.fields is None and np.issubdtype(header.dtype, np.number)
        and not np.issubdtype(header.dtype, np.complexfloating)
    )


def _npz_points(file: Path, parameters: str, spec: str, n: int | None, seed: int, stream: bool = False) -> PointSet | None:
    """Points from a .npz table, or None if it holds images (3-d or 4-d arrays); streamed from
    a float32 spool file when ``stream`` (the member read and checked block by block)."""
    options = _parse_parameters(parameters, ("key", "layout", "value_range"), spec)
    with _read_array_file(file) as archive:
        keys = list(archive.keys())
        key = options.get("key")
        if key is None:
            matrices = [k for k in keys if _member_ndim(archive, k, file) == 2]
            key = "x" if "x" in keys else (matrices[0] if len(matrices) == 1 else None)
            if key is None:
                image_arrays = [k for k in keys if _member_ndim(archive, k, file) in (3, 4)]
                if len(image_arrays) == 1 or (len(keys) == 1 and _member_ndim(archive, keys[0], file) in (3, 4)):
                    return None
                raise ValueError(f"{file.name} holds arrays {keys}; name the points with {file.name}:key=NAME.")
        if key not in keys:
            raise ValueError(f"{file.name} has no array {key!r}; its arrays: {', '.join(keys)}.")
        header = archive_member_header(file, key)
        streamed = stream and header is not None and _streamable(header)
        values = None if streamed else read_archive_member(archive, key, file)
        if (header.ndim if values is None else values.ndim) in (3, 4):
            return None
        if set(options) - {"key"}:
            raise ValueError(f"layout= and value_range= apply to image arrays; {key!r} in {file.name} is a table.")
        lid_key = next((k for k in ("lid_true", "lid") if k in keys and k != key), None)
        lid_true = read_archive_member(archive, lid_key, file) if lid_key else None
        component = read_archive_member(archive, "component", file) if "component" in keys and key != "component" else None
    if values is None:
        return _streamed_npz_points(file, key, header, spec, n, seed, lid_true, component)
    return _vector_points(
        values, spec, n, seed, lid_true, component,
        description=f"{values.shape[0]} points in R^{values.shape[1] if values.ndim == 2 else '?'} from {file.name}",
    )


def _streamed_npz_points(file: Path, key: str, header: MemberHeader, spec: str, n: int | None, seed: int,
                         lid_true: np.ndarray | None, component: np.ndarray | None) -> PointSet:
    """A 2-d member of a .npz read block by block (decompressed as it is read), every value
    checked, the float32 rows spooled to a raw file and streamed from it."""
    n_rows, width = header.shape
    lid_true, component = _point_facts(spec, n_rows, lid_true, component)

    def scan(sink):
        first = 0
        for block in archive_member_blocks(file, key, block_rows((width,))):
            sink(as_float32(block, spec, first))
            first += block.shape[0]
        return first

    _, reader = spool_file(scan, {"file": fingerprint_path(file), "key": key})
    index = _subset(n_rows, n, seed, spec)
    return PointSet(
        x=_take(PointStream(reader), index, n_rows),
        spec=spec,
        kind="vectors",
        index=index.astype(np.int64),
        lid_true=None if lid_true is None else lid_true[index],
        component=None if component is None else component[index],
        description=f"{n_rows} points in R^{width} from {file.name}",
    )


def _image_points(spec: str, n: int | None, seed: int) -> PointSet:
    from .images import get_image_dataset

    data = get_image_dataset(spec, n=n, seed=seed)
    c, h, w = data.image_shape
    return PointSet(
        x=data.images,
        spec=spec,
        kind="images",
        index=np.arange(len(data), dtype=np.int64),
        names=list(data.names),
        labels=data.labels,
        label_names=data.label_names,
        png_bytes=data.png_bytes,
        description=f"{len(data)} images of {c}x{h}x{w} from {data.source}",
    )


def _synthetic_points(spec: str, n: int | None, seed: int) -> PointSet:
    from .synthetic import get_dataset

    count = DEFAULT_SYNTHETIC_POINTS if n is None else n
    if count < 1:
        raise ValueError(f"The number of points must be positive; got {count}.")
    data = get_dataset(spec, count, seed)
    dims = ", ".join(str(d) for d in data.component_dims)
    return PointSet(
        x=torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)),
        spec=spec,
        kind="vectors",
        index=np.arange(data.n, dtype=np.int64),
        lid_true=data.lid.astype(np.float64),
        component=data.component.astype(np.int64),
        description=f"{data.n} points of {data.name} in R^{data.ambient_dim} (components of dimension {dims})",
    )


def load_points(
    spec: str, n: int | None = None, seed: int = 0, *, at_most: bool = False, stream: bool = False,
    workers: int = 0, resize: int | None = None, center_crop: int | None = None,
) -> PointSet:
    """Load data points by name or path (see the module notes for what ``spec`` may be).

    Args:
        spec: a built-in data set name with optional parameters, or a path.
        n: number of points; None takes every point of a file or bundled image set and
            :data:`DEFAULT_SYNTHETIC_POINTS` of a synthetic one. For files, ``n`` points are
            chosen by ``seed`` and kept in file order (``PointSet.index`` says which).
        seed: sampling seed.
        at_most: treat ``n`` as an upper bound for files and bundled images (take them all
            when there are fewer) instead of an error.
        stream: read image folders, 2-d ``.npy`` arrays and ``.npz`` members and CSV/parquet
            tables lazily: ``PointSet.x`` is then a
            :class:`~flipd.datasets.streaming.PointStream` whose slices are read on demand
            (built-in sets and image arrays are loaded into memory either way). Every file is
            still checked before this returns.
        workers: DataLoader worker processes that read and decode image files (0: this process).
        resize: image folders: scale each image's shorter side to this many pixels.
        center_crop: image folders: keep the central square of this many pixels (after ``resize``).

    Raises:
        ValueError: unknown name, bad parameter, or unusable content (the message says which).
        FileNotFoundError: a path that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"Name the data: {_hint()}.")
    spec = spec.strip()
    reading = {"workers": workers, "resize": resize, "center_crop": center_crop}
    if at_most and n is not None and not _is_synthetic(spec):
        points = load_points(spec, None, seed, stream=stream, **reading)
        if points.n <= n:
            return points
        subset = with_subset(points, _subset(points.n, n, seed, spec))
        return replace(subset, description=f"{subset.n} of the {points.description}")
    is_folder = Path(spec).is_dir() or Path(spec.partition(":")[0]).is_dir()
    if (resize is not None or center_crop is not None) and not is_folder:
        raise ValueError(f"--resize and --center-crop apply to image folders; {spec!r} is not one.")
    name, _, parameters = spec.partition(":")
    families = data_source_names()
    if name in families["images"]:
        return _image_points(spec, n, seed)
    if name in families["synthetic"]:
        return _synthetic_points(spec, n, seed)
    file, parameters = (Path(spec), "") if Path(spec).exists() else (Path(name), parameters)
    if file.exists():
        suffix = file.suffix.lower()
        if file.is_dir():
            return _folder_points(file, parameters, spec, n, seed, stream, reading)
        if suffix in TABLE_FILE_SUFFIXES:
            return _table_points(file, parameters, spec, n, seed, stream)
        if suffix == ".npy":
            values = _read_array_file(file)
            if values.ndim == 2:
                if parameters:
                    _parse_parameters(parameters, (), spec)
                del values
                return _npy_table_points(file, spec, n, seed, stream)
            return _image_points(spec, n, seed)
        if suffix == ".npz":
            points = _npz_points(file, parameters, spec, n, seed, stream)
            return points if points is not None else _image_points(spec, n, seed)
        raise ValueError(
            f"Cannot read {str(file)!r}: unsupported file type {suffix or '(none)'}; "
            "use an image folder or a .npy, .npz, .csv or .parquet file."
        )
    looks_like_path = "/" in name or os.sep in name or Path(name).suffix.lower() in (
        *TABLE_FILE_SUFFIXES, *ARRAY_FILE_SUFFIXES, ".png", ".jpg", ".jpeg",
    )
    if looks_like_path:
        raise FileNotFoundError(f"No such file or folder: {name!r}; check the path.")
    try:  # aliases and parameterised names the synthetic registry knows
        return _synthetic_points(spec, n, seed)
    except ValueError:
        pass
    raise ValueError(f"Unknown data set {name!r}; {_hint()}.")


def _is_synthetic(spec: str) -> bool:
    name = spec.strip().partition(":")[0]
    if name in data_source_names()["synthetic"]:
        return True
    if name in data_source_names()["images"] or Path(spec).exists() or Path(name).exists():
        return False
    return not any(sep in name for sep in ("/", os.sep))


def with_subset(points: PointSet, indices: Sequence[int] | np.ndarray) -> PointSet:
    """The points at positions ``indices`` (in that order), with everything known about them."""
    index = np.asarray(indices, dtype=np.int64)

    def take(array):
        return None if array is None else array[index]

    return replace(
        points,
        x=points.x.subset(index) if isinstance(points.x, PointStream) else points.x[torch.from_numpy(index)],
        index=points.index[index],
        lid_true=take(points.lid_true),
        component=take(points.component),
        names=None if points.names is None else [points.names[i] for i in index],
        labels=take(points.labels),
        png_bytes=take(points.png_bytes),
        passthrough=None if points.passthrough is None else {k: v[index] for k, v in points.passthrough.items()},
    )
