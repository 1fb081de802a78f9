"""The Optuna driver: search space, objective, storage, presets, workers and the study CLI."""
