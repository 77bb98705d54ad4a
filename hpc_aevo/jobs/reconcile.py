"""Reconcile one attempt: what its files say (claim, outcomes) against what the scheduler answers.

The job writes its own outcome, so files win; the scheduler's word counts only for a job that
ended without one (cancelled, timed out, lost).
"""

from __future__ import annotations

from hpc_aevo.jobs.scheduler import JobStatus, Submission
from hpc_aevo.jobs.spec import JobOutcome, JobSpec

# UNSUBMITTED, RUNNING, COMPLETED, FAILED, PREEMPTED, LOST, or the scheduler's own end state of a job
# that ended without an outcome record (SLURM: CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...).
AttemptState = str


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
