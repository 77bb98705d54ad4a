"""The scripted search: the offline worker's operator and stride follow the campaign's measured evidence."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import yaml
from test_decoupling import EXAMPLES, synthetic_policy, synthetic_round, uniform
from test_workers import REFERENCE_RECIPE, _policy, _task

from hpc_aevo.loop.fork import load_recipe
from hpc_aevo.roles.scripted.search import OPPOSITE_WEIGHT, choose, observations, opposite
from hpc_aevo.roles.scripted.worker import ScriptedWorker
from hpc_aevo.search.evidence import RoundEvidence, collect_evidence
from hpc_aevo.search.policy import DeadEnd
from hpc_aevo.state.tree import StateTree

UP, DOWN = "optim.lr:up", "optim.lr:down"
SCHEDULE_OPS = [UP, DOWN, "optim.schedule:linear", "optim.schedule:constant", "optim.warmup_steps:up"]


def _history(gains: dict[str, float], rnd: int = 1, leaderboard: bool = True) -> RoundEvidence:
    """One measured round (2 anchors, no seed noise) whose schedule workers tried `gains`' operators."""
    manifests = synthetic_round(rnd, noise=0.0, workers=len(gains), axes=["schedule"],
                                effects={2 + i: uniform(g, g) for i, g in enumerate(gains.values())})
    for m, sig in zip(manifests[2:], gains):
        m.mutation = sig
        if not leaderboard:
            m.measured.leaderboard = None
    return collect_evidence(rnd, manifests, synthetic_policy(rnd, noise_band=0.016, dev_noise_band=0.03), EXAMPLES)


def _picks(history: list[RoundEvidence], open_ops: list[str], n: int = 200) -> dict[str, int]:
    policy = synthetic_policy(2, noise_band=0.016)
    counts = dict.fromkeys(open_ops, 0)
    for seed in range(n):
        counts[choose(open_ops, history, policy, random.Random(seed)).signature] += 1
    return counts


def test_without_evidence_every_open_operator_is_tried():
    counts = _picks([], SCHEDULE_OPS)
    assert all(20 <= c <= 60 for c in counts.values()), counts  # about 40 each of 200


def test_the_direction_that_gained_is_preferred_and_the_one_that_lost_avoided():
    counts = _picks([_history({UP: 0.04, DOWN: -0.04})], SCHEDULE_OPS)
    assert counts[UP] >= 160 and counts[DOWN] == 0, counts


def test_evidence_from_one_direction_speaks_for_its_opposite():
    counts = _picks([_history({DOWN: -0.04})], SCHEDULE_OPS)
    assert counts[UP] == max(counts.values()) and counts[DOWN] == 0, counts
    told = observations([_history({DOWN: -0.04})], synthetic_policy(2))
    assert [(o.signature, o.weight) for o in told] == [(DOWN, 1.0), (UP, OPPOSITE_WEIGHT)]
    assert opposite("optim.schedule:linear") is None


def test_an_operator_not_known_to_lose_takes_the_long_stride_and_one_known_to_lose_the_short():
    policy = synthetic_policy(2, noise_band=0.016)
    assert choose([UP], [], policy, random.Random(0)).stride == 2  # never measured: far enough to see it
    paid = choose([UP], [_history({UP: 0.05}), _history({UP: 0.05}, rnd=2)], policy, random.Random(0))
    assert (paid.signature, paid.stride) == (UP, 2) and paid.observations == 2
    assert choose([UP], [_history({UP: 0.005})], policy, random.Random(0)).stride == 2  # gained under the band
    assert choose([UP], [_history({UP: -0.01})], policy, random.Random(0)).stride == 1
    assert choose([UP], [_history({DOWN: 0.02})], policy, random.Random(0)).stride == 1  # its opposite gained


def test_dev_stands_in_for_a_missing_leaderboard_score_only_while_it_is_evidence():
    history = [_history({UP: 0.06}, leaderboard=False)]
    told = observations(history, synthetic_policy(2))
    assert told[0].gain == pytest.approx(0.06 * 0.016 / 0.03)  # on the leaderboard's scale
    decoupled = synthetic_policy(2)
    decoupled.evidence.promote_on = "leaderboard_transfer"
    assert observations(history, decoupled) == []


@pytest.fixture
def tree(tmp_path: Path) -> StateTree:
    tree = StateTree(tmp_path / "state")
    evidence = _history({UP: 0.04, DOWN: -0.04})
    tree.evidence_json(1).parent.mkdir(parents=True)
    evidence.save(tree.evidence_json(1))
    return tree


def _propose(tree: StateTree, sandbox: Path, seed: int, dead: tuple[str, ...] = ()):
    shutil.rmtree(sandbox, ignore_errors=True)
    sandbox.mkdir(parents=True)
    shutil.copy(REFERENCE_RECIPE, sandbox / "recipe.yaml")
    result = ScriptedWorker(tree).propose(_task(sandbox, "schedule", _policy(dead=dead), seed=seed))
    return result, yaml.safe_load((sandbox / "recipe.yaml").read_text())


def test_the_worker_reads_the_campaign_evidence_and_never_proposes_a_dead_end(tree: StateTree, tmp_path: Path):
    sandbox = tmp_path / "sandboxes" / "cand-03"
    picks = [_propose(tree, sandbox, seed)[0].mutation for seed in range(20)]
    assert picks.count(UP) >= 16
    blocked = [_propose(tree, sandbox, seed, dead=(UP,))[0].mutation for seed in range(20)]
    assert UP not in blocked and blocked.count(DOWN) <= 2  # the preferred direction is banned; the lost one stays avoided


def test_a_restarted_worker_makes_the_same_choice(tree: StateTree, tmp_path: Path):
    sandbox = tmp_path / "sandboxes" / "cand-03"
    first, recipe = _propose(tree, sandbox, seed=3)
    again, recipe_again = _propose(tree, sandbox, seed=3)
    assert (first.mutation, first.proposal, recipe) == (again.mutation, again.proposal, recipe_again)
    assert "Thompson sampling" in first.proposal.rationale
    standing = load_recipe(REFERENCE_RECIPE.parent)["optim"]["lr"]
    assert first.mutation == UP and recipe["optim"]["lr"] == standing * 4  # it gained: two edits
