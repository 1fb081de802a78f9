"""cifar/recipes.py: the fast recipe's config files are generated from values written as their derivations."""

from __future__ import annotations

import json

import pytest

from cifar.config import TrainConfig
from cifar.recipes import CONFIGS, FILES, nested, recipe_config


@pytest.mark.parametrize("name", FILES)
def test_the_committed_config_files_are_what_the_recipe_module_makes(name):
    assert (CONFIGS / name).read_text() == json.dumps(nested(FILES[name]), indent=2) + "\n"
    assert TrainConfig.from_json(CONFIGS / name) == recipe_config(FILES[name])


@pytest.mark.parametrize("name", FILES)
def test_every_value_is_its_derivation_with_a_reason(name):
    keys = [v.key for v in FILES[name]]
    assert len(keys) == len(set(keys)), "a key given twice"
    for v in FILES[name]:
        if isinstance(v.value, str | bool):
            assert v.derivation == str(v.value), v.key
        else:  # an arithmetic expression, as the source writes it
            assert eval(v.derivation, {"__builtins__": {}}, {"round": round}) == v.value, v.key  # noqa: S307
        assert len(v.reason) > 10, v.key
