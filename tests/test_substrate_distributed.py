"""Data-parallel training: torchrun and SLURM task environments give the single-process loss curve.

The trainer runs for real (megatron-core, gloo) as two processes on a tiny recipe; the single
process run on the same data is the reference. Both ranks must appear in train_summary.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

from hpc_aevo.tools.calibrate import apply_overrides  # noqa: E402

STEPS = 50
TINY = {"data.train_examples": 1000, "model.hidden": 32, "model.layers": 1, "optim.steps": STEPS,
        "optim.batch_size": 8, "checkpoints.every": 25}


def tiny_recipe(tmp_path: Path) -> Path:
    recipe = apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()), TINY)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_id_with_free_port() -> str:
    """A SLURM job id whose derived MASTER_PORT nobody is listening on."""
    import distributed

    for job_id in range(os.getpid(), os.getpid() + 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", distributed.PORT_BASE + job_id % distributed.PORT_SPAN))
            except OSError:
                continue
        return str(job_id)
    raise RuntimeError("no free port")


def clean_env(**extra: str) -> dict:
    """This environment without any launcher variables, plus `extra`."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM_")}
    return {**env, **extra}


def run(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=SUBSTRATE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]


def summary(directory: Path) -> dict:
    return json.loads((directory / "train_summary.json").read_text())


def slurm_conf(tmp_path: Path) -> Path:
    """The smallest slurm.conf that lets `scontrol show hostnames` expand a node list (no daemons needed)."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=localhost,n[01-04] CPUs=1\nPartitionName=p Nodes=ALL\n")
    return conf


def test_launch_from_each_environment(tmp_path):
    import distributed

    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n01", "MASTER_PORT": "29400"}
    assert distributed.launch_from_env(torchrun) == distributed.Launch(3, 4, 1, "n01", 29400, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
             "SLURM_JOB_NODELIST": "n[03-04]", "SLURM_CONF": str(slurm_conf(tmp_path))}
    assert distributed.launch_from_env(slurm) == distributed.Launch(5, 8, 1, "n03", distributed.PORT_BASE + 123456 % distributed.PORT_SPAN, "slurm")
    # An address and port set by the job script win over the derived ones.
    pinned = distributed.launch_from_env({**slurm, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "4000"})
    assert (pinned.master_addr, pinned.master_port) == ("10.0.0.7", 4000)
    # srun's step task count wins over the allocation's: `srun -n 2` inside an 8-task allocation is 2 ranks.
    assert distributed.launch_from_env({**slurm, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}).world_size == 2
    # One SLURM task (a plain sbatch job) and no launcher at all are both a single process.
    assert distributed.launch_from_env({**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).launcher == "single"
    assert distributed.launch_from_env({}) == distributed.Launch(0, 1, 0, None, None, "single")


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    """torchrun --nproc_per_node 2 and two SLURM-style tasks each train half of every global batch."""
    recipe = tiny_recipe(tmp_path)
    one, tr, sl = tmp_path / "one", tmp_path / "torchrun", tmp_path / "slurm"
    single = run([sys.executable, "train.py", "--recipe", str(recipe), "--out", str(one)], clean_env())
    finish(single)
    torchrun = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(free_port()), "train.py", "--recipe", str(recipe), "--out", str(tr)],
                   clean_env())
    finish(torchrun)
    # What srun gives each task: its rank, the task count, the node list and the job id.
    conf, job_id = slurm_conf(tmp_path), job_id_with_free_port()
    tasks = [run([sys.executable, "train.py", "--recipe", str(recipe), "--out", str(sl)],
                 clean_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost",
                           SLURM_JOB_ID=job_id, SLURM_CONF=str(conf)))
             for r in (0, 1)]
    finish(*tasks)
    reference = summary(one)
    assert reference["world_size"] == 1 and [r["rank"] for r in reference["ranks"]] == [0]
    for directory in (tr, sl):
        body = summary(directory)
        assert body["steps"] == STEPS and body["world_size"] == 2
        assert [h["step"] for h in body["history"]] == [h["step"] for h in reference["history"]]
        for mine, ref in zip(body["history"], reference["history"]):
            assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-4) and mine["lr"] == ref["lr"]
        ranks = body["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["host"] == socket.gethostname() for r in ranks)
        # Each rank trained half of every global batch: half of the single process's tokens.
        assert [r["tokens"] for r in ranks] == [reference["ranks"][0]["tokens"] // 2] * 2
        # Rank 0 alone wrote the checkpoints, the same set as the single process.
        assert sorted(p.name for p in directory.glob("ckpt-*.pt")) == sorted(p.name for p in one.glob("ckpt-*.pt"))


@pytest.mark.slow
def test_tensor_parallel_matches_one_process(tmp_path):
    """TP=2 under torchrun (gloo): the loss curve of one process; its distributed checkpoint loads
    into the one-process evaluator (resharded TP2 -> TP1) and scores like the one-process one."""
    recipe = apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()),
                             {**TINY, "checkpoints.format": "dist", "checkpoints.every": STEPS})
    one_path, tp_path = tmp_path / "one.yaml", tmp_path / "tp.yaml"
    one_path.write_text(yaml.safe_dump(recipe))
    recipe["parallel"]["tensor"] = 2
    tp_path.write_text(yaml.safe_dump(recipe))
    one, tp = tmp_path / "one", tmp_path / "tp"
    finish(run([sys.executable, "train.py", "--recipe", str(one_path), "--out", str(one)], clean_env()))
    finish(run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "train.py", "--recipe", str(tp_path), "--out", str(tp)], clean_env()))
    reference, body = summary(one), summary(tp)
    assert body["world_size"] == 2 and [r["rank"] for r in body["ranks"]] == [0, 1]
    for mine, ref in zip(body["history"], reference["history"], strict=True):
        assert mine["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    # Both TP ranks see the whole batch (one data-parallel replica): each trained the one process's tokens.
    assert [r["tokens"] for r in body["ranks"]] == [reference["ranks"][0]["tokens"]] * 2
    # The export gathers the TP shards into the one-process layout: the one process's weights, same names.
    export = f"export/ckpt-{STEPS:06d}.safetensors"
    ours, theirs = load_file(tp / export), load_file(one / export)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-3, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    scores = {}
    for name, directory, path in (("one", one, one_path), ("tp", tp, tp_path)):
        finish(run([sys.executable, "evaluate.py", "--checkpoints", str(directory), "--recipe", str(path), "--out",
                    str(directory / "eval.json")], clean_env()))
        scores[name] = json.loads((directory / "eval.json").read_text())["checkpoints"]
    assert [c["step"] for c in scores["tp"]] == [c["step"] for c in scores["one"]] == [STEPS]  # one dev pass each
    for mine, ref in zip(scores["tp"], scores["one"]):
        assert mine["dev"] == pytest.approx(ref["dev"], abs=0.01)
