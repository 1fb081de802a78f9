"""bench/verdict_calibration.py: the simulated procedure's rates, its noise source and its trade-off table."""

from __future__ import annotations

import json

import pytest

import bench.verdict_calibration as vc

NOISE = {"val_std": 0.003, "test_std": 0.002}


def test_no_difference_decides_wrongly_at_about_alpha_and_a_large_gain_is_found():
    aa = vc.simulate(0.0, NOISE, (6,), 2, 2, 400, seed=1)
    rates = {o: r["rate"] for o, r in aa["outcomes"].items()}
    assert sum(rates.values()) == pytest.approx(1.0)
    assert aa["false_decision"]["rate"] < 0.12  # nominal 5%; 400 replications leave room
    assert aa["mean_pairs"] == 6 and aa["mean_race_runs"] == 6  # 3 contestants x 2 rounds, one look
    big = vc.simulate(0.02, NOISE, (6,), 2, 2, 200, seed=2)  # 2 points against 0.2-0.3 points of noise
    assert big["power"]["rate"] > 0.95 and big["outcomes"]["worse"]["rate"] == 0.0
    assert big["race_picked_the_best"] > 0.9


def test_the_noise_comes_from_the_committed_seeds(tmp_path):
    runs = [{"name": "fast-3ep", "overrides": {"epochs": 3}, "seed": s, "best_val_acc": 0.81 + 0.001 * s,
             "test_acc": 0.80 + 0.002 * (s % 2), "test_acc_tta": 0.82, "machine_before_run": {"cpu": "x"}}
            for s in range(4)]
    runs[3]["test_acc_tta"] = 0.821
    (tmp_path / "tta.json").write_text(json.dumps({"runs": runs}))
    noise = vc.measured_noise(3, tmp_path / "tta.json")
    assert noise["seeds"] == [0, 1, 2, 3] and noise["val_std"] == pytest.approx(0.00129, abs=1e-5)
    low, high = noise["tta_variance_ratio_ci"]
    assert low < noise["tta_variance_ratio"] < high
    with pytest.raises(SystemExit, match="needs 3 or more"):
        vc.measured_noise(5, tmp_path / "tta.json")


def test_the_tradeoff_table_rows():
    rows = vc.tradeoff(epochs=(3,))
    assert [r["images_per_s"] for r in rows] == list(vc.SPEEDS)
    assert all(r["looks"][0] == 6 for r in rows)
    assert rows[0]["trials"] <= rows[-1]["trials"]  # a faster machine affords more trials
    table = vc.tradeoff_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| 440 | 3 |" in table
