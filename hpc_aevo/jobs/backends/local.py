"""The local backend: submitit's LocalExecutor, one process per candidate, train then eval.

submitit starts each job as a detached controller process that outlives the daemon, so a daemon
killed with -9 finds its jobs still running on restart and adopts them by pid. A pid alone could
have been reused by then, so each submission also records the process start time (from /proc),
and a job is alive only if a process with that pid *and* that start time exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import submitit

from hpc_aevo.campaign.config import Stages
from hpc_aevo.campaign.profile import GPU_CAPABILITY, TaskResources
from hpc_aevo.jobs.body import process_start_time, run_job
from hpc_aevo.jobs.scheduler import JobStatus, Scheduler, Submission, Submitted
from hpc_aevo.jobs.spec import JobSpec


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one directory per GPU, each with an `information` file


def local_gpus(root: Path = NVIDIA_GPUS) -> tuple[int, str | None]:
    """(how many NVIDIA GPUs this machine has, their kind when it is one GPU_CAPABILITY knows), read from the
    driver's files: the daemon never imports torch or CUDA to learn it."""
    models = []
    for gpu in sorted(root.glob("*")) if root.is_dir() else []:
        try:
            text = (gpu / "information").read_text(errors="replace")
        except OSError:
            continue
        model = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("Model:")), "")
        models.append(next((kind for kind in GPU_CAPABILITY if kind in model.lower().replace("-", " ").split()), None))
    return len(models), models[0] if models and len(set(models)) == 1 else None


def _reap(pid: int) -> None:
    """Collect an exited child so it does not linger as a zombie of the daemon."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class LocalScheduler(Scheduler):
    backend = "local"

    def __init__(self, max_parallel: int, stages: Stages, gpus: tuple[int, str | None] | None = None):
        self.max_parallel, self.stages = max_parallel, stages
        self.gpus, self.gpu_type = gpus if gpus is not None else local_gpus()

    def resources(self, stage: str) -> TaskResources:
        """One process on this machine, which sees all of its GPUs (the executor does not hand them out)."""
        own = self.stages.of(stage)
        return TaskResources(1, 1, self.gpus, own.cpus, own.mem_gb, own.timeout_min)

    def timeout_min(self, spec: JobSpec) -> int:
        """The job's time limit: its stages' together (training and evaluation run in one job)."""
        return sum(self.stages.of(stage).timeout_min for stage in spec.stages)

    def free_slots(self, running: int) -> int:
        return max(0, self.max_parallel - running)

    def submit(self, specs: list[JobSpec], batch: str) -> list[Submitted]:
        out = []
        for spec in specs:
            executor = submitit.AutoExecutor(folder=spec.files.submitit_dir, cluster="local")
            executor.update_parameters(timeout_min=self.timeout_min(spec), name=f"{spec.key}.{spec.stages[-1]}")
            job = executor.submit(run_job, spec)
            job._cancel_at_deletion = False
            out.append(Submitted(job.job_id, process_start_time(int(job.job_id))))
        return out

    def poll(self, submissions: list[Submission]) -> list[JobStatus]:
        answers = []
        for submission in submissions:
            pid = int(submission.job_id)
            _reap(pid)
            started = process_start_time(pid)
            answers.append(JobStatus(alive=started is not None and started == submission.identity))
        return answers

    def cancel(self, submissions: list[Submission]) -> None:
        for submission in submissions:
            pid = int(submission.job_id)
            if process_start_time(pid) == submission.identity:
                os.kill(pid, 15)
