"""Per-coordinate moments of points read block by block: what a standardisation is fitted on.

:func:`point_moments` passes once over a tensor or a :class:`~flipd.datasets.streaming.PointStream`
in blocks of fixed size (:func:`~flipd.datasets.streaming.block_rows` rows, the same
boundaries for both, so a stream and the tensor of its points give the same numbers), checks
that every point is finite, and accumulates the mean, the sum of squared deviations and the
range of the points it keeps, in float64, merging blocks with Chan's update (no cancellation
when the mean is large beside the spread). Memory holds one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .streaming import PointStream, block_rows

__all__ = ["PointMoments", "point_moments"]

#: Points with non-finite values named in the error (the first ones found).
NAMED_BAD_POINTS = 10


@dataclass(frozen=True)
class PointMoments:
    """Moments of ``count`` points, each of shape ``mean.shape``.

    Attributes:
        count: points accumulated.
        mean: [*point_shape] float64 mean of each coordinate.
        m2: [*point_shape] float64 sum of squared deviations from the mean.
        low, high: the smallest and largest value of any coordinate.
    """

    count: int
    mean: Tensor
    m2: Tensor
    low: float
    high: float

    @property
    def variance(self) -> Tensor:
        """[*point_shape] float64 unbiased variance of each coordinate (as ``Tensor.var``)."""
        return self.m2 / max(1, self.count - 1)

    @property
    def std(self) -> Tensor:
        """[*point_shape] float64 standard deviation of each coordinate (unbiased)."""
        return self.variance.sqrt()

    def standardized_std(self, shift: Tensor, scale: Tensor) -> float:
        """Standard deviation over every coordinate of every point of ``(x − shift) / scale``
        (unbiased, as ``Tensor.std()`` of the standardised points), from the moments alone."""
        scale64 = scale.to(self.mean)
        centre = (self.mean - shift.to(self.mean)) / scale64
        squares = (self.m2 / scale64**2).sum() + self.count * (centre - centre.mean()).pow(2).sum()
        return math.sqrt(float(squares) / max(1, self.count * centre.numel() - 1))


def _blocks(x: Tensor | PointStream, rows: int):
    if isinstance(x, PointStream):  # one DataLoader pass, blocks of exactly ``rows``
        yield from PointStream(x.reader, x.rows, workers=x.workers, read_rows=rows).batches()
        return
    for start in range(0, x.shape[0], rows):
        yield x[start:start + rows]


def point_moments(x: Tensor | PointStream, keep: Tensor | None = None) -> PointMoments:
    """The moments of the points ``x`` [N, ...] at the positions where ``keep`` [N] (bool) is
    true (all when None), in one pass; every point, kept or not, is checked to be finite.

    Raises:
        ValueError: points with NaN or inf values (the first ten positions named), or no
            point kept.
    """
    rows = block_rows(tuple(x.shape[1:]))
    count, mean, m2 = 0, None, None
    low, high = math.inf, -math.inf
    bad: list[int] = []
    start = 0
    for block in _blocks(x, rows):
        stop = start + block.shape[0]
        finite = torch.isfinite(block.reshape(block.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            bad += (torch.nonzero(~finite).flatten() + start).tolist()
            if len(bad) >= NAMED_BAD_POINTS:
                break
        if not bad:
            kept = block if keep is None else block[keep[start:stop].to(block.device)]
            if kept.shape[0]:
                values = kept.to(torch.float64)
                count, mean, m2 = _merge(count, mean, m2, values)
                low, high = min(low, float(values.min())), max(high, float(values.max()))
        start = stop
    if bad:
        raise ValueError(
            f"data has non-finite values (NaN or inf) at points {bad[:NAMED_BAD_POINTS]}; remove them before training."
        )
    if mean is None or m2 is None:
        raise ValueError("no points to compute moments of.")
    return PointMoments(count=count, mean=mean, m2=m2, low=low, high=high)


def _merge(count: int, mean: Tensor | None, m2: Tensor | None, values: Tensor) -> tuple[int, Tensor, Tensor]:
    """Chan's update: the moments of the points so far merged with a block ``values`` [k, ...]."""
    k = values.shape[0]
    block_mean = values.mean(dim=0)
    block_m2 = (values - block_mean).pow(2).sum(dim=0)
    if mean is None or m2 is None:
        return k, block_mean, block_m2
    total = count + k
    delta = block_mean - mean
    return total, mean + delta * (k / total), m2 + block_m2 + delta.pow(2) * (count * k / total)
