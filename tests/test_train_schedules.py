"""Training and checkpoints for every schedule and prediction (flipd.train, flipd.models.checkpoint)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import flipd
from flipd.cli import app
from flipd.models import NetworkSpec, mlp_unet
from flipd.models.checkpoint import reference_inputs
from flipd.noise import REFERENCE_SCHEDULE, delta_range
from flipd.schedules import VE, VP, Cosine, RectifiedFlow, Schedule
from flipd.train import CheckpointError, DiffusionModel, TrainConfig, _denoising_loss, load, schedule_times, train_diffusion

from test_train import TINY, circle, tiny_config

SPEC = NetworkSpec("mlp_unet", TINY.to_json())

COMBINATIONS = [
    (VP(), "epsilon"),
    (Cosine(), "v_prediction"),
    (VE(), "sample"),
    (RectifiedFlow(), "flow_velocity"),
    (VP(), "score"),
]


def weights(model: DiffusionModel) -> list[torch.Tensor]:
    return [*model.network.state_dict().values(), *model.online_network.state_dict().values()]


def noise_space_loss(network, schedule: Schedule, prediction: str, z: torch.Tensor, seed: int = 5) -> float:
    """Mean loss ‖eps_hat − eps‖² on fixed draws at reference times U(0.01, 0.3) carried to ``schedule``."""
    generator = torch.Generator().manual_seed(seed)
    reference_t = 0.01 + 0.29 * torch.rand(z.shape[0], generator=generator, dtype=torch.float64)
    noise = torch.randn(z.shape, generator=generator)
    with torch.no_grad():
        return float(_denoising_loss(network, z, schedule_times(schedule, reference_t), noise, schedule, prediction).mean())


class GaussianDenoiser(torch.nn.Module):
    """E[eps | y] for standard normal data, as an epsilon network fed reference-VP inputs."""

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return REFERENCE_SCHEDULE.sigma(t).to(y)[:, None] * y


@pytest.mark.parametrize("schedule, prediction", COMBINATIONS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_every_schedule_and_prediction_trains_saves_and_estimates(schedule, prediction, tmp_path):
    config = tiny_config(schedule=schedule, prediction=prediction)
    model = train_diffusion(circle(4000), network=SPEC, config=config, progress=False)
    assert model.schedule == schedule and model.prediction == prediction
    history = model.metadata["history"]
    # (The ratio was at most 0.79 over seeds 0-3: v and flow velocity start lower than epsilon.)
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"]
    # In noise space every prediction is compared with the best denoiser for Gaussian data.
    # Measured over seeds 0-3 after 300 steps: 0.70-0.77 of its loss for epsilon, v and flow
    # velocity; 0.85-0.87 for sample and 0.88-0.96 for score, whose outputs must resolve x0 or
    # eps/sigma at small noise.
    z = model.standardize(circle(2000, seed=1))
    learned = noise_space_loss(model.network, schedule, prediction, z)
    gaussian = noise_space_loss(GaussianDenoiser(), schedule, "epsilon", z)
    zero = noise_space_loss(lambda y, t: torch.zeros_like(y), schedule, "epsilon", z)
    assert zero == pytest.approx(2.0, rel=0.1)
    assert learned < (1.0 if prediction in ("sample", "score") else 0.85) * gaussian < zero

    model.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["schedule"] == schedule.to_config() and saved["prediction"] == prediction
    assert saved["metadata"]["train_config"]["schedule"] == schedule.to_config()
    loaded = load(tmp_path / "model")
    assert loaded.schedule == schedule and loaded.prediction == prediction
    y = torch.randn(64, 2)
    t = schedule_times(schedule, torch.rand(64, dtype=torch.float64) * 0.99 + 0.01)
    assert torch.equal(model(y, t), loaded(y, t))

    x = circle(100, seed=2)
    lid = flipd.flipd(loaded, x)  # the default noise level: t0 = 0.05 of the reference schedule, as delta
    assert lid.shape == (100,) and torch.isfinite(lid).all()
    assert torch.equal(lid, flipd.flipd(model, x))


def test_the_default_config_is_the_reference_vp_with_epsilon():
    config = TrainConfig()
    assert config.noise_schedule() == VP() and config.prediction == "epsilon"
    assert config.schedule == {"kind": "VP", "beta_min": 0.1, "beta_max": 20.0}
    assert (config.beta_min, config.beta_max) == (0.1, 20.0)
    assert TrainConfig.from_json(config.to_json()) == config


def test_reference_vp_training_is_unchanged_by_naming_the_schedule():
    # The same draws and the same loss as before schedules could be chosen: bit-identical weights.
    data = circle(600)
    runs = [
        train_diffusion(data, network=SPEC, config=tiny_config(steps=40, low_t_fraction=0.5, **options), progress=False)
        for options in ({}, {"schedule": VP().to_config(), "prediction": "epsilon"}, {"beta_min": 0.1, "beta_max": 20.0})
    ]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(weights(runs[0]), weights(other)))
        losses = [(r["train_loss"], r["val_loss"]) for r in other.metadata["history"]]
        assert losses == [(r["train_loss"], r["val_loss"]) for r in runs[0].metadata["history"]]


def test_old_configs_with_beta_fields_mean_vp():
    old = {"steps": 10, "beta_min": 0.2, "beta_max": 10.0}
    config = TrainConfig.from_json(old)
    assert config.noise_schedule() == VP(0.2, 10.0)
    assert config.schedule == {"kind": "VP", "beta_min": 0.2, "beta_max": 10.0}
    assert TrainConfig.from_json(config.to_json()) == config
    ve = TrainConfig(schedule=VE(sigma_max=50.0))
    assert ve.schedule == {"kind": "VE", "sigma_max": 50.0} and ve.beta_min is None
    assert TrainConfig.from_json(ve.to_json()) == ve


@pytest.mark.parametrize("options, fragment", [
    ({"schedule": {"kind": "Linear"}}, "TrainConfig.schedule: Unknown schedule kind 'Linear'"),
    ({"schedule": {"kind": "VE", "beta_max": 3}}, "TrainConfig.schedule: Schedule VE takes sigma_max"),
    ({"schedule": "ve"}, "TrainConfig.schedule"),
    ({"schedule": VE(), "beta_max": 30.0}, "beta_min/beta_max .* contradict TrainConfig.schedule"),
    ({"beta_min": 5.0, "beta_max": 1.0}, "TrainConfig.beta_min/beta_max: VP needs"),
    ({"prediction": "noise"}, "TrainConfig.prediction must be one of score, epsilon"),
])
def test_bad_schedules_and_predictions_are_named(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainConfig(**options)


def test_schedule_times_match_the_reference_smoothing():
    reference_t = torch.tensor([1e-4, 0.01, 0.05, 0.3, 0.9, 1.0], dtype=torch.float64)
    assert torch.equal(schedule_times(VP(), reference_t), reference_t)
    for schedule in (Cosine(), RectifiedFlow()):
        t = schedule_times(schedule, reference_t)
        assert torch.allclose(schedule.delta(t), REFERENCE_SCHEDULE.delta(reference_t), atol=1e-9)
    # A VP with half the betas reaches less noise: higher levels are clamped to its end, t = 1.
    t = schedule_times(VP(0.05, 10.0), reference_t)
    assert torch.allclose(VP(0.05, 10.0).delta(t[:4]), REFERENCE_SCHEDULE.delta(reference_t[:4]), atol=1e-9)
    assert torch.allclose(t[4:], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # The closed forms used for the training draws agree with the schedules' bisection.
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.9 + 1e-4
    for schedule in (Cosine(offset=0.02), RectifiedFlow(), VE(), VP(0.05, 10.0)):
        bisection = schedule.t_from_delta(REFERENCE_SCHEDULE.delta(u).clamp(*delta_range(schedule)))
        assert torch.allclose(schedule_times(schedule, u), bisection, rtol=1e-9, atol=0)
    # VE stops at sigma_max = 80: larger levels are clamped to its end.
    t = schedule_times(VE(), reference_t)
    assert torch.allclose(t[:4], REFERENCE_SCHEDULE.delta(reference_t[:4]).exp(), rtol=1e-9)
    assert float(t.max()) == pytest.approx(80.0, rel=1e-12) and float(t.max()) <= 80.0


def test_the_network_sees_every_schedule_as_the_reference_vp():
    # A VE point at sigma = t is the reference-VP point at the same delta, divided by psi_ref.
    seen = {}

    def network(y, t):
        seen["y"], seen["t"] = y, t
        return torch.zeros_like(y)

    model = DiffusionModel(network, shift=torch.zeros(2), scale=torch.ones(2), schedule=VE(), prediction="sample")
    y, t = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    model(y, t)
    u = REFERENCE_SCHEDULE.t_from_delta(t.log())
    assert torch.allclose(seen["t"], u) and float(seen["t"].max()) <= 1.0
    assert torch.allclose(seen["y"], y * REFERENCE_SCHEDULE.psi(u)[:, None])
    y_ref, t_ref = reference_inputs(VP(), y, t[:2])
    assert y_ref is y  # the reference schedule's inputs pass through untouched


def test_old_checkpoints_still_load_and_bad_fields_are_named(tmp_path):
    model = DiffusionModel(mlp_unet(2, (8,)), shift=torch.zeros(2), scale=torch.ones(2), schedule=VP(0.2, 10.0))
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    assert config["network_input"] == "reference"
    # Written before other schedules: VP betas only, no network_input (times passed as they are).
    old = {k: v for k, v in config.items() if k not in ("network_input", "prediction")}
    path.write_text(json.dumps(old))
    loaded = load(tmp_path / "m")
    assert loaded.schedule == VP(0.2, 10.0) and loaded.prediction == "epsilon" and loaded.network_input == "schedule"
    y, t = torch.randn(5, 2), torch.rand(5) * 0.9 + 0.1
    assert torch.equal(loaded(y, t), model.network(y, t))
    for field, value, fragment in [
        ("schedule", {"kind": "VP", "beta_min": 1.0, "beta_max": 0.5}, "invalid 'schedule' field"),
        ("schedule", {"kind": "Linear"}, "invalid 'schedule' field.*Unknown schedule kind"),
        ("prediction", "noise", "invalid 'prediction' field.*Unknown prediction 'noise'"),
        ("network_input", "raw", "invalid 'network_input' field 'raw'"),
    ]:
        path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(CheckpointError, match=fragment):
            load(tmp_path / "m")


def test_cli_trains_any_schedule_and_estimate_uses_it(tmp_path):
    runner = CliRunner()
    model_dir = tmp_path / "ve"
    tiny = ("-n", "1500", "--steps", "40", "--batch-size", "256", "--widths", "32,32", "--threads", "1", "--quiet")
    result = runner.invoke(app, ["train", "lollipop", "--out", str(model_dir), *tiny, "--schedule", "ve", "--prediction", "sample"])
    assert result.exit_code == 0, result.output
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["schedule"] == VE().to_config() and saved["prediction"] == "sample"
    table = tmp_path / "ve.parquet"
    result = runner.invoke(app, ["estimate", "lollipop", "--model", str(model_dir), "-n", "32", "--out", str(table), "--threads", "1"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(table)
    assert len(frame) == 32 and frame["lid"].notna().all()
    # The default level is the reference t0 = 0.05 carried to VE: sigma = t = e^delta.
    assert frame["delta"].to_numpy() == pytest.approx(float(REFERENCE_SCHEDULE.delta(0.05)))
    for option, value in (("--schedule", "edm"), ("--prediction", "noise")):
        rejected = runner.invoke(app, ["train", "lollipop", "--out", str(tmp_path / "bad"), *tiny, option, value])
        assert rejected.exit_code == 2 and option in rejected.output
