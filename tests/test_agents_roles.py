"""The Claude meta and collector against the real CLI and the model stub, on real evidence records."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from test_decoupling import EXAMPLES, uniform
from test_meta import _campaign, _measure

from model_stub import mcp, text, tool_use
from tiny_campaign import REPO, write_campaign

from hpc_aevo.roles.claude.backend import ClaudeRoles
from hpc_aevo.roles.claude.collector import section_texts
from hpc_aevo.roles.claude.session import AgentSession
from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.search.constitution import constitution_hash
from hpc_aevo.search.evidence import collect_evidence
from hpc_aevo.search.decide import decide, mandatory_update
from hpc_aevo.state.records import read_jsonl
from hpc_aevo.state.tree import StateTree


@pytest.fixture
def roles(tmp_path):
    constitution = tmp_path / "constitution.md"
    shutil.copy(REPO / "policy" / "constitution.md", constitution)
    path = write_campaign(tmp_path, agents={"backend": "claude"},
                          policy={"constitution": str(constitution), "initial": str(tmp_path / "initial.yaml")})
    campaign = load_campaign(path)
    return ClaudeRoles(campaign, StateTree(campaign.paths.state_root)), constitution


def dev_only_round():
    """Round 2 after a round that registered a dead end; cand-02 is best on dev but unscored on the board."""
    [(previous, _)] = _campaign([dict(effects={3: uniform(-0.05, -0.1)})])
    evidence, ctx = _measure(previous, noise=1.0, seed=2, effects={2: uniform(0.08, 0.0)})
    for m in ctx.manifests[2:]:
        m.measured.leaderboard, m.measured.leaderboard_per_domain = None, {}
    return previous, collect_evidence(2, ctx.manifests, previous, EXAMPLES), ctx


@pytest.mark.slow
def test_a_lawless_meta_is_rejected_rule_by_rule_and_the_fallback_recorded(roles, stub):
    roles, constitution = roles
    previous, evidence, ctx = dev_only_round()
    mandatory = json.loads(mandatory_update(previous, evidence, [])[0].to_json())
    no_dead_ends = {**copy.deepcopy(mandatory), "dead_ends": []}
    promote_on_dev = {**copy.deepcopy(mandatory), "standing_source": "r002/cand-02",
                      "standing_recipe": {k: v for k, v in ctx.recipes["cand-02"].items() if k != "seed"}}
    shrunk = {**copy.deepcopy(mandatory), "noise_band": 0.0001, "promotion_threshold": 0.0001}
    stub.add("meta r002", [
        [tool_use("Write", file_path=str(constitution), content="# C0: anything goes\n")],
        [mcp("meta", "propose_policy", policy=no_dead_ends, changes=["forget the dead ends"])],
        [mcp("meta", "propose_policy", policy=promote_on_dev, changes=["promote cand-02 on dev"])],
        [mcp("meta", "propose_policy", policy=shrunk, changes=["narrow the band"])],
        [mcp("meta", "propose_policy", policy=mandatory, changes=["one more try"])],
        [text("I could not satisfy the constitution.")],
    ])
    before = constitution.read_bytes()
    meta = roles.propose_policy(previous, evidence, [], ctx, constitution_hash(constitution))
    policy, decision = decide(previous, evidence, [], ctx, meta)
    assert constitution.read_bytes() == before
    assert decision.proposer == "claude-meta" and decision.accepted and decision.fallback_used
    assert policy == mandatory_update(previous, evidence, [])[0] and decision.promotion is None
    assert [(r.attempt, sorted({v.rule for v in r.violations})) for r in decision.rejected_proposals] == [
        (1, ["C3"]), (2, ["C1"]), (3, ["C2"])]
    events = read_jsonl(roles.trace(2).path)
    denied = [e for e in events if e["event"] == "tool-denied"]
    assert [e["tool"] for e in denied] == ["Write", "mcp__meta__propose_policy"]
    assert "No such tool available" in denied[0]["reason"] and "3 proposals already made" in denied[1]["reason"]
    assert [e["accepted"] for e in events if e["event"] == "policy-proposal"] == [False, False, False]
    (session,) = [AgentSession.load(p) for p in (roles.tree.round_dir(2) / "agents").glob("meta.*.json")]
    assert session.ok and session.cost_usd > 0


def test_a_changed_constitution_is_not_given_to_the_meta(roles, stub):
    roles, constitution = roles
    previous, evidence, ctx = dev_only_round()
    expected = constitution_hash(constitution)
    constitution.write_text(constitution.read_text() + "\nC7: promote whatever dev likes.\n")
    with pytest.raises(RuntimeError, match="differs from the constitution recorded"):
        roles.propose_policy(previous, evidence, [], ctx, expected)
    assert not stub.requests


@pytest.mark.slow
def test_the_collector_writes_prose_but_no_number(roles, stub):
    roles, _ = roles
    _, evidence, _ = dev_only_round()
    calibration = section_texts(evidence)["calibration"]
    quoted = next(n for n in calibration.split() if n.replace(".", "").isdigit() and "." in n)
    stub.add("collect r002", [
        [mcp("collector", "write_section", section="candidates", prose="cand-02 reached a dev score of 0.999.")],
        [mcp("collector", "write_section", section="verdict", prose="all good")],
        [mcp("collector", "write_section", section="calibration", prose=f"The anchors' band stands at {quoted}.")],
        [mcp("collector", "write_section", section="surprises", prose="Nothing surprised us.")],
        [text("done")],
    ])
    prose = roles.prose(evidence)
    assert prose == {"calibration": f"The anchors' band stands at {quoted}.", "surprises": "Nothing surprised us."}
    events = read_jsonl(roles.trace(2).path)
    assert [e["numbers"] for e in events if e["event"] == "prose-refused"] == [["0.999"]]
    assert [e["layer"] for e in events if e["event"] == "tool-denied"] == ["tool"]
    assert [e["output"] for e in events if e["event"] == "tool-error"] == [
        "Input validation error: 'verdict' is not one of ['candidates', 'patterns', 'calibration', 'surprises', "
        "'rationale_audit']"]
