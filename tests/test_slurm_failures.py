"""Failures on the real devcluster: a failed training task, a human's scancel, the daemon killed -9, an
accounting outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import devcluster, sacct_tasks, slurm, slurm_campaign, squeue_rows, wait_for  # noqa: F401
from tiny_campaign import REPO, run_daemon, status

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("devcluster")]  # one at a time on the cluster

# Each marks its first attempt in its checkpoints directory: the one place a confined trainer may write.
FAIL_ONCE = '''import os, sys
if not os.path.exists("../checkpoints/first-attempt-done"):
    open("../checkpoints/first-attempt-done", "w").close()
    print("injected failure: the first attempt of this candidate exits 7", flush=True)
    sys.exit(7)
'''
SLOW_ONCE = '''import os, time
if not os.path.exists("../checkpoints/first-attempt-done"):
    open("../checkpoints/first-attempt-done", "w").close()
    time.sleep(600)
'''


def events(state: Path, cand: str) -> list[dict]:
    return [json.loads(line) for line in (state / "rounds/r000" / cand / "trace.jsonl").read_text().splitlines()]


def manifest(state: Path, cand: str) -> dict:
    return json.loads((state / "rounds/r000" / cand / "manifest.json").read_text())


def test_failed_and_cancelled_tasks_are_retried_alone(tmp_path, devcluster):  # noqa: F811
    campaign = slurm_campaign(tmp_path, "fail", workers=2)
    name = yaml.safe_load(campaign.read_text())["name"]
    state = tmp_path / "state"
    assert run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": "r0:train:start"}).returncode == -signal.SIGKILL
    for cand, prefix in (("cand-01", FAIL_ONCE), ("cand-02", SLOW_ONCE)):
        train = state / "rounds/r000" / cand / "sandbox" / "train.py"
        head, future, rest = train.read_text().partition("from __future__ import annotations\n")
        train.write_text(head + future + prefix + rest)
    daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        running = wait_for(lambda: [r[0] for r in squeue_rows() if r[1] == f"r000.train.{name}"
                                    and r[0].endswith("_2") and r[2] == "RUNNING"], 180, "cand-02 training")
        wait_for(lambda: (state / "rounds/r000/cand-02/checkpoints/first-attempt-done").exists(), 60, "cand-02's slow start")
        slurm("scancel", running[0])  # a human cancels cand-02's training
        out, _ = daemon.communicate(timeout=900)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, out
    assert manifest(state, "cand-00")["attempts"] == 1
    for cand, ended in (("cand-01", "FAILED"), ("cand-02", "CANCELLED")):
        m = manifest(state, cand)
        assert m["attempts"] == 2 and m["status"] == "evaluated", (cand, m)
        failed = [e for e in events(state, cand) if e["event"] == "job-failed"]
        assert [e["state"] for e in failed] == [ended], (cand, failed)
        debug = [e for e in events(state, cand) if e["event"] == "debug-turn"]
        assert len(debug) == 1 and any(log.endswith("attempt-1.train.log") for log in debug[0]["logs"])
    assert "injected failure" in [e for e in events(state, "cand-01") if e["event"] == "debug-turn"][0]["log_tail"]
    tasks = sacct_tasks(name)
    trains = sorted((job.split("_")[1], st) for job, (n, st) in tasks.items() if n == f"r000.train.{name}")
    assert trains == [("0", "COMPLETED"), ("1", "COMPLETED"), ("1", "FAILED"), ("2", "CANCELLED"), ("2", "COMPLETED")]
    evals = sorted((job.split("_")[1], st) for job, (n, st) in tasks.items() if n == f"r000.eval.{name}")
    # the first attempts' chained eval tasks were cancelled by SLURM (dependency never satisfied), not dropped
    assert evals == [("0", "COMPLETED"), ("1", "CANCELLED"), ("1", "COMPLETED"), ("2", "CANCELLED"), ("2", "COMPLETED")]
    ledger = status(campaign)["ledger"]["r000"]["candidates"]
    assert any("CANCELLED" in t for t in ledger["cand-02"]["tasks"])
    assert [t.split("#")[0] for t in ledger["cand-00"]["tasks"]] == ["train", "eval", "score"]


def test_killed_between_the_sbatch_calls_then_an_accounting_outage(tmp_path, devcluster):  # noqa: F811
    """Two crash classes in one campaign. Killed -9 between the train and the eval sbatch: the intents
    have no job id, the train array is found again by its --comment and the eval array is submitted on
    restart, chained to it; nothing is submitted twice. Then slurmdbd stops while the round is in
    flight: sacct fails, and the daemon waits (each job counts as queued while the scheduler gives no
    answer) instead of crashing or taking running jobs for lost. Started again, accounting answers and
    the round finishes with one attempt per candidate. The launcher's own crash points are taken against
    the fake scheduler (tests/test_launcher.py) and, with a real daemon killed, on the local backend
    (tests/test_campaign.py)."""
    campaign = slurm_campaign(tmp_path, "kill", workers=1)
    name = yaml.safe_load(campaign.read_text())["name"]
    cluster = Path(devcluster["SLURM_CONF"]).parents[1]  # $HPC_AEVO_DEVCLUSTER/etc/slurm.conf
    assert run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": "r0:train:between-arrays"}).returncode == -signal.SIGKILL
    live = {n for _, n, _ in squeue_rows()}
    assert f"r000.train.{name}" in live and f"r000.eval.{name}" not in live  # the train array lives on alone
    daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: f"r000.eval.{name}" in {n for _, n, _ in squeue_rows()}, 120, "the eval array, chained")
        pid = int((cluster / "run" / "slurmdbd.pid").read_text())
        subprocess.run(["kill", str(pid)], check=True)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "slurmdbd to stop")
        wait_for(lambda: subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode != 0, 30,
                 "sacct to fail")
        time.sleep(12)  # several polls without accounting
        assert daemon.poll() is None, "the daemon died during the accounting outage"
        subprocess.run([str(REPO / "sbatch/devcluster/start")], check=True, capture_output=True,
                       env={**os.environ, "HPC_AEVO_DEVCLUSTER": str(cluster)})
        out, _ = daemon.communicate(timeout=900)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, out
    assert "slurm: no answer this poll (sacct" in out, out
    tasks = sacct_tasks(name)
    for stage in ("train", "eval"):
        assert sorted(job.split("_")[1] for job, (n, _) in tasks.items() if n == f"r000.{stage}.{name}") == ["0", "1"]
    state = tmp_path / "state"
    for cand in ("cand-00", "cand-01"):
        assert manifest(state, cand)["attempts"] == 1 and manifest(state, cand)["status"] == "evaluated"
        submission = json.loads((state / "rounds/r000" / cand / "jobs/attempt-1.json").read_text())
        assert submission["job_id"] in tasks and submission["eval_job_id"] in tasks
        assert any(e["event"] == "adopted" for e in events(state, cand))
    assert all(r["complete"] for r in status(campaign)["rounds"][:1])
