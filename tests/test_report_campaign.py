"""End to end, on the local backend and on the devcluster: status shows a running task's live progress, and
the round's end leaves the report and every candidate's TensorBoard run with its loss curve."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from slurm_cluster import devcluster, slurm_campaign  # noqa: F401 (devcluster: the fixture)
from tiny_campaign import REPO, write_campaign

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.cli.status import status_document
from hpc_aevo.report.story import CampaignReport
from hpc_aevo.report.tensorboard import read_scalars
from hpc_aevo.state.tree import StateTree

pytestmark = pytest.mark.slow

STEPS = 240


@pytest.mark.parametrize("backend", ["local", pytest.param("slurm", marks=pytest.mark.xdist_group("devcluster"))])
def test_live_progress_then_report_and_tensorboard_after_the_round(tmp_path, backend, request):
    if backend == "slurm":
        request.getfixturevalue("devcluster")  # skips without a reachable devcluster (CI starts one)
        path = slurm_campaign(tmp_path, "progress", rounds=1, workers=1)
    else:
        path = write_campaign(tmp_path, rounds=1, workers=1)
    initial = yaml.safe_load((tmp_path / "initial.yaml").read_text())
    initial["standing_recipe"]["optim"]["steps"] = STEPS  # long enough to be seen running, with a line every 10 steps
    initial["standing_recipe"]["checkpoints"]["every"] = STEPS
    initial["standing_recipe"]["logging"] = {"every": 10}
    (tmp_path / "initial.yaml").write_text(yaml.safe_dump(initial, sort_keys=False))
    daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(path)], cwd=REPO, env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = None, time.time() + 600
    while seen is None and daemon.poll() is None and time.time() < deadline:
        doc = status_document(str(path))
        running = [p for r in doc["rounds"] for p in r["progress"] if p["stage"] == "train" and p["step"]]
        seen = running[0] if running else None
        time.sleep(0.2)
    out, err = daemon.communicate(timeout=600)
    assert daemon.returncode == 0, err
    assert seen is not None, "status never showed a training task's progress"
    assert seen["total"] == STEPS and 0 < seen["step"] <= STEPS and seen["loss"] > 0
    assert seen["tokens_per_s"] is None or seen["tokens_per_s"] > 0  # None: the first line of the attempt
    assert "report not refreshed" not in out and "report refreshed: " in out
    tree = StateTree(load_campaign(path).paths.state_root)
    assert all(p.stat().st_size > 0 for p in [tree.report_markdown, *tree.report_figures.values()])
    story = CampaignReport.load(tree.report_record)
    assert [r.decided for r in story.rounds] == [True]
    for c in range(2):
        loss = read_scalars(tree.tensorboard(0, c))["train/loss"]
        assert [s for s, _ in loss] == list(range(10, STEPS + 1, 10))
    assert [s for s, _ in read_scalars(tree.campaign_tensorboard)["standing/leaderboard"]] == [0]
