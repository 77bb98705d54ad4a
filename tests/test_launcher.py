"""The launcher's unit tier: the real Launcher on a real state tree, against tests/fake_scheduler.py.

Every submit, adopt, retry and requeue path of hpc_aevo/jobs/launcher.py in milliseconds, with no
cluster and no job body: lost, failed, cancelled and timed-out jobs, a scheduler outage, the
budget, the ledger, and the launcher's crash points. A crash point is the real `crashpoint()`
armed by HPC_AEVO_CRASH_AT; only its final SIGKILL is raised here instead of sent
(tests/test_campaign.py kills a real daemon at each of the round's points in turn; this file is
where `r0:train:submitted` is killed, since a real restart after `intent` adopts and never reaches it).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from fake_scheduler import FakeScheduler, Plan
from hpc_aevo.campaign.config import Budget
from hpc_aevo.jobs import launcher as launcher_module
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.launcher import BudgetExhausted, JobFailure, Launcher, TrainTrack
from hpc_aevo.jobs.scheduler import SchedulerUnavailable, Submission
from hpc_aevo.state import crashpoints
from hpc_aevo.state.ledger import load_ledger
from hpc_aevo.state.manifest import CandidateManifest, FailedJob
from hpc_aevo.state.tree import StateTree

BACKENDS = pytest.mark.parametrize("arrays", [True, False], ids=["slurm-like", "local-like"])
LAUNCHER_CRASH_POINTS = ["r0:train:intent", "r0:train:submitted"]


def key(c: int) -> str:
    return f"r000/cand-{c:02d}"


class Killed(BaseException):
    """kill -9 at a crash point, raised in the test process instead of sent to it."""


class TrainPhase:
    """One round's proposed candidates, handed to a Launcher as the daemon's train phase does;
    each `run()` is one life of the daemon."""

    def __init__(self, root: Path, scheduler: FakeScheduler, n: int, max_attempts: int = 2,
                 budget: Budget | None = None):
        self.tree, self.scheduler = StateTree(root / "state"), scheduler
        self.max_attempts, self.budget = max_attempts, budget or Budget()
        self.candidates = [Candidate(0, c, self.tree) for c in range(n)]
        for c in range(n):
            CandidateManifest(round=0, candidate=c, name=f"cand-{c:02d}", role="anchor" if c == 0 else "worker",
                              seed=c, axis=None, status="proposed").save(self.tree.manifest(0, c))
        self.debug_turns: list[tuple[str, str, JobFailure]] = []
        self.lines: list[str] = []

    def run(self) -> Launcher:
        launcher = Launcher(self.scheduler, self.max_attempts, 0, self.budget, self.tree, TrainTrack(self._debug_turn))
        launcher.run(self.candidates, self.lines.append)
        return launcher

    def _debug_turn(self, cand: Candidate, manifest: CandidateManifest, reason: str, failure: JobFailure) -> None:
        self.debug_turns.append((cand.key, reason, failure))

    def states(self) -> dict[str, tuple[str, int]]:
        return {cand.key: (m.status, m.attempts) for cand in self.candidates for m in [cand.manifest()]}

    def submission(self, c: int, attempt: int = 1) -> Submission:
        return Submission.load(self.candidates[c].submission_path(attempt))

    def events(self, c: int) -> list[str]:
        return [event["event"] for event in self.candidates[c].trace().events()]


@pytest.mark.parametrize("every_s,said", [(0.0, 3), (3600.0, 0)])
def test_a_heartbeat_line_is_said_at_most_every_heartbeat_while_jobs_are_in_flight(root, monkeypatch, every_s, said):
    monkeypatch.setattr(Launcher, "HEARTBEAT_S", every_s)
    scheduler = FakeScheduler(arrays=True)
    scheduler.script(key(0), 1, Plan(polls=3))
    phase = TrainPhase(root, scheduler, 1)
    Launcher(scheduler, 2, 0, Budget(), phase.tree, TrainTrack(phase._debug_turn)).run(
        phase.candidates, phase.lines.append, lambda: "train 1m00s: 1 training")
    assert phase.lines.count("train 1m00s: 1 training") == said
    assert phase.states() == all_trained(1)


def all_trained(n: int, attempts: int = 1) -> dict[str, tuple[str, int]]:
    return {key(c): ("trained", attempts) for c in range(n)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The test's directory, in memory where there is one (/dev/shm): every record is fsynced, and on a
    busy disk that alone takes most of a second per test. What is tested here is not the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="hpc_aevo-launcher-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at(point) arms a crash point, crash_at(None) disarms it (the restarted daemon)."""

    def kill(pid: int, sig: int) -> None:
        assert (pid, sig) == (os.getpid(), signal.SIGKILL)
        raise Killed(os.environ[crashpoints.CRASH_ENV])

    monkeypatch.setattr(crashpoints, "os", SimpleNamespace(environ=os.environ, getpid=os.getpid, kill=kill))

    def arm(point: str | None) -> None:
        if point is None:
            monkeypatch.delenv(crashpoints.CRASH_ENV)
        else:
            monkeypatch.setenv(crashpoints.CRASH_ENV, point)

    return arm


@pytest.fixture
def no_grace(monkeypatch):
    """An intent without job id and without a claim is resubmitted at once (else after CLAIM_GRACE_S)."""
    monkeypatch.setattr(launcher_module, "CLAIM_GRACE_S", 0.0)


# ---- submit ------------------------------------------------------------------------------------
@BACKENDS
def test_first_submit_sends_every_candidate_in_one_batch_and_charges_each(root, arrays):
    fake = FakeScheduler(arrays)
    phase = TrainPhase(root, fake, n=4)
    launcher = phase.run()
    assert fake.batches() == [[(key(c), 1) for c in range(4)]]
    submissions = [phase.submission(c) for c in range(4)]
    assert len({s.batch for s in submissions}) == 1 and all(s.job_id for s in submissions)
    assert all((s.eval_job_id is not None) == arrays for s in submissions)
    assert phase.states() == all_trained(4)
    assert phase.lines == [f"{key(c)} trained and evaluated (attempt 1)" for c in range(4)]
    assert fake.count("poll") == launcher.polls - 1  # one batched query per loop; the last finds nothing in flight
    charges = load_ledger(phase.tree).charges
    if arrays:  # sacct's elapsed x allocated CPUs, per task
        assert set(charges) == {f"{key(c)}#1/{stage}" for c in range(4) for stage in ("train", "eval")}
        assert charges[f"{key(0)}#1/train"].cpu_hours == pytest.approx(60 * 4 / 3600)
    else:  # the CPU time the job's stages used
        assert set(charges) == {f"{key(c)}#1/job" for c in range(4)}
        assert charges[f"{key(0)}#1/job"].cpu_hours == pytest.approx((60 + 30) / 3600)
    assert not phase.debug_turns


def test_free_slots_throttle_submission_to_max_parallel(root):
    fake = FakeScheduler(arrays=False, max_parallel=2)
    fake.script(key(0), 1, Plan(polls=2))
    phase = TrainPhase(root, fake, n=4)
    phase.run()
    assert fake.batches() == [[(key(0), 1), (key(1), 1)], [(key(2), 1)], [(key(3), 1)]]
    assert fake.peak == 2 and phase.states() == all_trained(4)


# ---- restart -----------------------------------------------------------------------------------
@pytest.mark.parametrize("down_ticks", [0, 3], ids=["jobs-running", "jobs-ended-meanwhile"])
@BACKENDS
@pytest.mark.parametrize("point", LAUNCHER_CRASH_POINTS)
def test_restart_after_kill_at_a_launcher_crash_point_submits_nothing_twice(root, crash_at, point, arrays,
                                                                            down_ticks):
    fake = FakeScheduler(arrays)
    for c in range(3):
        fake.script(key(c), 1, Plan(polls=2))
    phase = TrainPhase(root, fake, n=3)
    crash_at(point)
    with pytest.raises(Killed):
        phase.run()
    recorded = [phase.submission(c).job_id for c in range(3)]
    assert recorded == ([None] * 3 if point.endswith("intent") else [job.job_id for job in fake.jobs])
    crash_at(None)
    fake.elapse(down_ticks)
    phase.run()
    assert len(fake.batches()) == 1 and fake.launches() == {(key(c), 1): 1 for c in range(3)}
    assert [phase.submission(c).job_id for c in range(3)] == [job.job_id for job in fake.jobs]
    assert phase.states() == all_trained(3) and not phase.debug_turns
    adopted = point.endswith("intent")  # found by its batch token (SLURM) or through its claim (local)
    assert all(("adopted" in phase.events(c)) == adopted for c in range(3))
    assert fake.count("find") == (1 if adopted else 0)


def killed_at_intent_then_restarted(phase, crash_at) -> None:
    """The daemon dies between submitting and recording the job ids; a new one runs the phase to its end."""
    crash_at("r0:train:intent")
    with pytest.raises(Killed):
        phase.run()
    crash_at(None)
    phase.run()


def test_intent_without_job_id_waits_for_the_claim_of_a_slow_start(root, crash_at):
    fake = FakeScheduler(arrays=False)
    fake.script(key(0), 1, Plan(starts_after=3))
    phase = TrainPhase(root, fake, n=2)
    killed_at_intent_then_restarted(phase, crash_at)
    assert len(fake.batches()) == 1 and phase.submission(0).job_id == fake.jobs[0].job_id
    assert "adopted" in phase.events(0) and "resubmitting-unconfirmed" not in phase.events(0)
    assert phase.states() == all_trained(2)


def test_unclaimed_intent_is_resubmitted_after_the_grace_period(root, crash_at, no_grace):
    fake = FakeScheduler(arrays=False)
    fake.script(key(0), 1, Plan(starts_after=10**6))  # the first launch never starts while the test runs
    phase = TrainPhase(root, fake, n=2)
    killed_at_intent_then_restarted(phase, crash_at)
    assert fake.batches() == [[(key(0), 1), (key(1), 1)], [(key(0), 1)]]  # the same attempt, once more
    assert phase.submission(0).job_id == fake.jobs[2].job_id and "resubmitting-unconfirmed" in phase.events(0)
    assert phase.states() == all_trained(2) and not phase.debug_turns


def test_resubmission_racing_a_slow_first_launch_watches_the_claim_holder(root, crash_at, no_grace):
    """The first launch claims after the daemon resubmitted; the resubmission finds the claim taken
    and exits without an outcome, and the launcher adopts the launch that holds the claim."""
    fake = FakeScheduler(arrays=False)
    fake.script(key(0), 1, Plan(starts_after=3, polls=5), Plan(starts_after=5))
    phase = TrainPhase(root, fake, n=1)
    killed_at_intent_then_restarted(phase, crash_at)
    first, second = fake.jobs
    assert len(fake.batches()) == 2 and first.runs == 1 and second.runs == 0  # ran once, by the first launch
    assert phase.submission(0).job_id == first.job_id
    assert phase.events(0) == ["resubmitting-unconfirmed", "submitted", "adopted", "job-completed"]
    assert phase.states() == all_trained(1) and not phase.debug_turns


def test_an_intent_waiting_for_its_claim_keeps_its_slot(root, crash_at):
    fake = FakeScheduler(arrays=False, max_parallel=1)
    fake.script(key(0), 1, Plan(starts_after=3))
    phase = TrainPhase(root, fake, n=2)
    killed_at_intent_then_restarted(phase, crash_at)
    assert phase.states() == all_trained(2)
    assert fake.peak == 1  # cand-01 starts only once cand-00's slow launch has ended


# ---- how jobs end ------------------------------------------------------------------------------
@BACKENDS
def test_lost_job_is_a_failed_attempt_and_retried(root, arrays):
    fake = FakeScheduler(arrays)
    fake.script(key(0), 1, Plan(end="LOST"))
    phase = TrainPhase(root, fake, n=2)
    phase.run()
    reason = ("attempt 1 LOST: the job is gone and left no outcome record (killed with its process, e.g. with the "
              "daemon or for memory, or never started)")  # nobody reports LOST: no scheduler, or none that knows
    assert [(k, r) for k, r, _ in phase.debug_turns] == [(key(0), reason)]
    assert fake.batches() == [[(key(0), 1), (key(1), 1)], [(key(0), 2)]]
    assert phase.states() == {key(0): ("trained", 2), key(1): ("trained", 1)}
    # No accounting and no outcome: one CPU from its claim until it was found lost, what it can have used at most.
    lost = load_ledger(phase.tree).charges[f"{key(0)}#1/job"]
    assert (lost.state, lost.job_id) == ("LOST", fake.jobs[0].job_id)
    assert lost.elapsed_s >= 0 and lost.cpu_hours == pytest.approx(lost.elapsed_s / 3600)


@pytest.mark.parametrize("stage", ["train", "eval"])
def test_failed_task_gets_a_debug_turn_and_is_retried_alone(root, stage):
    fake = FakeScheduler(arrays=True)
    fake.script(key(1), 1, Plan(end="FAILED", stage=stage))
    phase = TrainPhase(root, fake, n=3)
    phase.run()
    assert fake.batches() == [[(key(c), 1) for c in range(3)], [(key(1), 2)]]
    [(failed, reason, failure)] = phase.debug_turns
    assert failed == key(1) and reason.startswith(f"attempt 1 FAILED: {stage} exited with code 1")
    spec = phase.candidates[1].spec(1)
    ran = ["train", "eval"][: ["train", "eval"].index(stage) + 1]
    assert (failure.attempt, failure.state, failure.logs) == (1, "FAILED", [str(spec.log_path(s)) for s in ran])
    assert f"RuntimeError: {stage} diverged" in failure.log_tail
    assert failure.trace == str(phase.tree.trace(0, 1))
    assert phase.states() == {key(0): ("trained", 1), key(1): ("trained", 2), key(2): ("trained", 1)}
    charges = load_ledger(phase.tree).charges  # both attempts, each task
    first = {s: charges[f"{key(1)}#1/{s}"].state for s in ("train", "eval")}
    assert first == ({"train": "FAILED", "eval": "CANCELLED"} if stage == "train" else
                     {"train": "COMPLETED", "eval": "FAILED"})
    assert [charges[f"{key(1)}#2/{s}"].state for s in ("train", "eval")] == ["COMPLETED", "COMPLETED"]


def test_task_failing_every_attempt_fails_after_max_attempts(root):
    fake = FakeScheduler(arrays=True)
    for attempt in (1, 2, 3):
        fake.script(key(0), attempt, Plan(end="FAILED"))
    phase = TrainPhase(root, fake, n=2, max_attempts=3)
    phase.run()
    assert fake.batches() == [[(key(0), 1), (key(1), 1)], [(key(0), 2)], [(key(0), 3)]]
    assert [failure.attempt for _, _, failure in phase.debug_turns] == [1, 2]  # none after the last attempt
    manifest = phase.candidates[0].manifest()
    assert (manifest.status, manifest.attempts) == ("failed", 3)
    assert manifest.failure.startswith("attempt 3 FAILED: train exited with code 1")
    assert manifest.failed_job == FailedJob("FAILED", "train", 1, "mutation")  # the trainer crashed on its recipe
    assert phase.lines[-1] == f"{key(0)} {manifest.failure}"
    assert phase.candidates[1].manifest().status == "trained"


def test_cancelled_task_fails_with_the_schedulers_word_and_is_charged(root):
    fake = FakeScheduler(arrays=True, cpus=2)
    fake.script(key(0), 1, Plan(end="CANCELLED"))
    phase = TrainPhase(root, fake, n=2, max_attempts=1)
    phase.run()
    manifest = phase.candidates[0].manifest()
    assert manifest.status == "failed" and not phase.debug_turns
    assert manifest.failure == "attempt 1 CANCELLED: the scheduler reports CANCELLED and the job left no outcome record"
    assert manifest.failed_job == FailedJob("CANCELLED", None, None, "infrastructure")
    charges = load_ledger(phase.tree).charges
    train, evaluation = charges[f"{key(0)}#1/train"], charges[f"{key(0)}#1/eval"]
    assert (train.state, train.elapsed_s, train.cpu_hours) == ("CANCELLED", 60.0, pytest.approx(2 * 60 / 3600))
    assert (evaluation.state, evaluation.cpu_hours) == ("CANCELLED", 0.0)  # never started
    assert phase.candidates[1].manifest().status == "trained"


def test_timeout_with_no_requeue_left_is_a_timeout_attempt(root):
    fake = FakeScheduler(arrays=True)
    fake.script(key(0), 1, Plan(end="TIMEOUT", requeues=3))  # three requeues, then the last time limit
    phase = TrainPhase(root, fake, n=1)
    phase.run()
    [(_, reason, failure)] = phase.debug_turns
    assert failure.state == "TIMEOUT" and "no requeue left" in reason  # not the task's FAILED, which sacct reports
    train = load_ledger(phase.tree).charges[f"{key(0)}#1/train"]
    assert (train.state, train.elapsed_s) == ("FAILED", 4 * 60.0)  # all four runs are charged
    assert phase.states() == {key(0): ("trained", 2)}


def test_requeued_task_is_watched_to_its_end_and_every_run_charged(root):
    fake = FakeScheduler(arrays=True, cpus=12, gpus=8)
    fake.script(key(0), 1, Plan(requeues=2, polls=2, train_s=3600, eval_s=900))
    phase = TrainPhase(root, fake, n=1)
    phase.run()
    assert len(fake.batches()) == 1 and fake.jobs[0].runs == 3 and not phase.debug_turns
    assert phase.states() == all_trained(1)
    charges = load_ledger(phase.tree).charges
    train, evaluation = charges[f"{key(0)}#1/train"], charges[f"{key(0)}#1/eval"]
    assert (train.elapsed_s, train.gpu_hours, train.cpu_hours) == (3 * 3600, 3 * 8, 3 * 12)
    assert (evaluation.elapsed_s, evaluation.gpu_hours) == (900, 2)


# ---- the scheduler does not answer ---------------------------------------------------------------
def test_outage_neither_ends_nor_retries_a_running_job(root):
    fake = FakeScheduler(arrays=True, max_parallel=1)
    fake.script(key(0), 1, Plan(polls=3))  # submitted at tick 1, ends at tick 4, inside the outage
    fake.outage(first_tick=2, polls=5)
    phase = TrainPhase(root, fake, n=2)
    phase.run()
    assert fake.batches() == [[(key(0), 1)], [(key(1), 1)]] and not phase.debug_turns
    # while nothing answered, cand-00 counted as running: no slot for cand-01 until the answer came
    assert [arg for name, arg in fake.calls if name == "free_slots"] == [0, 1, 1, 1, 1, 1, 0, 0]
    assert phase.states() == all_trained(2)


@pytest.mark.parametrize("accepted", [False, True], ids=["sbatch-refused", "sbatch-answer-lost"])
@BACKENDS
def test_submit_without_an_answer_stops_the_launcher_and_a_restart_runs_each_attempt_once(
        root, arrays, accepted, no_grace):
    fake = FakeScheduler(arrays)
    if accepted:
        fake.unanswered_submit()
    else:
        fake.outage(first_tick=1, polls=1)
    phase = TrainPhase(root, fake, n=2)
    with pytest.raises(SchedulerUnavailable):  # the CLI exits 75: run the same command again
        phase.run()
    assert [phase.submission(c).job_id for c in range(2)] == [None, None]  # the intents are on disk
    fake.elapse(1)  # the scheduler is back
    phase.run()
    assert fake.launches() == {(key(c), 1): 1 for c in range(2)}
    assert phase.states() == all_trained(2)


# ---- budget --------------------------------------------------------------------------------------
def test_budget_refusal_submits_nothing_and_says_what_to_raise(root):
    fake = FakeScheduler(arrays=True, worst_case=(4.0, 8.0))
    phase = TrainPhase(root, fake, n=3, budget=Budget(gpu_hours=20))
    with pytest.raises(BudgetExhausted) as info:
        phase.run()
    assert fake.count("submit") == 0 and not any(c.submission_path(1).exists() for c in phase.candidates)
    assert [c.manifest().status for c in phase.candidates] == ["proposed"] * 3  # status says nothing went out
    assert str(info.value) == (
        "budget.gpu_hours of 20 would be exceeded: 0.000 used + 0.000 reserved for 0 running + 24.000 for "
        "r000/cand-00, r000/cand-01, r000/cand-02 (time limit x allocation, requeues included); not submitting. "
        "Raise budget.gpu_hours in the campaign YAML to continue.")
    phase.budget = Budget(gpu_hours=24)  # raised: the same round goes on, each candidate at attempt 1
    phase.run()
    assert fake.batches() == [[(key(c), 1) for c in range(3)]] and phase.states() == all_trained(3)


def test_retry_is_refused_once_the_charged_attempts_use_the_budget(root):
    fake = FakeScheduler(arrays=True, gpus=8, worst_case=(0.0, 8.0))
    fake.script(key(0), 1, Plan(train_s=3600, eval_s=900))  # 8 + 2 GPU-hours
    fake.script(key(1), 1, Plan(end="FAILED", train_s=3600))  # 8 GPU-hours, then a retry worth 8 more
    phase = TrainPhase(root, fake, n=2, budget=Budget(gpu_hours=20))
    with pytest.raises(BudgetExhausted) as info:
        phase.run()
    assert "18.000 used + 0.000 reserved for 0 running + 8.000 for r000/cand-01" in str(info.value)
    assert load_ledger(phase.tree).totals()[1] == pytest.approx(18)
    assert fake.batches() == [[(key(0), 1), (key(1), 1)]] and len(phase.debug_turns) == 1
    assert phase.states() == {key(0): ("trained", 1), key(1): ("submitted", 2)}  # the retry waits for budget


def test_a_job_lost_with_its_process_is_charged_from_its_claim():
    from datetime import datetime, timedelta, timezone

    from hpc_aevo.jobs.launcher import charge_from_claim
    from hpc_aevo.jobs.spec import Claim

    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="seconds")
    claim = Claim("r000/cand-00", 1, 4242, None, "host", hour_ago)
    charge = charge_from_claim("r000/cand-00", 1, "4242", claim, "LOST")
    assert charge.cpu_hours == pytest.approx(1.0, abs=0.01) and charge.state == "LOST"
    assert charge_from_claim("r000/cand-00", 1, None, None, "LOST").cpu_hours == 0.0  # never started
