"""Training recipes: the time samplers, the step count fitted to a time budget, the width rule,
``flipd train --max-minutes`` and the recipes benchmark."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from flipd.cli import app
from flipd.recipes import TIME_SAMPLINGS, mlp_widths, sample_reference_times
from flipd.schedules import VP
from flipd.train import TrainConfig, train_diffusion

runner = CliRunner()


def _times(n: int, seed: int = 0, **options) -> np.ndarray:
    options = {"t_min": 1e-4, "low_t_fraction": 0.0, "low_t_max": 0.2, **options}
    return sample_reference_times(n, generator=torch.Generator().manual_seed(seed), **options).numpy()


# --------------------------------------------------------------------------- time sampling


def test_uniform_times_without_emphasis_are_uniform():
    t = _times(20_000)
    assert t.dtype == np.float64 and t.min() >= 1e-4 and t.max() <= 1
    assert stats.kstest(t, stats.uniform(loc=1e-4, scale=1 - 1e-4).cdf).pvalue > 1e-3


def test_emphasis_draws_its_share_from_the_small_times():
    # Half of the batch from U(1e-4, 0.2), half from U(1e-4, 1): P(t < 0.2) = 0.5 + 0.5 * 0.2.
    t = _times(20_000, low_t_fraction=0.5)
    expected = 0.5 + 0.5 * (0.2 - 1e-4) / (1 - 1e-4)
    assert abs(np.mean(t < 0.2) - expected) < 4 * math.sqrt(expected * (1 - expected) / t.size)


def test_uniform_emphasis_keeps_the_earlier_draws():
    # Checkpoints trained before the recipes module drew exactly these times.
    generator = torch.Generator().manual_seed(3)
    t = 1e-4 + (1 - 1e-4) * torch.rand(512, generator=generator, dtype=torch.float64)
    low = 1e-4 + (0.2 - 1e-4) * torch.rand(512, generator=generator, dtype=torch.float64)
    earlier = torch.where(torch.rand(512, generator=generator) < 0.5, low, t)
    assert torch.equal(torch.from_numpy(_times(512, seed=3, low_t_fraction=0.5)), earlier)


def test_log_sigma_times_are_uniform_in_log_sigma_over_psi():
    t = _times(20_000, low_t_fraction=1.0, sampling="log_sigma", low_t_min=0.002, low_t_max=0.3)
    assert t.min() >= 0.002 * (1 - 1e-9) and t.max() <= 0.3 * (1 + 1e-9)
    schedule = VP()
    delta = schedule.delta(torch.from_numpy(t)).numpy()
    low, high = (float(schedule.delta(torch.tensor(v, dtype=torch.float64))) for v in (0.002, 0.3))
    assert stats.kstest(delta, stats.uniform(loc=low, scale=high - low).cdf).pvalue > 1e-3
    # Against uniform times on the same range, far more of them sit below t = 0.05.
    uniform = _times(20_000, low_t_fraction=1.0, low_t_min=0.002, low_t_max=0.3)
    assert np.mean(t < 0.05) > 0.5 > 2 * np.mean(uniform < 0.05)


def test_time_sampling_rejects_unknown_names_and_empty_ranges():
    assert TIME_SAMPLINGS == ("uniform", "log_sigma")
    with pytest.raises(ValueError, match="log_sigma"):
        _times(4, low_t_fraction=0.5, sampling="loglinear")
    with pytest.raises(ValueError, match="low_t_min < low_t_max"):
        _times(4, low_t_fraction=0.5, low_t_min=0.3, low_t_max=0.2)
    with pytest.raises(ValueError, match="time_sampling"):
        TrainConfig(time_sampling="edm")
    with pytest.raises(ValueError, match="max_seconds"):
        TrainConfig(fit_steps_to_budget=True)
    with pytest.raises(ValueError, match="low_t_max"):
        TrainConfig(low_t_fraction=0.5, low_t_min=0.5, low_t_max=0.2)


def test_configs_written_before_the_recipe_fields_are_unchanged_and_still_load():
    record = TrainConfig(low_t_fraction=0.5).to_json()
    assert not {"time_sampling", "low_t_min", "fit_steps_to_budget"} & set(record)  # earlier cache keys kept
    config = TrainConfig.from_json(record)
    assert (config.time_sampling, config.low_t_min, config.fit_steps_to_budget) == ("uniform", None, False)
    changed = TrainConfig(time_sampling="log_sigma", low_t_min=0.002, max_seconds=5.0, fit_steps_to_budget=True)
    assert TrainConfig.from_json(changed.to_json()) == changed


# --------------------------------------------------------------------------- widths


def test_width_rule():
    assert mlp_widths(2) == mlp_widths(100) == mlp_widths(256) == (256, 256, 256)
    assert mlp_widths(257) == mlp_widths(784) == mlp_widths(3072) == (512, 512, 512)
    with pytest.raises(ValueError, match="positive"):
        mlp_widths(0)


# --------------------------------------------------------------------------- time budget


def _tiny_network(dim: int):
    from flipd.models.mlp import MLPUNetConfig
    from flipd.models.spec import NetworkSpec

    return NetworkSpec("mlp_unet", MLPUNetConfig(data_dim=dim, widths=(32, 32)).to_json())


def test_steps_fitted_to_a_budget_end_the_schedule_with_it():
    torch.manual_seed(0)
    x = torch.randn(1500, 3)
    budget = 1.5
    config = TrainConfig(steps=1_000_000, batch_size=128, max_seconds=budget, fit_steps_to_budget=True,
                         warmup_steps=500, eval_every=500, low_t_fraction=0.5)
    model = train_diffusion(x, network=_tiny_network(3), config=config, progress=False)
    meta = model.metadata
    record = meta["budget"]
    chosen, step_seconds = record["chosen_steps"], record["step_seconds"]
    # The schedule ran to the fitted end (or, if the machine slowed down at the very end, was
    # stopped within its last steps), and its learning rate decayed to the floor.
    # (The slack below is for a shared machine: a descheduled process loses wall-clock time.)
    assert meta["steps_run"] == chosen or meta["stop_reason"] == "max_seconds"
    assert meta["steps_run"] >= (0.9 if meta["stop_reason"] == "steps" else 0.75) * chosen
    assert meta["history"][-1]["lr"] <= 0.05 * config.lr
    if meta["stop_reason"] == "steps":
        assert meta["history"][-1]["lr"] == pytest.approx(config.lr * config.final_lr_fraction)
    # The chosen steps are what the measured step time fits into the budget, and they use most of it.
    assert chosen * step_seconds <= budget
    assert chosen * step_seconds >= 0.5 * budget
    assert meta["seconds"] <= budget + 10 * step_seconds + 3.0  # far below the 1e6 steps asked for
    assert record["first_fit"]["step"] >= 2 and record["fits"] >= 2
    assert record["warmup_steps"] <= max(1, record["first_fit"]["chosen_steps"] // 10)
    assert record["eval_every"] <= max(1, record["first_fit"]["chosen_steps"] // 10)


def test_a_budget_without_fitting_stops_the_schedule_where_it_is():
    x = torch.randn(1500, 3)
    config = TrainConfig(steps=1_000_000, batch_size=128, max_seconds=0.5, warmup_steps=10, eval_every=100)
    meta = train_diffusion(x, network=_tiny_network(3), config=config, progress=False).metadata
    assert meta["stop_reason"] == "max_seconds" and "budget" not in meta
    assert meta["history"][-1]["lr"] > 0.9 * config.lr  # cut off near the peak learning rate


# --------------------------------------------------------------------------- the command line


def _flipd(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _saved_metadata(directory) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_train_max_minutes_fits_the_steps_and_keeps_explicit_steps(tmp_path):
    tiny = ("lollipop", "-n", "1500", "--batch-size", "256", "--widths", "32,32", "--threads", "1", "--quiet")
    fitted = tmp_path / "fitted"
    result = _flipd("train", *tiny, "--out", fitted, "--max-minutes", "0.02")
    assert result.exit_code == 0, result.output
    meta = _saved_metadata(fitted)["metadata"]
    assert meta["train_config"]["fit_steps_to_budget"] is True
    assert meta["budget"]["seconds"] == pytest.approx(1.2)
    assert meta["steps_run"] == meta["budget"]["chosen_steps"] or meta["stop_reason"] == "max_seconds"
    assert meta["history"][-1]["lr"] <= 0.05 * meta["train_config"]["lr"]

    explicit = tmp_path / "explicit"
    result = _flipd("train", *tiny, "--out", explicit, "--max-minutes", "5", "--steps", "30")
    assert result.exit_code == 0, result.output
    meta = _saved_metadata(explicit)["metadata"]
    assert meta["steps_run"] == 30 and meta["train_config"]["steps"] == 30 and "budget" not in meta
    assert "fit_steps_to_budget" not in meta["train_config"]  # the default, left out of the record


def test_train_widths_default_to_the_width_rule(tmp_path):
    out = tmp_path / "default-widths"
    result = _flipd("train", "lollipop", "-n", "600", "--steps", "3", "--batch-size", "64", "--threads", "1", "--quiet",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert '"widths": [256, 256, 256]' in json.dumps(_saved_metadata(out))


def test_training_config_chooses_the_steps():
    from flipd.jobs.train import training_config
    from flipd.recipes import BUDGET_STEP_CAP, DEFAULT_STEPS

    plain = training_config(steps=None, max_seconds=None)
    assert (plain.steps, plain.fit_steps_to_budget, plain.warmup_steps, plain.eval_every) == (DEFAULT_STEPS, False, 400, 500)
    fitted = training_config(steps=None, max_seconds=60.0, low_t_fraction=0.0)
    assert (fitted.steps, fitted.fit_steps_to_budget, fitted.low_t_fraction) == (BUDGET_STEP_CAP, True, 0.0)
    explicit = training_config(steps=300, max_seconds=60.0)
    assert (explicit.steps, explicit.fit_steps_to_budget, explicit.warmup_steps, explicit.eval_every) == (300, False, 30, 75)


def test_train_rejects_a_zero_budget(tmp_path):
    result = _flipd("train", "lollipop", "-n", "100", "--max-minutes", "0", "--out", tmp_path / "m", "--quiet")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-minutes" in errors[0] and "positive" in errors[0]


# --------------------------------------------------------------------------- the benchmark


def test_standardized_mixture_is_the_distribution_of_the_standardised_points():
    from flipd.analytic import GaussianMixture
    from flipd.bench.recipes import standardized_mixture

    mixture = GaussianMixture.random([1, 2], 4, seed=0)
    shift, scale = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    moved = standardized_mixture(mixture, shift, scale)
    for k, (basis, variance) in enumerate(zip(mixture.bases, mixture.variances)):
        covariance = (basis * variance) @ basis.T / scale[:, None] / scale[None, :]
        new_covariance = (moved.bases[k] * moved.variances[k]) @ moved.bases[k].T
        assert torch.allclose(new_covariance, covariance, atol=1e-12)
        assert torch.allclose(moved.means[k], (mixture.means[k] - shift) / scale)
    # Samples of the moved mixture and standardised samples of the original agree in their moments.
    x, _ = mixture.sample(40_000, seed=1)
    z, _ = moved.sample(40_000, seed=2)
    assert torch.allclose(((x - shift) / scale).mean(0), z.mean(0), atol=0.05)
    assert torch.allclose(((x - shift) / scale).std(0), z.std(0), rtol=0.03)


def test_recipes_benchmark_runs_and_rewrites_its_report(tmp_path):
    from flipd.bench.recipes import main

    out = tmp_path / "recipes"
    status = main(["--budget", "1", "--recipes", "reference", "low-t fit", "--datasets",
                   "mixture:affine:D=10:dims=2,4,8:latent=normal", "--n-train", "600", "--n-eval", "16", "--out", str(out)])
    assert status == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"reference", "low-t fit"}
    for row in rows.values():
        assert [level["t0"] for level in row["levels"]] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
        for level in row["levels"]:
            # The perfect model's denoising error is the floor no trained model goes below by much.
            assert 0 < level["perfect_mse"] < 1 and level["model_mse"] > 0.9 * level["perfect_mse"]
            assert np.isfinite(level["flipd_mae"])
    assert rows["low-t fit"]["training"]["chosen_steps"] is not None
    assert rows["reference"]["training"]["stop_reason"] == "max_seconds"
    markdown = out.with_suffix(".md").read_text()
    assert "low-t fit" in markdown and "python -m flipd.bench recipes" in markdown
    out.with_suffix(".md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == markdown


def test_train_time_sampling_option(tmp_path):
    out = tmp_path / "log-sigma"
    result = _flipd("train", "lollipop", "-n", "600", "--steps", "3", "--batch-size", "64", "--widths", "16",
                    "--threads", "1", "--quiet", "--time-sampling", "log_sigma", "--out", out)
    assert result.exit_code == 0, result.output
    config = _saved_metadata(out)["metadata"]["train_config"]
    assert (config["time_sampling"], config["low_t_min"], config["low_t_max"]) == ("log_sigma", 0.002, 0.3)
    rejected = _flipd("train", "lollipop", "-n", "100", "--time-sampling", "edm", "--out", tmp_path / "bad", "--quiet")
    assert rejected.exit_code == 2 and "--time-sampling" in rejected.stderr and "log_sigma" in rejected.stderr


def _recipe_rows_at_steps(out, steps: int, *recipes: str) -> list[dict]:
    """Rows of the recipes benchmark run at exactly ``steps`` steps on the D = 10 mixture."""
    from flipd.bench.recipes import main

    status = main(["--steps", str(steps), "--recipes", *recipes, "--datasets",
                   "mixture:affine:D=10:dims=2,4,8:latent=normal", "--n-train", "400", "--n-eval", "8", "--out", str(out)])
    assert status == 0
    return json.loads(out.with_suffix(".json").read_text())["rows"]


def test_recipes_benchmark_at_equal_steps(tmp_path):
    out = tmp_path / "steps"
    rows = _recipe_rows_at_steps(out, 6, "low-t", "low-t fit", "log-sigma fit")
    assert [row["training"]["steps_run"] for row in rows] == [6, 6, 6]
    assert rows[1]["same_as"] == "low-t" and "same_as" not in rows[2]  # at equal steps only the sampling differs
    assert "exactly 6 steps" in out.with_suffix(".md").read_text()


def test_recipes_benchmark_trains_other_predictions(tmp_path):
    rows = _recipe_rows_at_steps(tmp_path / "predictions", 4, "low-t 0.8 fit", "low-t 0.8 fit x0", "low-t 0.8 fit v")
    # Same options but the prediction: three models, none reused for another.
    assert [row["training"]["prediction"] for row in rows] == ["epsilon", "sample", "v_prediction"]
    assert not any("same_as" in row for row in rows)
    for row in rows:
        assert all(np.isfinite(level["flipd_mae"]) and level["model_mse"] > 0 for level in row["levels"])
