"""The scheduler seam: how the daemon launches candidates' jobs and learns how they ended.

A backend submits JobSpecs (one job array where the scheduler has arrays) and answers one batched
liveness query per poll. Everything else is files: the daemon writes a `Submission` record per
attempt before and after submitting; the job writes its claim and its outcome itself. So a daemon
restarted at any moment rebuilds the state of every attempt from the tree plus one query.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError
from ..records import Record
from .job import JobOutcome, JobSpec

AttemptState = Literal["UNSUBMITTED", "RUNNING", "COMPLETED", "FAILED", "PREEMPTED", "LOST"]


@dataclass
class Submission(Record):
    """The daemon's record of one attempt: written with job_id None before submitting (the intent)."""

    SCHEMA = "hpc_aevo.submission"
    VERSION = 1

    key: str
    attempt: int
    backend: str
    submitted_at: str
    job_id: str | None = None
    identity: str | None = None  # backend detail that tells a live job from a reused id (local: pid start time)


class Scheduler(abc.ABC):
    backend: str

    @abc.abstractmethod
    def free_slots(self, running: int) -> int:
        """How many more candidates may be submitted while `running` are in flight."""

    @abc.abstractmethod
    def submit(self, specs: list[JobSpec]) -> list[tuple[str, str | None]]:
        """Submit all specs at once; (job id, identity) per spec, in order."""

    @abc.abstractmethod
    def alive(self, submissions: list[Submission]) -> list[bool]:
        """One batched query: is the work of each attempt still queued or running?"""

    @abc.abstractmethod
    def cancel(self, submissions: list[Submission]) -> None:
        """Stop these attempts' jobs."""


def attempt_state(spec: JobSpec, submission: Submission | None, alive: bool) -> tuple[AttemptState, JobOutcome | None]:
    """Reconcile one attempt from its files and the scheduler's answer."""
    outcome = JobOutcome.load_or_none(spec.outcome_path())
    if outcome is not None:
        return outcome.state, outcome
    if submission is None or submission.job_id is None:
        return "UNSUBMITTED", None
    return ("RUNNING" if alive else "LOST"), None


def make_scheduler(backend: str, **options) -> Scheduler:
    if backend == "local":
        from .local import LocalScheduler

        return LocalScheduler(**options)
    raise ConfigError("scheduler.backend", "local: the slurm backend is not available yet", backend)
