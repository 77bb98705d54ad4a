"""The planted proxy trap springs: up-weighting `sequence` buys dev score that the leaderboard does not pay.

The campaign's decoupling detector exists for this case, so the substrate must really produce it:
trained for real, a recipe with `sequence` x6 memorises the template pool that dev shares with
training (dev `sequence` and overall dev rise clearly) while the held-out split, drawn from a
disjoint pool by the leaderboard adapter and scored by `evaluate.py --split-file`, does not move.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from test_substrate_training import SUBSTRATE, short_recipe

from hpc_aevo.tools.calibrate import apply_overrides, run_candidate, scratch_campaign

pytestmark = pytest.mark.slow


def test_upweighting_sequence_raises_dev_but_not_the_leaderboard(tmp_path):
    tree, _, leaderboard = scratch_campaign(SUBSTRATE, tmp_path, quota=2)
    recipes = {"default": short_recipe(), "trap": apply_overrides(short_recipe(), {"data.mixture.sequence": 6.0})}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run_candidate, tree.default_dir, recipe, tmp_path / name, leaderboard, name)
                   for name, recipe in recipes.items()}
        default, trap = (futures[name].result() for name in recipes)
    assert trap["dev_per_domain"]["sequence"] >= default["dev_per_domain"]["sequence"] + 0.3, (default, trap)
    assert trap["dev"] >= default["dev"] + 0.05, (default, trap)
    # 100 held-out examples per domain: at scores near 0.05 a difference of two has a sampling sigma of ~0.03.
    assert trap["heldout_per_domain"]["sequence"] <= default["heldout_per_domain"]["sequence"] + 0.05, (default, trap)
    assert trap["heldout"] <= default["heldout"] + 0.02, (default, trap)
    assert {s.candidate for s in leaderboard.ledger().submissions} == {"default", "trap"}
