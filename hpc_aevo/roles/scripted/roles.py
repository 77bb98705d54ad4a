"""The offline roles: the scripted worker, no collector prose, and the rule-based meta step."""

from __future__ import annotations

from hpc_aevo.roles.interface import Roles, WorkerResult, WorkerTask
from hpc_aevo.roles.scripted.worker import ScriptedWorker
from hpc_aevo.search.constitution import CheckContext
from hpc_aevo.search.decide import RULE_BASED, MetaProposals
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.tree import StateTree


class ScriptedRoles(Roles):
    def __init__(self, tree: StateTree | None = None) -> None:
        self.worker = ScriptedWorker(tree)

    def propose(self, task: WorkerTask) -> WorkerResult:
        return self.worker.propose(task)

    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        return self.worker.debug(task, reason)

    def prose(self, evidence: RoundEvidence) -> dict[str, str]:
        return {}

    def propose_policy(self, previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence],
                       ctx: CheckContext, constitution_sha256: str) -> MetaProposals:
        return RULE_BASED
