"""Helpers shared by the baselines."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_numpy(values: Tensor) -> np.ndarray:
    """A detached float64 numpy copy of ``values``."""
    return values.detach().cpu().to(torch.float64).numpy()
