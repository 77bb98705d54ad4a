"""What runs inside a scheduled job: one candidate's training, then its evaluation (or its leaderboard scoring).

The job itself guarantees exactly-once execution: it first claims its attempt by creating
`attempt-N.claim` with O_EXCL. A second launch of the same attempt (a daemon that died between
submitting and recording the submission and then submitted again) finds the claim and exits
without running anything. At the end the job writes `attempt-N.outcome.json` itself, so the
daemon learns the real end state from files, whatever happened to the scheduler or to the daemon.

On SLURM the two stages are two chained array tasks: the train task claims `attempt-N.claim` and
writes `attempt-N.train.outcome.json`; the eval task claims `attempt-N.eval.claim`, runs only after
a COMPLETED train outcome, and writes the attempt's `attempt-N.outcome.json` with both stages. A
claim names the SLURM job that took it, so the same job requeued after a timeout resumes its
attempt instead of being taken for a duplicate.

The leaderboard scoring job (stages ("score",), its attempts in the candidate's jobs/score/) runs the
frozen evaluator on the one export the eval stage selected; the daemon checks and records its result.

Each stage runs the sandbox's code or reads the candidate's checkpoints, so it runs confined
(`hpc_aevo/sandbox/jobs.py`), with the agents' credentials scrubbed from its environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from hpc_aevo.jobs.spec import EXIT_PREEMPTED, Claim, JobOutcome, JobSpec, StageRun
from hpc_aevo.sandbox import bwrap, pids
from hpc_aevo.sandbox.jobs import ConfinementUnavailable, confine
from hpc_aevo.state.contract import EVAL_RESULT, EVALUATOR, MAX_RECIPE_BYTES, RECIPE_FILE, TRAIN_SCRIPT
from hpc_aevo.state.records import atomic_write_text, now_iso
from hpc_aevo.state.tree import RECIPE_MARKER
from hpc_aevo.state.untrusted import KIB, UntrustedFile, read_bytes


def process_start_time(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot, or None if no such live (non-zombie) process.

    A pid plus its start time names one process for good, even after the pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def scheduler_job() -> str | None:
    """The SLURM job this process runs in ("ARRAYID_TASK" for an array task), or None outside SLURM."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _claim(spec: JobSpec) -> bool:
    path = spec.claim_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    job = scheduler_job()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        held = Claim.load_or_none(path)
        return job is not None and held is not None and held.scheduler_job == job  # the same job, requeued
    claim = Claim(spec.key, spec.attempt, os.getpid(), process_start_time(os.getpid()), os.uname().nodename, now_iso(),
                  job)
    with os.fdopen(fd, "w") as handle:
        handle.write(claim.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _recipe_hash(spec: JobSpec) -> str:
    """The hash of the sandbox's recipe, read as untrusted (the worker wrote it): `UntrustedFile` when it
    is missing, a link, a FIFO, a device or too big."""
    path = Path(spec.sandbox) / RECIPE_FILE
    try:
        return hashlib.sha256(read_bytes(path, Path(spec.sandbox), MAX_RECIPE_BYTES)).hexdigest()
    except FileNotFoundError:
        raise UntrustedFile(f"{path}: missing") from None


def _marker_matches(spec: JobSpec, recipe_hash: str) -> bool:
    """The checkpoints were written under this recipe (the trainer can write the marker's directory)."""
    try:
        return read_bytes(Path(spec.checkpoints) / RECIPE_MARKER, Path(spec.checkpoints), KIB) == recipe_hash.encode()
    except (FileNotFoundError, UntrustedFile):
        return False


def _recipe_guard(spec: JobSpec) -> None:
    """Resume only checkpoints of the same recipe: a retry with an edited recipe starts afresh."""
    recipe_hash = _recipe_hash(spec)
    checkpoints = Path(spec.checkpoints)
    if checkpoints.exists() and not _marker_matches(spec, recipe_hash):
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_write_text(checkpoints / RECIPE_MARKER, recipe_hash)  # replaces a planted link, never writes through it


def _checkpoint_guard(spec: JobSpec) -> None:
    """Score only the bytes the eval stage scored: a site's scorer (the command adapter) cannot be asked to
    check a hash, so the job checks it before any scorer starts. The file is opened without following a link."""
    path = Path(spec.score.checkpoint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UntrustedFile(f"{path}: the selected checkpoint is not readable ({exc.strerror})") from None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != spec.score.sha256:
        raise UntrustedFile(f"{path}: sha256 is {digest.hexdigest()}, not the {spec.score.sha256} the eval stage scored")


def _command(spec: JobSpec, stage: str) -> tuple[list[str], str]:
    if stage == "train":
        return [sys.executable, TRAIN_SCRIPT, "--recipe", RECIPE_FILE, "--out", spec.checkpoints], spec.sandbox
    out = spec.files.out(stage)
    out.mkdir(parents=True, exist_ok=True)
    if stage == "eval":
        return [sys.executable, str(Path(spec.evaluator_dir) / EVALUATOR), "--recipe", str(Path(spec.sandbox) / RECIPE_FILE),
                "--checkpoints", spec.checkpoints, "--out", str(out / EVAL_RESULT)], str(out)
    program = list(spec.score.command) or [sys.executable, str(Path(spec.evaluator_dir) / EVALUATOR)]
    return [*program, *spec.score.args], str(out)


@contextlib.contextmanager
def start_stage(spec: JobSpec, stage: str, log, extra: tuple[str, ...] = ()) -> Iterator[tuple[subprocess.Popen, bool]]:
    """Start `stage` confined (or, where it cannot be, unconfined with one line in its log saying so), in a
    pids cgroup of its own (scheduler.max_processes); what it left running is killed when the block ends.

    `extra` arguments go after the stage's command line (`substrate check` trains with `--max-steps 2`)."""
    argv, cwd = _command(spec, stage)
    argv, unconfined = confine(spec, stage, [*argv, *extra], cwd)
    cap = pids.Cap.create(f"{spec.key.replace('/', '-')}-{spec.attempt}-{stage}-{os.getpid()}", spec.max_processes)
    note = f"UNCONFINED: {unconfined}" if unconfined else "confined by bubblewrap"
    note += f"; {cap.why}" if cap.why else f"; at most {spec.max_processes} processes"
    log.write(f"hpc_aevo: {spec.key} attempt {spec.attempt} {stage} on {os.uname().nodename}: {note}\n".encode())
    log.flush()
    env = {**bwrap.scrubbed_env(), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    if unconfined is None:
        env["TMPDIR"] = "/tmp"  # the private one; the host's temp dir, where the agents' keys are, is hidden
    try:
        yield subprocess.Popen(cap.argv(argv), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env), unconfined is None
    finally:
        cap.close()


def run_job(spec: JobSpec, on_process: Callable[[subprocess.Popen], None] | None = None) -> JobOutcome:
    """The job body: claim, run each stage as a subprocess with its own log, record the outcome.

    `on_process` is told each stage's process (the SLURM task forwards a timeout signal to it).
    """
    trained = None
    if spec.stages == ("eval",):
        trained = JobOutcome.load_or_none(spec.stage("train").outcome_path())
        if trained is None or trained.state != "COMPLETED":
            return JobOutcome(spec.key, spec.attempt, "FAILED", message="no COMPLETED train outcome to evaluate")
    if not _claim(spec):
        return JobOutcome(spec.key, spec.attempt, "DUPLICATE", message="attempt already claimed by another launch")
    outcome = JobOutcome(spec.key, spec.attempt, "COMPLETED")
    if trained is not None:
        outcome.stages, outcome.cpu_s = list(trained.stages), trained.cpu_s
    started = os.times()
    for stage in spec.stages:
        try:
            if stage == "train":
                _recipe_guard(spec)
            else:  # eval and score are shown the recipe: a plain file inside the sandbox, never a link out of it
                _recipe_hash(spec)
            if stage == "score":
                _checkpoint_guard(spec)
        except UntrustedFile as exc:
            outcome.state, outcome.message = "FAILED", f"{stage} not started: {exc}"
            break
        log = spec.log_path(stage)
        began = time.time()
        with open(log, "ab") as handle:
            try:
                with start_stage(spec, stage, handle) as (process, confined):
                    if on_process is not None:
                        on_process(process)
                    code = process.wait()
            except ConfinementUnavailable as exc:
                outcome.state, outcome.message = "FAILED", f"{stage} not started: {exc}"
                break
        outcome.stages.append(StageRun(stage, code, time.time() - began, str(log), confined))
        staged = spec.files.out("eval") / EVAL_RESULT
        if code == 0 and stage == "eval" and staged.exists():  # a missing eval.json fails the candidate later
            os.replace(staged, spec.eval_result)
        if code != 0:
            outcome.state = "PREEMPTED" if code == EXIT_PREEMPTED else "FAILED"
            outcome.message = f"{stage} exited with code {code}; log: {log}"
            break
    ended = os.times()
    outcome.cpu_s += (ended.children_user - started.children_user) + (ended.children_system - started.children_system)
    outcome.finished_at = now_iso()
    outcome.save(spec.outcome_path())
    return outcome


def run_rank(spec: JobSpec, rank: int, on_process: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Rank `rank` (> 0) of a multi-node training task: the same trainer, which joins rank 0's
    torch.distributed rendezvous from the SLURM environment. Rank 0 alone claims the attempt and
    records its outcome; this rank waits until rank 0 has checked the checkpoints' recipe, so it
    never resumes checkpoints that rank 0 is about to delete."""
    recipe_hash = _recipe_hash(spec)
    deadline = time.time() + 120
    while not _marker_matches(spec, recipe_hash):
        if time.time() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0 never prepared {spec.checkpoints} for this recipe")
        time.sleep(0.5)
    with open(spec.files.rank_log(rank), "ab") as handle, start_stage(spec, "train", handle) as (process, _):
        if on_process is not None:
            on_process(process)
        return process.wait()
