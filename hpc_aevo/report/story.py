"""The campaign's story, gathered from the records the daemon writes: what the report and its figures show.

Why one typed summary: the Markdown, the four figures and the campaign's TensorBoard run all tell the
same story, so they are drawn from one `CampaignReport` built here from the typed records (policies,
manifests, evidence, decisions, the compute ledger, agent sessions), never from re-parsed text. It is
also saved as `report/report.json`, so a reader can check every plotted number without the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpc_aevo.roles.claude.spend import RoundSpend
from hpc_aevo.scoring.leaderboard import LeaderboardLedger
from hpc_aevo.search.constitution import PolicyDecision, Promotion
from hpc_aevo.search.decoupling import anchor_stats, gain
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import DeadEnd, Policy
from hpc_aevo.state.ledger import load_ledger
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.records import Record, now_iso
from hpc_aevo.state.tree import CandidateRef, StateTree


@dataclass
class CandidateRow:
    key: str  # "r001/cand-02"
    role: str
    axis: str | None
    mutation: str | None
    status: str
    dev: float | None
    leaderboard: float | None
    leaderboard_gain: float | None  # over the round's anchor mean
    failure: str | None
    hypothesis: str


@dataclass
class RoundStory:
    round: int
    decided: bool  # the meta step recorded its decision (the round is over)
    standing_source: str  # where the standing recipe the anchors ran came from
    standing_dev: float | None  # the anchors' mean: what the standing recipe scores this round
    standing_leaderboard: float | None
    standing_dev_per_domain: dict[str, float]
    standing_leaderboard_per_domain: dict[str, float]
    noise_band: float
    promotion_threshold: float
    active_axes: list[str]
    candidates: list[CandidateRow]
    spearman: float | None  # dev vs leaderboard rank correlation (the collect phase's)
    calibration_n: int
    decoupled: bool
    flags: list[str]
    promotion: Promotion | None
    dead_ends: list[DeadEnd]  # registered from this round's evidence
    retired_axes: list[str]  # axes retired by this round's decision
    new_axes: list[str]  # axes the next round activates that this one did not have
    changes: list[str]
    cpu_hours: float
    gpu_hours: float
    api_usd: float
    agent_sessions: int


@dataclass
class CampaignReport(Record):
    """Everything the report shows, as numbers (report/report.json)."""

    SCHEMA = "hpc_aevo.report"
    VERSION = 1

    campaign: str
    state_root: str
    generated_at: str
    rounds_planned: int
    backend: str
    leaderboard_used: int
    leaderboard_quota: int
    cpu_hours_budget: float | None
    gpu_hours_budget: float | None
    rounds: list[RoundStory] = field(default_factory=list)
    standing_now: str = "substrate"  # the source of the policy the next round would run

    def lineage(self) -> list[tuple[int, str]]:
        """(round, source) each time the standing recipe changed, from the first round on."""
        steps: list[tuple[int, str]] = []
        for story in self.rounds:
            if not steps or steps[-1][1] != story.standing_source:
                steps.append((story.round, story.standing_source))
        return steps


def _row(m: CandidateManifest, anchor_board: float | None) -> CandidateRow:
    return CandidateRow(key=CandidateRef(m.round, m.candidate).key, role=m.role, axis=m.axis, mutation=m.mutation,
                        status=m.status, dev=m.measured.dev, leaderboard=m.measured.leaderboard,
                        leaderboard_gain=gain(m.measured.leaderboard, anchor_board), failure=m.failure,
                        hypothesis=m.proposal.hypothesis)


def round_story(tree: StateTree, rnd: int, compute: dict) -> RoundStory | None:
    """One round from its records; None for a round not forked yet (the next round's policy alone)."""
    policy = Policy.load_or_none(tree.policy(rnd))
    manifests = [CandidateManifest.load(p) for p in tree.candidate_manifests(rnd)]
    if policy is None or not manifests:
        return None
    anchors = anchor_stats(manifests)
    evidence = RoundEvidence.load_or_none(tree.evidence_json(rnd))
    decision = PolicyDecision.load_or_none(tree.decision(rnd))
    following = Policy.load_or_none(tree.policy(rnd + 1))
    spend = RoundSpend(tree, rnd).sessions()
    charged = compute.get(f"r{rnd:03d}", {})
    cal = evidence.calibration if evidence else None
    return RoundStory(
        round=rnd, decided=decision is not None, standing_source=policy.standing_source,
        standing_dev=anchors.dev_mean, standing_leaderboard=anchors.leaderboard_mean,
        standing_dev_per_domain=anchors.dev_per_domain, standing_leaderboard_per_domain=anchors.leaderboard_per_domain,
        noise_band=policy.noise_band, promotion_threshold=policy.promotion_threshold, active_axes=policy.active_axes,
        candidates=[_row(m, anchors.leaderboard_mean) for m in manifests],
        spearman=cal.spearman if cal else None, calibration_n=cal.n if cal else 0,
        decoupled=bool(cal and cal.decoupled), flags=[f.message for f in cal.flags] if cal else [],
        promotion=decision.promotion if decision else None,
        dead_ends=[d for d in following.dead_ends if d.round == rnd] if following else [],
        retired_axes=sorted(set(following.retired_axes) - set(policy.retired_axes)) if following else [],
        new_axes=sorted(set(following.active_axes) - set(policy.active_axes)) if following else [],
        changes=decision.changes if decision else [],
        cpu_hours=charged.get("cpu_hours", 0.0), gpu_hours=charged.get("gpu_hours", 0.0),
        api_usd=round(sum(s.cost_usd for s in spend), 6), agent_sessions=len(spend))


def build_story(tree: StateTree, name: str, rounds_planned: int, backend: str, quota: int,
                cpu_budget: float | None, gpu_budget: float | None) -> CampaignReport:
    compute = load_ledger(tree).summary()["rounds"]
    ledger = LeaderboardLedger.load_or_none(tree.leaderboard_ledger)
    stories = [s for s in (round_story(tree, r, compute) for r in tree.rounds()) if s is not None]
    latest = max([r for r in tree.rounds() if tree.policy(r).exists()], default=None)
    policy = None if latest is None else Policy.load(tree.policy(latest))
    return CampaignReport(campaign=name, state_root=str(tree.root), generated_at=now_iso(),
                          rounds_planned=rounds_planned, backend=backend,
                          leaderboard_used=len(ledger.submissions) if ledger else 0, leaderboard_quota=quota,
                          cpu_hours_budget=cpu_budget, gpu_hours_budget=gpu_budget, rounds=stories,
                          standing_now=policy.standing_source if policy else "substrate")
