"""Test-wide settings and shared fixtures: one torch thread per test process (the suite runs two
processes on two cores, so more threads would only oversubscribe the machine), and the perfect
model the rules' tests share."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def three_flat_gaussians():
    """A perfect model of three flat Gaussians of dimensions 1, 3 and 6 in R^10, 240 points drawn
    from it (float64) and their true LIDs: ``(mixture, x, true)``."""
    from flipd.analytic import GaussianMixture

    mixture = GaussianMixture.random([1, 3, 6], ambient_dim=10, seed=0)
    x, component = mixture.sample(240, seed=1)
    return mixture, x.double(), torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64)[component]
