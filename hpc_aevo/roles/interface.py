"""The roles seam: what the daemon asks of whoever plays the worker, the collector and the meta step.

The daemon hands every candidate the same task (its sandbox, its axis, the policy) and gets back the
same result (a mutation signature and a proposal); it hands the collector the round's evidence and the
meta step the round's decision inputs, whether LLM agents or the offline scripted backend play them.
So the round loop never knows which: `factory.make_roles` is the one place that chooses.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from hpc_aevo.search.constitution import CheckContext
from hpc_aevo.search.decide import MetaProposals
from hpc_aevo.search.evidence import RoundEvidence
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.manifest import Proposal
from hpc_aevo.state.trace import Trace


@dataclass
class WorkerTask:
    """What the daemon gives a worker: its candidate, its assigned axis and its sandbox."""

    round: int
    candidate: int
    name: str  # "cand-03"
    role: Literal["anchor", "worker"]
    axis: str | None  # None for anchors
    seed: int
    sandbox: Path
    policy: Policy
    trace: Trace


@dataclass
class WorkerResult:
    mutation: str | None  # signature of the applied mutation; None for anchors and workers with no open operator
    proposal: Proposal


class WorkerFailed(RuntimeError):
    """The worker could not propose (an agent session errored, ran out of turns or budget, recorded no
    proposal): its candidate fails, the round goes on."""


class Worker(Protocol):
    def propose(self, task: WorkerTask) -> WorkerResult: ...

    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        """Let the worker fix its sandbox after a failed job; its revised proposal, or None if it made none."""
        ...


class Roles(abc.ABC):
    """Every role of a campaign's backend, as the daemon calls them."""

    @abc.abstractmethod
    def propose(self, task: WorkerTask) -> WorkerResult:
        """The worker mutates its sandbox along its axis; raises WorkerFailed when it cannot."""

    @abc.abstractmethod
    def debug(self, task: WorkerTask, reason: str) -> WorkerResult | None:
        """The worker's turn after a failed job: its revised proposal, or None if it made none."""

    @abc.abstractmethod
    def prose(self, evidence: RoundEvidence) -> dict[str, str]:
        """The collector's prose per evidence section (the numbers stay the computed ones); {} for none."""

    @abc.abstractmethod
    def propose_policy(self, previous: Policy, evidence: RoundEvidence, history: list[RoundEvidence],
                       ctx: CheckContext, constitution_sha256: str) -> MetaProposals:
        """The meta step's proposals for the next round's policy; `search.decide` checks them against the
        constitution. Raises ConstitutionChanged when the constitution's bytes are not the recorded ones."""
