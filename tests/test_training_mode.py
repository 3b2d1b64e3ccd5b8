"""A network left in training mode (dropout, batch norm) is warned about wherever flipd calls it."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

import flipd
from flipd.baselines import estimate_fpregress, estimate_nb
from flipd.models.base import layers_in_training_mode


class DropoutNet(nn.Module):
    """An epsilon network with dropout: in training mode every call draws a new mask."""

    def __init__(self, dim: int = 3, p: float = 0.3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(dim + 1, 32), nn.SiLU(), nn.Dropout(p), nn.Linear(32, dim))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([y, t[:, None]], dim=1))


X = torch.randn(30, 3, generator=torch.Generator().manual_seed(1))
TRAINING_MODE = "training mode.*model.eval()"


def test_dropout_in_training_mode_changes_the_estimate_and_is_warned_about():
    network = DropoutNet()
    with pytest.warns(RuntimeWarning, match=TRAINING_MODE) as caught:
        first = flipd.flipd(network, X, seed=0)
        second = flipd.flipd(network, X, seed=0)
    assert not torch.equal(first, second)  # what the warning is about: one seed, two answers
    assert "DropoutNet.body.2" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller, not at flipd's internals


def test_eval_mode_is_quiet_and_reproducible():
    network = DropoutNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", flipd.EstimateWarning)  # an untrained network reads outside [0, D]
        assert torch.equal(flipd.flipd(network, X, seed=0), flipd.flipd(network, X, seed=0))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda net: flipd.as_model(net),
        lambda net: flipd.ModelAdapter(net),
        lambda net: flipd.as_model(flipd.ModelAdapter(net)),
        lambda net: net.forward,
        lambda net: functools.partial(net),
        lambda net: (lambda y, t: net(y, t)),
    ],
    ids=["as_model", "adapter", "model_of_adapter", "bound_forward", "partial", "closure"],
)
def test_the_module_inside_a_wrapper_is_found(wrap):
    assert layers_in_training_mode(wrap(DropoutNet())) == ["DropoutNet.body.2"]
    assert layers_in_training_mode(wrap(DropoutNet().eval())) == []


def test_layers_that_do_not_depend_on_the_mode_are_not_reported():
    plain = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.0), nn.LayerNorm(3))  # training mode, same output
    assert layers_in_training_mode(plain) == []
    assert layers_in_training_mode(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))) == ["Sequential.1"]


def test_curves_and_baselines_warn_too():
    network = DropoutNet()
    with pytest.warns(RuntimeWarning, match=TRAINING_MODE):
        flipd.flipd_curve(network, X[:5], [0.02, 0.05])
    with pytest.warns(RuntimeWarning, match=TRAINING_MODE):
        estimate_nb(network, X[:3], t=0.01, n_copies=8)
    with pytest.warns(RuntimeWarning, match=TRAINING_MODE):
        estimate_fpregress(network, X[:3])


def test_a_flipd_model_put_back_in_training_mode_is_warned_about():
    from flipd.train import DiffusionModel

    model = DiffusionModel(DropoutNet(), shift=torch.zeros(3), scale=torch.ones(3), network_input="schedule")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", flipd.EstimateWarning)  # an untrained network reads outside [0, D]
        flipd.flipd(model, X[:4])  # a flipd model starts in eval mode
    model.train()
    with pytest.warns(RuntimeWarning, match=TRAINING_MODE):
        flipd.flipd(model, X[:4])
