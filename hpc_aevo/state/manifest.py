"""The per-candidate result manifest: what a worker proposed and what the evaluation measured.

The two halves have different writers. `proposal` is what an agent may write (hypothesis,
rationale, observed failure modes). `measured` is filled only by the daemon from the records
the training and evaluation jobs wrote themselves, so no agent can write a score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hpc_aevo.state.records import Record

CandidateStatus = Literal["forked", "proposed", "submitted", "trained", "evaluated", "failed"]
# "mutation": the candidate's own recipe or code ran and failed; "infrastructure": it did not get that far
FailureKind = Literal["mutation", "infrastructure"]


@dataclass
class Proposal:
    """The agent-writable fields of a manifest."""

    hypothesis: str = ""
    rationale: str = ""
    expected_effect: str = ""
    observed_failure_modes: list[str] = field(default_factory=list)


@dataclass
class CheckpointScore:
    step: int
    dev: float
    per_domain: dict[str, float]


@dataclass
class Measured:
    """Numbers that come only from the training and evaluation jobs and the leaderboard adapter."""

    train_steps: int = 0
    final_loss: float | None = None
    train_wall_s: float | None = None
    eval_wall_s: float | None = None
    checkpoints: list[CheckpointScore] = field(default_factory=list)
    selected_step: int | None = None
    dev: float | None = None
    dev_per_domain: dict[str, float] = field(default_factory=dict)
    leaderboard: float | None = None
    leaderboard_per_domain: dict[str, float] = field(default_factory=dict)
    # a mixture of experts: per MoE layer, each expert's share of the tokens its router sent over the trainer's
    # last logging interval (train_summary.json); empty for a dense model
    expert_load: list[list[float]] = field(default_factory=list)


@dataclass
class FailedJob:
    """How a job's last attempt ended, from the scheduler's and the job's own records (not the free-text
    `failure`): what decides whether the failure is evidence against the candidate's mutation."""

    state: str  # the attempt's end state: FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, CANCELLED, LOST, ...
    stage: str | None  # the stage that exited non-zero; None: no stage ran to its end
    returncode: int | None  # that stage's exit code
    kind: FailureKind


@dataclass
class ScoreJob:
    """The leaderboard scoring job of the candidate's selected checkpoint: what it scores (as the eval
    stage named it) and how far it is. The daemon writes it, and chooses who gets one."""

    checkpoint: str  # the selected export's path, relative to the candidate's checkpoints/
    sha256: str  # of the bytes the eval stage scored: the score job refuses any other
    step: int
    status: Literal["chosen", "submitted", "scored", "failed"] = "chosen"
    attempts: int = 0  # scoring submissions so far (retries included)
    failure: str | None = None  # why it was not scored, when it was not
    failed_job: FailedJob | None = None  # the typed facts of that failure (hpc_aevo/jobs/failures.py)


@dataclass
class CandidateManifest(Record):
    SCHEMA = "hpc_aevo.candidate_manifest"
    VERSION = 1

    round: int
    candidate: int
    name: str  # "cand-00"
    role: Literal["anchor", "worker"]
    seed: int
    axis: str | None  # assigned by the policy; None for anchors
    mutation: str | None = None  # signature of the applied mutation, e.g. "data.mixture.sequence:up"
    recipe_diff: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> [standing, candidate]
    status: CandidateStatus = "forked"
    attempts: int = 0  # training submissions so far (retries included)
    failure: str | None = None  # why the candidate failed, when it did
    failed_job: FailedJob | None = None  # the typed facts of a job failure (hpc_aevo/jobs/failures.py); None otherwise
    proposal: Proposal = field(default_factory=Proposal)
    measured: Measured = field(default_factory=Measured)
    scoring: ScoreJob | None = None  # set when the round chose it for the leaderboard
