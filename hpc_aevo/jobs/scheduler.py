"""The scheduler seam: how the daemon launches candidates' jobs and learns how they ended.

A backend submits JobSpecs (one job array per stage where the scheduler has arrays) and answers
one batched query per poll. Everything else is files: the daemon writes a `Submission` record per
attempt before and after submitting; the job writes its claim and its outcome itself. So a daemon
restarted at any moment rebuilds the state of every attempt from the tree plus one query.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from hpc_aevo.campaign.profile import ClusterProfile, TaskResources
from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.state.records import Record


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
    stage: str = "train"  # what the attempt runs: "train" (training, then its evaluation) or "score"


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


@dataclass(frozen=True)
class PartitionLimits:
    """What the scheduler lets one task have, for the preflight (None: no limit, or not known)."""

    name: str
    max_time_min: int | None = None
    max_nodes: int | None = None
    node_mem_gb: float | None = None  # the largest node's memory
    node_cpus: int | None = None  # the largest node's CPUs


class Scheduler(abc.ABC):
    backend: str
    finds_by_comment = False  # find() is authoritative: an intent it cannot find was never submitted
    gpu_type: str | None = None  # the GPU kind tasks get (a key of campaign.profile.GPU_CAPABILITY), when known
    profile: ClusterProfile | None = None  # the cluster profile jobs are shaped by (SLURM); None: this machine

    @abc.abstractmethod
    def resources(self, stage: str) -> TaskResources:
        """Where one task of `stage` runs: nodes, ranks, GPUs, CPUs, memory and time (for the preflight)."""

    def limits(self) -> PartitionLimits | None:
        """What the partition allows a task (None: no partition to ask); SchedulerUnavailable when unanswered."""
        return None

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

    def worst_case_hours(self, stage: str = "train") -> tuple[float, float]:
        """(CPU-hours, GPU-hours) one candidate's attempt of `stage` ("train": training and evaluation;
        "score") may cost at most, for the budget check."""
        return 0.0, 0.0

    def render(self, specs: list[JobSpec]) -> str:
        """What submit(specs) would send to the scheduler, for --dry-run."""
        return "\n".join(f"{self.backend}: would run {spec.key} attempt {spec.attempt}: stages "
                         f"{', '.join(spec.stages)} in {spec.sandbox}" for spec in specs) or "nothing to submit"
