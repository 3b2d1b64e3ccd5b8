"""Reverse-mode traces through GroupNorm (as in every diffusers UNet) with autograd off.

GroupNorm's backward kernel has no vmap batching rule when autograd is off; the probes must
still be vectorised (retried with autograd on) and give the same numbers, without a graph.
"""

from __future__ import annotations

import torch

from flipd.trace import quadratic_forms


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).double()


def test_groupnorm_probes_match_a_probe_loop_without_building_a_graph():
    network = _network()
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    probes = torch.randn(5, 2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        output, forms, mode = quadratic_forms(network, y, lambda: [probes], mode="reverse")
    assert mode == "reverse" and not forms.requires_grad and not output.requires_grad
    expected = []
    for probe in probes:
        inputs = y.clone().requires_grad_(True)
        (pulled,) = torch.autograd.grad(network(inputs), inputs, probe)
        expected.append((pulled * probe).flatten(1).sum(1))
    torch.testing.assert_close(forms, torch.stack(expected))


def test_single_probe_chunks_are_exact_too():
    network = _network()
    y = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    probes = torch.randn(4, 3, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        _, together, _ = quadratic_forms(network, y, lambda: [probes], mode="reverse")
        _, one_by_one, _ = quadratic_forms(network, y, lambda: [p[None] for p in probes], mode="reverse")
    torch.testing.assert_close(one_by_one, together)
