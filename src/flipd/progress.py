"""Progress reporting for long library calls: ``progress=True`` shows a bar, a callable is called.

The estimators take ``progress`` as None/False (silent), True (a bar that suits a terminal or a
notebook, from ``tqdm.auto``) or a callable ``progress(n_done)`` called with the number of
points finished since the last call (what the CLI passes to drive its own bar).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["Progress", "progress_callback"]

#: What a library call accepts as ``progress``.
Progress = bool | Callable[[int], None] | None


@contextlib.contextmanager
def progress_callback(progress: Progress, total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    """The callable to report finished points to, for the length of a call.

    Args:
        progress: None or False (no reporting), True (a ``tqdm.auto`` bar of ``total`` points,
            closed when the call ends), or a callable ``progress(n_done)``, passed through.
        total: points the call will report in all (the bar's length).
        description: the bar's label, e.g. "FLIPD".

    Raises:
        TypeError: ``progress`` is none of these.
    """
    if progress is None or progress is False:
        yield None
    elif progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=description, unit="pt", leave=False)
        try:
            yield bar.update
        finally:
            bar.close()
    elif callable(progress):
        yield progress
    else:
        raise TypeError(f"progress must be True, False, None or a callable progress(n_done); got {progress!r}.")
