"""Each constitution rule accepts a lawful policy and rejects the breach it exists for."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
from test_decoupling import BAND, EXAMPLES, recipes_for, synthetic_policy, synthetic_round, uniform

from hpc_aevo.search.constitution import (
    CONSTITUTION_PATH, RULES, CheckContext, PolicyDecision, Promotion, RejectedProposal, Violation, anchor_band,
    check_policy, constitution_hash, plateau_flags, plateau_streak, promotion_bar, without_seed,
)
from hpc_aevo.search.decoupling import AnchorStats, anchor_stats
from hpc_aevo.search.evidence import collect_evidence
from hpc_aevo.search.policy import DeadEnd

SUBSTRATE = "a" * 64
OLD_END = DeadEnd("schedule", "optim.lr:up", 0, "r000 cand-04: leaderboard -0.05")


def _round(rnd=1, effects=None, policy=None, **kwargs):
    """(previous policy, evidence history, ctx) of a measured round `rnd` (earlier rounds flat)."""
    previous = policy or synthetic_policy(rnd, dead_ends=[OLD_END])
    history = [collect_evidence(r, synthetic_round(r, noise=0.0), synthetic_policy(r), EXAMPLES) for r in range(1, rnd)]
    manifests = synthetic_round(rnd, effects=effects, **{"noise": 0.0, **kwargs})
    history.append(collect_evidence(rnd, manifests, previous, EXAMPLES))
    ctx = CheckContext(manifests, recipes_for(manifests), SUBSTRATE, SUBSTRATE, constitution_hash(), constitution_hash())
    return previous, history, ctx


def _next(previous, **changes):
    proposed = copy.deepcopy(previous)
    proposed.round += 1
    for key, value in changes.items():
        setattr(proposed, key, value)
    return proposed


def _promote(ctx, name, rnd=1):
    return dict(standing_recipe=without_seed(ctx.recipes[name]), standing_source=f"r{rnd:03d}/{name}")


def _rules(violations):
    return sorted({v.rule for v in violations})


def test_the_rule_list_in_code_is_the_frozen_text():
    text = CONSTITUTION_PATH.read_text(encoding="utf-8")
    assert re.findall(r"^## (C\d+) ", text, re.M) == list(RULES)
    assert constitution_hash() == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_an_unchanged_policy_for_the_next_round_is_lawful():
    previous, history, ctx = _round()
    assert check_policy(previous, _next(previous), history, ctx) == []


def test_c1_c2_promotion_of_a_real_leaderboard_gain_is_accepted():
    previous, history, ctx = _round(effects={3: uniform(0.06, 0.06)})
    assert check_policy(previous, _next(previous, **_promote(ctx, "cand-03")), history, ctx) == []


@pytest.mark.parametrize("case", ["dev-only", "other round", "wrong recipe", "no source", "failed"])
def test_c1_refuses_promotion_without_a_leaderboard_score_of_this_round(case):
    previous, history, ctx = _round(effects={3: uniform(0.06, 0.06)})
    proposal = _promote(ctx, "cand-03")
    if case == "dev-only":
        ctx.manifests[3].measured.leaderboard = None
    elif case == "other round":
        proposal["standing_source"] = "r000/cand-03"
    elif case == "wrong recipe":
        proposal["standing_recipe"] = {**proposal["standing_recipe"], "optim.lr": 9}
    elif case == "no source":
        proposal["standing_source"] = "substrate"
    else:
        ctx.manifests[3].status = "failed"
    assert _rules(check_policy(previous, _next(previous, **proposal), history, ctx)) == ["C1"]


def test_c1_ignores_the_seed_of_the_promoted_recipe():
    previous, history, ctx = _round(effects={3: uniform(0.06, 0.06)})
    proposal = _promote(ctx, "cand-03")
    proposal["standing_recipe"]["seed"] = 7
    assert check_policy(previous, _next(previous, **proposal), history, ctx) == []


def test_c2_refuses_a_gain_inside_the_band():
    previous, history, ctx = _round(effects={3: uniform(0.06, BAND * 0.9)})
    violations = check_policy(previous, _next(previous, **_promote(ctx, "cand-03")), history, ctx)
    assert _rules(violations) == ["C2"] and "does not exceed" in violations[0].message


def test_c2_bar_corrects_the_band_for_the_anchors_and_the_workers_compared():
    """The demo's shape (band 0.016, 1 anchor, 3 workers): the best of three gains of sigma sqrt(2) each
    clears 0.016 by chance in one round in six; the bar is z(1 - 0.05/3) sigma sqrt(2) = 0.0241."""
    policy = synthetic_policy(1, noise_band=0.016, promotion_threshold=0.016)
    one = AnchorStats(leaderboard_scores=[0.05])
    assert promotion_bar(policy, one, 3) == pytest.approx(0.008 * 2 ** 0.5 * 2.128, abs=1e-4)
    assert promotion_bar(policy, one, 6) > promotion_bar(policy, one, 3)  # more contenders, luckier best
    many = AnchorStats(leaderboard_scores=[0.05] * 50)  # k -> many: a one-sided 5% test of one score
    assert promotion_bar(policy, many, 1) == 0.016  # ... would be 1.66 sigma, but the bar never falls below the band
    assert promotion_bar(synthetic_policy(1, noise_band=0.016, promotion_threshold=0.05), one, 3) == 0.05


def test_c2_refuses_a_gain_above_the_band_but_within_the_corrected_bar():
    previous, history, ctx = _round(effects={3: uniform(0.06, BAND * 1.2)})  # 2 anchors, 6 workers: bar 1.47 bands
    violations = check_policy(previous, _next(previous, **_promote(ctx, "cand-03")), history, ctx)
    assert _rules(violations) == ["C2"] and "corrected for the anchors and workers" in violations[0].message


def test_c2_bar_grows_with_the_anchor_measured_band_when_it_is_wider_than_the_threshold():
    previous, history, ctx = _round(effects={3: uniform(0.0, 0.045)})
    ctx.manifests[1].measured.leaderboard += 0.04  # anchors 0.04 apart: band 2 x 0.028
    anchors = anchor_stats(ctx.manifests)
    assert anchor_band(previous, anchors) == pytest.approx(2 * 0.04 / 2 ** 0.5)
    proposal = _next(previous, **_promote(ctx, "cand-03"), noise_band=0.06, promotion_threshold=0.06)
    assert _rules(check_policy(previous, proposal, history, ctx)) == ["C2"]


def test_c2_the_band_may_not_shrink_below_the_anchor_measured_band():
    previous, history, ctx = _round()
    ctx.manifests[1].measured.leaderboard += 0.04
    band = anchor_band(previous, anchor_stats(ctx.manifests))
    lawful = _next(previous, noise_band=band, promotion_threshold=band)
    assert check_policy(previous, lawful, history, ctx) == []
    shrunk = _next(previous, noise_band=band / 2, promotion_threshold=band)
    assert _rules(check_policy(previous, shrunk, history, ctx)) == ["C2"]


def test_c2_with_fewer_than_two_scored_anchors_the_band_is_the_previous_one():
    previous, history, ctx = _round(anchors=1)
    assert anchor_band(previous, anchor_stats(ctx.manifests)) == previous.noise_band
    shrunk = _next(previous, noise_band=previous.noise_band / 2)
    assert _rules(check_policy(previous, shrunk, history, ctx)) == ["C2"]


def test_c3_new_dead_ends_of_this_round_are_accepted():
    previous, history, ctx = _round()
    grown = _next(previous, dead_ends=[OLD_END, DeadEnd("capacity", "model.layers:up", 1, "r001 cand-06: lost")])
    assert check_policy(previous, grown, history, ctx) == []


@pytest.mark.parametrize("dead_ends", [
    [],
    [DeadEnd("schedule", "optim.lr:up", 0, "reworded")],
    [OLD_END, DeadEnd("capacity", "model.layers:up", 5, "future round")],
])
def test_c3_the_registry_only_grows(dead_ends):
    previous, history, ctx = _round()
    assert _rules(check_policy(previous, _next(previous, dead_ends=dead_ends), history, ctx)) == ["C3"]


def test_c4_plateau_is_measured_against_the_best_earlier_round():
    _, history, _ = _round(3)
    assert plateau_flags(history) == [True, True, True] and plateau_streak(history) == 3
    _, improved, _ = _round(2, effects={3: uniform(0.0, 0.06)})
    assert plateau_flags(improved) == [True, False] and plateau_streak(improved) == 0


def test_c4_a_streak_counts_only_rounds_on_the_same_categories():
    _, history, _ = _round(2)
    history[0].active_axes = ["capacity"]
    assert plateau_streak(history) == 1


def test_c4_two_plateau_rounds_demand_a_rotation():
    previous, history, ctx = _round(2, policy=synthetic_policy(2, active_axes=["mixture", "filtering"]))
    history[0].active_axes = ["mixture", "filtering"]
    stay = _next(previous)
    assert _rules(check_policy(previous, stay, history, ctx)) == ["C4"]
    rotated = _next(previous, active_axes=["schedule", "budget"], retired_axes=["mixture", "filtering"])
    assert check_policy(previous, rotated, history, ctx) == []


def test_c4_one_plateau_round_demands_nothing():
    previous, history, ctx = _round(2, policy=synthetic_policy(2, active_axes=["mixture"]))
    assert check_policy(previous, _next(previous), history, ctx) == []


@pytest.mark.parametrize("field", ["current_substrate_hash", "current_constitution_hash"])
def test_c5_a_written_substrate_or_constitution_rejects_every_policy(field):
    previous, history, ctx = _round()
    setattr(ctx, field, "b" * 64)
    assert _rules(check_policy(previous, _next(previous), history, ctx)) == ["C5"]


def test_c5_a_policy_outside_its_schema_is_rejected():
    previous, history, ctx = _round()
    assert _rules(check_policy(previous, _next(previous, noise_band="wide"), history, ctx)) == ["C5"]
    assert _rules(check_policy(previous, _next(previous, standing_recipe={"x": {1, 2}}), history, ctx)) == ["C5"]
    assert _rules(check_policy(previous, _next(previous, active_axes=["telepathy"]), history, ctx)) == ["C5"]
    assert _rules(check_policy(previous, _next(previous, active_axes=[]), history, ctx)) == ["C5"]


@pytest.mark.parametrize("changes", [
    dict(retired_axes=["mixture"]),
    dict(promotion_threshold=BAND / 2),
    dict(round=9),
])
def test_c6_inconsistent_policies_are_rejected(changes):
    previous, history, ctx = _round()
    assert _rules(check_policy(previous, _next(previous, **changes), history, ctx)) == ["C6"]


def test_policy_decision_record_round_trips(tmp_path):
    decision = PolicyDecision(
        round=2, proposer="rule-based", accepted=True, violations=[], fallback_used=True,
        promotion=Promotion("r001/cand-03", 0.06, 0.026), changes=["round 1 -> 2"],
        rejected_proposals=[RejectedProposal("claude", 1, [Violation("C3", "dropped a dead end")])])
    decision.save(tmp_path / "decision.json")
    assert PolicyDecision.load(tmp_path / "decision.json") == decision
    assert '"schema": "hpc_aevo.policy_decision"' in (tmp_path / "decision.json").read_text()
