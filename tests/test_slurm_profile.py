"""Cluster profiles, sbatch rendering, --dry-run and the budget check: no cluster needed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from hpc_aevo.campaign.config import Budget, Stage, Stages
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.launcher import BudgetExhausted, Launcher, TrainTrack
from hpc_aevo.state.ledger import TaskCharge, record_charges
from hpc_aevo.campaign.profile import load_profile
from hpc_aevo.jobs.backends.slurm import SlurmScheduler, index_ranges, parse_sacct
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.scheduler import Submission, Submitted, TaskUsage
from hpc_aevo.scoring.score_stage import score_spec
from hpc_aevo.state.records import now_iso
from hpc_aevo.state.tree import StateTree
from tiny_campaign import REPO, write_campaign

PROFILES = REPO / "sbatch"


@pytest.mark.parametrize("name", ["devcluster", "h200"])
def test_shipped_profiles_load(name):
    profile = load_profile(PROFILES / f"{name}.yaml")
    assert profile.name == name


def test_h200_profile_is_multi_node_with_a_container():
    profile = load_profile(PROFILES / "h200.yaml")
    assert profile.stages.train.nodes == 2 and profile.stages.train.gpus_per_node == 8
    assert profile.container.srun_args()[0].startswith("--container-image=")


@pytest.mark.parametrize("key,value,where,fragment", [
    ("partition", 3, "partition", "a string or null"),
    ("stages", {"train": {"nodes": 0}}, "stages.train.nodes", "a number >= 1"),
    ("stages", {"train": {"gpus": 8}}, "stages.train.gpus", "no such key"),
    ("stages", {"eval": {"gpus_per_node": 9}}, "stages.eval.gpus_per_node", "at most gpus_per_node_available (8)"),
    ("sbatch", {"dependency": "afterok:1"}, "sbatch.dependency", "an option the backend does not set itself"),
    ("sbatch", {"--mail-type": "ALL"}, "sbatch.--mail-type", "without dashes"),
    ("signal_delay_s", 2, "signal_delay_s", "a number >= 10"),
    ("colour", "blue", "colour", "no such key"),
])
def test_bad_profile_is_one_line_naming_file_and_key(tmp_path, key, value, where, fragment):
    data = yaml.safe_load((PROFILES / "h200.yaml").read_text())
    data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {where}: expected") and fragment in message


def test_slurm_campaign_needs_a_profile(tmp_path):
    campaign = write_campaign(tmp_path)
    campaign.write_text(campaign.read_text().replace("backend: local", "backend: slurm"))
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.config", str(campaign)], capture_output=True, text=True)
    assert done.returncode == 2 and "scheduler.profile: expected a cluster profile file" in done.stderr


def test_index_ranges():
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and index_ranges([3]) == "3"
    assert index_ranges(list(range(512))) == "0-511"


def _scheduler(tmp_path, profile="h200") -> SlurmScheduler:
    stage = Stage(timeout_min=30, mem_gb=4, cpus=2, gpus=1)
    return SlurmScheduler(4, Stages(stage, stage), load_profile(PROFILES / f"{profile}.yaml"), "prod", tmp_path, 5)


def test_dry_run_prints_both_arrays_and_submits_nothing(tmp_path):
    campaign = write_campaign(tmp_path, workers=2)
    data = yaml.safe_load(campaign.read_text())
    profile = yaml.safe_load((PROFILES / "h200.yaml").read_text())
    profile["container"]["mounts"].append(str(tmp_path))  # the jobs' container shows this state tree
    (tmp_path / "h200.yaml").write_text(yaml.safe_dump(profile))
    data["scheduler"].update(backend="slurm", profile=str(tmp_path / "h200.yaml"))
    campaign.write_text(yaml.safe_dump(data))
    env = {"PATH": "/nonexistent"}  # no sbatch reachable: a dry run must not need one
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.round", str(campaign), "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("#!/bin/bash") == 3 and "--array=0-2%2" in out
    assert "--dependency='aftercorr:<train array job id>'" in out and "--job-name=r000.train.tiny" in out
    train, evaluation = out.split("# ---- eval array")
    evaluation, scoring = evaluation.split("# ---- score array")
    # a failed train task cancels its eval task on any cluster, whatever its DependencyParameters
    assert "--kill-on-invalid-dep=yes" in evaluation and "kill-on-invalid-dep" not in train
    # the score array is submitted after the dev evaluation, for the chosen candidates: no dependency
    assert "--job-name=r000.score.tiny" in scoring and "dependency" not in scoring and ":<batch>:score'" in scoring
    assert "--nodes=2" in out and "--gpus-per-node=8" in out and "--container-image=" in out
    assert "--partition=gpu-h200" in out and "--exclusive" in out and "export NCCL_IB_DISABLE=0" in out
    assert not (tmp_path / "state").exists()


def test_budget_refuses_a_submission_that_would_exceed_it(tmp_path):
    scheduler = _scheduler(tmp_path)
    cpu, gpu = scheduler.worst_case_hours()  # h200 profile: 4 h x 16 GPUs train + the campaign's 0.5 h x 1 GPU eval, x4 requeues
    assert gpu == pytest.approx((4 * 16 + 0.5 * 1) * 4)
    tree = StateTree(tmp_path)
    record_charges(tree, [TaskCharge("r000/cand-00", 1, "train", "7_0", "COMPLETED", 3600, 96, 16, 96, 16)])
    launcher = Launcher(scheduler, 2, 1, Budget(gpu_hours=16 + gpu * 2.5), tree, TrainTrack(lambda *a: None))
    launcher._check_budget(["r001/cand-00", "r001/cand-01"], in_flight=0)  # 16 + 2 x worst case fits
    with pytest.raises(BudgetExhausted) as info:
        launcher._check_budget(["r001/cand-00", "r001/cand-01", "r001/cand-02"], in_flight=0)
    assert "budget.gpu_hours" in str(info.value) and "16.000 used" in str(info.value)
    assert "not submitting" in str(info.value) and "r001/cand-02" in str(info.value)


def test_production_h200_campaign_dry_run_needs_no_cluster_and_no_api_key():
    """campaigns/h200.yaml (claude workers, 2 nodes x 8 H200, FP8, vLLM eval) renders from any machine."""
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(REPO)}  # no sbatch, no ANTHROPIC_API_KEY
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.round", "campaigns/h200.yaml", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "--array=0-8%" in out and "--job-name=r000.train.h200" in out and "--job-name=r000.eval.h200" in out
    assert "--nodes=2" in out and "--ntasks-per-node=8" in out and "--gpus-per-node=8" in out
    assert "--dependency='aftercorr:<train array job id>'" in out


def test_a_score_batch_is_found_again_and_polled_as_one_task_per_candidate(tmp_path, monkeypatch):
    """After a kill between sbatch and recording the job ids, a score intent is found by its batch's comment
    (and no eval array is submitted for it); its poll asks for its one task."""
    scheduler, tree = _scheduler(tmp_path), StateTree(tmp_path)
    answers = {"squeue": f"77_1|hpc_aevo:{scheduler.campaign_id}:r000-b1:score\n",
               "sacct": "77_1|COMPLETED|30|billing=1,cpu=2,gres/gpu=1,node=1\n"}
    commands = []
    monkeypatch.setattr("hpc_aevo.jobs.backends.slurm._run", lambda cmd: commands.append(cmd[0]) or answers[cmd[0]])
    intents = [Submission(f"r000/cand-0{c}", 1, "slurm", now_iso(), batch=batch, stage="score")
               for c, batch in ((1, "r000-b1"), (2, "r000-b2"))]
    specs = [score_spec(Candidate(0, c, tree), 1, None) for c in (1, 2)]
    assert scheduler.find(intents, specs) == [Submitted("77_1"), None]
    assert "sbatch" not in commands
    recorded = dataclasses.replace(intents[0], job_id="77_1")
    [status] = scheduler.poll([recorded])
    assert not status.alive and status.ended == "COMPLETED"
    assert status.tasks == (TaskUsage("77_1", "score", "COMPLETED", 30.0, 2, 1),)
    assert scheduler.worst_case_hours("score") == (0.5 * 2, 0.5 * 1)  # no requeue: scoring is not requeued


# Lines of `sacct -X -D -n -P --format=JobID,State,ElapsedRaw,AllocTRES -s <all> -S -E` on the devcluster.
SACCT_FAILED_TRAIN = """1215_0|COMPLETED|16|billing=1,cpu=1,node=1
1215_1|FAILED|2|billing=1,cpu=1,node=1
1215_2|FAILED|2|billing=1,cpu=1,node=1
1216_0|COMPLETED|18|billing=1,cpu=1,node=1
1216_1|CANCELLED|0|
1216_[0-2%3]|CANCELLED|0|
"""
SACCT_REQUEUED = """31_0|COMPLETED|22|billing=1,cpu=1,node=1
31_1|REQUEUED|40|billing=1,cpu=1,node=1
32_0|COMPLETED|18|billing=1,cpu=1,node=1
31_1|REQUEUED|28|billing=1,cpu=1,node=1
31_1|COMPLETED|27|billing=1,cpu=1,node=1
32_[1%2]|PENDING|0|
"""


def test_sacct_lines_give_each_task_its_own_end_and_every_run_charged():
    # The eval array's own record (never eligible, cancelled with task 2's dependency) still names
    # 0-2: task 0's own line (COMPLETED) wins, task 2 has no line but that record's.
    rows = parse_sacct(SACCT_FAILED_TRAIN)
    assert {task: state for task, (state, _, _) in rows.items()} == {
        "1215_0": "COMPLETED", "1215_1": "FAILED", "1215_2": "FAILED",
        "1216_0": "COMPLETED", "1216_1": "CANCELLED", "1216_2": "CANCELLED"}
    rows = parse_sacct(SACCT_REQUEUED)
    assert rows["31_1"] == ("COMPLETED", 40 + 28 + 27, "billing=1,cpu=1,node=1")  # the last run's state, all runs charged
    assert rows["32_1"][0] == "PENDING" and rows["31_0"][1] == 22
