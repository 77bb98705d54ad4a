"""The `claude` roles: the worker, the collector and the meta step as Claude Code sessions.

Checked before anything runs: the campaign and its tree are given, the host can run a session
(the CLI, its OS sandbox), and the API key moves out of the daemon's environment into the key helper.
"""

from __future__ import annotations

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.roles.claude.collector import ClaudeCollector
from hpc_aevo.roles.claude.meta import PROPOSER, ClaudeMeta
from hpc_aevo.roles.claude.session import session_env_ok, take_api_key
from hpc_aevo.roles.claude.worker import ClaudeWorker
from hpc_aevo.roles.interface import Roles, WorkerResult, WorkerTask
from hpc_aevo.search.constitution import CheckContext
from hpc_aevo.search.decide import MetaProposals
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import StateTree


def claude_roles(campaign: Campaign | None, tree: StateTree | None) -> ClaudeRoles:
    if campaign is None or tree is None:
        raise ConfigError("agents.backend", "scripted, or claude with a campaign: the claude backend needs the "
                                            "campaign and its state tree", "claude")
    why = session_env_ok()
    if why:
        raise ConfigError("agents.backend", f"scripted, or claude on a host where it can run ({why})", "claude",
                          str(campaign.source))
    take_api_key()
    return ClaudeRoles(campaign, tree)


class ClaudeRoles(Roles):
    def __init__(self, campaign: Campaign, tree: StateTree):
        self.tree = tree
        self.worker = ClaudeWorker(campaign, tree)
        self.collector = ClaudeCollector(campaign, tree)
        self.meta = ClaudeMeta(campaign, tree)

    def trace(self, rnd: int) -> Trace:
        """The round's agent trace (collector and meta sessions)."""
        return Trace(self.tree.agents_trace(rnd))

    def propose(self, task: WorkerTask) -> WorkerResult:
        return self.worker.propose(task)

    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        return self.worker.debug(task, reason)

    def prose(self, evidence: RoundEvidence) -> dict[str, str]:
        return self.collector.prose(evidence, self.trace(evidence.round))[0]

    def propose_policy(self, previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence],
                       ctx: CheckContext, constitution_sha256: str) -> MetaProposals:
        """The Claude meta's session runs now; its proposals are replayed to `search.decide`."""
        proposer, count, _session = self.meta.proposer(previous, evidence, history, ctx, self.trace(evidence.round),
                                                       constitution_sha256)
        return MetaProposals(proposer, PROPOSER, count)
