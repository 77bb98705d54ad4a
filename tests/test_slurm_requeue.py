"""A training task that reaches its time limit checkpoints, is requeued by submitit, and resumes."""

from __future__ import annotations

import json
import signal

import pytest
import yaml

from slurm_cluster import devcluster, slurm, slurm_campaign  # noqa: F401
from tiny_campaign import run_daemon, status

pytestmark = pytest.mark.slow


def test_timeout_requeues_and_resumes_from_the_last_checkpoint(tmp_path, devcluster):  # noqa: F811
    # 1-minute limit, SIGUSR2 15 s before it: cand-01's first run cannot finish 700 steps in time.
    campaign = slurm_campaign(tmp_path, "requeue", workers=1, profile={"signal_delay_s": 15, "max_requeues": 4})
    data = yaml.safe_load(campaign.read_text())
    data["scheduler"]["stages"]["train"]["timeout_min"] = 1
    campaign.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": "r0:train:start"}).returncode == -signal.SIGKILL
    recipe_path = tmp_path / "state/rounds/r000/cand-01/sandbox/recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["optim"]["steps"], recipe["checkpoints"]["every"] = 700, 100
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))

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
    runs = slurm("sacct", "-X", "-n", "-P", "-D", "-j", submission["job_id"], "--format=JobID,State")
    states = [line.split("|")[1].split()[0] for line in runs.splitlines()]
    assert "REQUEUED" in states and states[-1] == "COMPLETED", runs  # the same job, requeued by submitit
    assert json.loads((cand / "checkpoints" / "train_summary.json").read_text())["steps"] == 700
    assert "r000/cand-01 trained and evaluated (attempt 1)" in done.stdout
    assert status(campaign)["rounds"][0]["complete"]
