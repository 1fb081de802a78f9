"""bench/common.py: a benchmark's child process is measured on its own."""

from __future__ import annotations

import pytest

from bench.common import run_python


def test_a_childs_peak_memory_is_its_own_not_the_benchmarks():
    held = bytearray(b"x" * (400 * 2**20))  # 400 MB resident in this process, the child's parent's parent
    usage = run_python(["-c", "pass"])
    assert usage.ru_maxrss / 1024 < 100  # a bare interpreter: tens of MB, not this process's 400
    assert usage.ru_utime >= 0 and usage.ru_minflt > 0
    del held


def test_a_failing_child_exits_with_one_line():
    with pytest.raises(SystemExit, match="exited with 3"):
        run_python(["-c", "raise SystemExit(3)"], quiet=True)
