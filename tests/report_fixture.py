"""A small state tree for the report, TensorBoard and status tests, written through the real record classes.

Three rounds of one anchor and two workers: r000 promotes nothing and registers a dead end, r001 promotes
r001/cand-02, is flagged decoupled and rotates an axis, r002 is in progress (cand-01 evaluated, cand-02
still training: claimed, with a metric log). The evidence is the rule-based collector's (collect_evidence); only
r001's decoupling flag is set by hand, so that the figures have one to mark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tiny_campaign import write_campaign

from hpc_aevo.campaign.config import load_campaign, load_initial_policy
from hpc_aevo.jobs.spec import Claim
from hpc_aevo.loop.daemon import PhaseDone, RoundState
from hpc_aevo.roles.claude.session import AgentSession
from hpc_aevo.scoring.leaderboard import LeaderboardEntry, LeaderboardLedger
from hpc_aevo.search.constitution import PolicyDecision, Promotion
from hpc_aevo.search.decoupling import DecouplingFlag
from hpc_aevo.search.evidence import collect_evidence
from hpc_aevo.search.policy import DeadEnd
from hpc_aevo.state.ledger import TaskCharge, record_charges
from hpc_aevo.state.manifest import CandidateManifest, CheckpointScore
from hpc_aevo.state.records import now_iso
from hpc_aevo.state.tree import CampaignRecord, StateTree

DOMAINS = ("arithmetic", "sequence")
# (dev, leaderboard) of cand-00 (anchor), cand-01, cand-02, per round; None: not scored
SCORES = {0: [(0.30, 0.20), (0.33, 0.21), (0.25, 0.15)],
          1: [(0.31, 0.21), (0.36, 0.20), (0.34, 0.26)],
          2: [(0.35, 0.26), (0.37, None), (None, None)]}
RUNNING_RECIPE = "model: {seq_len: 9}\noptim: {steps: 100, batch_size: 4}\n"  # 32 tokens a step
METRIC_LINES = [{"step": s, "loss": 2.0 - s / 100, "lr": 0.001, "loop_s": s * 0.5} for s in (25, 50, 75)]


def _manifest(rnd: int, c: int) -> CandidateManifest:
    dev, board = SCORES[rnd][c]
    m = CandidateManifest(round=rnd, candidate=c, name=f"cand-{c:02d}", role="anchor" if c == 0 else "worker",
                          seed=rnd * 10 + c, axis=None if c == 0 else ("mixture", "schedule")[c - 1],
                          mutation=None if c == 0 else f"data.mixture.sequence:{'up' if c == 1 else 'down'}",
                          status="evaluated" if dev is not None else "submitted", attempts=1)
    if dev is not None:
        m.measured.dev, m.measured.selected_step = dev, 100
        m.measured.dev_per_domain = {d: dev + (0.02 if d == DOMAINS[0] else -0.02) for d in DOMAINS}
        m.measured.checkpoints = [CheckpointScore(50, dev - 0.05, dict(m.measured.dev_per_domain)),
                                  CheckpointScore(100, dev, dict(m.measured.dev_per_domain))]
    if board is not None:
        m.measured.leaderboard = board
        m.measured.leaderboard_per_domain = {d: board + (0.01 if d == DOMAINS[0] else -0.01) for d in DOMAINS}
    return m


def build_fixture(root: Path) -> Path:
    """Write the campaign YAML and its state tree under `root`; returns the YAML's path."""
    path = write_campaign(root, rounds=3, workers=2)
    campaign = load_campaign(path)
    tree = StateTree(campaign.paths.state_root)
    CampaignRecord(name=campaign.name, campaign_file=str(path), config_sha256="0" * 64, substrate_sha256="1" * 64,
                   constitution_sha256="2" * 64, created_at=now_iso()).save(tree.campaign_record)
    ledger = LeaderboardLedger(quota=campaign.leaderboard.quota)
    policy = load_initial_policy(campaign)
    for rnd in SCORES:
        policy.round = rnd
        policy.save(tree.policy(rnd))
        manifests = [_manifest(rnd, c) for c in range(3)]
        for m in manifests:
            m.save(tree.manifest(rnd, m.candidate))
            if m.measured.leaderboard is not None:
                ledger.submissions.append(LeaderboardEntry(
                    f"r{rnd:03d}/{m.name}", "export/ckpt-000100.safetensors", 100, m.measured.leaderboard,
                    m.measured.leaderboard_per_domain, now_iso()))
        record_charges(tree, [TaskCharge(f"r{rnd:03d}/{m.name}", 1, "job", None, "COMPLETED", 360.0, 1, 0, 0.1, 0.0)
                              for m in manifests if m.status == "evaluated"])
        state = RoundState(round=rnd, phases={p: PhaseDone(now_iso(), 1.0) for p in ("fork", "propose")})
        if rnd == 2:
            state.save(tree.round_state(rnd))
            break
        evidence = collect_evidence(rnd, manifests, policy, {d: 10 for d in DOMAINS})
        if rnd == 1:
            evidence.calibration.decoupled = True
            evidence.calibration.flags.append(DecouplingFlag("rank-decoupling", None, None, None, None, None, None,
                                                             "dev and leaderboard ranks disagree (rho -0.5)"))
        evidence.save(tree.evidence_json(rnd))
        promotion = Promotion("r001/cand-02", 0.05, 0.016) if rnd == 1 else None
        PolicyDecision(round=rnd + 1, proposer="rule-based", accepted=True, violations=[], fallback_used=False,
                       promotion=promotion, changes=[f"round {rnd} change"]).save(tree.decision(rnd))
        if rnd == 0:
            policy.dead_ends.append(DeadEnd("schedule", "data.mixture.sequence:down", 0,
                                            "lost 0.05 on the leaderboard"))
        if rnd == 1:
            policy.standing_source = "r001/cand-02"
            policy.active_axes, policy.retired_axes = ["mixture", "budget", "capacity"], ["schedule"]
        state.phases.update({p: PhaseDone(now_iso(), 1.0) for p in ("train", "eval", "collect", "meta")})
        state.save(tree.round_state(rnd))
    AgentSession(role="worker", round=1, who="cand-01", session_id="s1", model="m", started_at=now_iso(), wall_s=3.0,
                 outcome="success", is_error=False, cost_usd=0.125).save(tree.agent_record(1, "cand-01", "worker", 1))
    ledger.save(tree.leaderboard_ledger)
    tree.sandbox(2, 2).mkdir(parents=True)
    tree.sandbox(2, 2).joinpath("recipe.yaml").write_text(RUNNING_RECIPE)
    log = tree.attempt(2, 2, 1).log("train")
    log.parent.mkdir(parents=True, exist_ok=True)
    Claim("r002/cand-02", 1, os.getpid(), None, "host", now_iso()).save(tree.attempt(2, 2, 1).claim())
    log.write_text("hpc_aevo: r002/cand-02 attempt 1 train on host: confined by bubblewrap\n"
                   + "".join(json.dumps(line) + "\n" for line in METRIC_LINES))
    return path
