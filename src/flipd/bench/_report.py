"""Shared pieces of the benchmark reports: markdown tables, CSV rows, the git revision.

The machine and package versions a benchmark records come from :mod:`flipd.runs.environment`
(``machine_info``, ``package_versions``), the same record every run writes; files are written
atomically with :func:`flipd.runs.files.write_text`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs.files import check_writable_directory, write_text

__all__ = [
    "BENCH_PACKAGES", "check_closed_form_mixtures", "check_output_folders", "git_revision", "markdown_table",
    "positive_int", "produced_by", "rewrite_report", "write_csv", "write_report",
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

def check_closed_form_mixtures(parser: argparse.ArgumentParser, specs: Iterable[str]) -> None:
    """Exit through ``parser.error`` unless every spec is an affine mixture with normal latents,
    the data sets whose perfect model is a closed-form Gaussian mixture."""
    for spec in specs:
        if not (spec.startswith("mixture:affine:") and "latent=normal" in spec):
            parser.error(f"{spec!r} has no closed-form model: use affine mixtures with latent=normal")


def produced_by(command: str) -> list[str]:
    """The lines at the top of a markdown report that give the command that produced it."""
    return ["Produced by:", "", "```", command, "```", ""]


def write_report(out: Path, report: Mapping[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """Write ``report`` to ``out.json`` and ``render(report)`` to ``out.md`` (atomically), and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_text(out.with_suffix(".md"), render(dict(report)))
    print(f"wrote {out.with_suffix('.md')} and .json")


#: The rule target: an automatic rule's MAE may exceed FLIPD's at the best fixed level of the grid
#: by at most this much (the records' ``within_0.1_of_best_fixed`` keys name it).
RULE_MARGIN = 0.1

#: Packages whose versions a benchmark report records (pass to
#: :func:`flipd.runs.environment.package_versions`; flipd and Python are always included).
BENCH_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "scikit-dimension", "kneed", "zuko", "safetensors")


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
    """A table cell: floats with ``digits`` decimals, None and NaN as "–", anything else as text."""
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


def rewrite_report(record: Path, report: Path, render: Callable[[dict[str, Any]], str]) -> int:
    """``--report-only``: write ``render(record's JSON)`` to ``report``, measuring nothing.

    Returns the exit status: 0, or 2 (with a message naming ``record`` and the fix on stderr)
    when there is no such record.
    """
    if not record.is_file():
        print(f"No benchmark record {record}: run the benchmark first, or point --out at the folder or path "
              "of an earlier run.", file=sys.stderr)
        return 2
    write_text(report, render(json.loads(record.read_text())))
    print(f"wrote {report} from {record}")
    return 0


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write dict rows (all with the same keys) as CSV, atomically (:func:`flipd.runs.files.write_text`)."""
    buffer = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())
