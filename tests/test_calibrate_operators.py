"""The calibration sweep probes the scripted workers' own operators from a chosen start (no training here)."""

from pathlib import Path

import pytest
import yaml

from hpc_aevo.roles.scripted.worker import operators
from hpc_aevo.tools.calibrate import operator_variants, parse_assignment, start_recipe

REPO = Path(__file__).resolve().parents[1]


def test_the_start_is_the_policy_standing_recipe_with_the_keys_set():
    recipe = start_recipe(REPO / "substrate", REPO / "policy" / "demo.yaml", [parse_assignment("optim.steps=300")])
    assert recipe["optim"]["lr"] == 2.5e-4 and recipe["optim"]["steps"] == 300
    substrate_recipe = yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text())
    assert start_recipe(REPO / "substrate", None, []) == substrate_recipe


def test_operators_are_probed_as_the_workers_apply_them():
    recipe = start_recipe(REPO / "substrate", None, [("optim.lr", 2.5e-4)])
    probes = operator_variants(recipe, ["budget", "optim.lr:up*2", "data.mixture.sequence:up"])
    assert probes["optim.lr:up*2"] == {"optim.lr": 1e-3}  # two edits of x2
    assert probes["optim.steps:up"] == {"optim.steps": 750, "checkpoints.every": 187}  # as many checkpoints
    assert probes["data.mixture.sequence:up"] == {"data.mixture.sequence": 3.0}
    assert {op.signature for op in operators("budget", recipe)} <= set(probes)


@pytest.mark.parametrize("name", ["nope", "optim.lr:sideways"])
def test_an_unknown_operator_is_refused_in_one_line(name):
    with pytest.raises(ValueError, match=rf"^--operators {name}: neither an axis"):
        operator_variants(yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text()), [name])
