"""Data sets: synthetic manifolds with ground-truth LID, and images."""

# Synthetic benchmark data with ground-truth LID.
from flipd.datasets.synthetic import (
    DIFFEOMORPHISMS,
    LATENT_DISTRIBUTIONS,
    ManifoldMixture,
    SyntheticData,
    get_dataset,
    list_datasets,
    lollipop,
    manifold_mixture,
    string_within_doughnut,
    swiss_roll,
)

__all__ = [
    # synthetic
    "DIFFEOMORPHISMS",
    "LATENT_DISTRIBUTIONS",
    "ManifoldMixture",
    "SyntheticData",
    "get_dataset",
    "list_datasets",
    "lollipop",
    "manifold_mixture",
    "string_within_doughnut",
    "swiss_roll",
]
