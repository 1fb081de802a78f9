"""Config: JSON round-trip, overrides, and the messages for bad values."""

from __future__ import annotations

import json

import pytest

from cifar.config import TrainConfig, apply_overrides


def test_round_trip_through_json(tmp_path):
    cfg = apply_overrides(TrainConfig(), {"lr": "0.3", "widths": "16,32", "block": "residual"})
    path = tmp_path / "c.json"
    cfg.to_json(path)
    assert TrainConfig.from_json(path) == cfg
    assert cfg.model.widths == (16, 32) and cfg.lr == 0.3


def test_run_directory_config_json_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": TrainConfig(epochs=3).to_dict(), "provenance": {}}))
    assert TrainConfig.from_json(path).epochs == 3


@pytest.mark.parametrize("overrides, message", [
    ({"lr": "-1"}, "lr must be > 0, got -1.0"),                       # negative lr
    ({"lr": "0"}, "lr must be > 0, got 0.0"),                          # zero lr
    ({"batch_size": "0"}, "batch_size must be > 0, got 0"),            # empty batches
    ({"epochs": "-3"}, "epochs must be > 0, got -3"),                  # negative epochs
    ({"dropout": "1.0"}, "dropout must be in [0, 1), got 1.0"),        # dropout of 1 drops all
    ({"dropout": "-0.1"}, "dropout must be in [0, 1), got -0.1"),      # negative dropout
    ({"optimizer": "lion"}, "unknown optimizer 'lion'"),               # not offered
    ({"schedule": "poly"}, "unknown schedule 'poly'"),                 # not offered
    ({"block": "dense"}, "unknown block 'dense'"),                     # not offered
    ({"colour": "1"}, "unknown config key: 'colour'"),                 # typo in a key
    ({"epochs": "2.5"}, "cannot read '2.5' as int"),                   # fractional int
    ({"nesterov": "maybe"}, "cannot read 'maybe' as bool"),            # not a boolean
])
def test_bad_values_name_the_value(overrides, message):
    with pytest.raises(ValueError) as info:
        apply_overrides(TrainConfig(), overrides)
    assert message in str(info.value)


def test_unknown_nested_key_in_json_is_rejected():
    d = TrainConfig().to_dict()
    d["model"]["kernel"] = 5
    with pytest.raises(ValueError, match="unknown config key: 'kernel'"):
        TrainConfig.from_dict(d)


def test_dotted_and_flat_keys_reach_the_same_field():
    assert apply_overrides(TrainConfig(), {"model.dropout": "0.3"}) == \
        apply_overrides(TrainConfig(), {"dropout": "0.3"})


def test_defaults_are_the_smallcnn_of_the_original_task():
    # Without --config, cifar.train trains configs/smallcnn.json.
    from pathlib import Path

    assert TrainConfig() == TrainConfig.from_json(Path(__file__).resolve().parents[1] / "configs" / "smallcnn.json")
