"""The rule-based meta step and the constitution-bounded decision around it."""

from __future__ import annotations

import json

import pytest
from test_decoupling import BAND, EXAMPLES, TRAP, Effect, recipes_for, synthetic_policy, synthetic_round, uniform

from hpc_aevo.search.axes import AXES, applies, categories_of
from hpc_aevo.search.constitution import CheckContext, PolicyDecision, constitution_hash
from hpc_aevo.jobs.failures import failed_job
from hpc_aevo.jobs.spec import JobOutcome, StageRun
from hpc_aevo.search.evidence import collect_evidence, render_markdown
from hpc_aevo.search.decide import MetaProposals, decide, mandatory_update, propose_policy, rotate_axes
from hpc_aevo.search.policy import DeadEnd

SUBSTRATE = "a" * 64


def _measure(policy, **kwargs):
    """(evidence, ctx) of running the round `policy` governs on synthetic candidates."""
    manifests = synthetic_round(policy.round, **{"noise": 0.0, **kwargs})
    evidence = collect_evidence(policy.round, manifests, policy, EXAMPLES)
    ctx = CheckContext(manifests, recipes_for(manifests, policy.standing_recipe), SUBSTRATE, SUBSTRATE,
                       constitution_hash(), constitution_hash())
    return evidence, ctx


def _campaign(rounds, policy=None):
    """Run decide over rounds of synthetic_round kwargs; the (policy, decision) of each."""
    policy, history, out = policy or synthetic_policy(1), [], []
    for kwargs in rounds:
        evidence, ctx = _measure(policy, **kwargs)
        policy, decision = decide(policy, evidence, history, ctx)
        assert decision.accepted, decision.violations
        history.append(evidence)
        out.append((policy, decision))
    return out


def test_a_real_leaderboard_gain_is_promoted_with_its_numbers():
    [(policy, decision)] = _campaign([dict(effects={3: uniform(0.06, 0.06)})])
    assert policy.round == 2 and policy.standing_source == "r001/cand-03"
    assert policy.standing_recipe["data.filter.max_len"] == 2 and "seed" not in policy.standing_recipe
    assert decision.promotion.candidate == "r001/cand-03"
    assert decision.promotion.leaderboard_gain == pytest.approx(0.06) and not decision.fallback_used
    assert any(c.startswith("promoted r001/cand-03") for c in decision.changes)


def test_a_leaderboard_gain_inside_the_corrected_bar_is_not_promoted():
    """Above the band, but the best of six workers against two anchors clears one band by chance too often."""
    [(policy, decision)] = _campaign([dict(effects={3: uniform(0.06, BAND * 1.2)})])
    assert policy.standing_source == "substrate" and decision.promotion is None
    assert any(c.startswith("no promotion: best cand-03") for c in decision.changes)


def test_promotion_keeps_the_previous_standing_seed():
    previous = synthetic_policy(1)
    previous.standing_recipe["seed"] = 11
    [(policy, _)] = _campaign([dict(effects={3: uniform(0.06, 0.06)})], previous)
    assert policy.standing_recipe["seed"] == 11


def test_a_dev_gain_without_a_leaderboard_gain_is_not_promoted():
    [(policy, decision)] = _campaign([dict(effects={3: uniform(0.03, 0.01)})])
    assert policy.standing_source == "substrate" and decision.promotion is None and not policy.dead_ends
    assert any(c.startswith("no promotion: best cand-03 +0.0100") for c in decision.changes)


def test_a_loss_bans_its_idea_only_beyond_the_noise_bar():
    """The registry never shrinks: a loss inside the bar the worst of six workers reaches on noise is no ban."""
    [(policy, _)] = _campaign([dict(effects={3: uniform(0.0, -BAND * 1.2)})])
    assert policy.dead_ends == []
    [(policy, _)] = _campaign([dict(effects={3: uniform(0.0, -BAND * 1.6)})])
    assert [d.change for d in policy.dead_ends] == ["data.filter.max_len:down"]


def test_dead_ends_only_grow_across_rounds_and_carry_their_round():
    results = _campaign([dict(effects={3: uniform(-0.05, -0.1)}), dict(effects={4: uniform(0.0, -0.1)}), {}])
    registries = [[(d.change, d.round) for d in policy.dead_ends] for policy, _ in results]
    assert registries[0] == [("data.filter.max_len:down", 1)]
    assert registries[1] == [("data.filter.max_len:down", 1), ("optim.lr:up", 2)]
    assert registries[2] == registries[1]
    assert "leaderboard -0.1000" in results[0][0].dead_ends[0].reason


def _fail(manifest, state, *stages):
    """Fail a synthetic candidate as the launcher does: its end state and the stages its outcome lists."""
    outcome = JobOutcome(f"r001/{manifest.name}", 2, "FAILED", [StageRun(s, code, 1.0, "log") for s, code in stages])
    manifest.status, manifest.failure = "failed", f"attempt 2 {state}: ..."
    manifest.failed_job = failed_job(state, outcome if stages or state == "FAILED" else None)
    manifest.measured.dev = manifest.measured.leaderboard = None


def _dead_ends_after(*failures):
    """The dead ends and changes of a round where (candidate index, state, stages...) failed."""
    policy = synthetic_policy(1)
    manifests = synthetic_round(1, noise=0.0)
    for index, state, *stages in failures:
        _fail(manifests[index], state, *stages)
    evidence = collect_evidence(1, manifests, policy, EXAMPLES)
    new, changes = mandatory_update(policy, evidence, [])
    return evidence, [(d.change, d.round) for d in new.dead_ends], changes


def test_a_trainer_that_crashes_on_its_recipe_is_a_dead_end():
    evidence, dead, _ = _dead_ends_after((5, "FAILED", ("train", 1)))
    assert dead == [("optim.steps:up", 1)]
    assert evidence.summary("cand-05").failure_kind == "mutation"
    assert [s.kind for s in evidence.surprises] == ["failure"]


@pytest.mark.parametrize("state, stages", [
    ("NODE_FAIL", [("train", -9)]),  # the node died under the trainer
    ("CANCELLED", []),  # an administrator's scancel
    ("LOST", []),  # the process is gone without an outcome
    ("FAILED", []),  # confinement or environment: "train not started", no stage ran
])
def test_an_infrastructure_failure_is_not_a_dead_end_and_is_recorded_as_such(state, stages):
    evidence, dead, changes = _dead_ends_after((5, state, *stages))
    assert dead == []
    assert evidence.summary("cand-05").failure_kind == "infrastructure"
    assert any(c.startswith("no dead end for cand-05 (optim.steps:up): failure is infrastructure") for c in changes)
    assert [s.kind for s in evidence.surprises] == ["infrastructure-failure"]
    markdown = render_markdown(evidence)
    assert "Infrastructure failures, not evidence against a mutation: cand-05 (" + state in markdown
    assert "| failed (infrastructure) |" in markdown


def test_a_worker_that_fails_as_the_anchors_do_is_infrastructure():
    evidence, dead, _ = _dead_ends_after((0, "FAILED", ("train", 1)), (5, "FAILED", ("train", 1)),
                                          (6, "FAILED", ("train", 0), ("eval", 2)))
    assert dead == [("model.layers:up", 1)]  # cand-06 failed in eval, not as the anchor did
    assert evidence.summary("cand-05").failure_kind == "infrastructure"
    assert "anchors cand-00 failed the same way" in evidence.summary("cand-05").failure_basis


def test_a_failure_without_typed_facts_is_not_a_dead_end():
    policy = synthetic_policy(1)
    evidence, ctx = _measure(policy)
    failed = next(c for c in evidence.candidates if c.name == "cand-05")
    failed.status, failed.failure, failed.leaderboard_gain = "failed", "CUDA OOM at step 3", None
    new, changes = mandatory_update(policy, evidence, [])
    assert new.dead_ends == [] and any("failure is unclassified" in c for c in changes)


def test_two_plateau_rounds_rotate_the_axis_categories():
    data_only = synthetic_policy(1, active_axes=["mixture", "filtering"])
    (first, d1), (second, d2) = _campaign([dict(workers=2, axes=["mixture", "filtering"])] * 2, data_only)
    assert first.active_axes == ["mixture", "filtering"] and first.plateau_rounds == 1
    assert categories_of(second.active_axes) == {"optimization", "architecture", "selection"}
    assert second.retired_axes == ["mixture", "filtering"] and second.plateau_rounds == 0
    assert any(c.startswith("rotated axis categories data ->") for c in d2.changes)


def test_rotation_cycles_when_every_category_was_tried_and_narrows_when_all_are_active():
    evidence, _ = _measure(synthetic_policy(1), effects={7: uniform(0.0, -0.05)})
    active, retired = rotate_axes(["capacity"], ["mixture", "filtering", "schedule", "budget", "selection"], evidence)
    assert categories_of(active) == {"data", "optimization", "selection"} and retired == ["capacity"]
    dense = [a for a in AXES if applies(a, None)]  # the router's axis needs a mixture of experts
    active, retired = rotate_axes(dense, [], evidence)  # cand-07 (selection) lost most
    assert "selection" not in active and retired == ["selection"]
    active, retired = rotate_axes(list(AXES), [], evidence)  # an axis that does not apply is retired too
    assert retired == ["selection", "router"]
    moe = {"model": {"moe": {"experts": 8, "top_k": 2}}}
    active, _ = rotate_axes(dense, ["router"], evidence, moe)  # with one, routing is a category to rotate to
    assert categories_of(active) == {"routing"}


def test_decoupling_changes_what_counts_as_evidence():
    previous = synthetic_policy(1, noise_band=0.02, dev_noise_band=0.02, promotion_threshold=0.02)
    [(policy, decision)] = _campaign([dict(effects={2: TRAP})], previous)
    assert policy.evidence.promote_on == "leaderboard_transfer"
    assert policy.evidence.downweighted_domains == ["equation"] and "round 1" in policy.evidence.note
    assert [(d.axis, d.change, d.round) for d in policy.dead_ends] == [("mixture", "data.mixture.equation:up", 1)]
    assert "without leaderboard transfer" in policy.dead_ends[0].reason


def test_a_proxy_gain_on_another_axis_registers_both_the_mutation_and_the_domain():
    [(policy, _)] = _campaign([dict(effects={3: TRAP})])
    assert [d.change for d in policy.dead_ends] == ["data.filter.max_len:down", "data.mixture.equation:up"]


def test_under_transfer_evidence_a_flagged_leaderboard_gain_is_not_promoted():
    gamed = Effect(dev={d: 0.06 + (0.25 if d == "equation" else 0.0) for d in EXAMPLES},
                   board={d: 0.0 if d == "equation" else 0.06 for d in EXAMPLES})
    [(policy, decision)] = _campaign([dict(effects={3: gamed, 4: uniform(0.0, 0.04)})])
    assert policy.evidence.promote_on == "leaderboard_transfer"
    assert policy.standing_source == "r001/cand-04" and decision.promotion.candidate == "r001/cand-04"


def test_bands_widen_to_the_anchor_spread_and_never_shrink():
    policy = synthetic_policy(1, noise_band=0.001, dev_noise_band=0.001, promotion_threshold=0.001)
    evidence, _ = _measure(policy, noise=1.0, seed=5, anchors=3)
    wide, changes = mandatory_update(policy, evidence, [])
    assert wide.noise_band == pytest.approx(2 * evidence.anchors.leaderboard_std)
    assert wide.dev_noise_band == pytest.approx(2 * evidence.anchors.dev_std)
    assert wide.promotion_threshold == wide.noise_band and any(c.startswith("noise band 0.0010 ->") for c in changes)
    loose = synthetic_policy(1, noise_band=0.5, dev_noise_band=0.5, promotion_threshold=0.5)
    kept, _ = mandatory_update(loose, evidence, [])
    assert (kept.noise_band, kept.dev_noise_band) == (0.5, 0.5)


def _malicious(mutate):
    def proposer(previous, evidence, history, recipes, feedback):
        policy, changes = propose_policy(previous, evidence, history, recipes, feedback)
        return mutate(policy, recipes), changes
    return proposer


def _drop_dead_ends(policy, recipes):
    policy.dead_ends = []
    return policy


def _promote_on_dev(policy, recipes):
    policy.standing_recipe = {k: v for k, v in recipes["cand-02"].items() if k != "seed"}
    policy.standing_source = "r002/cand-02"
    return policy


def _shrink_band(policy, recipes):
    policy.noise_band = policy.promotion_threshold = 0.0001
    return policy


def _smuggle_a_key(policy, recipes):
    return {**json.loads(policy.to_json()), "constitution": "leaderboard optional"}


@pytest.mark.parametrize("mutate,rule", [
    (_drop_dead_ends, "C3"), (_promote_on_dev, "C1"), (_shrink_band, "C2"), (_smuggle_a_key, "C5"),
])
def test_a_malicious_proposal_is_rejected_and_the_fallback_recorded(mutate, rule, tmp_path):
    [(previous, _)] = _campaign([dict(effects={3: uniform(-0.05, -0.1)})])  # a dead end to drop
    evidence, ctx = _measure(previous, noise=1.0, seed=2, effects={2: uniform(0.08, 0.0)})
    for m in ctx.manifests[2:]:  # only the anchors are on the leaderboard: cand-02 is best on dev alone
        m.measured.leaderboard, m.measured.leaderboard_per_domain = None, {}
    evidence = collect_evidence(2, ctx.manifests, previous, EXAMPLES)
    policy, decision = decide(previous, evidence, [], ctx, MetaProposals(_malicious(mutate), "claude"))
    assert decision.accepted and decision.fallback_used and decision.proposer == "claude"
    assert policy == mandatory_update(previous, evidence, [])[0] and decision.promotion is None
    assert [r.attempt for r in decision.rejected_proposals] == [1]  # the same proposal again is not retried
    assert {v.rule for v in decision.rejected_proposals[0].violations} == {rule}
    assert policy.dead_ends[0] == previous.dead_ends[0]
    decision.save(tmp_path / "decision.json")
    assert PolicyDecision.load(tmp_path / "decision.json") == decision


def test_a_proposer_gets_its_violations_back_and_may_correct_itself():
    seen = []

    def learner(previous, evidence, history, recipes, feedback):
        seen.append([v.rule for v in feedback])
        policy, changes = propose_policy(previous, evidence, history, recipes, feedback)
        return (policy if feedback else _drop_dead_ends(policy, recipes)), changes

    previous = synthetic_policy(1, dead_ends=[DeadEnd("capacity", "model.layers:up", 0, "r000: lost")])
    evidence, ctx = _measure(previous, effects={3: uniform(-0.05, -0.1)})
    policy, decision = decide(previous, evidence, [], ctx, MetaProposals(learner, "claude"))
    assert seen == [[], ["C3"]]
    assert decision.accepted and not decision.fallback_used and len(policy.dead_ends) == 2
    assert [(r.attempt, [v.rule for v in r.violations]) for r in decision.rejected_proposals] == [(1, ["C3"])]


def test_a_written_substrate_leaves_no_acceptable_policy():
    previous = synthetic_policy(1)
    evidence, ctx = _measure(previous)
    ctx.current_substrate_hash = "b" * 64
    policy, decision = decide(previous, evidence, [], ctx)
    assert policy is None and not decision.accepted and decision.fallback_used
    assert {v.rule for v in decision.violations} == {"C5"} and len(decision.rejected_proposals) == 1


def test_history_must_not_already_hold_the_evidence():
    previous = synthetic_policy(1)
    evidence, ctx = _measure(previous)
    with pytest.raises(ValueError, match="history must hold rounds before 1"):
        decide(previous, evidence, [evidence], ctx)
