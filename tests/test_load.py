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
    assert result["kills"] == 1 and result["failed"] >= 1, result  # the kill landed on a running trial
    assert (result["lost"], result["duplicated"], result["stuck"]) == (0, 0, 0), result
    assert result["retried"] == result["failed"] and result["exit_codes_nonzero"] == {}, result
    assert result["lineages"] >= 10 and result["peak_rss_mb"]["workers_measured"] >= 4, result
