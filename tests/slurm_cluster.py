"""The real SLURM development cluster for tests: find it, or fail (CI) / skip (elsewhere).

Tests run against the cluster that `sbatch/devcluster/start` brought up (`.ci/run` starts it).
Nothing here imitates sbatch, squeue or sacct. With CI=true a missing cluster is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from host import require
from tiny_campaign import REPO, write_campaign

from hpc_aevo.jobs.backends.slurm import SACCT_STATES as ALL_STATES, array_record_tasks  # every state, as the daemon asks for them
CLUSTER_DIR = Path(os.environ.get("HPC_AEVO_DEVCLUSTER", "/tmp/hpc_aevo-devcluster"))


def _conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    conf = CLUSTER_DIR / "etc" / "slurm.conf"
    return str(conf) if conf.exists() else None


@pytest.fixture(scope="session")
def devcluster() -> dict[str, str]:
    """The environment (SLURM_CONF) that reaches the running devcluster."""
    conf = _conf()
    env = {**os.environ, "SLURM_CONF": conf or ""}
    ok = conf is not None and shutil.which("scontrol") is not None and \
        subprocess.run(["scontrol", "ping"], env=env, capture_output=True, timeout=30).returncode == 0
    require(ok, f"needs the SLURM devcluster (none reachable, SLURM_CONF={conf}); start it: sbatch/devcluster/start")
    os.environ["SLURM_CONF"] = conf  # the daemon, squeue/sacct and the jobs all read it
    return {"SLURM_CONF": conf}


def slurm(*command: str) -> str:
    return subprocess.run(list(command), capture_output=True, text=True, check=True, timeout=60).stdout


def sacct_tasks(campaign: str) -> dict[str, tuple[str, str]]:
    """{job id: (job name, state)} of every array task of `campaign` (job names `r<round>.<stage>.<campaign>`); a task
    cancelled before it was split out of its array has no line of its own: the array's record stands for
    it, as the daemon reads it (`array_record_tasks`)."""
    out, records = {}, []
    # With explicit states and -E, sacct also lists tasks cancelled before they were ever eligible.
    listing = slurm("sacct", "-X", "-n", "-P", "-S", "now-1days", "-E", "now", "-s", ALL_STATES,
                    "--format=JobID,JobName,State")
    for line in listing.splitlines():
        job, name, state = line.split("|")[:3]
        if name.endswith(f".{campaign}"):
            records.append((job, name, state.split()[0]))
    for job, name, state in records:
        if array_record_tasks(job) is None:
            out[job] = (name, state)
    for job, name, state in records:
        for task in array_record_tasks(job) or []:
            out.setdefault(task, (name, state))
    return out


def squeue_rows() -> list[tuple[str, str, str]]:
    """(job id, name, state) of every queued or running array task."""
    rows = []
    for line in slurm("squeue", "-h", "-r", "-o", "%i|%j|%T").splitlines():
        rows.append(tuple(line.split("|")))
    return rows


def wait_for(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def slurm_campaign(root: Path, name: str, rounds: int = 1, workers: int = 1, profile: dict | None = None,
                   **overrides) -> Path:
    """A tiny campaign on the devcluster; `profile` overrides keys of sbatch/devcluster.yaml."""
    data = yaml.safe_load((REPO / "sbatch" / "devcluster.yaml").read_text())
    data.update(profile or {})
    root.mkdir(parents=True, exist_ok=True)
    (root / "profile.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    path = write_campaign(root, rounds=rounds, workers=workers, **overrides)
    campaign = yaml.safe_load(path.read_text())
    campaign["name"] = f"{name}-{uuid.uuid4().hex[:6]}"  # job names unique to this test run
    campaign["scheduler"].update(backend="slurm", profile=str(root / "profile.yaml"), poll_interval_s=2, max_parallel=4)
    campaign["budget"] = {"cpu_hours": 100}
    campaign["leaderboard"]["per_round"] = min(campaign["leaderboard"]["per_round"], workers + 1)
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    return path
