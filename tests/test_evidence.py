"""The rule-based collector: five sections, numbers computed from manifests, a stable record."""

from __future__ import annotations

import json

import pytest
from test_decoupling import EXAMPLES, TRAP, Effect, synthetic_policy, synthetic_round, uniform

from hpc_aevo.search.evidence import (
    SECTIONS, RoundEvidence, collect_evidence, direction_key, expected_sign, off_axis_keys, render_markdown,
    router_collapse,
)
from hpc_aevo.search.axes import AXES, applies
from hpc_aevo.search.policy import DeadEnd
from hpc_aevo.state.records import RecordError


def _evidence(manifests, policy=None):
    return collect_evidence(1, manifests, policy or synthetic_policy(), EXAMPLES)


def test_evidence_has_the_five_sections_and_survives_a_save_load(tmp_path):
    evidence = _evidence(synthetic_round(seed=3, effects={2: TRAP}))
    body = json.loads(evidence.to_json())
    assert body["schema"] == "hpc_aevo.round_evidence"
    assert [k for k in SECTIONS] == ["candidates", "patterns", "calibration", "surprises", "rationale_audit"]
    assert all(k in body for k in SECTIONS)
    evidence.save(tmp_path / "evidence.json")
    assert RoundEvidence.load(tmp_path / "evidence.json") == evidence


def test_candidate_summaries_carry_gains_over_the_anchor_mean():
    evidence = _evidence(synthetic_round(noise=0.0, effects={3: uniform(0.04, 0.05)}))
    assert evidence.anchors.names == ["cand-00", "cand-01"] and evidence.anchors.dev_std == pytest.approx(0.0)
    c3 = evidence.summary("cand-03")
    assert (c3.axis, c3.mutation, c3.selected_step) == ("filtering", "data.filter.max_len:down", 100)
    assert c3.dev_gain == pytest.approx(0.04) and c3.leaderboard_gain == pytest.approx(0.05)
    assert evidence.best_leaderboard() == pytest.approx(evidence.anchors.leaderboard_mean + 0.05)


def test_patterns_aggregate_by_axis_and_direction_and_count_failures():
    dense = [a for a in AXES if applies(a, None)]  # the seventh worker wraps round to mixture
    manifests = synthetic_round(noise=0.0, workers=7, axes=dense, effects={3: uniform(0.04, 0.05), 8: uniform(0.0, 0.01)})
    manifests[4].status, manifests[4].failure = "failed", "NaN loss at step 40"
    patterns = _evidence(manifests).patterns
    mixture = next(g for g in patterns.by_axis if g.key == "mixture")
    assert mixture.count == 2 and mixture.mean_leaderboard_gain == pytest.approx(0.005)
    assert patterns.axes_beating_anchor == ["filtering"]
    assert patterns.failures_by_axis == {"schedule": 1}
    schedule = next(g for g in patterns.by_direction if g.key == "schedule:up")
    assert schedule.failed == 1 and schedule.mean_dev_gain is None
    assert direction_key("mixture", "data.mixture.bits:up") == "mixture:up"


def test_surprises_report_wrong_signs_leaderboard_without_dev_and_failures():
    manifests = synthetic_round(noise=0.0, effects={
        2: Effect(board={d: -0.1 for d in EXAMPLES}),
        3: uniform(-0.02, 0.05),
    })
    manifests[2].proposal.expected_effect = "raise the leaderboard by up-sampling equation"
    manifests[4].status, manifests[4].failure = "failed", "OOM"
    kinds = {(s.kind, s.candidate) for s in _evidence(manifests).surprises}
    assert kinds == {("opposite-sign", "cand-02"), ("leaderboard-without-dev", "cand-03"), ("failure", "cand-04")}


def test_a_collapsed_router_is_a_surprise_and_a_balanced_one_is_not(tmp_path):
    """Per-expert load from the trainer's summary (Measured.expert_load): a layer that starves experts (under
    a tenth of an even share) is a surprise, for an anchor too; uneven but fed, or a dense model, is not."""
    manifests = synthetic_round(noise=0.0)
    manifests[0].measured.expert_load = [[0.4, 0.1, 0.3, 0.2]]  # uneven, every expert fed
    manifests[3].measured.expert_load = [[0.25, 0.25, 0.25, 0.25], [0.5, 0.49, 0.01, 0.0]]  # top-2 onto 2 of 4
    manifests[4].measured.expert_load = [[0.0, 0.0, 0.0, 0.0]]  # no routed tokens: no step trained, no figure
    evidence = _evidence(manifests)
    (surprise,) = evidence.surprises
    assert (surprise.kind, surprise.candidate) == ("collapsed-router", "cand-03")
    assert surprise.message == (
        "cand-03 (filtering): router collapse in 1 of 2 MoE layers; layer 1: experts 2, 3 of 4 got under 10% of "
        "an even share of the routed tokens, the busiest 2.0x an even share")
    assert evidence.summary("cand-03").expert_load == manifests[3].measured.expert_load
    assert "| collapsed-router | cand-03 |" in render_markdown(evidence)
    evidence.save(tmp_path / "evidence.json")
    assert RoundEvidence.load(tmp_path / "evidence.json") == evidence
    assert router_collapse([[0.03, 0.27, 0.3, 0.4]]) is None and router_collapse([]) is None  # 0.03 > 0.25 / 10
    assert router_collapse([[0.02, 0.28, 0.3, 0.4]]).endswith("layer 0: experts 0 of 4 got under 10% of an even "
                                                              "share of the routed tokens, the busiest 1.6x an even share")
    manifests[0].measured.expert_load = [[1.0, 0.0]]  # top-1 onto one expert of two
    assert [s.message.split(":")[0] for s in _evidence(manifests).surprises] == ["cand-00 (anchor)", "cand-03 (filtering)"]


def test_expected_sign_reads_simple_directions_only():
    assert expected_sign("raise equation dev") == 1
    assert expected_sign("should lower the loss") == -1
    assert expected_sign("raise dev but lower loss") == 0
    assert expected_sign("upsampling helps") == 0  # whole words only


def test_rationale_audit_checks_hypothesis_axis_area_and_dead_ends():
    manifests = synthetic_round(noise=0.0)
    manifests[2].proposal.hypothesis = "  "
    manifests[3].mutation = "optim.lr:up"  # cand-03 is assigned filtering
    manifests[3].recipe_diff = {"data.filter.max_len": [1, 2], "optim.lr": [1, 2]}
    policy = synthetic_policy(dead_ends=[DeadEnd("schedule", "optim.lr:up", 0, "no gain")])
    audit = {a.candidate: a for a in _evidence(manifests, policy).rationale_audit}
    assert not audit["cand-02"].hypothesis_stated and audit["cand-02"].axis_respected
    assert not audit["cand-03"].axis_respected and audit["cand-03"].off_axis_keys == ["optim.lr"]
    assert audit["cand-03"].dead_end == "optim.lr:up" and audit["cand-04"].dead_end == "optim.lr:up"
    assert audit["cand-05"].dead_end is None and set(audit) == {f"cand-{i:02d}" for i in range(2, 8)}


def test_axis_areas_cover_every_axis_signature():
    assert off_axis_keys("schedule", "optim.warmup_steps:up", []) == []
    assert off_axis_keys("budget", None, ["optim.batch_size"]) == []
    assert off_axis_keys("capacity", "model.layers:up", ["optim.lr"]) == ["optim.lr"]
    assert off_axis_keys("selection", "checkpoints.selection:last", []) == []
    assert off_axis_keys("nonsense", "model.layers:up", []) == ["model.layers"]


def test_markdown_has_exactly_the_five_sections_and_tables():
    evidence = _evidence(synthetic_round(seed=1, effects={2: TRAP}))
    evidence.prose = {"calibration": "The equation domain's dev gain did not transfer."}
    text = render_markdown(evidence)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [f"## {title}" for title in SECTIONS.values()]
    assert "| cand-02 | worker | mixture |" in text and "domain-gain-without-transfer" in text
    assert "did not transfer." in text and "suspect domains: equation" in text


def test_prose_may_only_name_sections(tmp_path):
    evidence = _evidence(synthetic_round(noise=0.0))
    evidence.prose = {"numbers": "dev 0.99"}
    with pytest.raises(RecordError, match="prose.numbers"):  # refused when written, so never unreadable
        evidence.save(tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()
