"""A whole campaign through the real two-node devcluster: train array (each task data-parallel across both
nodes), chained eval array, sacct, ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from host import require
from slurm_cluster import devcluster, sacct_tasks, slurm, slurm_campaign, squeue_rows, wait_for  # noqa: F401
from tiny_campaign import REPO, status

# One at a time on the cluster; `-m multinode` selects what needs `sbatch/devcluster/start --nodes 2`.
pytestmark = [pytest.mark.slow, pytest.mark.multinode, pytest.mark.xdist_group("devcluster")]


@pytest.fixture
def two_nodes(devcluster):  # noqa: F811
    nodes = slurm("sinfo", "-h", "-N", "-o", "%N").split()
    require(len(set(nodes)) >= 2,
            f"needs two devcluster nodes (it has {len(set(nodes))}); start it with sbatch/devcluster/start --nodes 2")
    return devcluster


def test_two_rounds_through_the_two_node_devcluster(tmp_path, two_nodes):
    campaign = slurm_campaign(tmp_path, "e2e", rounds=2, workers=1,
                              profile={"stages": {"train": {"nodes": 2, "tasks_per_node": 1}}})
    name = yaml.safe_load(campaign.read_text())["name"]
    daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # While round 0 trains: squeue shows the train array and the eval array waiting on it, task i = cand i.
        def both_arrays():
            rows = [r for r in squeue_rows() if r[1].startswith("r000.") and r[1].endswith(f".{name}")]
            names = {r[1] for r in rows}
            return rows if {f"r000.train.{name}", f"r000.eval.{name}"} <= names else None

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
        for stage in ("train", "eval", "score"):
            mine = {job.split("_")[1]: state for job, (n, state) in tasks.items() if n == f"{rnd}.{stage}.{name}"}
            assert mine == {"0": "COMPLETED", "1": "COMPLETED"}, (rnd, stage, tasks)
    doc = status(campaign)
    assert all(c["status"] == "evaluated" for r in doc["rounds"][:2] for c in r["candidates"])
    ledger = doc["ledger"]
    assert set(ledger) >= {"r000", "r001"} and doc["compute"]["cpu_hours_used"] > 0
    charged = ledger["r000"]["candidates"]["cand-01"]["tasks"]
    assert len(charged) == 3 and all("COMPLETED" in t for t in charged)
    assert "x 2 CPU" in charged[0] and "x 1 CPU" in charged[1]  # training on one CPU of each node; eval on one
    assert charged[2].startswith("score#1 ") and "x 1 CPU" in charged[2]  # the leaderboard scoring, a task of its own
    assert all(c["leaderboard"] is not None for r in doc["rounds"][:2] for c in r["candidates"])
    shown = subprocess.run([sys.executable, "-m", "hpc_aevo.status", str(campaign)], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout
    assert "ledger r000:" in shown and "cand-01:" in shown
    # Each training task spanned both nodes, one rank per node (network namespace), data-parallel.
    cand = tmp_path / "state" / "rounds" / "r000" / "cand-00"
    summary = json.loads((cand / "checkpoints" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(r["rank"] for r in summary["ranks"]) == [0, 1]
    assert sorted(r["host"] for r in summary["ranks"]) == ["n1", "n2"]
    assert (cand / "jobs" / "attempt-1.train.rank1.log").exists()
    # The same recipe trained by one process, here: the loss must match the two-node run.
    alone = tmp_path / "alone"
    subprocess.run([sys.executable, "train.py", "--recipe", "recipe.yaml", "--out", str(alone)], cwd=cand / "sandbox",
                   check=True, capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    single = json.loads((alone / "train_summary.json").read_text())
    assert single["steps"] == summary["steps"]
    assert summary["final_loss"] == pytest.approx(single["final_loss"], rel=1e-3, abs=1e-4)
    for two, one in zip(summary["history"], single["history"], strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-3, abs=1e-4)
