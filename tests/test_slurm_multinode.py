"""One candidate's training task spans both nodes of the two-node devcluster, data-parallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from host import require
from slurm_cluster import devcluster, slurm, slurm_campaign  # noqa: F401
from tiny_campaign import run_daemon

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


@pytest.fixture
def two_nodes(devcluster):  # noqa: F811
    nodes = slurm("sinfo", "-h", "-N", "-o", "%N").split()
    require(len(set(nodes)) >= 2,
            f"needs two devcluster nodes (it has {len(set(nodes))}); start it with sbatch/devcluster/start --nodes 2")
    return devcluster


def test_training_spans_two_nodes_and_matches_one_process(tmp_path, two_nodes):
    campaign = slurm_campaign(tmp_path, "multi", workers=1, profile={"stages": {"train": {"nodes": 2,
                                                                                        "tasks_per_node": 1}}})
    done = run_daemon(campaign, "--rounds", "1", timeout=1100)
    assert done.returncode == 0, done.stdout + done.stderr
    cand = tmp_path / "state" / "rounds" / "r000" / "cand-00"
    summary = json.loads((cand / "checkpoints" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(r["rank"] for r in summary["ranks"]) == [0, 1]
    assert sorted(r["host"] for r in summary["ranks"]) == ["n1", "n2"]  # one rank per node (namespace)
    assert (cand / "jobs" / "attempt-1.train.rank1.log").exists()
    # The same recipe trained by one process, here: the loss must match the two-node run.
    alone = tmp_path / "alone"
    subprocess.run([sys.executable, "train.py", "--recipe", "recipe.yaml", "--out", str(alone)], cwd=cand / "sandbox",
                   check=True, capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    single = json.loads((alone / "train_summary.json").read_text())
    assert single["steps"] == summary["steps"]
    assert summary["final_loss"] == pytest.approx(single["final_loss"], rel=1e-3, abs=1e-4)
    for two, one in zip(summary["history"], single["history"]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-3, abs=1e-4)
    assert yaml.safe_load((cand / "manifest.json").read_text())["status"] == "evaluated"
