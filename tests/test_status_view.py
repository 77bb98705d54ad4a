"""`status`: live progress of running tasks from their metric lines, `--watch`, and what it cannot show."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
from report_fixture import build_fixture
from tiny_campaign import REPO

from hpc_aevo.cli import status
from hpc_aevo.report.progress import TaskProgress, describe


@pytest.fixture
def campaign_file(tmp_path):
    return str(build_fixture(tmp_path / "c"))


def test_running_task_shows_step_loss_throughput_and_eta(campaign_file):
    doc = status.status_document(campaign_file)
    assert doc["rounds"][2]["progress"] == [{"candidate": "r002/cand-02", "attempt": 1, "stage": "train", "step": 75,
                                             "total": 100, "loss": 1.25, "tokens_per_s": 64.0, "eta_s": 12.5,
                                             "log_age_s": pytest.approx(0, abs=60)}]
    assert all(not r["progress"] for r in doc["rounds"][:2])  # finished rounds have nothing running
    text = status.render(doc)
    assert "  running: r002/cand-02 #1 train step 75/100 (75%), loss 1.250, 64 tok/s, ETA 12s" in text
    assert "rank corr 1.000" in text  # rounded, not 1.0000000000000002


def test_progress_lines_for_each_stage():
    assert describe(TaskProgress("r000/cand-01", 2, "queued")) == "r000/cand-01 #2 queued (waiting for the scheduler to start it)"
    assert describe(TaskProgress("r000/cand-01", 1, "train")) == "r000/cand-01 #1 train, no metric line yet"
    assert describe(TaskProgress("r000/cand-01", 1, "eval", 500, 500, 0.5, None, None, 7200.0)) == (
        "r000/cand-01 #1 eval step 500/500 (100%), loss 0.500, last line 2h00m ago")


def test_watch_redraws_in_place(campaign_file):
    out = io.StringIO()
    with redirect_stdout(out):
        status.watch(campaign_file, 0.01, frames=2)
    frames = out.getvalue().split("\x1b[H\x1b[J")
    assert frames[0] == "" and len(frames) == 3 and all("running: r002/cand-02" in f for f in frames[1:])


def test_watch_refuses_json_in_one_line(campaign_file):
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.status", campaign_file, "--watch", "--json"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--watch takes" in done.stderr.splitlines()[-1]
