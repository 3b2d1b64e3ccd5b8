"""The calibrated rule's variants benchmark: each variant applied to one profile per data set."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import flipd
from flipd.bench.calibrated_variants import (BAND_VARIANT, LIBRARY_VARIANT, VARIANTS, level_profile, main,
                                            score_variants)
from flipd.bench.rules import FIXED_T0
from flipd.bench.synthetic import recipe_for, train_or_load
from flipd.calibrated import smallest_within
from flipd.datasets import get_dataset


def test_smallest_within_takes_the_first_level_near_the_best():
    error = np.array([0.9, 0.5, 0.31, 0.2, 0.25, np.inf])
    assert smallest_within(error, 1.0) == (3, 3)
    assert smallest_within(error, 1.5) == (3, 3)   # 0.31 is above 1.5 x 0.2
    assert smallest_within(error, 1.6) == (2, 3)
    assert smallest_within(error, 2.5) == (1, 3)


def _profile(times: np.ndarray, calibration: np.ndarray, size: np.ndarray) -> dict[str, np.ndarray]:
    n, t = calibration.shape
    curve = np.tile(np.arange(t, dtype=np.float64), (n, 1))  # FLIPD = the level's index
    return {"times": times, "curve": curve, "fixed": np.zeros((n, len(FIXED_T0))),
            "inner": calibration * size, "size": size}


def test_points_that_predict_almost_no_noise_are_left_out_of_the_median_and_weigh_little():
    # Half the points are badly calibrated at the two smallest levels but predict almost no noise
    # there (a full-dimensional part): the median leaves them out (not measured), the size-weighted
    # mean gives them little weight; both read the smallest level.
    times = np.array([0.01, 0.02, 0.05, 0.1])
    calibration = np.full((10, 4), 0.05)
    calibration[:5, :2] = 0.8
    size = np.full((10, 4), 20.0)
    size[:5, :] = 1e-3
    record = score_variants(_profile(times, calibration, size), true=np.zeros(10))
    # FLIPD is the level's index and the truth 0: the MAE is the index of the chosen level.
    for variant in (LIBRARY_VARIANT, "size-weighted, ratio 1.5"):
        assert record["variants"][variant]["t0"] == 0.01 and record["variants"][variant]["mae"] == 0.0
        assert record["variants"][variant]["within_0.1_of_best_fixed"]
    # with as much noise predicted as the others, the same points are measured: the median follows them
    record = score_variants(_profile(times, calibration, np.full((10, 4), 20.0)), true=np.zeros(10))
    assert record["variants"][LIBRARY_VARIANT]["t0"] == 0.05 and record["variants"][LIBRARY_VARIANT]["mae"] == 2.0
    assert record["best_fixed"] == 0.0 and not record["variants"][LIBRARY_VARIANT]["within_0.1_of_best_fixed"]
    # The labelled floor of one-level rules: the level whose FLIPD is closest to the truth.
    assert record["grid_mae"] == [0.0, 1.0, 2.0, 3.0] and record["best_grid_level"] == {"t0": 0.01, "mae": 0.0}


def test_the_band_mean_averages_each_point_over_every_level_near_the_best():
    # Levels 1-3 are within 1.5 x the best median (0.05 at level 2); FLIPD there is 1, 2, 3.
    times = np.array([0.01, 0.02, 0.05, 0.1, 0.2])
    calibration = np.tile([0.5, 0.07, 0.05, 0.06, 0.3], (50, 1))
    record = score_variants(_profile(times, calibration, np.full((50, 5), 20.0)), true=np.full(50, 2.0), resamples=5)
    band = record["variants"]["band mean, ratio 1.5"]
    assert band["t0"] == 0.02 and band["band"] == {"t0_last": 0.1, "levels": 3}
    assert band["mae"] == pytest.approx(0.0)  # (1 + 2 + 3) / 3 = the truth
    assert record["variants"][LIBRARY_VARIANT]["mae"] == pytest.approx(1.0)  # the smallest level of the band
    assert band["resampled"] == {"same_level_fraction": 1.0, "mae_min": pytest.approx(0.0), "mae_max": pytest.approx(0.0)}


def test_best_grid_level_is_the_level_closest_to_the_truth():
    times = np.array([0.01, 0.02, 0.05, 0.1])
    profile = _profile(times, np.full((6, 4), 0.05), np.full((6, 4), 20.0))
    record = score_variants(profile, true=np.full(6, 2.2))  # FLIPD 0, 1, 2, 3 at the four levels
    assert record["grid_mae"] == pytest.approx([2.2, 1.2, 0.2, 0.8])
    assert record["best_grid_level"]["t0"] == 0.05 and record["best_grid_level"]["mae"] == pytest.approx(0.2)


def test_resampled_choices_show_a_level_that_depends_on_a_few_points():
    # Every point is calibrated alike except that at level 0.02 half are good (0.05) and half bad
    # (0.5): the median there sits on the edge, so resamples choose either 0.02 or 0.05.
    times = np.array([0.01, 0.02, 0.05, 0.1])
    calibration = np.tile([0.9, 0.05, 0.06, 0.3], (200, 1))
    calibration[100:, 1] = 0.5
    record = score_variants(_profile(times, calibration, np.full((200, 4), 20.0)), true=np.zeros(200),
                            resamples=40, seed=3)
    resampled = record["variants"]["median, ratio 1"]["resampled"]
    assert 0.1 < resampled["same_level_fraction"] < 0.9
    assert (resampled["mae_min"], resampled["mae_max"]) == (1.0, 2.0)  # FLIPD is the level's index
    # The mean is far from that edge (0.275 at 0.02 against 0.06 at 0.05): its choice does not move.
    assert record["variants"]["size-weighted, ratio 1.5"]["resampled"] == {"same_level_fraction": 1.0, "mae_min": 2.0,
                                                                          "mae_max": 2.0}


def test_the_library_variant_is_what_t0_calibrated_reads(tmp_path):
    spec = "helix:D=13:turns=20:tube=0.1"
    model, _ = train_or_load(spec, recipe_for(spec, tiny=True), cache_dir=tmp_path, progress=False)
    data = get_dataset(spec, 80, seed=1)
    profile = level_profile(model, data.x, seed=0)
    assert profile["curve"].shape == profile["inner"].shape == (80, flipd.plateau_grid(model.schedule).numel())
    record = score_variants(profile, data.lid.astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tiny model: unreliable points are expected
        result = model.estimate(torch.as_tensor(data.x), t0="calibrated", seed=0)
        fixed = model.estimate(torch.as_tensor(data.x), t0=FIXED_T0[2], seed=0).lid.double().numpy()
    assert record["variants"][LIBRARY_VARIANT]["t0"] == pytest.approx(float(result.t0[0]))
    mae = float(np.mean(np.abs(result.lid.double().numpy() - data.lid)))
    assert record["variants"][LIBRARY_VARIANT]["mae"] == pytest.approx(mae, abs=1e-4)
    assert record["fixed"][str(FIXED_T0[2])] == pytest.approx(float(np.mean(np.abs(fixed - data.lid))), abs=1e-4)
    # the band rule's variant reads what t0="band" reads, from the same points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        band = model.estimate(torch.as_tensor(data.x), t0="band", seed=0)
    variant = record["variants"][BAND_VARIANT]
    assert variant["band"]["levels"] == len(band.settings["read_t0"])
    assert variant["band"]["t0_last"] == pytest.approx(band.settings["read_t0"][-1])
    assert variant["mae"] == pytest.approx(float(np.mean(np.abs(band.lid.double().numpy() - data.lid))), abs=1e-4)


def test_command_line_writes_every_variant(tmp_path, capsys):
    out = tmp_path / "variants"
    status = main(["--suite", "curved", "--datasets", "torus:D=12:d=2:ratio=0.2", "--tiny", "--n-eval", "64",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--threads", "1"])
    assert status == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (row,) = report["datasets"]
    assert set(row["variants"]) == set(VARIANTS) and row["n_eval"] == 64
    assert len(row["grid_mae"]) == flipd.plateau_grid(flipd.schedules.VP()).numel()
    assert row["best_grid_level"]["mae"] == min(row["grid_mae"])
    assert all(0.0 <= v["resampled"]["same_level_fraction"] <= 1.0 for v in row["variants"].values())
    assert "bootstrap resamples" in out.with_suffix(".md").read_text()
    # Combining records measures nothing: the counts are those of the records.
    summary = tmp_path / "summary"
    assert main(["--summarize", str(out.with_suffix(".json")), str(out.with_suffix(".json")), "--out", str(summary)]) == 0
    rows = json.loads(summary.with_suffix(".json").read_text())["rows"]
    assert [r["suite"] for r in rows] == ["curved", "curved", "all"] and rows[-1]["sets"] == 2
    for name, variant in row["variants"].items():
        counted = rows[-1]["variants"][name]
        assert counted["within"] == 2 * variant["within_0.1_of_best_fixed"]
        assert counted["within_worst_resample"] <= counted["within_best_resample"]
        assert counted["mean_mae"] == pytest.approx(variant["mae"])
    # A record written before the resamples were kept is refused with its name.
    del report["datasets"][0]["variants"][LIBRARY_VARIANT]["resampled"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(report))
    with pytest.raises(SystemExit) as exit_info:
        main(["--summarize", str(old), "--out", str(tmp_path / "s2")])
    assert exit_info.value.code == 2 and "old.json" in capsys.readouterr().err
    text = out.with_suffix(".md").read_text()
    assert "python -m flipd.bench calibrated_variants --suite curved" in text and LIBRARY_VARIANT in text


def test_command_line_needs_a_suite_or_records(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "v")])
    assert exit_info.value.code == 2 and "--suite is required" in capsys.readouterr().err


def test_command_line_refuses_a_bad_low_t_fraction(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--suite", "toy", "--low-t-fraction", "1.5", "--out", str(tmp_path / "v")])
    assert exit_info.value.code == 2
    assert "--low-t-fraction" in capsys.readouterr().err
