"""The smoothed empirical measure: its closed-form FLIPD against the estimator and a Gaussian limit."""

import math

import pytest
import torch

import flipd
from flipd.analytic import GaussianMixture, SmoothedEmpirical
from flipd.schedules import VP


def test_closed_form_matches_estimator_on_its_score():
    # FLIPD = Σ w‖r‖²/σ² must equal D + σ²(tr∇s + ‖s‖²) computed by autodiff on the exact score.
    generator = torch.Generator().manual_seed(0)
    measure = SmoothedEmpirical(torch.randn(300, 3, generator=generator, dtype=torch.float64), atom_chunk=64)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    schedule = VP()
    closed = measure.exact_flipd(x, 0.05, schedule, chunk=16)
    for prediction in ("score", "epsilon"):
        estimated = flipd.flipd(measure.as_model(schedule, prediction), x, t0=0.05, schedule=schedule,
                                prediction=prediction, trace="exact")
        torch.testing.assert_close(estimated, closed, rtol=1e-6, atol=1e-8)


def test_streaming_over_atom_chunks_does_not_change_the_result():
    generator = torch.Generator().manual_seed(1)
    atoms = torch.randn(1000, 2, generator=generator, dtype=torch.float64)
    x = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    whole = SmoothedEmpirical(atoms, atom_chunk=10_000).exact_flipd(x, 0.02, VP())
    streamed = SmoothedEmpirical(atoms, atom_chunk=37).exact_flipd(x, 0.02, VP())
    torch.testing.assert_close(streamed, whole, rtol=1e-10, atol=1e-12)


def test_many_atoms_of_a_subspace_gaussian_approach_its_exact_flipd():
    # Atoms drawn from a Gaussian on a line in R^2: with many atoms the empirical FLIPD is
    # close to the mixture's closed form (sampling error shrinks like 1/sqrt(atoms near x)).
    mixture = GaussianMixture.random([1], 2, separation=0.0, seed=0)
    atoms, _ = mixture.sample(200_000, seed=1)
    x, _ = mixture.sample(50, seed=2)
    empirical = SmoothedEmpirical(atoms).exact_flipd(x, 0.05, VP())
    exact = mixture.exact_flipd(x, 0.05, VP())
    assert (empirical - exact).abs().mean() < 0.02
    assert math.isclose(empirical.mean().item(), exact.mean().item(), abs_tol=0.02)


def test_rejects_atoms_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        SmoothedEmpirical(torch.zeros(5))


def test_weights_act_like_repeated_atoms():
    generator = torch.Generator().manual_seed(2)
    atoms = torch.randn(30, 2, generator=generator, dtype=torch.float64)
    x = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    counts = torch.randint(1, 4, (30,), generator=generator)
    weighted = SmoothedEmpirical(atoms, weights=counts.double()).exact_flipd(x, 0.05, VP())
    repeated = SmoothedEmpirical(atoms.repeat_interleave(counts, dim=0)).exact_flipd(x, 0.05, VP())
    torch.testing.assert_close(weighted, repeated, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        SmoothedEmpirical(atoms, weights=-torch.ones(30))
