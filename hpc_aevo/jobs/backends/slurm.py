"""The SLURM backend: one train job array per batch, and an eval array chained to it task by task;
after the round's dev evaluation, one score array for the candidates chosen for the leaderboard.

Array task i is candidate i (submitit numbers array tasks 0..n-1, so `CandidateArrayExecutor`
hands SLURM the candidate numbers instead). The eval array depends on the train array with
`aftercorr`, so candidate i's evaluation starts the moment its training ends, with no daemon in
the loop; a train task that fails or times out gets its eval task cancelled by SLURM
(`kill_invalid_depend`), and the daemon learns both end states from sacct.

The daemon never calls submitit's `result()` (it hangs for a job that ended without a result file)
and never asks per job: one `sacct` per poll covers every array of the campaign, however many
candidates, and its answer is reused until `min_query_interval_s` has passed. Only when sacct
does not list a task yet does the same poll add one `squeue` for the arrays concerned.

Job names read `r<round>.<stage>.<campaign>`, so squeue's default 8-character NAME column tells round and
stage apart (`r001.tra`, `r001.eva`, `r001.sco`); `--comment` carries the campaign id and the
batch token, so a restarted daemon finds a batch it submitted but did not record.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import submitit
from submitit.core.utils import DelayedSubmission, JobPaths, UncompletedJobError
from submitit.helpers import Checkpointable
from submitit.slurm.slurm import SlurmJob, _make_sbatch_string

from hpc_aevo.campaign.config import STAGES, Stages
from hpc_aevo.campaign.profile import ClusterProfile, TaskResources, task_resources
from hpc_aevo.jobs.body import run_job, run_rank
from hpc_aevo.jobs.scheduler import (
    JobStatus,
    PartitionLimits,
    Scheduler,
    SchedulerUnavailable,
    Submission,
    Submitted,
    TaskUsage,
)
from hpc_aevo.jobs.spec import EXIT_PREEMPTED, JobOutcome, JobSpec
from hpc_aevo.state.crashpoints import crashpoint
from hpc_aevo.state.records import now_iso, seconds_since
from hpc_aevo.state.tree import CandidateRef, StateTree

# sacct states of a job that is still queued or running (anything else is an end state).
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
               "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"}
# Every state sacct knows, asked for explicitly: without -s (and -S/-E) sacct leaves out array tasks that were
# cancelled before they were ever eligible, such as an eval task whose train task failed.
SACCT_STATES = "PD,R,RQ,RS,S,CA,CD,F,TO,OOM,NF,PR,BF,DL"
SACCT_LAG_S = 120.0  # a job neither sacct nor squeue lists counts as queued this long after its submission
_PENDING_SET = re.compile(r"(\d+)_\[([^\]]+)\]")


class StageTask(Checkpointable):
    """One array task: a candidate's train or eval stage. On SIGUSR2 (submitit's timeout warning)
    the trainer checkpoints and exits, and submitit requeues the same job, which resumes it."""

    def __init__(self, spec: JobSpec):
        self.spec = spec
        self._process: subprocess.Popen | None = None

    def __call__(self) -> str:
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        if rank != 0:  # a further rank of a multi-node task: training only; rank 0 records the attempt
            if self.spec.stages != ("train",):
                return "rank 0 evaluates"
            code = run_rank(self.spec, rank, on_process=self._remember)
            if code not in (0, EXIT_PREEMPTED):
                raise RuntimeError(f"{self.spec.key} attempt {self.spec.attempt} rank {rank}: train exited with {code}")
            return f"rank {rank} exited {code}"
        try:
            outcome = run_job(self.spec, on_process=self._remember)
        except UncompletedJobError as error:  # the last time limit: submitit requeues no more (max_requeues)
            JobOutcome(self.spec.key, self.spec.attempt, "TIMEOUT", finished_at=now_iso(),
                       message=f"{self.spec.stages[0]} reached its time limit with no requeue left ({error}); "
                               f"its last checkpoint is kept for a retry").save(self.spec.outcome_path())
            raise
        if outcome.state != "COMPLETED":  # a failed task cancels its chained eval task
            raise RuntimeError(f"{self.spec.key} attempt {self.spec.attempt} {outcome.state}: {outcome.message}")
        return outcome.state

    def _remember(self, process: subprocess.Popen) -> None:
        self._process = process

    def checkpoint(self) -> DelayedSubmission:
        """Let the stage's process save its checkpoint and exit before submitit requeues the job."""
        process = self._process
        if process is not None and process.returncode is None:
            # Not Popen.wait/poll: this runs in a signal handler that interrupted run_job's
            # process.wait(), which holds the Popen's wait lock (it would spin until the timeout).
            try:
                os.kill(process.pid, signal.SIGUSR2)
                deadline = time.time() + 60
                while os.waitpid(process.pid, os.WNOHANG) == (0, 0):
                    if time.time() > deadline:
                        os.kill(process.pid, signal.SIGKILL)
                        break
                    time.sleep(0.2)
            except (ProcessLookupError, ChildProcessError):
                pass  # already gone
        return DelayedSubmission(StageTask(self.spec))

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "_process": None}


class CandidateArrayExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor, but the array's task indices are the candidates' numbers."""

    def submit_array(self, tasks: list[StageTask], indices: list[int], parallelism: int) -> str:
        folder = JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for task in tasks:
            delayed = DelayedSubmission(task)
            delayed.set_timeout(self.parameters.get("time", 5), self.max_num_timeout)
            path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.dump(path)
            pickles.append(path)
        self.parameters["map_count"] = len(tasks)  # submitit then names logs %A_%a
        extra = dict(self.parameters.get("additional_parameters") or {})
        extra["array"] = f"{index_ranges(indices)}%{min(parallelism, len(indices))}"
        self.parameters["additional_parameters"] = extra
        job = self._submit_command(self._submitit_command_str)
        for index, path in zip(indices, pickles):
            SlurmJob(folder=self.folder, job_id=f"{job.job_id}_{index}").paths.move_temporary_file(path, "submitted_pickle")
        return job.job_id


def index_ranges(indices: list[int]) -> str:
    """[0,1,2,5,7,8] -> "0-2,5,7-8": SLURM's --array syntax, short for any number of candidates."""
    parts, ordered = [], sorted(indices)
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def array_record_tasks(job_id: str) -> list[str] | None:
    """The tasks an array's own record "A_[0-2%3]" stands for (those not split out of it yet, where
    sacct has no line of their own), or None for a task's own id "A_2"."""
    record = _PENDING_SET.fullmatch(job_id)
    return None if record is None else [f"{record.group(1)}_{i}" for i in _expand(record.group(2))]


def _expand(text: str) -> list[int]:
    """"0-2,5%4" -> [0, 1, 2, 5]"""
    out = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def parse_sacct(text: str) -> dict[str, tuple[str, float, str]]:
    """{task id: (state, elapsed seconds, AllocTRES)} from `sacct -X -D -n -P --format=JobID,State,ElapsedRaw,AllocTRES`.

    A requeued task has a line per run: its elapsed time is the sum over its runs (each one was
    allocated and is charged), its state the last run's. An "A_[0-2%3]" line is the array's own
    record, the tasks not split out of it yet; its bracket keeps naming tasks split out since, whose
    own lines say how they ended."""
    rows: dict[str, tuple[str, float, str]] = {}
    sets: list[tuple[list[str], str]] = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 4:
            continue
        job, state, elapsed, alloc = fields[:4]
        state = state.split()[0] if state else "UNKNOWN"
        pending = array_record_tasks(job)
        if pending is not None:
            sets.append((pending, state))
            continue
        earlier = rows.get(job, ("", 0.0, ""))
        rows[job] = (state, earlier[1] + float(elapsed or 0), alloc or earlier[2])
    for tasks, state in sets:
        for task in tasks:
            rows.setdefault(task, (state, 0.0, ""))
    return rows


def _tres(alloc: str, name: str) -> int:
    for item in alloc.split(","):
        key, _, value = item.partition("=")
        if key == name or key.startswith(name + ":"):
            return int(value) if value.isdigit() else 0
    return 0


def _candidate(spec: JobSpec) -> int:
    return CandidateRef.parse(spec.key).index


def _round(spec: JobSpec) -> int:
    return CandidateRef.parse(spec.key).round


def _stage(spec: JobSpec) -> str:
    """What a spec's batch submits: "score" (one array) or "train" (the train and the eval arrays)."""
    return "score" if spec.stages == ("score",) else "train"


def _tasks(submission: Submission) -> list[tuple[str, str | None]]:
    """(stage, task id) of each scheduler task of an attempt."""
    if submission.stage == "score":
        return [("score", submission.job_id)]
    return [("train", submission.job_id), ("eval", submission.eval_job_id)]



def _array(job_id: str | None) -> str | None:
    return None if job_id is None else job_id.split("_")[0]


def _partition_fields(text: str, name: str | None) -> dict[str, str]:
    """`scontrol show partition --oneliner`'s KEY=VALUE fields of partition `name` (None: the default one)."""
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("PartitionName") == name or (name is None and fields.get("Default") == "YES"):
            return fields
    raise SchedulerUnavailable(f"scontrol shows no partition {name or '(default)'}")


def _minutes(limit: str) -> int | None:
    """A SLURM time limit (`UNLIMITED`, `[D-]HH:MM:SS`, `MM:SS`, minutes) in whole minutes; None: unlimited."""
    if limit in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SchedulerUnavailable(f"{' '.join(command[:2])} did not answer within 120 s") from None
    except OSError as error:
        raise SchedulerUnavailable(f"{command[0]} cannot run here ({error})") from None
    if done.returncode != 0:
        said = ((done.stderr.strip() or done.stdout.strip()).splitlines() or ["no message"])[-1][:500]  # its last line
        raise SchedulerUnavailable(f"{' '.join(command[:2])} failed ({done.returncode}): {said}")
    return done.stdout


class SlurmScheduler(Scheduler):
    backend = "slurm"
    finds_by_comment = True

    def __init__(self, max_parallel: int, stages: Stages, profile: ClusterProfile, campaign: str, state_root: Path,
                 poll_interval_s: float):
        self.max_parallel, self.profile, self.campaign = max_parallel, profile, campaign
        self._resources = {name: task_resources(stages.of(name), getattr(profile.stages, name), profile.exclusive)
                           for name in STAGES}
        self.gpu_type = profile.gpu_type
        self.tree = StateTree(state_root)
        self.campaign_id = f"{campaign}-{hashlib.sha256(str(state_root).encode()).hexdigest()[:10]}"
        self.min_query_interval_s = max(poll_interval_s, 1.0)
        self.calls: Counter[str] = Counter()  # scheduler commands run, by name (sacct, sbatch, ...), for the benchmark
        self._cache: tuple[float, frozenset[str], dict[str, tuple[str, float, str]]] | None = None

    def resources(self, stage: str) -> TaskResources:
        return self._resources[stage]

    def limits(self) -> PartitionLimits:
        """The profile's partition (or the cluster's default one), from scontrol and sinfo."""
        partition = self.profile.partition
        shown = _run(["scontrol", "show", "partition", "--oneliner", *([partition] if partition else [])])
        fields = _partition_fields(shown, partition)
        name = fields["PartitionName"]
        listed = _run(["sinfo", "--noheader", "--Node", f"--partition={name}", "--format=%m %c"])
        nodes = [line.split() for line in listed.splitlines() if line.strip()]
        mem = [int(m) for m, _ in nodes if m.isdigit()]
        cpus = [int(c) for _, c in nodes if c.isdigit()]
        max_nodes = fields.get("MaxNodes", "UNLIMITED")
        return PartitionLimits(name, _minutes(fields.get("MaxTime", "UNLIMITED")),
                               int(max_nodes) if max_nodes.isdigit() else None,
                               max(mem) / 1024 if mem else None, max(cpus) if cpus else None)

    # ---- submitting ------------------------------------------------------------------------
    def free_slots(self, running: int) -> int:
        return 1 << 30  # SLURM throttles with the array's %max_parallel: submit every candidate at once

    def _parameters(self, stage: str, rnd: int, batch: str, dependency: str | None) -> dict:
        res, profile = self._resources[stage], self.profile
        params = dict(job_name=f"r{rnd:03d}.{stage}.{self.campaign}", time=res.time_min, nodes=res.nodes,
                      ntasks_per_node=res.tasks_per_node, cpus_per_task=res.cpus_per_task, mem=f"{int(res.mem_gb)}GB"
                      if res.mem_gb == int(res.mem_gb) else f"{int(res.mem_gb * 1024)}MB",
                      signal_delay_s=profile.signal_delay_s, comment=f"hpc_aevo:{self.campaign_id}:{batch}:{stage}",
                      setup=list(profile.setup), srun_args=profile.container.srun_args(), stderr_to_stdout=True,
                      additional_parameters={k: v for k, v in profile.sbatch.items()})
        if "wckey" not in profile.sbatch:
            params["wckey"] = None  # submitit's default, --wckey=submitit, breaks where a site enforces wckeys
        if stage == "train":  # the time-limit signal, a checkpoint, then submitit requeues: ask for it (JobRequeue=0)
            params["additional_parameters"]["requeue"] = True
        if res.gpus_per_node:
            params["gpus_per_node"] = res.gpus_per_node
        for key in ("partition", "account", "qos"):
            if getattr(profile, key) is not None:
                params[key] = getattr(profile, key)
        if res.exclusive:
            params["exclusive"] = True
        if dependency is not None:
            params["dependency"] = dependency
            # A chained task whose train task failed is cancelled on any cluster, not only where the
            # site sets DependencyParameters=kill_invalid_depend: else it stays PENDING forever.
            params["additional_parameters"]["kill-on-invalid-dep"] = "yes"
        return params

    def _executor(self, folder: Path, params: dict) -> CandidateArrayExecutor:
        executor = CandidateArrayExecutor(folder=folder, max_num_timeout=self.profile.max_requeues,
                                          python=self.profile.python)
        executor.update_parameters(**{k: v for k, v in params.items() if k != "mem"})
        executor.parameters["mem"] = params["mem"]
        return executor

    def _submit_stage(self, specs: list[JobSpec], stage: str, batch: str, dependency: str | None) -> str:
        folder = self.tree.slurm_dir(_round(specs[0]))
        executor = self._executor(folder, self._parameters(stage, _round(specs[0]), batch, dependency))
        self.calls["sbatch"] += 1
        return executor.submit_array([StageTask(s.stage(stage)) for s in specs], [_candidate(s) for s in specs],
                                     self.max_parallel)

    def submit(self, specs: list[JobSpec], batch: str) -> list[Submitted]:
        if _stage(specs[0]) == "score":
            scoring = self._submit_stage(specs, "score", batch, None)
            return [Submitted(f"{scoring}_{_candidate(s)}") for s in specs]
        train = self._submit_stage(specs, "train", batch, None)
        crashpoint(f"r{_round(specs[0])}:train:between-arrays")
        evaluation = self._submit_stage(specs, "eval", batch, f"aftercorr:{train}")
        return [Submitted(f"{train}_{_candidate(s)}", None, f"{evaluation}_{_candidate(s)}") for s in specs]

    def render(self, specs: list[JobSpec]) -> str:
        """The sbatch scripts submit() would write: the train and eval arrays with the dependency between
        them, or the score array."""
        if not specs:
            return "nothing to submit"
        array = f"{index_ranges([_candidate(s) for s in specs])}%{min(self.max_parallel, len(specs))}"
        out = []
        arrays = [("score", None)] if _stage(specs[0]) == "score" else \
            [("train", None), ("eval", "aftercorr:<train array job id>")]
        for stage, dependency in arrays:
            params = self._parameters(stage, _round(specs[0]), "<batch>", dependency)
            params["additional_parameters"] = {**params["additional_parameters"], "array": array}
            folder = self.tree.slurm_dir(_round(specs[0]))
            # submitit's own command line; its executor refuses to exist where srun is missing (a dry run need not)
            command = " ".join([self.profile.python or sys.executable, "-u -m submitit.core._submit",
                                shlex.quote(str(folder))])
            script = _make_sbatch_string(command=command, folder=folder, map_count=len(specs), **params)
            out.append(f"# ---- {stage} array: candidates {', '.join(s.key for s in specs)} ----\n{script}")
        return "\n".join(out)

    # ---- watching --------------------------------------------------------------------------
    def _sacct(self, arrays: frozenset[str], since_days: int) -> dict[str, tuple[str, float, str]]:
        """{task id: (state, elapsed seconds, AllocTRES)} of every task of `arrays` submitted in the last
        `since_days`, from one sacct call (reused while younger than min_query_interval_s)."""
        now = time.monotonic()
        if self._cache is not None and arrays <= self._cache[1] and now - self._cache[0] < self.min_query_interval_s:
            return self._cache[2]
        self.calls["sacct"] += 1
        text = _run(["sacct", "-X", "-D", "-n", "-P", "--format=JobID,State,ElapsedRaw,AllocTRES",
                     "-S", f"now-{since_days}days", "-E", "now", "-s", SACCT_STATES, "-j", ",".join(sorted(arrays))])
        rows = parse_sacct(text)
        self._cache = (now, arrays, rows)
        return rows

    def _squeue(self, arrays: frozenset[str]) -> dict[str, tuple[str, float, str]]:
        """Live tasks of `arrays` as slurmctld sees them: for tasks that sacct does not list yet
        (slurmdbd learns of a task starting out of a large pending array a moment later)."""
        self.calls["squeue"] += 1
        try:
            text = _run(["squeue", "-h", "-r", "-j", ",".join(sorted(arrays)), "-o", "%i|%T|%M"])
        except SchedulerUnavailable as error:
            if "Invalid job id" not in str(error):
                raise
            text = ""  # slurmctld no longer knows these arrays: an answer (none of them is queued), not an outage
        rows = {}
        for line in text.splitlines():
            job, _, rest = line.partition("|")
            rows[job] = (rest.split("|")[0], 0.0, "")
        return rows

    def poll(self, submissions: list[Submission]) -> list[JobStatus]:
        """One sacct (and, for tasks it does not list yet, one squeue) for all of `submissions`. When the
        scheduler does not answer, every job counts as still queued: an outage never ends a job, so a
        slurmctld restart can make the daemon wait, never retry a candidate that is still running."""
        arrays = frozenset(a for s in submissions for a in (_array(s.job_id), _array(s.eval_job_id)) if a)
        oldest_s = max((seconds_since(s.submitted_at) for s in submissions), default=0.0)
        try:
            rows = self._sacct(arrays, since_days=int(oldest_s // 86400) + 2) if arrays else {}
            unlisted = frozenset(_array(j) for s in submissions for _, j in _tasks(s) if j and j not in rows)
            if unlisted:
                rows = {**self._squeue(unlisted), **rows}
        except SchedulerUnavailable as error:
            print(f"slurm: no answer this poll ({error}); every job counts as queued until one comes", file=sys.stderr)
            return [JobStatus(alive=True, ended=None, tasks=()) for _ in submissions]
        answers = []
        for s in submissions:
            young = seconds_since(s.submitted_at) < SACCT_LAG_S
            tasks, states = [], []
            for stage, job in _tasks(s):
                state, elapsed, alloc = rows.get(job, ("PENDING" if young else "UNKNOWN", 0.0, ""))
                states.append(state)
                tasks.append(TaskUsage(job, stage, state, elapsed, _tres(alloc, "cpu"), _tres(alloc, "gres/gpu")))
            alive = any(state in LIVE_STATES for state in states)
            ended = next((st for st in states if st != "COMPLETED"), "COMPLETED")
            answers.append(JobStatus(alive=alive, ended=None if alive else ended, tasks=tuple(tasks)))
        return answers

    def cancel(self, submissions: list[Submission]) -> None:
        ids = [j for s in submissions for j in (s.job_id, s.eval_job_id) if j]
        if ids:
            self.calls["scancel"] += 1
            subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=120)

    # ---- recovery --------------------------------------------------------------------------
    def find(self, intents: list[Submission], specs: list[JobSpec]) -> list[Submitted | None]:
        """Jobs of intents whose job id was never recorded, found by the batch token in their comment:
        squeue (live jobs, any accounting setup) then sacct (finished ones; needs AccountingStoreFlags=
        job_comment). A batch whose train array exists but whose eval array does not (the daemon died
        between the two sbatch calls) gets its eval array now."""
        self.calls["squeue"] += 1
        self.calls["sacct"] += 1
        found: dict[tuple[str, str], str] = {}  # (batch, stage) -> array job id
        live = _run(["squeue", "-h", "-r", "-o", "%F|%k"])
        past = _run(["sacct", "-X", "-n", "-P", "--format=JobID,Comment", "-S", "now-7days", "-E", "now",
                     "-s", SACCT_STATES])
        for line in (live + past).splitlines():
            job, _, comment = line.partition("|")
            parts = comment.split(":")
            if len(parts) == 4 and parts[0] == "hpc_aevo" and parts[1] == self.campaign_id:
                found[(parts[2], parts[3])] = job.split("_")[0]
        orphans: dict[str, list[JobSpec]] = {}  # batch -> specs whose train array has no eval array
        for intent, spec in zip(intents, specs):
            if intent.stage == "train" and (intent.batch, "train") in found and (intent.batch, "eval") not in found:
                orphans.setdefault(intent.batch, []).append(spec)
        for batch, orphaned in orphans.items():
            train = found[(batch, "train")]
            found[(batch, "eval")] = self._submit_stage(orphaned, "eval", batch, f"aftercorr:{train}")
        out: list[Submitted | None] = []
        for intent, spec in zip(intents, specs):
            first, index = found.get((intent.batch, intent.stage)), _candidate(spec)
            if first is None:
                out.append(None)
            elif intent.stage == "score":
                out.append(Submitted(f"{first}_{index}"))
            else:
                out.append(Submitted(f"{first}_{index}", None, f"{found.get((intent.batch, 'eval'))}_{index}"))
        return out

    # ---- budget ----------------------------------------------------------------------------
    def worst_case_hours(self, stage: str = "train") -> tuple[float, float]:
        """Time limit x allocation of the attempt's tasks (train and eval, or score), times the requeues a
        timeout may add to training."""
        if stage == "score":
            res = self._resources["score"]
            return res.time_min / 60 * res.cpus, res.time_min / 60 * res.gpus
        chained = [self._resources["train"], self._resources["eval"]]
        runs = self.profile.max_requeues + 1
        cpu = sum(r.time_min / 60 * r.cpus for r in chained) * runs
        gpu = sum(r.time_min / 60 * r.gpus for r in chained) * runs
        return cpu, gpu
