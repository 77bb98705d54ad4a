"""The campaign report: its files, the numbers its figures plot, and one line for what it cannot do."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from report_fixture import build_fixture
from tiny_campaign import REPO, write_campaign

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.cli import report as report_cli
from hpc_aevo.report import build, figures, metrics, tensorboard
from hpc_aevo.report.story import CampaignReport
from hpc_aevo.state.tree import StateTree

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def campaign(tmp_path):
    return load_campaign(build_fixture(tmp_path / "c"))


def test_report_writes_markdown_record_and_four_figures(campaign):
    out = build.write_report(campaign)
    tree = StateTree(campaign.paths.state_root)
    assert out == tree.report_dir
    for path in tree.report_figures.values():
        assert path.read_bytes().startswith(PNG), path
    story = CampaignReport.load(tree.report_record)
    assert [r.round for r in story.rounds] == [0, 1, 2] and [r.decided for r in story.rounds] == [True, True, False]
    assert story.lineage() == [(0, "initial-policy"), (2, "r001/cand-02")] and story.standing_now == "r001/cand-02"
    text = tree.report_markdown.read_text()
    for expected in ("**Promotion:** `r001/cand-02`, leaderboard +0.050 over the anchors, clearing the band 0.016",
                     "**Dead end:** `data.mixture.sequence:down` (schedule): lost 0.05 on the leaderboard",
                     "**Axis rotation:** retired schedule; activated capacity", "**decoupling flagged**",
                     "| `r001/cand-02` | worker | schedule |", "## Round r002 (in progress)", "![", "trajectory.png"):
        assert expected in text, expected
    assert ("Lineage: `initial-policy` (standing from r000) → `r001/cand-02` (data.mixture.sequence:down, "
            "standing from r002).") in text
    assert "0.3333333" not in text and "0.0499999" not in text  # rounded for people


def test_trajectory_plots_anchors_candidates_band_promotion_dead_end_and_decoupling(campaign):
    _, data = figures.trajectory(build.campaign_story(campaign))
    assert data["rounds"] == [0, 1, 2]
    assert data["standing"] == [0.20, 0.21, 0.26]  # the anchors run the standing recipe
    assert data["band_high"][0] == pytest.approx(0.216) and data["band_low"][1] == pytest.approx(0.194)
    assert [p[:2] for p in data["worker_leaderboard"]] == [[0, 0.21], [0, 0.15], [1, 0.20], [1, 0.26]]
    assert [p[:2] for p in data["worker_dev"]][-1] == [2, 0.37]
    assert data["promotions"] == [[1, 0.26, "r001/cand-02", 0.05]]
    assert data["dead_ends"] == [[0, ["data.mixture.sequence:down"]]]
    assert data["decoupled_rounds"] == [1]


def test_dev_vs_leaderboard_per_subset_and_compute_series(campaign):
    story = build.campaign_story(campaign)
    _, dev = figures.dev_vs_leaderboard(story)
    assert [len(r["points"]) for r in dev["rounds"]] == [3, 3, 1]
    rho = dev["rounds"][0]["spearman"]
    assert rho == round(rho, 3) and dev["rounds"][1]["decoupled"] is True
    _, subsets = figures.per_subset(story)
    assert subsets["leaderboard"]["arithmetic"] == pytest.approx([0.21, 0.22, 0.27])
    assert subsets["dev"]["sequence"] == pytest.approx([0.28, 0.29, 0.33])
    _, spend = figures.compute(story)
    assert spend["cpu_hours"] == pytest.approx([0.3, 0.3, 0.2]) and spend["api_usd"] == [0.0, 0.125, 0.0]


def test_report_command_prints_the_directory_and_refuses_a_campaign_that_never_ran(campaign, tmp_path, capsys):
    assert report_cli.main([str(campaign.source)]) == 0
    assert capsys.readouterr().out.strip() == str(StateTree(campaign.paths.state_root).report_dir)
    assert report_cli.main([str(write_campaign(tmp_path / "never"))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "never ran" in err and "python -m hpc_aevo.round" in err


def test_report_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.report", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "python -m hpc_aevo.report" in done.stdout


def test_the_daemons_refresh_says_where_or_in_one_line_why_not(campaign):
    tree = StateTree(campaign.paths.state_root)
    lines = []
    build.refresh(campaign, lines.append)
    assert lines == [f"[tiny] report refreshed: {tree.report_markdown} (tensorboard --logdir {tree.root})"]
    shutil.rmtree(tree.report_dir)
    tree.report_dir.write_text("not a directory")
    lines.clear()
    build.refresh(campaign, lines.append)
    assert len(lines) == 1 and lines[0].startswith("[tiny] report not refreshed:")


def test_tensorboard_runs_per_candidate_and_for_the_campaign_read_back(campaign):
    build.write_report(campaign)
    tree = StateTree(campaign.paths.state_root)
    running = tensorboard.read_scalars(tree.tensorboard(2, 2))
    assert running["train/loss"] == [(25, 1.75), (50, 1.5), (75, 1.25)]
    assert running["train/lr"][0] == (25, pytest.approx(0.001))
    assert running["train/tokens_per_s"] == [(50, 64.0), (75, 64.0)]  # 25 steps x 32 tokens in 12.5 s
    anchor = tensorboard.read_scalars(tree.tensorboard(0, 0))
    assert anchor["dev/score"] == [(50, pytest.approx(0.25)), (100, pytest.approx(0.30))]
    assert anchor["leaderboard/score"] == [(100, pytest.approx(0.20))] and "dev/arithmetic" in anchor
    whole = tensorboard.read_scalars(tree.campaign_tensorboard)
    assert [(s, round(v, 3)) for s, v in whole["standing/leaderboard"]] == [(0, 0.2), (1, 0.21), (2, 0.26)]
    assert whole["decision/promotion_gain"] == [(1, pytest.approx(0.05))]
    assert tensorboard.write_runs(tree, build.campaign_story(campaign)) == 0  # nothing new: nothing rewritten
    tree.manifest(2, 2).touch()
    assert tensorboard.write_runs(tree, build.campaign_story(campaign)) == 1
    assert len(list(tree.tensorboard(2, 2).glob("events.out.tfevents.*"))) == 1  # rewritten whole, not appended


def test_metric_lines_skip_what_is_not_a_metric():
    text = "\n".join(['hpc_aevo: header', '{"event": "resumed", "step": 50}', '{"step": 75, "loss": NaN}',
                      '{"step": true, "loss": 1}', '{"step": 100, "loss": 0.5, "grad_norm": 2.5, "tokens_per_s": 9}',
                      '{"step": 1'])
    assert metrics.parse_metric_lines(text) == [metrics.MetricPoint(100, 0.5, grad_norm=2.5, tokens_per_s=9.0)]
