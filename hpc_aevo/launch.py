"""Launch: submit every candidate's job, watch them with one batched query per poll, retry failures.

Crash safety comes from the order of writes. For attempt N of a candidate the daemon saves the
manifest's attempt count, then the `Submission` intent (no job id), then submits, then records the
job id. Restarted after a kill at any point it finds one of: no intent (nothing was submitted:
submit), an intent without job id (the job may have started: adopt it through its claim, or
resubmit the same attempt after a grace period, which the job's O_EXCL claim makes harmless), or a
job id (watch it). A job that ended without an outcome file is LOST and counts as a failed attempt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .crashpoints import crashpoint
from .manifest import CandidateManifest
from .scheduler import Scheduler, Submission, attempt_state
from .scheduler.job import Claim, JobOutcome, JobSpec, log_tail
from .state import StateTree, now_iso
from .trace import Trace

CLAIM_GRACE_S = 20.0  # how long an intent without job id waits for its job's claim before resubmitting


class BudgetExhausted(RuntimeError):
    """Submitting would exceed the campaign's compute budget."""


@dataclass
class Candidate:
    """One candidate as the launcher sees it: where its files are and how to run it."""

    round: int
    index: int
    tree: StateTree

    @property
    def key(self) -> str:
        return f"r{self.round:03d}/cand-{self.index:02d}"

    def manifest(self) -> CandidateManifest:
        return CandidateManifest.load(self.tree.manifest(self.round, self.index))

    def save(self, manifest: CandidateManifest) -> None:
        manifest.save(self.tree.manifest(self.round, self.index))

    def trace(self) -> Trace:
        return Trace(self.tree.trace(self.round, self.index))

    def spec(self, attempt: int) -> JobSpec:
        t, r, c = self.tree, self.round, self.index
        return JobSpec(key=self.key, attempt=attempt, sandbox=str(t.sandbox(r, c)), evaluator_dir=str(t.default_dir),
                       checkpoints=str(t.checkpoints(r, c)), eval_result=str(t.eval_result(r, c)),
                       jobs_dir=str(t.jobs(r, c)))

    def submission_path(self, attempt: int) -> Path:
        return self.tree.jobs(self.round, self.index) / f"attempt-{attempt}.json"


def used_cpu_hours(tree: StateTree) -> float:
    """CPU-hours of every finished job of the campaign, from the outcomes the jobs wrote."""
    total = 0.0
    for path in tree.root.glob("rounds/r*/cand-*/jobs/attempt-*.outcome.json"):
        total += JobOutcome.load(path).cpu_s
    return total / 3600.0


def _age_s(iso: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()


class Launcher:
    def __init__(self, scheduler: Scheduler, max_attempts: int, poll_interval_s: float,
                 cpu_hours_budget: float | None, tree: StateTree,
                 on_failure: Callable[[Candidate, CandidateManifest, str], None]):
        self.scheduler, self.max_attempts, self.poll_interval_s = scheduler, max_attempts, poll_interval_s
        self.cpu_hours_budget, self.tree, self.on_failure = cpu_hours_budget, tree, on_failure

    def _check_budget(self, key: str) -> None:
        if self.cpu_hours_budget is None:
            return
        used = used_cpu_hours(self.tree)
        if used >= self.cpu_hours_budget:
            raise BudgetExhausted(f"budget.cpu_hours of {self.cpu_hours_budget} is spent ({used:.3f} used); "
                                  f"not submitting {key}. Raise the budget in the campaign YAML to continue.")

    def _submit(self, candidates: list[tuple[Candidate, CandidateManifest]]) -> None:
        if not candidates:
            return
        specs = []
        for cand, manifest in candidates:
            self._check_budget(cand.key)
            attempt = manifest.attempts
            Submission(cand.key, attempt, self.scheduler.backend, now_iso()).save(cand.submission_path(attempt))
            specs.append(cand.spec(attempt))
        submitted = self.scheduler.submit(specs)
        crashpoint(f"r{candidates[0][0].round}:train:intent")
        for (cand, manifest), (job_id, identity) in zip(candidates, submitted):
            attempt = manifest.attempts
            Submission(cand.key, attempt, self.scheduler.backend, now_iso(), job_id, identity).save(
                cand.submission_path(attempt))
            cand.trace().log("daemon", "submitted", attempt=attempt, job_id=job_id, backend=self.scheduler.backend)
        crashpoint(f"r{candidates[0][0].round}:train:submitted")

    def _adopt_or_resubmit(self, cand: Candidate, attempt: int, intent: Submission) -> Submission | None:
        """An intent without job id: adopt the job through its claim, or resubmit after the grace period."""
        claim = Claim.load_or_none(cand.spec(attempt).claim_path())
        if claim is not None:
            adopted = Submission(cand.key, attempt, intent.backend, intent.submitted_at, str(claim.pid), claim.identity)
            adopted.save(cand.submission_path(attempt))
            cand.trace().log("daemon", "adopted", attempt=attempt, pid=claim.pid)
            return adopted
        if _age_s(intent.submitted_at) < CLAIM_GRACE_S:
            return None
        cand.trace().log("daemon", "resubmitting-unconfirmed", attempt=attempt)
        self._submit([(cand, cand.manifest())])
        return None

    def _adopt_claim(self, cand: Candidate, attempt: int, submission: Submission) -> bool:
        """A watched launch ended without an outcome, but another launch of the attempt holds the claim
        and is alive (the resubmission raced a slow first launch): watch that one instead."""
        claim = Claim.load_or_none(cand.spec(attempt).claim_path())
        if claim is None or (str(claim.pid), claim.identity) == (submission.job_id, submission.identity):
            return False
        holder = Submission(cand.key, attempt, submission.backend, submission.submitted_at, str(claim.pid), claim.identity)
        if not self.scheduler.alive([holder])[0]:
            return False
        holder.save(cand.submission_path(attempt))
        cand.trace().log("daemon", "adopted", attempt=attempt, pid=claim.pid)
        return True

    def run(self, candidates: list[Candidate], progress: Callable[[str], None]) -> None:
        """Drive every candidate to trained (or failed); returns when none is in flight."""
        while True:
            watched: list[tuple[Candidate, CandidateManifest, Submission]] = []
            to_submit: list[tuple[Candidate, CandidateManifest]] = []
            for cand in candidates:
                manifest = cand.manifest()
                if manifest.status not in ("proposed", "submitted"):
                    continue
                if manifest.attempts == 0:
                    to_submit.append((cand, manifest))
                    continue
                submission = Submission.load_or_none(cand.submission_path(manifest.attempts))
                if submission is None:
                    to_submit.append((cand, manifest))
                elif submission.job_id is None:
                    adopted = self._adopt_or_resubmit(cand, manifest.attempts, submission)
                    if adopted is not None:
                        watched.append((cand, manifest, adopted))
                else:
                    watched.append((cand, manifest, submission))
            if not watched and not to_submit and not any(
                c.manifest().status in ("proposed", "submitted") for c in candidates
            ):
                return
            alive = self.scheduler.alive([s for _, _, s in watched])
            running = 0
            for (cand, manifest, submission), is_alive in zip(watched, alive):
                state, outcome = attempt_state(cand.spec(manifest.attempts), submission, is_alive)
                if state == "LOST" and self._adopt_claim(cand, manifest.attempts, submission):
                    state = "RUNNING"
                if state == "RUNNING":
                    running += 1
                elif state == "COMPLETED":
                    manifest.status = "trained"
                    cand.save(manifest)
                    cand.trace().log("daemon", "job-completed", attempt=manifest.attempts,
                                     stages={s.stage: round(s.wall_s, 1) for s in outcome.stages})
                    progress(f"{cand.key} trained and evaluated (attempt {manifest.attempts})")
                else:
                    self._failed(cand, manifest, state, outcome.message if outcome else "job ended without an outcome record")
            batch = []
            for cand, manifest in to_submit[: self.scheduler.free_slots(running)]:
                if manifest.attempts == 0:
                    manifest.attempts = 1
                manifest.status = "submitted"
                cand.save(manifest)
                batch.append((cand, manifest))
            self._submit(batch)
            time.sleep(self.poll_interval_s)

    def _failed(self, cand: Candidate, manifest: CandidateManifest, state: str, message: str) -> None:
        spec = cand.spec(manifest.attempts)
        tail = log_tail(spec.log_path("train")) or log_tail(spec.log_path("eval"))
        cand.trace().log("daemon", "job-failed", attempt=manifest.attempts, state=state, message=message, log_tail=tail)
        reason = f"attempt {manifest.attempts} {state}: {message}"
        if manifest.attempts >= self.max_attempts:
            manifest.status, manifest.failure = "failed", reason
            cand.save(manifest)
            return
        self.on_failure(cand, manifest, reason)
        manifest.attempts += 1
        manifest.status = "submitted"
        cand.save(manifest)
