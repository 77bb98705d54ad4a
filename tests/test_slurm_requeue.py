"""A training task that reaches its time limit checkpoints, is requeued by submitit, and resumes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml

from slurm_cluster import devcluster, slurm, slurm_campaign  # noqa: F401
from tiny_campaign import run_daemon, status

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("devcluster")]  # one at a time on the cluster

THROTTLE = """import sys as _sys, time as _time, pathlib as _pathlib, torch as _torch
_adamw_step = _torch.optim.AdamW.step
def _throttled_step(self, *args, **kwargs):
    _time.sleep(0.2)
    return _adamw_step(self, *args, **kwargs)
_resumed = any(_pathlib.Path(_sys.argv[_sys.argv.index("--out") + 1]).glob("ckpt-*"))
if not (_resumed and {full_speed_once_resumed}):
    _torch.optim.AdamW.step = _throttled_step
"""


def outlasting_campaign(tmp_path: Path, name: str, max_requeues: int, steps: int, full_speed_once_resumed: bool,
                        **campaign) -> Path:
    """A 1-minute train limit (SIGUSR2 15 s before it) and a cand-01 whose sandbox trainer (the worker's
    code) takes at least 200 ms a step for `steps` steps: it outlasts any one run, however idle the machine
    (300 steps: 60 s of steps against 45 s a run), with a checkpoint half-way and one at the end. With
    `full_speed_once_resumed` a run that resumes from a checkpoint is not slowed: one requeue is enough."""
    path = slurm_campaign(tmp_path, name, workers=1, profile={"signal_delay_s": 15, "max_requeues": max_requeues})
    data = yaml.safe_load(path.read_text())
    data["scheduler"]["stages"]["train"]["timeout_min"] = 1
    data.update(campaign)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_daemon(path, env={"HPC_AEVO_CRASH_AT": "r0:train:start"}).returncode == -signal.SIGKILL
    recipe_path = tmp_path / "state/rounds/r000/cand-01/sandbox/recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["optim"]["steps"], recipe["checkpoints"]["every"] = steps, steps // 2
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    train = recipe_path.with_name("train.py")
    head, future, rest = train.read_text().partition("from __future__ import annotations\n")
    train.write_text(head + future + THROTTLE.format(full_speed_once_resumed=full_speed_once_resumed) + rest)
    return path


def test_timeout_requeues_and_resumes_from_the_last_checkpoint(tmp_path, devcluster):  # noqa: F811
    campaign = outlasting_campaign(tmp_path, "requeue", max_requeues=8, steps=300, full_speed_once_resumed=True)  # 8 requeues: room for a busy machine
    done = run_daemon(campaign, timeout=1100)
    assert done.returncode == 0, done.stdout + done.stderr
    state = tmp_path / "state" / "rounds" / "r000"
    cand = state / "cand-01"
    manifest = json.loads((cand / "manifest.json").read_text())
    assert manifest["attempts"] == 1 and manifest["status"] == "evaluated", manifest
    log = (cand / "jobs" / "attempt-1.train.log").read_text()
    resumed = [json.loads(line) for line in log.splitlines() if line.startswith('{"event": "resumed"')]
    assert resumed and all(event["step"] > 0 for event in resumed), log[-2000:]  # never from step 0
    submission = json.loads((cand / "jobs" / "attempt-1.json").read_text())
    runs = slurm("sacct", "-X", "-n", "-P", "-D", "-j", submission["job_id"], "--format=JobID,State,ElapsedRaw")
    states = [line.split("|")[1].split()[0] for line in runs.splitlines()]
    assert "REQUEUED" in states and states[-1] == "COMPLETED", runs  # the same job, requeued by submitit
    # The ledger charges every run of the requeued task, not only the last one.
    charge = json.loads((tmp_path / "state" / "ledger.json").read_text())["charges"]["r000/cand-01#1/train"]
    assert charge["elapsed_s"] == sum(int(line.split("|")[2]) for line in runs.splitlines()), (charge, runs)
    assert json.loads((cand / "checkpoints" / "train_summary.json").read_text())["steps"] == 300
    assert "r000/cand-01 trained and evaluated (attempt 1)" in done.stdout
    assert status(campaign)["rounds"][0]["complete"]


@pytest.mark.skip(reason="attempt 1 records TIMEOUT as designed, but in one of two fresh-clone CI runs attempt 2 outlasted the 900 s daemon limit: not yet understood")
def test_a_timeout_with_no_requeue_left_is_recorded_and_retried(tmp_path, devcluster):  # noqa: F811
    """max_requeues 0: the first time limit ends the task. Its outcome says TIMEOUT (not a silent loss),
    its chained eval task is cancelled, and the retry policy resubmits it, resuming from its checkpoint."""
    campaign = outlasting_campaign(tmp_path, "timeout", max_requeues=0, steps=2000, full_speed_once_resumed=False,
                                   retries={"max_attempts": 2})
    done = run_daemon(campaign, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    cand = tmp_path / "state" / "rounds" / "r000" / "cand-01"
    manifest = json.loads((cand / "manifest.json").read_text())
    assert manifest["attempts"] == 2 and manifest["status"] == "failed", manifest
    assert "attempt 2 TIMEOUT" in manifest["failure"] and "no requeue left" in manifest["failure"], manifest
    outcome = json.loads((cand / "jobs" / "attempt-1.train.outcome.json").read_text())
    assert outcome["state"] == "TIMEOUT"
    resumed = [json.loads(line) for line in (cand / "jobs" / "attempt-2.train.log").read_text().splitlines()
               if line.startswith('{"event": "resumed"')]
    assert resumed and resumed[0]["step"] > 0  # the retry continued from attempt 1's checkpoint
    failed = [e for e in (json.loads(line) for line in (cand / "trace.jsonl").read_text().splitlines())
              if e.get("event") == "job-failed"]
    assert [e["state"] for e in failed] == ["TIMEOUT", "TIMEOUT"]
    assert all(e["tasks"]["eval"].endswith("CANCELLED") for e in failed), failed  # its eval never ran
