"""Shared pieces of the benchmark runners: machine description, versions, result tables."""

from __future__ import annotations

import argparse
import csv
import io
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs import environment
from ..runs.environment import machine_info
from ..runs.files import check_writable_directory, write_text

__all__ = [
    "check_output_folders", "git_revision", "machine_info", "markdown_table", "package_versions", "positive_int",
    "write_csv", "write_text_atomically",
]


def positive_int(text: str) -> int:
    """An argparse ``type`` for options that must be positive integers (--threads, --n-eval, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def check_output_folders(parser: argparse.ArgumentParser, folders: Mapping[str, str | Path | None]) -> None:
    """Before any work, exit through ``parser.error`` (status 2, naming the option) if one of the
    ``{option: folder}`` cannot be written (None: not used)."""
    for option, folder in folders.items():
        if folder is None:
            continue
        try:
            check_writable_directory(folder, f"the {option} folder")
        except OSError as error:
            parser.error(f"{option}: {error}")

#: Packages whose versions a benchmark report records.
BENCH_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "scikit-dimension", "kneed", "zuko", "safetensors")


def package_versions(names: Sequence[str] = BENCH_PACKAGES) -> dict[str, str | None]:
    """Versions of flipd, Python and ``names`` (see :func:`flipd.runs.environment.package_versions`)."""
    return environment.package_versions(names)


def git_revision(directory: str | Path = ".") -> str | None:
    """The current commit (with "+dirty" if files changed), or None outside a repository."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured markdown table; floats with ``digits`` decimals, NaN/None as "–"."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_number(value, digits) for value in row) + " |")
    return "\n".join(lines)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically through a uniquely named temporary file
    (:func:`flipd.runs.files.write_text`); the parent folder is created if needed."""
    write_text(path, text)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows (all with the same keys) as CSV, atomically (see :func:`write_text_atomically`)."""
    buffer = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())
