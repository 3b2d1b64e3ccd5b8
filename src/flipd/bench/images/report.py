"""The image study's combined report: ``images.{md,json,csv}`` from the per-data-set records."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ...runs.files import json_default, write_text

__all__ = ["compile_report", "render_markdown"]


def format_rho(value: float | None, digits: int = 3) -> str:
    """A correlation for tables: ``n/a`` where it is undefined (constant estimates)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def compile_report(out: Path, *, log=print) -> list[dict[str, Any]]:
    """Combine the ``images_<name>.json`` records in ``out`` into ``images.{md,json,csv}``."""
    records = []
    for path in sorted(out.glob("images_*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "dataset" in record and "methods" in record:
            records.append(record)
    order = {"mnist": 0, "patches": 1, "digits8": 2}
    records.sort(key=lambda record: (order.get(record["dataset"], 99), record["dataset"]))
    if not records:
        raise FileNotFoundError(f"No per-data-set records (images_<name>.json) in {out}: run the study first, "
                                "or point --out at the folder of an earlier run.")
    write_text(out / "images.json", json.dumps({"datasets": records}, indent=2, default=json_default) + "\n")
    _write_csv(out / "images.csv", records)
    write_text(out / "images.md", render_markdown(records))
    log(f"wrote {out / 'images.md'} from {len(records)} data set(s)")
    return records


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "method", "model", "t0", "n_images", "spearman", "seconds", "headline", "settings"])
        for record in records:
            headline = record["headline"]
            for kind, study in record["t0_study"].items():
                for t0, rho, seconds in zip(study["t0"], study["spearman"], study["seconds"]):
                    chosen = kind == headline["model"] and t0 == headline["t0"]
                    writer.writerow([record["dataset"], "FLIPD", kind, t0, record["n_eval"], format_rho(rho, 4) if rho is not None else "",
                                     f"{seconds:.1f}", int(chosen), record["trace"]])
            for row in record["methods"]:
                if row["method"] == "FLIPD":
                    continue
                writer.writerow([record["dataset"], row["method"], row["model"] or "", row["t0"] or "",
                                 row["n_images"], "" if row["spearman"] is None else format_rho(row["spearman"], 4), f"{row['seconds']:.1f}", 0,
                                 row["settings"]])


def _architecture_line(model: dict[str, Any]) -> str:
    options = model["network"]["options"]
    train = model["train_config"] or {}
    if model["kind"] == "unet":
        arch = (f"diffusers UNet2DModel, channels {tuple(options['block_out_channels'])}, attention at level(s) "
                f"{', '.join(map(str, options['attention_levels'])) or 'none'} (0 = full resolution)"
                f"{' and in the middle block' if options['mid_attention'] else ''}, "
                f"{options['layers_per_block']} residual block(s) per level, timestep = {options['time_scale']:g}·t")
    else:
        arch = f"MLP U-net on the flattened images, widths {tuple(options['widths'])}"
    val = model["best_val_loss"]
    low_t = train.get("low_t_fraction") or 0
    times = (f"{low_t:g} of each batch at times below {train.get('low_t_max'):g}, the rest uniform" if low_t
             else "uniform times")
    return (f"{arch}; {train.get('prediction', 'epsilon')} prediction, {times}; {model['parameters']:,} parameters; "
            f"{model['steps_run']} steps × batch {train.get('batch_size')}, "
            f"AdamW lr {train.get('lr')} (warm-up {train.get('warmup_steps')}, cosine), EMA {train.get('ema_decay')}; "
            f"kept step {model['best_step']} (validation loss {'n/a' if val is None else f'{val:.1f}'}, summed over "
            f"pixels); trained in {model['train_seconds']:.0f} s"
            + (" (checkpoint reused; time of the original training)" if model["reused_checkpoint"] else ""))


def _method_label(row: dict[str, Any]) -> str:
    return row["method"] + (f" ({row['model']})" if row["model"] else "")


def _summary_table(records: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        for row in record["methods"]:
            if _method_label(row) not in columns:
                columns.append(_method_label(row))
    lines = ["| data set | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for record in records:
        cells = []
        by_label = {_method_label(row): row for row in record["methods"]}
        for label in columns:
            row = by_label.get(label)
            if row is None:
                cells.append("–")
                continue
            t0 = f", t0={row['t0']:g}" if row["method"] == "FLIPD" else ""
            cells.append(f"{format_rho(row['spearman'])} (n={row['n_images']}{t0})")
        lines.append(f"| {record['dataset']} | " + " | ".join(cells) + " |")
    return lines


def _comparison(record: dict[str, Any]) -> str:
    """One sentence comparing the headline FLIPD correlation with every baseline of a record."""
    headline = record["headline"]
    rho = headline["spearman"]
    parts = []
    for row in record["methods"]:
        if row["method"] == "FLIPD" and row["model"] == headline["model"]:
            continue
        label = _method_label(row)
        if row["spearman"] is None:
            constant = row.get("at_ambient_minus_one")
            why = (f"constant: D − 1 for {constant} of {row['n_images']} images" if constant == row["n_images"]
                   else "constant estimates")
            parts.append(f"{label}: undefined ({why})")
        elif rho is None:
            parts.append(f"{label}: {format_rho(row['spearman'])}")
        else:
            verdict = "FLIPD higher" if rho > row["spearman"] else "FLIPD not higher"
            parts.append(f"{label}: {format_rho(row['spearman'])} ({verdict})")
    return (f"{record['dataset']}: FLIPD ({headline['model']}, t0={headline['t0']:g}) {format_rho(rho)}; "
            + "; ".join(parts) + ".")


def render_markdown(records: list[dict[str, Any]]) -> str:
    """The study as a markdown report: a summary table, then one section per data set."""
    lines = [
        "# Image complexity: LID against PNG size",
        "",
        "Spearman rank correlation between each image's LID estimate and its PNG size (lossless, "
        "Pillow, zlib level 9). FLIPD, ESS and lPCA are evaluated on the same images; NB, whose cost "
        "is K = 4·D forward passes and a K×D SVD per image, on a prefix of them (n given; the FLIPD "
        "correlation on exactly NB's images is listed beside it). All numbers below were produced by "
        "the commands given per data set (`python -m flipd.bench images`, module `flipd.bench.images`).",
        "",
        "How t0 was chosen for FLIPD: for each model, the knee rule (kneed, S = 1, window "
        "0.05 < t0 < 0.5, as the authors' automatic rule) applied to the median FLIPD curve of the "
        "evaluated images over the t0 grid; PNG sizes play no part in the choice. Every t0 of the grid "
        "is reported in the t0 tables.",
        "",
        "Summary (Spearman with PNG size):",
        "",
        *_summary_table(records),
        "",
        *_default_level_table(records),
        "FLIPD's headline correlation (the UNet at its chosen t0) against the baselines:",
        "",
        *[f"- {_comparison(record)}" for record in records],
        "",
    ]
    for record in records:
        c, h, w = record["image_shape"]
        env = record["environment"]
        lines += [
            f"## {record['dataset']}: {record['source']} ({c}×{h}×{w}, D = {record['ambient_dim']})",
            "",
            "Command:",
            "",
            f"    {record['command']}",
            "",
            f"Machine: {env['machine']}, shared with other jobs (load average {_loads(env.get('load_average_at_start'))} "
            f"at start, {_loads(env.get('load_average_at_end'))} at end; times are wall-clock, only roughly "
            f"comparable); torch threads {env['torch_threads']}. Versions: "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
            + f". Seed {record['seed']} (data subsets, training, probes). This data set took "
            f"{record['seconds'] / 60:.1f} min.",
            "",
            f"The models train on all {record['n_images']} images (a seeded 5% held out for validation and the "
            f"choice of the kept weights); the same images are the neighbour pool of ESS and lPCA. Methods "
            f"are evaluated on {record['n_eval']} of them ({record['eval_subset']}). FLIPD trace: {record['trace']}.",
            "",
        ]
        for kind, model in record["models"].items():
            lines.append(f"- {kind}: {_architecture_line(model)}")
        lines += [f"- note: {note}" for note in record["plan"].get("notes", [])]
        lines += ["", "| method | model | t0 | images | Spearman | time (s) | settings |",
                  "|---|---|---|---|---|---|---|"]
        for row in record["methods"]:
            t0 = "" if row["t0"] is None else f"{row['t0']:g}"
            extra = ""
            if "flipd_spearman_same_images" in row:
                extra = (f"; FLIPD ({row['model']}, t0={row['flipd_t0']:g}) on the same {row['n_images']} "
                         f"images: {format_rho(row['flipd_spearman_same_images'])}")
            elif row["method"] == "FLIPD":
                extra = f"; t0 by {row['t0_rule']}"
            lines.append(
                f"| {row['method']} | {row['model'] or '–'} | {t0} | {row['n_images']} | {format_rho(row['spearman'])} | "
                f"{row['seconds']:.1f} | {row['settings']}{extra} |"
            )
        lines += ["", "FLIPD against t0: Spearman with PNG size (median FLIPD over the images; seconds; share of the "
                  "images whose FLIPD lies in [0, D] where recorded):", "",
                  "| model | " + " | ".join(f"t0={t:g}" for t in record["t0_grid"]) + " |",
                  "|---|" + "---|" * len(record["t0_grid"])]
        for kind, study in record["t0_study"].items():
            cells = []
            in_range = study.get("in_range", [None] * len(study["t0"]))  # recorded from the x0 study on
            for t0, rho, median, seconds, fraction in zip(study["t0"], study["spearman"], study["median_flipd"],
                                                          study["seconds"], in_range):
                mark = "**" if t0 == study["chosen_t0"] else ""
                share = "" if fraction is None else f"; {fraction:.0%} in [0, D]"
                cells.append(f"{mark}{format_rho(rho)}{mark} ({median:.0f}; {seconds:.0f} s{share})")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines += ["", f"Bold: the t0 chosen by the rule above. Figures: "
                  f"{', '.join(f'`{name}`' for name in record['figures'])}; per-image values: "
                  f"`{record['per_image_csv']}`.", ""]
    return "\n".join(lines)


def _default_level_table(records: list[dict[str, Any]]) -> list[str]:
    """Each model's FLIPD at flipd's default noise level: the share of images with FLIPD in
    [0, D] (a model that knows the score there reads a dimension, not a negative number or one
    above D) and the Spearman correlation with PNG size. Records without it are left out."""
    rows = []
    for record in records:
        level = record.get("default_level")
        if not level:
            continue
        for label, values in level["models"].items():
            rows.append(f"| {record['dataset']} | {label} | {values['in_range']:.1%} | {format_rho(values['spearman'])} | "
                        f"{values['median_flipd']:.1f} |")
    if not rows:
        return []
    t0 = next(record["default_level"]["t0"] for record in records if record.get("default_level"))
    return [f"At flipd's default noise level (t0 = {t0:g} of the VP schedule), per model:", "",
            "| data set | model | FLIPD in [0, D] | Spearman with PNG size | median FLIPD |", "|---|---|---|---|---|",
            *rows, ""]


def _loads(values) -> str:
    return "n/a" if not values else "/".join(f"{v:.1f}" for v in values)
