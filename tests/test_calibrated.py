"""The calibrated rule (flipd.calibrated, t0="calibrated"): one level per data set, the
smallest at which the model denoises nearly as well as at its best."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import flipd
from flipd.calibrated import band_contrast, band_reading, calibrated_band, calibrated_level
from flipd.noise import BAND_CONTRAST
from flipd.reliability import reliable_levels
from flipd.schedules import VE, VP, Cosine


@pytest.fixture(scope="module")
def mixture(three_flat_gaussians):
    """A perfect model of three flat Gaussians of dimensions 1, 3 and 6 in R^10 (conftest.py)."""
    return three_flat_gaussians


def test_the_rule_takes_the_smallest_level_within_the_ratio_of_the_best():
    grid = torch.linspace(0.01, 0.2, 8, dtype=torch.float64)
    medians = np.array([0.40, 0.30, 0.14, 0.12, 0.10, 0.08, 0.09, 0.20])  # best 0.08 at level 5
    rng = np.random.default_rng(0)
    calibration = medians * np.exp(rng.normal(0.0, 0.01, size=(501, 8))) * rng.choice([-1.0, 1.0], size=(501, 8))
    level = calibrated_level(calibration, grid)
    assert level.index == 3  # 0.12 <= 1.5 · 0.08, and 0.14 is not
    assert level.t0 == pytest.approx(float(grid[3]))
    assert level.best_t0 == pytest.approx(float(grid[5]))
    assert level.n_points == 501 and level.reliable
    assert calibrated_level(calibration, grid, ratio=1.0).index == 5
    assert calibrated_level(calibration, grid, ratio=2.0).index == 2
    # a model that denoises reliably nowhere is said so
    assert not calibrated_level(calibration + 1.0, grid).reliable


def test_the_band_is_every_level_within_the_ratio_of_the_best():
    grid = torch.linspace(0.01, 0.2, 8, dtype=torch.float64)
    medians = np.array([0.40, 0.30, 0.14, 0.12, 0.10, 0.08, 0.09, np.inf])  # best 0.08; no output at the last
    level = calibrated_level(np.tile(medians, (100, 1)), grid)
    band = calibrated_band(level)
    assert torch.equal(band, grid[3:7]) and float(band[0]) == level.t0  # 0.12, 0.10, 0.08, 0.09 <= 0.12
    assert torch.equal(calibrated_band(calibrated_level(np.tile(medians, (100, 1)), grid, ratio=1.0)), grid[5:6])


@pytest.mark.parametrize("bad", [0.5, True, "1.5", float("nan")])
def test_the_ratio_is_checked(bad):
    with pytest.raises(ValueError, match="ratio must be a number >= 1"):
        calibrated_level(np.zeros((100, 4)), [0.1, 0.2, 0.3, 0.4], ratio=bad)


def test_a_level_chosen_from_few_points_comes_with_a_warning():
    with pytest.warns(RuntimeWarning, match="from only 10 points"):
        calibrated_level(np.full((10, 3), 0.05), [0.1, 0.2, 0.3])


def test_levels_where_the_model_output_is_not_finite_are_skipped():
    calibration = np.full((100, 4), 0.05)
    calibration[3, 0] = np.inf
    assert calibrated_level(calibration, [0.1, 0.2, 0.3, 0.4]).index == 1
    with pytest.raises(ValueError, match="not finite at any level"):
        calibrated_level(np.full((100, 3), np.inf), [0.1, 0.2, 0.3])
    # nothing measured anywhere (full-dimensional data): the smallest usable level, flagged, a band of one
    calibration = np.full((100, 3), np.nan)
    calibration[5, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="look full-dimensional to it"):
        level = calibrated_level(calibration, [0.1, 0.2, 0.3])
    assert level.index == 1 and not level.reliable and calibrated_band(level).tolist() == [0.2]


def test_points_that_look_full_dimensional_are_left_out_of_the_median():
    """A disk in R^2 beside a line: on the disk the ideal noise prediction is O(sigma), the
    calibration Monte Carlo noise; it is not measured there (NaN), and the median is the line's."""
    from flipd.reliability import calibration_of

    inner = torch.tensor([[0.02, 0.4, 0.5], [3.0, 0.6, 0.9], [-0.01, 0.8, 0.4]], dtype=torch.float64)
    size = torch.tensor([[4.0, 4.0, 4.0], [0.004, 0.04, 2.0], [0.16, 4.0, 4.0]], dtype=torch.float64)
    calibration = calibration_of(inner, size, n_draws=4)  # per copy: 1, 1, 1 / 0.001, 0.01, 0.5 / 0.04, 1, 1
    assert torch.isnan(calibration[1, :2]).all() and torch.isnan(calibration[2, 0])
    assert calibration[1, 2] == pytest.approx(0.45) and calibration[0, 0] == pytest.approx(0.005)
    assert torch.isinf(calibration_of(torch.tensor([[math.nan]]), torch.tensor([[4.0]]))).all()
    level = calibrated_level(calibration, [0.1, 0.2, 0.3])
    assert level.median_calibration[0] == pytest.approx(0.005)  # the first point's alone
    assert level.index == 0 and not reliable_levels(calibration)[1, 0]  # not measured: not shown reliable


def test_a_perfect_model_is_read_at_the_smallest_level(mixture):
    model, x, true = mixture
    result = flipd.estimate(model.as_model(VP()), x, t0="calibrated", prediction="score")
    grid = flipd.plateau_grid()
    assert torch.all(result.t0 == grid[0])
    assert bool(result.found.all()) and result.found is result.reliable
    assert float((result.lid.double() - true).abs().mean()) < 0.02
    assert result.settings["rule"] == "calibrated" and result.settings["rule_points"] == 240
    assert "reliable" in result.to_pandas().columns


def test_a_perfect_model_has_a_band_of_the_smallest_levels(mixture):
    model, x, true = mixture
    level = flipd.calibrated_t0(model.as_model(VP()), x, prediction="score")
    band = calibrated_band(level)
    grid = flipd.plateau_grid()
    assert float(band[0]) == float(grid[0]) and float(band[-1]) < 0.02  # the calibration grows from 0
    lid = flipd.flipd_curve(model.as_model(VP()), x, band, prediction="score").mean(1)
    assert float((lid.double() - true).abs().mean()) < 0.05


@pytest.mark.parametrize("schedule, prediction", [(Cosine(), "v_prediction"), (VE(), "sample")])
def test_the_rule_chooses_the_same_smoothing_under_other_schedules(mixture, schedule, prediction):
    model, x, _ = mixture
    result = flipd.estimate(model.as_model(schedule, prediction), x[:80], t0="calibrated", schedule=schedule,
                            prediction=prediction)
    assert float(schedule.delta(result.t0[:1])) == pytest.approx(float(VP().delta(flipd.plateau_grid()[:1])), abs=1e-6)


def test_a_model_that_overshoots_at_small_noise_is_read_above_it(mixture):
    """A score 3 times too large below sigma/psi = 0.1 (calibration 2/3 there) pushes the level up."""
    model, x, true = mixture
    perfect = model.as_model(VP())
    schedule = VP()

    def overshooting(y, t):
        ratio = schedule.sigma(t) / schedule.psi(t)
        scale = torch.where(ratio < 0.1, 3.0, 1.0).to(y).reshape(-1, 1)
        return perfect(y, t) * scale

    result = flipd.estimate(overshooting, x, t0="calibrated", prediction="score")
    chosen = float(schedule.sigma(result.t0[:1]) / schedule.psi(result.t0[:1]))
    assert chosen >= 0.1
    assert chosen < 0.12  # the first level the model is right at
    assert bool(result.reliable.all())
    assert float((result.lid.double() - true).abs().mean()) < 0.1


def test_the_ratio_of_calibrated_t0_sets_the_tolerance(mixture):
    """With the score 3 times too large below sigma/psi = 0.1, a huge ratio accepts the smallest
    level and ratio 1 takes the level the model denoises best, above 0.1."""
    model, x, _ = mixture
    perfect = model.as_model(VP())
    schedule = VP()

    def overshooting(y, t):
        scale = torch.where(schedule.sigma(t) / schedule.psi(t) < 0.1, 3.0, 1.0).to(y).reshape(-1, 1)
        return perfect(y, t) * scale

    grid = flipd.plateau_grid()
    tolerant = flipd.calibrated_t0(overshooting, x, prediction="score", ratio=1e6)
    strict = flipd.calibrated_t0(overshooting, x, prediction="score", ratio=1.0)
    assert tolerant.t0 == pytest.approx(float(grid[0]))
    assert strict.t0 == pytest.approx(strict.best_t0)
    assert float(schedule.sigma(torch.tensor([strict.t0])) / schedule.psi(torch.tensor([strict.t0]))) >= 0.1
    with pytest.raises(ValueError, match="ratio must be a number >= 1"):
        flipd.calibrated_t0(overshooting, x, prediction="score", ratio=0.9)


def test_a_chosen_level_reads_other_points_the_same_way(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    whole = flipd.estimate(perfect, x, t0="calibrated", prediction="score")
    level = flipd.calibrated_t0(perfect, x, prediction="score")
    assert level.t0 == pytest.approx(float(whole.t0[0]))
    part = flipd.estimate(perfect, x[100:], t0=level, prediction="score", indices=range(100, 240))
    assert torch.allclose(part.lid, whole.lid[100:], atol=1e-9, rtol=0)
    assert torch.equal(part.reliable, whole.reliable[100:])
    with pytest.raises(ValueError, match="do not also pass sigma"):
        flipd.estimate(perfect, x, t0=level, sigma=0.1, prediction="score")


def test_a_stream_is_read_at_the_level_of_its_first_points(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=50)
    streamed = flipd.estimate(perfect, loader, t0="calibrated", prediction="score")
    whole = flipd.estimate(perfect, x, t0="calibrated", prediction="score")
    assert streamed.settings["rule_points"] == 240  # chosen once from the stream, not per batch of 50
    assert torch.equal(streamed.t0, whole.t0)
    assert torch.allclose(streamed.lid, whole.lid) and torch.equal(streamed.reliable, whole.reliable)


def test_a_given_level_is_the_level_read(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    chosen = flipd.calibrated_t0(perfect, x, prediction="score")
    grid = flipd.plateau_grid()
    other = chosen._replace(index=5, t0=float(grid[5]))
    result = flipd.estimate(perfect, x[:20], t0=other, prediction="score")
    assert torch.all(result.t0 == grid[5])
    expected = flipd.estimate(perfect, x[:20], t0=float(grid[5]), prediction="score")
    assert torch.allclose(result.lid, expected.lid)
    with pytest.raises(ValueError, match="another schedule's levels"):
        flipd.estimate(model.as_model(VE(), "sample"), x[:5], t0=other, schedule=VE(), prediction="sample")


def test_more_points_than_the_rule_reads_are_read_at_its_level(mixture, monkeypatch):
    """With the sample smaller than the points (as past 2048), the tensor path, a stream and a
    chunk read at the level agree; the level comes from the first points only."""
    import flipd.estimator as estimator

    monkeypatch.setattr(estimator, "CALIBRATION_POINTS", 100)
    model, x, _ = mixture
    schedule = VP()
    perfect = model.as_model(schedule)

    def overshooting(y, t):  # too large a score below sigma/psi = 0.1: the level is not the grid's first
        ratio = schedule.sigma(t) / schedule.psi(t)
        return perfect(y, t) * torch.where(ratio < 0.1, 3.0, 1.0).to(y).reshape(-1, 1)

    whole = flipd.estimate(overshooting, x, t0="calibrated", prediction="score")
    assert whole.settings["rule_points"] == 100
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64)
    streamed = flipd.estimate(overshooting, loader, t0="calibrated", prediction="score")
    level = flipd.calibrated_t0(overshooting, x, prediction="score", n_points=100)
    tail = flipd.estimate(overshooting, x[150:], t0=level, prediction="score", indices=range(150, 240))
    assert streamed.settings["rule_points"] == 100 and level.index > 0
    assert torch.equal(streamed.t0, whole.t0) and float(whole.t0[0]) == level.t0
    assert torch.allclose(streamed.lid, whole.lid) and torch.equal(streamed.reliable, whole.reliable)
    assert torch.allclose(tail.lid, whole.lid[150:]) and torch.equal(tail.reliable, whole.reliable[150:])


def test_the_band_rule_reads_points_past_its_sample_as_a_given_level_does(mixture, monkeypatch):
    """The band rule keeps its sample's FLIPD and computes the other points': the same numbers as
    reading every point at the chosen levels, for a tensor, a stream and a later chunk."""
    import flipd.estimator as estimator

    monkeypatch.setattr(estimator, "CALIBRATION_POINTS", 100)
    model, x, _ = mixture
    perfect = model.as_model(VP())
    whole = flipd.estimate(perfect, x, t0="band", prediction="score")
    level = flipd.calibrated_t0(perfect, x, prediction="score", n_points=100, band=True)
    assert whole.settings["rule_points"] == 100 and level.read_times.numel() > 1
    assert whole.settings["read_t0"] == pytest.approx(level.read_times.tolist())
    again = flipd.estimate(perfect, x, t0=level, prediction="score")  # every point computed at the levels
    assert torch.allclose(whole.lid, again.lid, atol=1e-9, rtol=0) and torch.equal(whole.reliable, again.reliable)
    assert torch.allclose(whole.stderr, again.stderr, equal_nan=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64)
    streamed = flipd.estimate(perfect, loader, t0="band", prediction="score")
    assert torch.allclose(streamed.lid, whole.lid, atol=1e-9, rtol=0)
    tail = flipd.estimate(perfect, x[150:], t0=level, prediction="score", indices=range(150, 240))
    assert torch.allclose(tail.lid, whole.lid[150:], atol=1e-9, rtol=0)


def test_a_stream_with_its_own_indices_chooses_as_the_tensor_does(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    indices = np.arange(1000, 1000 + x.shape[0])
    level = flipd.calibrated_t0(perfect, x, prediction="score", indices=indices)
    streamed = flipd.calibrated_t0(perfect, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64),
                                   prediction="score", indices=indices)
    assert torch.equal(level.median_calibration, streamed.median_calibration)


def test_points_the_model_does_not_denoise_are_flagged_with_a_warning(mixture):
    """A score 5 times too large far out along the first axis: the points there are flagged."""
    model, x, _ = mixture
    perfect = model.as_model(VP())
    values = torch.sort(x[:, 0], descending=True).values
    gaps = values[:-1] - values[1:]
    k = int(torch.argmax(gaps[5:30])) + 5  # the widest gap among the top 6..30 values
    threshold = float(values[k] + values[k + 1]) / 2

    def broken_far_out(y, t):
        schedule = VP()
        far = (y[:, 0] / schedule.psi(t).to(y)) > threshold
        return perfect(y, t) * torch.where(far, 5.0, 1.0).to(y).reshape(-1, 1)

    with pytest.warns(flipd.ScaleNotFoundWarning, match=f"calibrated rule found no scale for {k + 1} of 240"):
        result = flipd.estimate(broken_far_out, x, t0="calibrated", prediction="score")
    assert torch.equal(~result.reliable, x[:, 0] > threshold)
    # a stream of the same points, read batch by batch at the level: one warning over all of them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        streamed = flipd.estimate(broken_far_out, torch.utils.data.DataLoader(x, batch_size=64), t0=result.level,
                                  prediction="score")
    said = [str(warning.message) for warning in caught if issubclass(warning.category, flipd.ScaleNotFoundWarning)]
    assert said == [said[0]] and f"found no scale for {k + 1} of 240 points" in said[0]
    assert torch.equal(streamed.reliable, result.reliable)


def test_a_perfect_model_of_a_line_and_a_plane_in_the_plane_is_read_at_small_noise():
    """The plane's points (LID = D = 2) have no normal noise: their calibration is not measured,
    and the band rule reads both parts at the smallest levels (with the plane's noisy ratios in
    its median the band reached larger noise, MAE 0.11)."""
    from flipd.analytic import GaussianMixture

    mixture = GaussianMixture.random([1, 2], ambient_dim=2, seed=0)
    x, component = mixture.sample(400, seed=1)
    true = torch.tensor([1.0, 2.0], dtype=torch.float64)[component]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", flipd.EstimateWarning)  # the plane's points are flagged: not measured
        result = flipd.estimate(mixture.as_model(VP()), x, t0="band", prediction="score")
    assert float(result.t0[0]) == pytest.approx(float(flipd.plateau_grid()[0]))
    assert float((result.lid.double() - true).abs().mean()) < 0.01
    assert not result.reliable[component == 1].any() and float(result.reliable[component == 0].float().mean()) > 0.95


def test_the_curve_job_marks_the_level_estimate_reads(mixture):
    from flipd.jobs.curve import compute_curves

    model, x, _ = mixture
    perfect = flipd.as_model(model.as_model(VP()), prediction="score")
    grid = flipd.plateau_grid()
    curves = compute_curves(perfect, x[:100], grid, trace="exact", rule="calibrated")
    rule, t0, lid, found = curves.chosen()
    estimated = flipd.estimate(perfect, x[:100], t0="calibrated")
    assert rule == "calibrated" and np.all(t0 == estimated.t0.numpy())
    assert np.allclose(lid, estimated.lid.numpy()) and np.array_equal(found, estimated.reliable.numpy())


def test_the_band_rule_averages_a_wobble_and_keeps_parts_of_different_dimension_apart():
    grid = torch.linspace(0.01, 0.2, 8, dtype=torch.float64)
    level = calibrated_level(np.tile([0.40, 0.30, 0.14, 0.12, 0.10, 0.08, 0.09, 0.5], (100, 1)), grid)
    rng = np.random.default_rng(0)
    wobble = 0.3 * np.sin(np.arange(4) * 2.0)  # [B]: the model's level-to-level error, shared by the points
    one_part = 4.0 + rng.normal(0.0, 0.05, (100, 1)) + wobble  # points alike: their differences are the wobble's
    chosen = band_reading(level, one_part)
    assert torch.equal(chosen.times_read(), calibrated_band(level)) and chosen.contrast < BAND_CONTRAST
    part = np.where(np.arange(100)[:, None] < 50, -1.0, 1.0)
    kept_apart = 4.0 + 2.0 * part + wobble  # parts of dimension 2 and 6: their spread does not shrink
    chosen = band_reading(level, kept_apart)
    assert torch.equal(chosen.times_read(), calibrated_band(level)) and chosen.contrast > BAND_CONTRAST
    assert chosen.contrast == pytest.approx(np.std(kept_apart[:, 0], ddof=1) / np.std(wobble, ddof=1))
    blurring = 4.0 + part * np.array([2.0, 1.9, 1.6, 1.2]) + wobble  # the spread lost: 5%, 20%, 40%
    chosen = band_reading(level, blurring)
    assert torch.equal(chosen.times_read(), calibrated_band(level)[:2])
    assert torch.equal(band_reading(level, blurring, max_spread_loss=0.0).times_read(), calibrated_band(level)[:1])
    assert band_contrast(np.ones((5, 4))) == math.inf and band_contrast(np.ones((1, 4))) == 0.0
    with_nan = np.vstack([kept_apart, np.full((1, 4), np.nan)])  # a point without finite FLIPD is left out
    assert band_contrast(with_nan) == pytest.approx(band_contrast(kept_apart))
    assert torch.equal(band_reading(level, np.vstack([blurring, np.full((1, 4), np.nan)])).times_read(),
                       calibrated_band(level)[:2])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        band_reading(level, one_part[:, :3])


def test_the_band_rule_reads_a_perfect_model_of_several_dimensions_at_its_smallest_levels(mixture):
    model, x, true = mixture
    perfect = model.as_model(VP())
    band = flipd.estimate(perfect, x, t0="band", prediction="score")
    calibrated = flipd.estimate(perfect, x, t0="calibrated", prediction="score")
    assert band.settings["rule"] == "band" and band.settings["band_contrast"] > BAND_CONTRAST
    read = band.settings["read_t0"]
    assert read[0] == pytest.approx(float(calibrated.t0[0])) and read[-1] < 0.02
    assert torch.equal(band.t0, calibrated.t0) and torch.equal(band.reliable, calibrated.reliable)
    assert float((band.lid.double() - true).abs().mean()) < 0.05


def test_a_band_read_is_each_points_mean_over_its_levels_for_tensors_and_streams(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    level = flipd.calibrated_t0(perfect, x, prediction="score", band=True)
    grid = flipd.plateau_grid()
    spread = level._replace(read_times=grid[[0, 3, 6]].clone())  # as if the band rule had chosen three levels
    result = flipd.estimate(perfect, x[:30], t0=spread, prediction="score")
    expected = flipd.flipd_curve(perfect, x[:30], grid[[0, 3, 6]], prediction="score").mean(1)
    assert torch.allclose(result.lid, expected) and torch.all(result.t0 == grid[0])
    assert result.settings["read_t0"] == pytest.approx(grid[[0, 3, 6]].tolist())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=50)
    streamed = flipd.estimate(perfect, loader, t0="band", prediction="score")
    whole = flipd.estimate(perfect, x, t0="band", prediction="score")
    assert streamed.settings["read_t0"] == whole.settings["read_t0"] and torch.allclose(streamed.lid, whole.lid)


def test_t0_auto_is_the_band_rule(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    auto = flipd.estimate(perfect, x[:100], t0="auto", prediction="score")
    band = flipd.estimate(perfect, x[:100], t0="band", prediction="score")
    assert auto.settings == band.settings and torch.equal(auto.lid, band.lid) and auto.knee_found is None


def _counting_rows(monkeypatch) -> list[int]:
    """Record the points of every fixed-level FLIPD call (each call reads its points at one level)."""
    import flipd.estimator as estimator

    rows: list[int] = []
    original = estimator._estimate_fixed

    def counted(fn, x, times, **options):
        rows.append(int(x.shape[0]))
        return original(fn, x, times, **options)

    monkeypatch.setattr(estimator, "_estimate_fixed", counted)
    return rows


def test_a_stream_read_by_the_band_rule_computes_each_point_once_at_each_level(mixture, monkeypatch):
    """The stream's first points are read once, as the tensor's are: the choice's FLIPD is kept,
    and the result's level reads further points at the same levels."""
    import flipd.estimator as estimator

    monkeypatch.setattr(estimator, "CALIBRATION_POINTS", 100)
    model, x, _ = mixture
    perfect = model.as_model(VP())
    rows = _counting_rows(monkeypatch)
    whole = flipd.estimate(perfect, x, t0="band", prediction="score")
    tensor_rows = sum(rows)
    rows.clear()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=64)
    streamed = flipd.estimate(perfect, loader, t0="band", prediction="score")
    assert sum(rows) == tensor_rows  # no point read twice at a level
    band, read = calibrated_band(whole.level).numel(), whole.level.times_read().numel()
    assert tensor_rows == 100 * band + (x.shape[0] - 100) * read and band >= read == len(whole.settings["read_t0"])
    assert torch.allclose(streamed.lid, whole.lid, atol=1e-9, rtol=0) and torch.equal(streamed.reliable, whole.reliable)
    assert streamed.level.t0 == whole.level.t0 and torch.equal(streamed.level.read_times, whole.level.read_times)
    again = flipd.estimate(perfect, x[150:], t0=whole.level, prediction="score", indices=range(150, 240))
    assert torch.allclose(again.lid, whole.lid[150:], atol=1e-9, rtol=0)
    short = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:90]), batch_size=64)  # ends before 100
    assert torch.allclose(flipd.estimate(perfect, short, t0="band", prediction="score").lid,
                          flipd.estimate(perfect, x[:90], t0="band", prediction="score").lid, atol=1e-9, rtol=0)


def test_the_rules_ratio_is_an_option_of_estimate(mixture):
    model, x, _ = mixture
    perfect = model.as_model(VP())
    for ratio in (1.0, 3.0):
        chosen = flipd.estimate(perfect, x[:100], t0="calibrated", prediction="score", calibrated_ratio=ratio)
        level = flipd.calibrated_t0(perfect, x[:100], prediction="score", ratio=ratio)
        assert chosen.level.t0 == level.t0 and chosen.level.ratio == ratio and torch.all(chosen.t0 == level.t0)
    assert flipd.estimate(perfect, x[:100], t0="calibrated", prediction="score").level.ratio == 1.5
    assert flipd.estimate(perfect, x[:10], t0=0.05, prediction="score").level is None
    with pytest.raises(ValueError, match="calibrated_ratio"):
        flipd.estimate(perfect, x[:10], t0=0.05, prediction="score", calibrated_ratio=2.0)
    with pytest.raises(ValueError, match="ratio"):
        flipd.estimate(perfect, x[:10], t0="band", prediction="score", calibrated_ratio=0.5)
