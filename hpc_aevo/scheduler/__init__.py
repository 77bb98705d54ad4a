"""The scheduler seam: how the daemon launches candidates' jobs and learns how they ended.

A backend submits JobSpecs (one job array per stage where the scheduler has arrays) and answers
one batched query per poll. Everything else is files: the daemon writes a `Submission` record per
attempt before and after submitting; the job writes its claim and its outcome itself. So a daemon
restarted at any moment rebuilds the state of every attempt from the tree plus one query.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..config import Campaign, ConfigError
from ..records import Record
from .job import JobOutcome, JobSpec

# UNSUBMITTED, RUNNING, COMPLETED, FAILED, PREEMPTED, LOST, or the scheduler's own end state of a job
# that ended without an outcome record (SLURM: CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...).
AttemptState = str


class SchedulerUnavailable(RuntimeError):
    """A scheduler command failed or hung (slurmctld or slurmdbd restarting): no answer, not a job's end."""


@dataclass
class Submission(Record):
    """The daemon's record of one attempt: written with job_id None before submitting (the intent)."""

    SCHEMA = "hpc_aevo.submission"
    VERSION = 1

    key: str
    attempt: int
    backend: str
    submitted_at: str
    job_id: str | None = None  # local: the controller pid; slurm: the train array task "ARRAYID_CANDIDATE"
    identity: str | None = None  # backend detail that tells a live job from a reused id (local: pid start time)
    eval_job_id: str | None = None  # slurm: the chained eval array task "ARRAYID_CANDIDATE"
    batch: str | None = None  # slurm: the token in the batch's --comment, to find its jobs after a crash


@dataclass(frozen=True)
class Submitted:
    """What a backend returns per submitted spec."""

    job_id: str
    identity: str | None = None
    eval_job_id: str | None = None


@dataclass(frozen=True)
class TaskUsage:
    """One scheduler task's accounting, for the ledger (SLURM: from sacct)."""

    job_id: str
    stage: str
    state: str
    elapsed_s: float
    cpus: int
    gpus: int


@dataclass(frozen=True)
class JobStatus:
    """The scheduler's answer about one attempt in one poll."""

    alive: bool  # some task of the attempt is still queued or running
    ended: str | None = None  # when not alive: the scheduler's end state (CANCELLED, TIMEOUT, ...), if it knows
    tasks: tuple[TaskUsage, ...] = field(default_factory=tuple)


class Scheduler(abc.ABC):
    backend: str
    finds_by_comment = False  # find() is authoritative: an intent it cannot find was never submitted

    @abc.abstractmethod
    def free_slots(self, running: int) -> int:
        """How many more candidates may be submitted while `running` are in flight."""

    @abc.abstractmethod
    def submit(self, specs: list[JobSpec], batch: str) -> list[Submitted]:
        """Submit all specs at once (tagged with `batch`); one Submitted per spec, in order."""

    @abc.abstractmethod
    def poll(self, submissions: list[Submission]) -> list[JobStatus]:
        """One batched query: is the work of each attempt still queued or running, and how did it end?"""

    @abc.abstractmethod
    def cancel(self, submissions: list[Submission]) -> None:
        """Stop these attempts' jobs."""

    def find(self, intents: list[Submission], specs: list[JobSpec]) -> list[Submitted | None]:
        """After a crash between submitting and recording: the jobs of these intents (and their specs),
        where known. With `finds_by_comment`, None means that the intent was never submitted."""
        return [None] * len(intents)

    def worst_case_hours(self) -> tuple[float, float]:
        """(CPU-hours, GPU-hours) one candidate's attempt may cost at most, for the budget check."""
        return 0.0, 0.0

    def render(self, specs: list[JobSpec]) -> str:
        """What submit(specs) would send to the scheduler, for --dry-run."""
        return "\n".join(f"{self.backend}: would run {spec.key} attempt {spec.attempt}: stages "
                         f"{', '.join(spec.stages)} in {spec.sandbox}" for spec in specs)


def attempt_state(spec: JobSpec, submission: Submission | None, status: JobStatus) -> tuple[AttemptState, JobOutcome | None]:
    """Reconcile one attempt from its files and the scheduler's answer."""
    outcome = JobOutcome.load_or_none(spec.outcome_path())
    if outcome is not None:
        return outcome.state, outcome
    if submission is None or submission.job_id is None:
        return "UNSUBMITTED", None
    if status.alive:
        return "RUNNING", None
    trained = JobOutcome.load_or_none(spec.stage("train").outcome_path())
    failed_training = trained if trained is not None and trained.state != "COMPLETED" else None
    if status.ended not in (None, "COMPLETED"):
        if failed_training is not None and failed_training.state == "TIMEOUT":
            return "TIMEOUT", failed_training  # the last time limit: submitit ends the task FAILED to stop requeuing
        return status.ended, failed_training  # the scheduler's word: CANCELLED, TIMEOUT, FAILED, ...
    if failed_training is not None:
        return failed_training.state, failed_training
    return "LOST", None  # gone without a word: neither an outcome record nor a scheduler end state


def make_scheduler(campaign: Campaign) -> Scheduler:
    """The campaign's backend. A bad cluster profile raises a ConfigError that names the profile file."""
    config = campaign.scheduler
    if config.backend == "local":
        from .local import LocalScheduler

        return LocalScheduler(max_parallel=config.max_parallel,
                              timeout_min=config.stages.train.timeout_min + config.stages.eval.timeout_min)
    if config.backend == "slurm":
        from ..profile import load_profile
        from .slurm import SlurmScheduler

        return SlurmScheduler(max_parallel=config.max_parallel, stages=config.stages,
                              profile=load_profile(campaign.paths.profile), campaign=campaign.name,
                              state_root=campaign.paths.state_root, poll_interval_s=config.poll_interval_s)
    raise ConfigError("scheduler.backend", "'local' or 'slurm'", config.backend)
