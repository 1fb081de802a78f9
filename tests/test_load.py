"""bench/load.py, short: workers on one PostgreSQL study, one of them SIGKILLed mid-study and started
again; none of the trials is lost, duplicated or left running, and the killed trial's retry resumes."""

from __future__ import annotations

import os

import pytest

from tests.test_study import POSTGRES_ENV


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"{POSTGRES_ENV} is not set")
def test_workers_killed_and_restarted_lose_and_duplicate_nothing(tmp_path):
    from bench.load import faults

    result = faults(os.environ[POSTGRES_ENV], workers=4, trials=10, kill_share=0.25, epochs=6, seed=1,
                    work=tmp_path, kill_window=(4.0, 6.0))
    assert result["kills"] == 1 and result["failed"] >= 1, result
    killed = result["kill_times_s"][0]["trial"]
    assert killed is not None and result["retried_while_alive"] == 0, result  # the kill landed on a running trial
    assert (result["lost"], result["duplicated"], result["stuck"], result["lost_lineages"]) == (0, 0, 0, []), result
    assert result["retried"] == result["failed"] and result["exit_codes_nonzero"] == {}, result
    # killed past its first epoch: the retry resumed from the checkpoint (none started over beside one)
    assert result["resumed_from_checkpoint"] >= 1 and result["started_over_with_a_checkpoint"] == 0, result
    assert result["lineages"] >= 10 and result["peak_rss_mb"]["workers_measured"] >= 4, result


def test_too_many_workers_on_one_sqlite_file_get_one_line_naming_postgresql(tmp_path):
    import json

    import optuna

    from bench.storage_cost import summarise
    from study.storage import crowding_warning

    rows = [{"storage": s, "processes": n, "errors": e, "seconds_per_trial_median": m}
            for s, n, e, m in [("rdb-sqlite", 1, 0, 0.02), ("rdb-sqlite", 4, 0, 0.05), ("rdb-sqlite", 8, 3, 0.4),
                               ("rdb-sqlite", 16, 40, 2.0), ("rdb-postgresql", 1, 0, 0.03),
                               ("rdb-postgresql", 16, 0, 0.06)]]
    summary = summarise(rows, 16)
    assert summary["sqlite_errors_from"] == 8 and summary["storages"]["rdb-postgresql"]["shared_over_alone"] == 2.0
    results = tmp_path / "load.json"
    results.write_text(json.dumps({"machine": "2-core test CPU", "cost_summary": summary}))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert crowding_warning(url, study, 7, results) is None  # 7: one under where errors started
    line = crowding_warning(url, study, 8, results)
    assert "\n" not in line and "8 workers" in line and "PostgreSQL" in line and "errors start at 8" in line
    study.ask()  # a trial running elsewhere writes to the file too
    assert "8 workers" in crowding_warning(url, study, 7, results)
    assert crowding_warning("postgresql://u@h/db", study, 99, results) is None  # a server takes them
    assert crowding_warning(url, study, 99, tmp_path / "unmeasured.json") is None
    results.write_text(json.dumps({"cost_summary": summarise(rows[:2], 4)}))  # no errors up to the most tried
    assert "no more than 4 were measured" in crowding_warning(url, study, 5, results)
