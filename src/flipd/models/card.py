"""The model card (``README.md``) of a flipd checkpoint, written from its config.

A Hugging Face model card: YAML front matter (``library_name: flipd``, tags) and a short
description of what the checkpoint is: network, schedule, prediction, data shape,
standardisation and training record, with the lines that load it. Imports nothing of flipd.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["model_card"]

_NETWORK_NAMES = {"mlp_unet": "MLP U-net", "unet2d": "convolutional U-net (diffusers UNet2DModel)"}


def _schedule_text(schedule: dict[str, Any]) -> str:
    arguments = ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                          for key, value in schedule.items() if key != "kind")
    return f"{schedule.get('kind', '?')}({arguments})"


def _training_lines(metadata: dict[str, Any]) -> list[str]:
    lines = []
    data = metadata.get("data")
    if isinstance(data, dict) and data.get("spec"):
        lines.append(f"| trained on | `{data['spec']}` ({data.get('n_points', '?')} points) |")
    if metadata.get("steps_run") is not None:
        record = f"{metadata['steps_run']} steps"
        if metadata.get("stop_reason") not in (None, "steps"):
            record += f" (stopped by {metadata['stop_reason']})"
        if isinstance(metadata.get("seconds"), (int, float)):
            record += f", {metadata['seconds']:.0f} s"
        lines.append(f"| training | {record} |")
    for key, name in (("final_val_loss", "final validation loss"), ("final_train_loss", "final training loss")):
        if isinstance(metadata.get(key), (int, float)):
            lines.append(f"| {name} | {metadata[key]:.4g} |")
    if metadata.get("parameters") is not None:
        lines.append(f"| parameters | {metadata['parameters']} |")
    if metadata.get("seed") is not None:
        lines.append(f"| seed | {metadata['seed']} |")
    return lines


def model_card(config: dict[str, Any]) -> str:
    """The ``README.md`` text for a checkpoint whose ``config.json`` holds ``config``.

    Args:
        config: the flipd checkpoint config (``network``, ``schedule``, ``prediction``,
            ``standardization`` and ``metadata`` fields, as :meth:`DiffusionModel.save` writes).

    Returns:
        Markdown with YAML front matter, ending in a newline.
    """
    network = config.get("network", {})
    kind = network.get("kind", "?")
    standardization = config.get("standardization", {})
    shape = "x".join(str(size) for size in standardization.get("data_shape", [])) or "?"
    metadata = config.get("metadata") or {}
    rows = [
        "| | |",
        "|---|---|",
        f"| network | {_NETWORK_NAMES.get(kind, kind)} (`{kind}`) |",
        f"| schedule | `{_schedule_text(config.get('schedule', {}))}` |",
        f"| prediction | {config.get('prediction', 'epsilon')} |",
        f"| data shape | {shape} |",
        f"| standardisation | {standardization.get('mode', '?')} ({standardization.get('formula', '')}) |",
        *_training_lines(metadata),
        f"| checkpoint format | `{config.get('format')}` version {config.get('format_version')} |",
    ]
    tags = ["flipd", "diffusion", "local-intrinsic-dimension"]
    front = "\n".join(["---", "library_name: flipd", "tags:", *(f"- {tag}" for tag in tags), "---"])
    options = json.dumps(network.get("options", {}), sort_keys=True)
    return "\n".join([
        front,
        "",
        "# flipd diffusion model",
        "",
        "A diffusion model trained with flipd, for estimating the local intrinsic dimension (LID) of",
        "data points with FLIPD (Kamkari et al., NeurIPS 2024). The network works in standardised",
        "coordinates; the model carries the map from the data's units, so points are passed as they are.",
        "",
        *rows,
        "",
        "```python",
        "import flipd",
        'model = flipd.DiffusionModel.from_pretrained("THIS_FOLDER_OR_HUB_ID")',
        "lid = flipd.flipd(model, x)  # x: points shaped like the training data, in its units",
        "```",
        "",
        "or on the command line: `flipd estimate DATA --model THIS_FOLDER_OR_HUB_ID`.",
        "",
        f"Network options: `{options}`",
        "",
    ])
