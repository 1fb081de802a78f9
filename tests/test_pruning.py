"""study/pruning.py: the Hyperband arithmetic that sizes a study is Optuna's own."""

from __future__ import annotations

import optuna
import pytest

from study.pruning import REDUCTION_FACTOR, hyperband_budgets


@pytest.mark.parametrize(("epochs", "first"), [(3, 1), (4, 1), (9, 1), (10, 2), (27, 1), (30, 3), (81, 2)])
def test_the_hyperband_brackets_are_optunas(epochs, first):
    """The copy of Optuna's bracket count and per-bracket trial budgets (private in Optuna) against the
    pruner itself, initialised as a study's first trial initialises it."""
    pruner = optuna.pruners.HyperbandPruner(min_resource=first, max_resource=epochs,
                                            reduction_factor=REDUCTION_FACTOR)
    pruner._try_initialization(optuna.create_study(direction="maximize"))
    assert hyperband_budgets(epochs, first) == pruner._trial_allocation_budgets
    assert len(hyperband_budgets(epochs, first)) == pruner._n_brackets
