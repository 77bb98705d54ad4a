"""Agent spend per round: where session records live, what a round has spent, the next session's limits.

Why: `agents.max_budget_usd_per_session` caps one session (the CLI enforces it), but a round of
many workers, a collector and a meta needs its own cap. Every session's tokens and cost are a
record under `rounds/rNNN/agents/`; before a session starts, the round's spend is summed from those
records, the session gets at most what is left, and none starts once the round's budget is spent.
"""

from __future__ import annotations

from pathlib import Path

from hpc_aevo.campaign.config import Agents
from hpc_aevo.roles.claude.session import AgentSession, Limits, SessionSpec, run_session
from hpc_aevo.state.records import now_iso
from hpc_aevo.state.tree import StateTree


class RoundSpend:
    def __init__(self, tree: StateTree, rnd: int):
        self.tree, self.round = tree, rnd

    def new_record_path(self, who: str, role: str) -> Path:
        """A fresh record path: a re-run session (after a crash) or a second debug turn keeps the first's cost."""
        n = 1
        while self.tree.agent_record(self.round, who, role, n).exists():
            n += 1
        return self.tree.agent_record(self.round, who, role, n)

    def latest(self, who: str, role: str) -> AgentSession | None:
        paths = self.tree.agent_records(self.round, who, role)
        return AgentSession.load(paths[-1]) if paths else None

    def sessions(self) -> list[AgentSession]:
        return [AgentSession.load(p) for p in self.tree.agent_records(self.round)]

    def spent_usd(self) -> float:
        return sum(s.cost_usd for s in self.sessions())

    def left_usd(self, agents: Agents) -> float | None:
        cap = agents.max_budget_usd_per_round
        return None if cap is None else cap - self.spent_usd()

    def refusal(self, agents: Agents) -> str | None:
        left = self.left_usd(agents)
        if left is not None and left <= 0:
            return (f"round {self.round} agent budget spent: ${self.spent_usd():.4f} of "
                    f"agents.max_budget_usd_per_round ${agents.max_budget_usd_per_round}")
        return None

    def run(self, spec: SessionSpec, agents: Agents) -> AgentSession:
        """Run `spec` unless the round's agent budget is spent; then record a refused session instead
        (it costs nothing; its role fails cleanly: a worker's candidate fails, collector and meta fall back)."""
        reason = self.refusal(agents)
        if reason is None:
            return run_session(spec)
        spec.trace.log("daemon", "session-refused", who=spec.who, role=spec.role, reason=reason)
        record = AgentSession(role=spec.role, round=spec.round, who=spec.who, session_id=None,
                              model=spec.limits.model, started_at=now_iso(), wall_s=0.0,
                              outcome="refused_round_budget", is_error=True, message=reason)
        record.save(spec.record_path)
        return record


def limits_for(agents: Agents, spend: RoundSpend) -> Limits:
    """The next session's limits: the campaign's, with the budget cut to what the round has left."""
    caps = [c for c in (agents.max_budget_usd_per_session, spend.left_usd(agents)) if c is not None]
    return Limits(model=agents.model, max_turns=agents.max_turns, max_budget_usd=min(caps) if caps else None,
                  max_wall_s=agents.max_session_minutes * 60, max_processes=agents.max_processes)


def agent_home(spend: RoundSpend, who: str) -> Path:
    """A session's CLI home (config, transcripts) under the round's agents/ directory; also the cwd of
    sessions that get no file tools."""
    home = spend.tree.agent_home(spend.round, who)
    home.mkdir(parents=True, exist_ok=True)
    return home
