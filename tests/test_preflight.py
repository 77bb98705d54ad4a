"""The preflight: a recipe or a campaign the cluster would refuse is stopped before anything is submitted,
with one line naming the file and the key. No cluster needed (the partition's answers are recorded)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.jobs.backends import make_scheduler
from hpc_aevo.jobs.backends.local import local_gpus
from hpc_aevo.jobs.preflight import Cluster, campaign_findings, recipe_findings
from slurm_cluster import devcluster, slurm_campaign  # noqa: F401
from tiny_campaign import REPO, write_campaign

H200 = yaml.safe_load((REPO / "policy" / "h200.yaml").read_text())["standing_recipe"]


def _h200_campaign(tmp_path, **profile_changes):
    """campaigns/h200.yaml with its profile (changed by `profile_changes`) copied under tmp_path."""
    profile = yaml.safe_load((REPO / "sbatch" / "h200.yaml").read_text())
    profile.update(profile_changes)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    campaign = yaml.safe_load((REPO / "campaigns" / "h200.yaml").read_text())
    campaign["substrate"] = str(REPO / "substrate")
    campaign["policy"] = {"constitution": str(REPO / "policy" / "constitution.md"),
                          "initial": str(REPO / "policy" / "h200.yaml")}
    campaign["scheduler"]["profile"] = str(tmp_path / "profile.yaml")
    path = tmp_path / "h200.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path


def _cluster(campaign_path) -> Cluster:
    campaign = load_campaign(campaign_path)
    return Cluster.of(campaign, make_scheduler(campaign))


def _refusals(recipe, cluster) -> list[str]:
    return [str(f) for f in recipe_findings(recipe, "policy.yaml", "standing_recipe.", cluster) if f.refused]


def _with(recipe: dict, **changes) -> dict:
    """A copy of `recipe` with dotted keys set."""
    out = yaml.safe_load(yaml.safe_dump(recipe))
    for dotted, value in changes.items():
        node = out
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_the_h200_campaign_passes_its_preflight_with_its_notes_only():
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(REPO)}  # no scontrol: the partition's limits are a note
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.round", "campaigns/h200.yaml", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("hpc_aevo.round: preflight note: ") for line in lines), lines
    assert any("partition limits not checked" in line for line in lines)
    # the eval and score stages take one GPU on a shared node: no GPU held idle, no profile override
    assert not any("idle" in line or "win over" in line for line in lines), lines


def test_fp8_with_packing_is_refused_on_the_transformer_engine_path(tmp_path):
    (line,) = _refusals(_with(H200, data__pack=True), _cluster(_h200_campaign(tmp_path)))
    assert line == ("preflight refused: policy.yaml: standing_recipe.data.pack: packed rows run on megatron's local "
                    "spec only (train.py refuses them on the Transformer Engine spec, which fp8 needs): set it false")


def test_fp8_is_refused_on_a_gpu_without_fp8_gemms_and_where_the_gpu_kind_is_unknown(tmp_path):
    (line,) = _refusals(H200, _cluster(_h200_campaign(tmp_path, gpu_type="a100")))
    assert "standing_recipe.model.precision: fp8 (delayed scaling) needs a GPU of compute capability sm_89+" in line
    assert line.endswith("profile.yaml: gpu_type a100 is sm_80")
    (line,) = _refusals(H200, _cluster(_h200_campaign(tmp_path, gpu_type=None)))
    assert "the GPU kind is not known: set" in line and "profile.yaml: gpu_type (one of" in line
    # MXFP8 blocks need Blackwell: the scaling recipe is the key to change on an H200
    (line,) = _refusals(_with(H200, model__fp8_recipe="mxfp8"), _cluster(_h200_campaign(tmp_path)))
    assert "standing_recipe.model.fp8_recipe: fp8 (mxfp8 scaling) needs" in line and "sm_100+" in line


def test_tensor_parallelism_beyond_the_gpus_of_a_node_is_refused(tmp_path):
    cluster = _cluster(_h200_campaign(tmp_path))
    (line,) = _refusals(_with(H200, parallel__tensor=16, checkpoints__format="dist"), cluster)
    assert line.startswith("preflight refused: policy.yaml: standing_recipe.parallel.tensor: 16: a tensor-parallel "
                           "group must fit in one node, whose task has 8 rank(s), 8 GPUs")
    assert _refusals(_with(H200, parallel__tensor=8, checkpoints__format="dist"), cluster) == []
    assert _refusals(_with(H200, parallel__tensor=2, checkpoints__format="torch"), cluster) == [
        "preflight refused: policy.yaml: standing_recipe.checkpoints.format: tensor or expert parallelism needs dist "
        "(got 'torch')"]
    assert _refusals(_with(H200, parallel__tensor=2, model__moe={"experts": 8, "top_k": 2}), cluster) == [
        "preflight refused: policy.yaml: standing_recipe.parallel.tensor: a mixture of experts trains with 1 (got 2): "
        "megatron trains MoE under tensor parallelism with sequence parallelism only"]
    assert _refusals(_with(H200, parallel__tensor="2"), cluster) == [
        "preflight refused: policy.yaml: standing_recipe.parallel.tensor: an integer >= 1 (got '2')"]


def test_the_local_backend_runs_one_process_and_refuses_gpu_precision_without_a_gpu(tmp_path):
    cluster = _cluster(write_campaign(tmp_path))
    cluster.scheduler.gpus, cluster.scheduler.gpu_type = 0, None  # this machine, whatever it has
    recipe = _with(H200, parallel__tensor=1)
    assert any("parallel.tensor: 2: a tensor-parallel group must fit in one node, whose task has 1 rank(s) "
               "(the local backend runs one process)" in line for line in _refusals(_with(recipe, parallel__tensor=2), cluster))
    assert _refusals(recipe, cluster) == [
        "preflight refused: policy.yaml: standing_recipe.model.precision: fp8 needs a GPU, and the train stage has none "
        f"({cluster.campaign.source}: scheduler.stages.train.gpus 0)"]


def test_a_container_that_shows_neither_the_interpreter_nor_the_state_tree_is_refused(tmp_path):
    campaign = _h200_campaign(tmp_path, python=None)
    data = yaml.safe_load(campaign.read_text())
    data["state_root"] = str(tmp_path / "state")
    campaign.write_text(yaml.safe_dump(data))
    refused = [str(f) for f in campaign_findings(_cluster(campaign)) if f.refused]
    assert len(refused) == 2
    assert refused[0].startswith(f"preflight refused: {tmp_path / 'profile.yaml'}: python: jobs run in container ")
    assert f"do not show this interpreter ({sys.executable})" in refused[0]
    assert refused[1].startswith(f"preflight refused: {campaign}: state_root: {tmp_path / 'state'} is under none of")


def test_an_exclusive_eval_node_reports_the_gpus_it_leaves_idle_and_the_profile_winning(tmp_path):
    profile = yaml.safe_load((REPO / "sbatch" / "h200.yaml").read_text())
    stages = profile["stages"]
    stages["eval"].update(gpus_per_node=8, exclusive=True)
    notes = [str(f) for f in campaign_findings(_cluster(_h200_campaign(tmp_path, stages=stages))) if not f.refused]
    assert f"preflight note: {tmp_path / 'profile.yaml'}: stages.eval.gpus_per_node: 8 GPUs per node win over the " \
           "campaign's scheduler.stages.eval.gpus 1" in notes
    # 9 candidates x 1 node x 7 idle GPUs x 1 h
    assert f"preflight note: {tmp_path / 'profile.yaml'}: stages.eval.exclusive: each eval task holds 8 GPUs per node " \
           "(whole nodes) where the campaign asks 1: up to 63 idle GPU-hours a round" in notes


SCONTROL = ("PartitionName=gpu-h200 AllowGroups=ALL Default=NO MaxNodes=4 MaxTime=2-00:00:00 State=UP TotalNodes=64\n"
            "PartitionName=debug Default=YES MaxNodes=UNLIMITED MaxTime=00:30:00 State=UP\n")
SINFO = "1024000 96\n2048000 112\n"  # MB and CPUs per node


def test_time_nodes_memory_and_cpus_beyond_the_partition_are_refused(tmp_path, monkeypatch):
    answers = {"scontrol": SCONTROL, "sinfo": SINFO}
    monkeypatch.setattr("hpc_aevo.jobs.backends.slurm._run", lambda cmd: answers[cmd[0]])
    profile = yaml.safe_load((REPO / "sbatch" / "h200.yaml").read_text())
    stages = profile["stages"]
    stages["train"].update(time_min=3000, nodes=8, mem_gb=2500)
    stages["eval"].update(cpus_per_task=128)
    found = [str(f) for f in campaign_findings(_cluster(_h200_campaign(tmp_path, stages=stages))) if f.refused]
    where = f"{tmp_path / 'profile.yaml'}: stages"
    assert found == [
        f"preflight refused: {where}.train.time_min: 3000 min is over partition gpu-h200's MaxTime of 2880 min",
        f"preflight refused: {where}.train.nodes: 8 nodes are over partition gpu-h200's MaxNodes 4",
        f"preflight refused: {where}.train.mem_gb: 2500 GB per node is more than partition gpu-h200's largest node "
        "has (2000 GB)",
        f"preflight refused: {where}.eval.cpus_per_task: 128 CPUs per node is more than partition gpu-h200's largest "
        "node has (112)"]


def test_a_refused_worker_recipe_fails_its_candidate_as_a_mutation_before_any_submission(tmp_path):
    from hpc_aevo.loop.daemon import Daemon
    from hpc_aevo.search.policy import Policy
    from hpc_aevo.state.contract import RECIPE_FILE

    daemon = Daemon(load_campaign(write_campaign(tmp_path, workers=2)))
    record = daemon.prepare()
    daemon.phase_fork(0, Policy.load(daemon.tree.policy(0)), record)
    for c in (1, 2):
        cand = daemon.candidate(0, c)
        manifest = cand.manifest()
        manifest.status = "proposed"
        cand.save(manifest)
    recipe = daemon.tree.sandbox(0, 1) / RECIPE_FILE
    recipe.write_text(recipe.read_text().replace("tensor: 1", "tensor: 2"))
    assert daemon._refuse_unrunnable(0) == 1
    refused, kept = daemon.candidate(0, 1).manifest(), daemon.candidate(0, 2).manifest()
    assert refused.status == "failed" and refused.attempts == 0 and kept.status == "proposed"
    assert refused.failed_job.state == "REFUSED" and refused.failed_job.kind == "mutation"
    assert refused.failure.startswith(f"preflight refused: {recipe}: parallel.tensor: 2: a tensor-parallel group")
    assert daemon.candidate(0, 1).trace().events()[-1]["event"] == "preflight-refused"
    assert not list(daemon.tree.root.rglob("submission*.json"))


def test_local_gpus_are_read_from_the_driver_files(tmp_path):
    for i, model in enumerate(("NVIDIA H200", "NVIDIA H200")):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
        (tmp_path / f"0000:0{i}:00.0" / "information").write_text(f"Model: \t {model}\nIRQ: 1\n")
    assert local_gpus(tmp_path) == (2, "h200")
    (tmp_path / "0000:02:00.0").mkdir()
    (tmp_path / "0000:02:00.0" / "information").write_text("Model: NVIDIA A100-SXM4-80GB\n")
    assert local_gpus(tmp_path) == (3, None)  # mixed kinds: none to check against
    assert local_gpus(tmp_path / "missing") == (0, None)


@pytest.mark.slow
def test_the_devcluster_partition_answers_the_preflight(tmp_path, devcluster):  # noqa: F811
    """The real scontrol and sinfo: the devcluster's nodes have 16000 MB, so 64 GB a task is refused."""
    campaign = slurm_campaign(tmp_path, "preflight")
    data = yaml.safe_load(campaign.read_text())
    data["scheduler"]["stages"]["train"]["mem_gb"] = 64
    campaign.write_text(yaml.safe_dump(data))
    found = [str(f) for f in campaign_findings(_cluster(campaign))]
    assert found == [f"preflight refused: {campaign}: scheduler.stages.train.mem_gb: 64 GB per node is more than "
                     "partition debug's largest node has (15.625 GB)"]
