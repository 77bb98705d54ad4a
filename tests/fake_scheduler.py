"""A scheduler backend that runs nothing, for driving the real `Launcher` in milliseconds.

In the spirit of submitit's `core/test_core.py::MockedSubprocess`: jobs live in memory, a test
scripts what each launch does (`Plan`), and every call the launcher makes is recorded. A job
writes what the real job body writes (`hpc_aevo/jobs/body.py`, `StageTask` in the SLURM
backend): its claim, its stage logs and its outcome, as the real records at the spec's own paths,
so the launcher reconciles real files. Time is counted in polls: each `poll` is one tick of the
cluster, so nothing sleeps.

Two flavours, as the launcher tells backends apart:
- `arrays=True`, SLURM-like: a train and a chained eval task per candidate, accounting per task,
  an intent found again by its batch token (`finds_by_comment`);
- `arrays=False`, local-like: one process per candidate whose pid and start time are its job id,
  an intent adopted through the job's claim.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.campaign.profile import TaskResources
from hpc_aevo.jobs.scheduler import JobStatus, Scheduler, SchedulerUnavailable, Submission, Submitted, TaskUsage
from hpc_aevo.jobs.spec import Claim, JobOutcome, JobSpec, StageRun
from hpc_aevo.state.records import now_iso

ENDS = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "LOST")


@dataclass(frozen=True)
class Plan:
    """What one launch of an attempt does."""

    end: str = "COMPLETED"  # one of ENDS; LOST: the job vanishes, leaving neither outcome nor end state
    stage: str = "train"  # the stage that fails (FAILED)
    starts_after: int = 0  # ticks queued before it starts and claims its attempt (0: at submission)
    polls: int = 1  # ticks each run lasts
    requeues: int = 0  # time limits reached and requeued before the last run (SLURM)
    train_s: float = 60.0  # elapsed seconds of one train run
    eval_s: float = 30.0

    def __post_init__(self):
        assert self.end in ENDS and self.stage in ("train", "eval") and self.polls >= 1, self


@dataclass
class FakeJob:
    """One launch of one attempt: a train and an eval task (arrays) or one process (local)."""

    spec: JobSpec
    batch: str
    plan: Plan
    job_id: str
    identity: str | None
    eval_job_id: str | None
    submitted_tick: int
    states: dict[str, str] = field(default_factory=lambda: {"train": "PENDING", "eval": "PENDING"})
    elapsed: dict[str, float] = field(default_factory=lambda: {"train": 0.0, "eval": 0.0})
    started: bool = False
    runs: int = 0  # runs that reached their end (a time limit or the job's end)
    gone: bool = False  # LOST: no longer known to the scheduler

    @property
    def alive(self) -> bool:
        return not self.gone and any(state in ("PENDING", "RUNNING", "REQUEUED") for state in self.states.values())


class FakeScheduler(Scheduler):
    backend = "fake"

    def __init__(self, arrays: bool, max_parallel: int | None = None, cpus: int = 4, gpus: int = 0,
                 worst_case: tuple[float, float] = (0.0, 0.0)):
        self.arrays, self.finds_by_comment = arrays, arrays
        self.max_parallel, self.cpus, self.gpus, self.worst_case = max_parallel, cpus, gpus, worst_case
        self.jobs: list[FakeJob] = []
        self.tick = 0
        self.calls: list[tuple] = []  # (name, detail) of every call the launcher made, in order
        self._plans: dict[tuple[str, int], list[Plan]] = {}
        self._down: range = range(0)  # ticks during which the scheduler does not answer
        self._unanswered_submits = 0
        self.peak = 0  # the most jobs queued or running at once

    def resources(self, stage: str) -> TaskResources:
        return TaskResources(1, 1, self.gpus, self.cpus, 1.0, 60)

    # ---- scripting -------------------------------------------------------------------------
    def script(self, key: str, attempt: int, *plans: Plan) -> None:
        """The plans of this attempt's next launches, in order; a launch beyond them completes."""
        self._plans.setdefault((key, attempt), []).extend(plans)

    def outage(self, first_tick: int, polls: int) -> None:
        """The scheduler answers nothing for `polls` ticks from `first_tick` (slurmctld restarting):
        submit and find raise SchedulerUnavailable, polls get the backends' outage answer."""
        self._down = range(first_tick, first_tick + polls)

    def unanswered_submit(self) -> None:
        """The next submit is accepted but its answer is lost (sbatch timed out after queueing)."""
        self._unanswered_submits += 1

    def elapse(self, ticks: int) -> None:
        """Time passes with nobody polling (the daemon is down)."""
        for _ in range(ticks):
            self._advance()

    # ---- what the tests read ---------------------------------------------------------------
    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)

    def batches(self) -> list[list[tuple[str, int]]]:
        """Each submit call's (key, attempt) pairs, accepted or not."""
        return [detail for name, detail in self.calls if name == "submit"]

    def launches(self) -> Counter:
        """How many jobs each (key, attempt) has in the cluster."""
        return Counter((job.spec.key, job.spec.attempt) for job in self.jobs)

    # ---- the Scheduler seam ----------------------------------------------------------------
    def free_slots(self, running: int) -> int:
        self.calls.append(("free_slots", running))
        return 1 << 30 if self.max_parallel is None else max(0, self.max_parallel - running)

    def submit(self, specs: list[JobSpec], batch: str) -> list[Submitted]:
        self.calls.append(("submit", [(spec.key, spec.attempt) for spec in specs]))
        self._answer_or_raise("sbatch")
        jobs = [self._launch(spec, batch) for spec in specs]
        if self._unanswered_submits:
            self._unanswered_submits -= 1
            raise SchedulerUnavailable("sbatch did not answer within 120 s")
        return [Submitted(job.job_id, job.identity, job.eval_job_id) for job in jobs]

    def poll(self, submissions: list[Submission]) -> list[JobStatus]:
        """Like SlurmScheduler.poll: during an outage every job counts as still queued."""
        self.calls.append(("poll", len(submissions)))
        self._advance()
        if self.tick in self._down:
            return [JobStatus(alive=True) for _ in submissions]
        return [self._status(self._job(s)) for s in submissions]

    def cancel(self, submissions: list[Submission]) -> None:
        self.calls.append(("cancel", [s.job_id for s in submissions]))
        for job in filter(None, map(self._job, submissions)):
            self._cancel(job)

    def find(self, intents: list[Submission], specs: list[JobSpec]) -> list[Submitted | None]:
        self.calls.append(("find", len(intents)))
        if not self.finds_by_comment:
            return super().find(intents, specs)
        self._answer_or_raise("squeue")
        out: list[Submitted | None] = []
        for intent, spec in zip(intents, specs):
            job = next((j for j in self.jobs if (j.batch, j.spec.key) == (intent.batch, spec.key)), None)
            out.append(None if job is None else Submitted(job.job_id, job.identity, job.eval_job_id))
        return out

    def worst_case_hours(self, stage: str = "train") -> tuple[float, float]:
        return self.worst_case

    # ---- the cluster -----------------------------------------------------------------------
    def _answer_or_raise(self, command: str) -> None:
        if self.tick in self._down:
            raise SchedulerUnavailable(f"{command} failed (1): Unable to contact slurm controller")

    def _launch(self, spec: JobSpec, batch: str) -> FakeJob:
        plans = self._plans.get((spec.key, spec.attempt), [])
        plan = plans.pop(0) if plans else Plan()
        assert self.arrays or (plan.end != "TIMEOUT" and not plan.requeues), "only SLURM requeues a timed-out task"
        n = len(self.jobs)
        if self.arrays:  # train array 100, 102, ...; its eval array the next id; task index = candidate
            index = spec.key.rsplit("-", 1)[1].lstrip("0") or "0"
            job_id, identity, eval_job_id = f"{100 + 2 * n}_{index}", None, f"{101 + 2 * n}_{index}"
        else:  # a pid and its start time
            job_id, identity, eval_job_id = str(4000 + n), f"start-{self.tick}-{n}", None
        job = FakeJob(spec, batch, plan, job_id, identity, eval_job_id, self.tick)
        self.jobs.append(job)
        self._step(job)
        self._count_peak()
        return job

    def _job(self, submission: Submission) -> FakeJob | None:
        return next((j for j in self.jobs if (j.job_id, j.identity) == (submission.job_id, submission.identity)), None)

    def _status(self, job: FakeJob | None) -> JobStatus:
        if job is None or job.gone:
            return JobStatus(alive=False)
        if job.alive:
            return JobStatus(alive=True)
        if not self.arrays:  # a local process is alive or not; it has no end state
            return JobStatus(alive=False)
        tasks = tuple(TaskUsage(job_id, stage, job.states[stage], job.elapsed[stage],
                                self.cpus if job.elapsed[stage] else 0, self.gpus if job.elapsed[stage] else 0)
                      for stage, job_id in (("train", job.job_id), ("eval", job.eval_job_id)))
        ended = next((t.state for t in tasks if t.state != "COMPLETED"), "COMPLETED")
        return JobStatus(alive=False, ended=ended, tasks=tasks)

    def _advance(self) -> None:
        self.tick += 1
        for job in self.jobs:
            self._step(job)
        self._count_peak()

    def _count_peak(self) -> None:
        self.peak = max(self.peak, sum(job.alive for job in self.jobs))

    def _step(self, job: FakeJob) -> None:
        """Move a job to where its plan has it at this tick, writing what the job writes on the way."""
        if not job.alive:
            return
        age, plan = self.tick - job.submitted_tick, job.plan
        if not job.started and age >= plan.starts_after:
            job.started = True
            if not self._claim(job):  # another launch holds the claim: exit without running (DUPLICATE)
                job.states = {"train": "FAILED", "eval": "CANCELLED"}
                return
            job.states["train"] = "RUNNING"
        if not job.started or age < plan.starts_after + (job.runs + 1) * plan.polls:
            return
        job.runs += 1
        job.elapsed["train"] += plan.train_s
        if job.runs <= plan.requeues:  # the time limit: checkpointed, requeued, resumed next run
            job.states["train"] = "REQUEUED"
            return
        self._end(job)

    def _claim(self, job: FakeJob) -> bool:
        """The job's O_EXCL claim of its attempt (the train task's, on SLURM); False: another launch holds it."""
        spec = job.spec.stage("train") if self.arrays else job.spec
        if Claim.load_or_none(spec.claim_path()) is not None:
            return False
        self._save_claim(spec, job.job_id, job.identity)
        return True

    def _save_claim(self, spec: JobSpec, job_id: str, identity: str | None) -> None:
        Claim(spec.key, spec.attempt, int(job_id.split("_")[0]), identity, "fake-node", now_iso(),
              job_id if self.arrays else None).save(spec.claim_path())

    def _end(self, job: FakeJob) -> None:
        """The last run ends as planned. On SLURM the train task records its own outcome and the chained
        eval task the attempt's; a local job records the attempt's once, after its last stage."""
        plan, spec = job.plan, job.spec
        if plan.end == "LOST":
            job.gone = True
            return
        if plan.end == "CANCELLED":
            self._cancel(job)
            return
        if plan.end == "TIMEOUT":  # StageTask: submitit raises on the last time limit, so the task ends FAILED
            self._log(spec, "train", "submitit: Job not requeued because: timed-out too many times.")
            self._outcome(spec.stage("train"), "TIMEOUT", [], "train reached its time limit with no requeue left; "
                                                             "its last checkpoint is kept for a retry")
            job.states = {"train": "FAILED", "eval": "CANCELLED"}
            return
        runs: list[StageRun] = []
        for stage in ("train", "eval"):
            failed = plan.end == "FAILED" and plan.stage == stage
            if stage == "eval":
                job.elapsed["eval"] = plan.eval_s
                if self.arrays:
                    self._save_claim(spec.stage("eval"), job.eval_job_id, None)
            log = self._log(spec, stage, f"Traceback (most recent call last):\nRuntimeError: {stage} diverged: "
                                         "loss is nan" if failed else f"{stage} done")
            runs.append(StageRun(stage, 1 if failed else 0, plan.train_s if stage == "train" else plan.eval_s,
                                 str(log), confined=True))
            job.states[stage] = "FAILED" if failed else "COMPLETED"
            state, message = ("FAILED", f"{stage} exited with code 1; log: {log}") if failed else ("COMPLETED", "")
            if self.arrays and stage == "train":
                self._outcome(spec.stage("train"), state, runs, message)
            if failed:
                if stage == "train":
                    job.states["eval"] = "CANCELLED"  # kill-on-invalid-dep: the chained task never starts
                if stage == "eval" or not self.arrays:
                    self._outcome(spec, state, runs, message)
                return
        self._outcome(spec, "COMPLETED", runs, "")

    def _cancel(self, job: FakeJob) -> None:
        job.states = {stage: "CANCELLED" if state in ("PENDING", "RUNNING", "REQUEUED") else state
                      for stage, state in job.states.items()}

    @staticmethod
    def _log(spec: JobSpec, stage: str, text: str) -> Path:
        log = spec.log_path(stage)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(f"hpc_aevo: {spec.key} attempt {spec.attempt} {stage} on fake-node: confined by bubblewrap\n"
                         f"{text}\n")
        return log

    @staticmethod
    def _outcome(target: JobSpec, state: str, runs: list[StageRun], message: str) -> None:
        """The outcome record at `target`'s path (the train task's own, or the attempt's)."""
        JobOutcome(target.key, target.attempt, state, list(runs), cpu_s=sum(r.wall_s for r in runs),
                   finished_at=now_iso(), message=message).save(target.outcome_path())
