"""A whole campaign through the real devcluster: train array, chained eval array, sacct, ledger."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from slurm_cluster import devcluster, sacct_tasks, slurm_campaign, squeue_rows, wait_for  # noqa: F401
from tiny_campaign import REPO, status

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("devcluster")]  # one at a time on the cluster


def test_two_rounds_through_the_devcluster(tmp_path, devcluster):  # noqa: F811
    campaign = slurm_campaign(tmp_path, "e2e", rounds=2, workers=1)
    name = yaml.safe_load(campaign.read_text())["name"]
    daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # While round 0 trains: squeue shows the train array and the eval array waiting on it, task i = cand i.
        def both_arrays():
            rows = [r for r in squeue_rows() if r[1].startswith(f"{name}.r000.")]
            names = {r[1] for r in rows}
            return rows if {f"{name}.r000.train", f"{name}.r000.eval"} <= names else None

        rows = wait_for(both_arrays, 120, "the train and eval arrays in squeue", step=0.5)
        evals = [r for r in rows if r[1].endswith(".eval")]
        assert all(r[2] == "PENDING" for r in evals)
        assert {r[0].split("_")[1] for r in evals} <= {"0", "1"}
        out, _ = daemon.communicate(timeout=900)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, out
    assert f"[{name} r001] meta" in out
    tasks = sacct_tasks(name)
    for rnd in ("r000", "r001"):
        for stage in ("train", "eval"):
            mine = {job.split("_")[1]: state for job, (n, state) in tasks.items() if n == f"{name}.{rnd}.{stage}"}
            assert mine == {"0": "COMPLETED", "1": "COMPLETED"}, (rnd, stage, tasks)
    doc = status(campaign)
    assert all(c["status"] == "evaluated" for r in doc["rounds"][:2] for c in r["candidates"])
    ledger = doc["ledger"]
    assert set(ledger) >= {"r000", "r001"} and doc["compute"]["cpu_hours_used"] > 0
    charged = ledger["r000"]["candidates"]["cand-01"]["tasks"]
    assert len(charged) == 2 and all("COMPLETED" in t and "1 CPU" in t for t in charged)
    shown = subprocess.run([sys.executable, "-m", "hpc_aevo.status", str(campaign)], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    assert "ledger r000:" in shown and "cand-01:" in shown
