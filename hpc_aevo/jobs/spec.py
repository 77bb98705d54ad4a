"""A candidate's job as data: the spec pickled to it, its claim, and the outcome it writes.

These are the files the job and the daemon share (`hpc_aevo/jobs/body.py` runs the job; the
launcher reads what it wrote), so both sides agree on them here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpc_aevo.state.records import Record
from hpc_aevo.state.tree import AttemptFiles

EXIT_PREEMPTED = 3  # the substrate trainer's "checkpointed, requeue me" code

JobEnd = Literal["COMPLETED", "FAILED", "PREEMPTED", "TIMEOUT", "DUPLICATE"]  # TIMEOUT: the last requeue ran out


@dataclass(frozen=True)
class ScoreInput:
    """What a leaderboard scoring job scores: the one file the candidate's eval stage selected, refused unless
    its bytes still have `sha256`, and how (the leaderboard adapter's command line over its held-out data)."""

    checkpoint: str  # the selected pickle-free export, inside the candidate's checkpoints/
    sha256: str
    args: tuple[str, ...]  # the command's arguments
    views: tuple[str, ...] = ()  # the held-out data it reads (read-only), besides the checkpoint and the recipe
    command: tuple[str, ...] = ()  # the site's scorer; empty: the frozen evaluator, under the job's Python


@dataclass
class JobSpec:
    """Everything a candidate's job needs, in plain paths (it is pickled to the job)."""

    key: str  # "r000/cand-01"
    attempt: int
    sandbox: str  # the candidate's recipe and trainer live here (cwd of training)
    evaluator_dir: str  # the frozen default/ copy: evaluation code is never the candidate's
    checkpoints: str
    eval_result: str
    jobs_dir: str
    stages: tuple[str, ...] = ("train", "eval")  # or ("score",): the leaderboard scoring job
    hidden: tuple[str, ...] = ()  # what no stage may see: the state root, the campaign's own files
    confine: str = "auto"  # scheduler.confine_jobs: auto | required | off
    max_processes: int = 4096  # scheduler.max_processes: a stage's cap on processes and threads
    score: ScoreInput | None = None  # the scoring job's input (stages ("score",))

    @property
    def files(self) -> AttemptFiles:
        return AttemptFiles(Path(self.jobs_dir), self.attempt)

    @property
    def _only(self) -> str | None:
        """The stage this spec runs alone (one task of SLURM's train, eval or score array), or None for both."""
        return self.stages[0] if len(self.stages) == 1 else None

    def claim_path(self) -> Path:
        return self.files.claim(self._only)

    def outcome_path(self) -> Path:
        """The attempt's outcome; a train-only task (SLURM's train array) writes its own stage outcome."""
        return self.files.outcome(self._only)

    def stage(self, stage: str) -> "JobSpec":
        """The spec of one stage alone (one task of the train or the eval array)."""
        return dataclasses.replace(self, stages=(stage,))

    def log_path(self, stage: str) -> Path:
        return self.files.log(stage)


@dataclass
class Claim(Record):
    SCHEMA = "hpc_aevo.job_claim"
    VERSION = 1

    key: str
    attempt: int
    pid: int
    identity: str | None  # the process start time, so the daemon can adopt this pid safely
    host: str
    started_at: str
    scheduler_job: str | None = None  # SLURM "ARRAYID_TASK" (or job id) of the job that claimed; None locally


@dataclass
class StageRun:
    stage: str
    returncode: int
    wall_s: float
    log: str
    confined: bool = False  # ran under bubblewrap (see confine.py); False: unconfined, its log says why


@dataclass
class JobOutcome(Record):
    """Written by the job at its end: the stages it ran and how each ended."""

    SCHEMA = "hpc_aevo.job_outcome"
    VERSION = 1

    key: str
    attempt: int
    state: JobEnd
    stages: list[StageRun] = field(default_factory=list)
    cpu_s: float = 0.0
    finished_at: str = ""
    message: str = ""


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
