"""`status`: live progress of running tasks from their metric lines, `--watch`, and what it cannot show."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
from report_fixture import build_fixture
from tiny_campaign import REPO, write_campaign

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.cli import status
from hpc_aevo.jobs.spec import JobOutcome, StageRun
from hpc_aevo.report.progress import TaskProgress, describe, stage_progress
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.tree import StateTree


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


def test_the_daemons_minute_line_counts_each_stage_and_names_the_training_steps(campaign_file):
    tree = StateTree(load_campaign(campaign_file).paths.state_root)
    manifests = [CandidateManifest.load(tree.manifest(2, c)) for c in range(3)]
    assert stage_progress(tree, manifests, "train", 245) == (
        "train 4m05s: 1 training (cand-02 75/100 loss 1.250; ETA 12s), 2 done")
    manifests[0].status, manifests[0].failure = "failed", "exit 1"
    manifests[1].status = "proposed"  # not submitted yet: no free slot
    assert stage_progress(tree, manifests[:2], "train", 5) == "train 5s: 1 waiting, 1 failed"
    assert stage_progress(tree, manifests[2:], "score", 60) == "score 1m00s: nothing in flight"


def test_progress_lines_for_each_stage():
    assert describe(TaskProgress("r000/cand-01", 2, "queued")) == (
        "r000/cand-01 #2 queued (waiting for the scheduler to start it)")
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


def test_a_campaign_that_never_ran_is_said_in_one_line(tmp_path):
    path = write_campaign(tmp_path / "never")
    doc = status.status_document(str(path))
    assert doc["ran"] is False and doc["rounds"] == []
    lines = status.render(doc).splitlines()
    assert len(lines) == 2 and "campaign tiny never ran" in lines[1] and "python -m hpc_aevo.round" in lines[1]


def test_missing_or_damaged_candidates_and_records_are_named_and_the_rest_is_shown(campaign_file):
    tree = StateTree(load_campaign(campaign_file).paths.state_root)
    shutil.rmtree(tree.candidate_dir(1, 1))
    tree.manifest(0, 2).unlink()
    tree.manifest(0, 1).write_text("{")
    tree.decision(1).unlink()
    shutil.rmtree(tree.candidate_dir(2, 2))  # the last one of a round still running: the campaign's count implies it
    doc = status.status_document(campaign_file)
    r0, r1 = doc["rounds"][0], doc["rounds"][1]
    assert [c["name"] for c in r0["candidates"]] == ["cand-00"]
    assert [c["name"] for c in r1["candidates"]] == ["cand-00", "cand-02"]
    assert any("r001/cand-01: its directory is missing" in line for line in r1["cannot_show"])
    assert any("r000/cand-02: its manifest.json is missing" in line for line in r0["cannot_show"])  # evidence names it
    assert any(line.startswith("unreadable, not shown:") and "cand-01/manifest.json" in line
               for line in r0["cannot_show"])
    assert any("the decision record" in line and "meta is done" in line for line in r1["cannot_show"])
    assert any("r002/cand-02: its directory is missing" in line for line in doc["rounds"][2]["cannot_show"])
    text = status.render(doc)
    assert text.count("  cannot show: ") == 5 and "round 2" in text  # the later rounds are still shown


def test_unconfined_stages_are_named(campaign_file):
    tree = StateTree(load_campaign(campaign_file).paths.state_root)
    JobOutcome("r000/cand-01", 1, "COMPLETED", [StageRun("train", 0, 1.0, "log", confined=False),
                                                 StageRun("eval", 0, 1.0, "log", confined=True)]).save(
        tree.attempt(0, 1, 1).outcome())
    doc = status.status_document(campaign_file)
    assert doc["rounds"][0]["unconfined"] == ["cand-01#1 train"] and doc["rounds"][0]["unconfined_stage_runs"] == 1
    assert "jobs: 1 stage run(s) UNCONFINED (cand-01#1 train)" in status.render(doc)
