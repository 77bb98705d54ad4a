"""The `claude` agent backend: workers, collector and meta as Claude Code sessions (claude-agent-sdk).

Each role is a session of the real Claude Code CLI bundled in the SDK wheel (session.py), confined
by the tools, permission rules and OS sandbox it is given (confine.py), with in-process MCP tools
for what the role may do. Costs and tokens of every session are records under the round
(spend.py). Nothing here is imported unless a campaign sets `agents.backend: claude`.
"""

from __future__ import annotations

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.roles.claude.session import session_env_ok, take_api_key
from hpc_aevo.state.tree import StateTree


def _check(campaign: Campaign | None, tree: StateTree | None) -> None:
    if campaign is None or tree is None:
        raise ConfigError("agents.backend", "scripted, or claude with a campaign: the claude backend needs the "
                                            "campaign and its state tree", "claude")
    why = session_env_ok()
    if why:
        raise ConfigError("agents.backend", f"scripted, or claude on a host where it can run ({why})", "claude",
                          str(campaign.source))
    take_api_key()


def claude_worker(campaign: Campaign | None, tree: StateTree | None):
    _check(campaign, tree)
    from hpc_aevo.roles.claude.worker import ClaudeWorker

    return ClaudeWorker(campaign, tree)


class ClaudeRoles:
    """The round-level agent roles of the claude backend, as the daemon calls them."""

    def __init__(self, campaign: Campaign, tree: StateTree):
        from hpc_aevo.roles.claude.collector import ClaudeCollector
        from hpc_aevo.roles.claude.meta import ClaudeMeta

        self.tree = tree
        self.collector = ClaudeCollector(campaign, tree)
        self.meta = ClaudeMeta(campaign, tree)

    def trace(self, rnd: int):
        """The round's agent trace (collector and meta sessions): rounds/rNNN/agents/trace.jsonl."""
        from hpc_aevo.state.trace import Trace

        return Trace(self.tree.round_dir(rnd) / "agents" / "trace.jsonl")

    def prose(self, evidence) -> dict[str, str]:
        return self.collector.prose(evidence, self.trace(evidence.round))[0]

    def decide_args(self, previous, evidence, history, ctx, constitution_sha256: str) -> dict:
        """`meta.decide`'s proposer arguments: the Claude meta's proposals, replayed."""
        from hpc_aevo.roles.claude.meta import PROPOSER

        proposer, count, _session = self.meta.proposer(previous, evidence, history, ctx, self.trace(evidence.round),
                                                       constitution_sha256)
        return {"proposer": proposer, "proposer_name": PROPOSER, "max_attempts": count}
