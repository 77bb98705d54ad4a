"""Launch: submit every candidate's job, watch them with one batched query per poll, retry failures.

The same launcher drives each kind of job a round has (a `Track`): training with its chained
evaluation, and the leaderboard scoring of the chosen candidates (`scoring/score_stage.py`).

Crash safety comes from the order of writes. For attempt N of a candidate the daemon saves the
manifest's attempt count, then the `Submission` intent (no job id), then submits, then records the
job id. Restarted after a kill at any point it finds one of: no intent (nothing was submitted:
submit), an intent without job id (the job may have started: adopt it through its claim, or
resubmit the same attempt after a grace period, which the job's O_EXCL claim makes harmless), or a
job id (watch it). A job that ended without an outcome file counts as a failed attempt, with the
end state the scheduler reports (SLURM: CANCELLED, TIMEOUT, ...; local: LOST).

On SLURM the intent also carries a batch token that the jobs' `--comment` repeats, so an intent
without job id is found again with squeue/sacct instead of waiting for a claim. Every finished
attempt is charged to the ledger, and the budget is checked against the ledger before submitting.

A poll's disk reads do not grow with the number of candidates: the manifests and submission records
are the launcher's own, read once per `run` and kept in memory (every change is written through),
so a poll reads only what a job writes (its outcome, its claim), and only for attempts the scheduler
no longer lists as alive; candidates that are done drop out of the loop.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from hpc_aevo.campaign.config import Budget
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.failures import failed_job
from hpc_aevo.jobs.reconcile import attempt_state
from hpc_aevo.jobs.scheduler import JobStatus, Scheduler, Submission, Submitted, TaskUsage
from hpc_aevo.jobs.spec import Claim, JobOutcome, JobSpec, log_tail
from hpc_aevo.state.crashpoints import crashpoint
from hpc_aevo.state.ledger import TaskCharge, load_ledger, record_charges
from hpc_aevo.state.manifest import CandidateManifest, FailedJob
from hpc_aevo.state.records import now_iso, seconds_since
from hpc_aevo.state.tree import StateTree

CLAIM_GRACE_S = 20.0  # how long an intent without job id waits for its job's claim before resubmitting


class BudgetExhausted(RuntimeError):
    """Submitting would exceed the campaign's compute budget."""


@dataclass
class JobFailure:
    """What the worker's debug turn gets about a failed attempt: the state, the log and the trace."""

    attempt: int
    state: str
    message: str
    log_tail: str  # the last lines of the failing stage's log
    logs: list[str]  # the attempt's stage logs, train first
    trace: str  # the candidate's trace.jsonl


class JobState(Protocol):
    """Where a track keeps one candidate's job state: the manifest itself (training) or a part of it."""

    status: str
    attempts: int
    failure: str | None
    failed_job: FailedJob | None


class Track:
    """One kind of candidate job the launcher drives: training (then evaluation, chained) by default.
    A subclass says where its state lives in the manifest, which spec it submits and what its end means."""

    stage = "train"  # what a batch submits (SLURM: the train and eval arrays), and its local charges' stage
    waiting, done = "proposed", "trained"  # the status before the first submission, and after success
    logged = ("train", "eval")  # the stages whose logs a failed attempt shows

    def state(self, manifest: CandidateManifest) -> JobState | None:
        """The candidate's job state; None: it has no job of this track."""
        return manifest

    def spec(self, cand: Candidate, manifest: CandidateManifest, attempt: int) -> JobSpec:
        return cand.spec(attempt)

    def submission_path(self, cand: Candidate, attempt: int) -> Path:
        return cand.submission_path(attempt)

    def completed(self, cand: Candidate, manifest: CandidateManifest, outcome: JobOutcome) -> str:
        """Record a COMPLETED attempt (its status is `done` when this returns); the progress line."""
        self.state(manifest).status = self.done
        cand.trace().log("daemon", "job-completed", attempt=manifest.attempts,
                         stages={s.stage: round(s.wall_s, 1) for s in outcome.stages})
        return f"{cand.key} trained and evaluated (attempt {manifest.attempts})"

    def retry(self, cand: Candidate, manifest: CandidateManifest, reason: str, failure: JobFailure) -> None:
        """Before a failed attempt's retry is submitted."""


class TrainTrack(Track):
    """Training, where a failed attempt goes back to its worker (the debug turn) before its retry."""

    def __init__(self, on_failure: Callable[[Candidate, CandidateManifest, str, JobFailure], None]):
        self.on_failure = on_failure

    def retry(self, cand: Candidate, manifest: CandidateManifest, reason: str, failure: JobFailure) -> None:
        self.on_failure(cand, manifest, reason, failure)


@dataclass
class InFlight:
    """A candidate being launched, as the launcher last wrote it: its manifest and the submission record
    of its current attempt (None: not submitted yet). Both are written only by the launcher."""

    cand: Candidate
    manifest: CandidateManifest
    submission: Submission | None
    track: Track

    @classmethod
    def load(cls, cand: Candidate, track: Track) -> "InFlight":
        manifest = cand.manifest()
        flight = cls(cand, manifest, None, track)
        if flight.active and flight.job.attempts:
            flight.submission = Submission.load_or_none(track.submission_path(cand, flight.job.attempts))
        return flight

    @property
    def job(self) -> JobState:
        return self.track.state(self.manifest)

    @property
    def active(self) -> bool:
        job = self.track.state(self.manifest)
        return job is not None and job.status in (self.track.waiting, "submitted")

    def spec(self) -> JobSpec:
        return self.track.spec(self.cand, self.manifest, self.job.attempts)

    def save_submission(self) -> None:
        self.submission.save(self.track.submission_path(self.cand, self.job.attempts))



class Launcher:
    HEARTBEAT_S = 60.0  # at most one progress summary a minute: a long stage is not silent, nor a log flood

    def __init__(self, scheduler: Scheduler, max_attempts: int, poll_interval_s: float, budget: Budget,
                 tree: StateTree, track: Track):
        self.scheduler, self.max_attempts, self.poll_interval_s = scheduler, max_attempts, poll_interval_s
        self.budget, self.tree, self.track = budget, tree, track
        self.polls = 0  # loop iterations, for the benchmark's scheduler calls per poll

    def _check_budget(self, keys: list[str], in_flight: int) -> None:
        """Refuse a submission whose worst case (time limit x allocation) would exceed a budget."""
        used = load_ledger(self.tree).totals()
        per_candidate = self.scheduler.worst_case_hours(self.track.stage)
        for name, cap, spent, worst in zip(("cpu_hours", "gpu_hours"), (self.budget.cpu_hours, self.budget.gpu_hours),
                                           used, per_candidate):
            if cap is None:
                continue
            reserved, wanted = worst * in_flight, worst * len(keys)
            if spent >= cap or spent + reserved + wanted > cap:
                raise BudgetExhausted(
                    f"budget.{name} of {cap} would be exceeded: {spent:.3f} used + {reserved:.3f} reserved for "
                    f"{in_flight} running + {wanted:.3f} for {', '.join(keys)} (time limit x allocation, requeues "
                    f"included); not submitting. Raise budget.{name} in the campaign YAML to continue.")

    def _submit(self, flights: list[InFlight], in_flight: int = 0) -> None:
        if not flights:
            return
        self._check_budget([f.cand.key for f in flights], in_flight)  # before any file says "submitted"
        rnd = flights[0].cand.round
        batch = f"r{rnd:03d}-{uuid.uuid4().hex[:10]}"
        stage = self.track.stage
        for f in flights:
            if f.job.status != "submitted" or f.job.attempts == 0:
                f.job.attempts = max(f.job.attempts, 1)
                f.job.status = "submitted"
                f.cand.save(f.manifest)
            f.submission = Submission(f.cand.key, f.job.attempts, self.scheduler.backend, now_iso(), batch=batch,
                                      stage=stage)
            f.save_submission()
        submitted = self.scheduler.submit([f.spec() for f in flights], batch)
        crashpoint(f"r{rnd}:{stage}:intent")
        for f, job in zip(flights, submitted):
            self._record(f, job)
        crashpoint(f"r{rnd}:{stage}:submitted")

    def _record(self, flight: InFlight, job: Submitted, event: str = "submitted") -> None:
        """Write the job id into the attempt's submission record (its intent until now)."""
        intent, attempt = flight.submission, flight.job.attempts
        flight.submission = Submission(flight.cand.key, attempt, intent.backend, intent.submitted_at, job.job_id,
                                       job.identity, job.eval_job_id, intent.batch, intent.stage)
        flight.save_submission()
        flight.cand.trace().log("daemon", event, stage=intent.stage, attempt=attempt, job_id=job.job_id,
                                eval_job_id=job.eval_job_id, backend=self.scheduler.backend)

    def _recover(self, unconfirmed: list[InFlight]) -> list[InFlight]:
        """Intents without job id: found by the scheduler (SLURM, by comment), adopted through the job's
        claim (local), resubmitted when certainly never submitted or after the grace period."""
        if not unconfirmed:
            return []
        found = self.scheduler.find([f.submission for f in unconfirmed], [f.spec() for f in unconfirmed])
        watched, resubmit = [], []
        for f, job in zip(unconfirmed, found):
            if job is not None:
                self._record(f, job, "adopted")
                watched.append(f)
                continue
            if not self.scheduler.finds_by_comment:
                if self._adopt_through_claim(f):
                    watched.append(f)
                    continue
                if seconds_since(f.submission.submitted_at) < CLAIM_GRACE_S:
                    continue
            f.cand.trace().log("daemon", "resubmitting-unconfirmed", stage=self.track.stage, attempt=f.job.attempts)
            resubmit.append(f)
        self._submit(resubmit, len(watched))
        return watched

    def _adopt_through_claim(self, flight: InFlight) -> bool:
        claim = Claim.load_or_none(flight.spec().claim_path())
        if claim is None:
            return False
        self._record(flight, Submitted(str(claim.pid), claim.identity), "adopted")
        return True

    def _adopt_claim(self, flight: InFlight) -> bool:
        """A watched local launch ended without an outcome, but another launch of the attempt holds the
        claim and is alive (the resubmission raced a slow first launch): watch that one instead."""
        cand, attempt, submission = flight.cand, flight.job.attempts, flight.submission
        claim = Claim.load_or_none(flight.spec().claim_path())
        if self.scheduler.finds_by_comment or claim is None or \
                (str(claim.pid), claim.identity) == (submission.job_id, submission.identity):
            return False
        holder = Submission(cand.key, attempt, submission.backend, submission.submitted_at, str(claim.pid), claim.identity,
                            stage=submission.stage)
        if not self.scheduler.poll([holder])[0].alive:
            return False
        flight.submission = holder
        flight.save_submission()
        cand.trace().log("daemon", "adopted", attempt=attempt, pid=claim.pid)
        return True

    def run(self, candidates: list[Candidate], progress: Callable[[str], None],
            heartbeat: Callable[[], str] | None = None) -> None:
        """Drive every candidate's job of this track to done (or failed); returns when none is in flight.
        `heartbeat()`: a summary line, said every HEARTBEAT_S while jobs are in flight."""
        last_said = time.monotonic()
        flights = [f for f in (InFlight.load(c, self.track) for c in candidates) if f.active]
        earlier = [f.cand.key for f in flights if f.submission is not None]
        if earlier:  # a restarted daemon: what it takes over before it submits anything
            progress(f"adopting {len(earlier)} {self.track.stage} job(s) submitted before this start: {', '.join(earlier)}")
        while True:
            self.polls += 1
            flights = [f for f in flights if f.active]
            if not flights:
                return
            to_submit = [f for f in flights if f.submission is None]
            unconfirmed = [f for f in flights if f.submission is not None and f.submission.job_id is None]
            watched = [f for f in flights if f.submission is not None and f.submission.job_id is not None]
            recovered = self._recover(unconfirmed)
            watched += recovered
            # an intent still waiting for its job's claim, or resubmitted this poll, holds its slot too
            running = len(unconfirmed) - len(recovered)
            statuses = self.scheduler.poll([f.submission for f in watched])
            ended, charges = [], []
            for f, status in zip(watched, statuses):
                if status.alive:  # whatever its files say, a live attempt is let end before it is judged and charged
                    running += 1
                    continue
                state, outcome = attempt_state(f.spec(), f.submission, status)
                if state == "LOST" and self._adopt_claim(f):
                    running += 1
                    continue
                ended.append((f, state, outcome, status))
                charges += self._charges(f, status, outcome, state)
            record_charges(self.tree, charges)  # before the manifests move on, so no finished attempt goes uncharged
            for f, state, outcome, status in ended:
                if state == "COMPLETED":
                    line = self.track.completed(f.cand, f.manifest, outcome)
                    f.cand.save(f.manifest)
                    progress(line)
                else:
                    message = outcome.message if outcome else _no_outcome(state)
                    self._failed(f, state, message, status, progress, outcome)
            self._submit(to_submit[: self.scheduler.free_slots(running)], running)
            if heartbeat and any(f.active for f in flights) and time.monotonic() - last_said >= self.HEARTBEAT_S:
                last_said = time.monotonic()
                progress(heartbeat())
            time.sleep(self.poll_interval_s)

    def _charges(self, flight: InFlight, status: JobStatus, outcome: JobOutcome | None, state: str) -> list[TaskCharge]:
        key, attempt, stage = flight.cand.key, flight.job.attempts, self._local_stage()
        if status.tasks:
            return [charge_from_usage(key, attempt, usage) for usage in status.tasks]
        if outcome is None:  # lost with its process: it ran from its claim until now, at most
            claim = Claim.load_or_none(flight.spec().claim_path())
            return [charge_from_claim(key, attempt, flight.submission.job_id, claim, state, stage)]
        return [charge_from_outcome(key, attempt, flight.submission.job_id, outcome, state, stage)]

    def _local_stage(self) -> str:
        """The stage a charge without scheduler tasks carries: "job" for training and evaluation in one process."""
        return "job" if self.track.stage == "train" else self.track.stage

    def _failed(self, flight: InFlight, state: str, message: str, status: JobStatus,
                progress: Callable[[str], None], outcome: JobOutcome | None = None) -> None:
        cand, manifest, job = flight.cand, flight.manifest, flight.job
        spec = flight.spec()
        logs = [spec.log_path(stage) for stage in self.track.logged if spec.log_path(stage).exists()]
        tail = log_tail(logs[-1]) if logs else ""
        cand.trace().log("daemon", "job-failed", stage=self.track.stage, attempt=job.attempts, state=state,
                         message=message, log_tail=tail, tasks={t.stage: f"{t.job_id} {t.state}" for t in status.tasks})
        reason = f"attempt {job.attempts} {state}: {message}"
        what = cand.key if self.track.stage == "train" else f"{cand.key} {self.track.stage}"
        progress(f"{what} {reason}")
        if job.attempts >= self.max_attempts:
            job.status, job.failure = "failed", reason
            job.failed_job = failed_job(state, outcome)  # typed: is it evidence against the mutation (jobs/failures.py)
            cand.save(manifest)
            return
        failure = JobFailure(job.attempts, state, message, tail, [str(p) for p in logs],
                             str(cand.tree.trace(cand.round, cand.index)))
        self.track.retry(cand, manifest, reason, failure)
        job.attempts += 1
        job.status = "submitted"
        cand.save(manifest)
        flight.submission = None  # the next attempt is not submitted yet


def _no_outcome(state: str) -> str:
    """Why an attempt that left no outcome record ended, in the words of whoever knows: LOST is nobody's
    word (the local backend has no scheduler to ask; on SLURM neither sacct nor squeue knows the job)."""
    if state == "LOST":
        return "the job is gone and left no outcome record (killed with its process, e.g. with the daemon or " \
               "for memory, or never started)"
    return f"the scheduler reports {state} and the job left no outcome record"


def charge_from_usage(key: str, attempt: int, usage: TaskUsage) -> TaskCharge:
    hours = usage.elapsed_s / 3600.0
    return TaskCharge(key, attempt, usage.stage, usage.job_id, usage.state, usage.elapsed_s, usage.cpus, usage.gpus,
                      hours * usage.cpus, hours * usage.gpus)


def charge_from_outcome(key: str, attempt: int, job_id: str | None, outcome: JobOutcome, state: str,
                        stage: str = "job") -> TaskCharge:
    """A local job: the CPU time its stages used (no allocation to charge)."""
    wall = sum(s.wall_s for s in outcome.stages)
    return TaskCharge(key, attempt, stage, job_id, state, wall, 1, 0, outcome.cpu_s / 3600.0, 0.0)


def charge_from_claim(key: str, attempt: int, job_id: str | None, claim: Claim | None, state: str,
                      stage: str = "job") -> TaskCharge:
    """A local job lost with its process (daemon and job killed together): no outcome says what it used, so
    it is charged one CPU from its claim until now, what it can have used at most (never-started: nothing)."""
    wall = 0.0
    if claim is not None:
        wall = max(0.0, seconds_since(claim.started_at))
    return TaskCharge(key, attempt, stage, job_id, state, wall, 1, 0, wall / 3600.0, 0.0)
