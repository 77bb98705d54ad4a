"""The roles seam: what the daemon asks of whoever plays the worker, the collector and the meta step.

The daemon hands every candidate the same task (its sandbox, its axis, the policy) and gets back the
same result (a mutation signature and a proposal), whether an LLM agent or the scripted mutator plays
the worker, so the round loop never knows which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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
