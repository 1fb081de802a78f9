"""The test-set seal: while model selection runs, no code in this process can read the test set.

``CifarData.lock_test`` locks one data object; the seal locks the process. Inside
``sealed(why)`` every test read raises ``TestSetLocked``, however it is reached:
the test split of any data prepared then (``prepare_data``), a test evaluation of
a run directory (``cifar.evaluate.evaluate_run``), and a run's saved test metrics
and predictions (``RunDir.read_test_metrics``, ``read_predictions``). The report
seals the test set for its race and opens it only after the selection record is
written to the study.

Usage:
    with sealed("the race selects on validation"):
        winner = race(...)
    record_selection(study, winner)   # then read the test set
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_why: list[str] = []  # why the test set is sealed, innermost last (empty: open)


class TestSetLocked(RuntimeError):
    """The test set was read while locked (before model selection was done)."""


def check_open(what: str) -> None:
    """Raise TestSetLocked naming ``what`` if the test set is sealed."""
    if _why:
        raise TestSetLocked(f"the test set is sealed ({_why[-1]}): {what} reads it")


def reason() -> str | None:
    """Why the test set is sealed now, or None."""
    return _why[-1] if _why else None


@contextlib.contextmanager
def sealed(why: str) -> Iterator[None]:
    """No test read in this process until the block ends."""
    _why.append(why)
    try:
        yield
    finally:
        _why.pop()
