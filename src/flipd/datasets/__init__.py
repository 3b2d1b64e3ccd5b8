"""Data sets: synthetic manifolds with ground-truth LID, and images."""
