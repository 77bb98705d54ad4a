"""megatron distributed checkpoints: requeue-identical loss curves, on two ranks, and evaluable.

Run A trains straight through in one process. Run B trains on two SLURM-style tasks, gets SIGTERM
on ONE task after its first checkpoint (both must stop with exit 3 at the same step boundary),
and is started again (the requeue): its loss curve and checkpoint set must be A's. The evaluator
then scores B's distributed checkpoints in one process (resharded as they load).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_substrate_distributed import SUBSTRATE, clean_env, job_id_with_free_port, slurm_conf, summary

from hpc_aevo.tools.calibrate import apply_overrides

STEPS, EVERY = 60, 20
TINY = {"data.train_examples": 1000, "model.hidden": 32, "model.layers": 1, "optim.steps": STEPS,
        "optim.batch_size": 8, "checkpoints.every": EVERY, "checkpoints.format": "dist"}


def train(recipe: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", "--recipe", str(recipe), "--out", str(out)], cwd=SUBSTRATE,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait(proc: subprocess.Popen, expect: int) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out[-3000:]
    return out


def two_tasks(recipe: Path, out: Path, tmp_path: Path) -> list[subprocess.Popen]:
    env = dict(SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=job_id_with_free_port(),
               SLURM_CONF=str(slurm_conf(tmp_path)))
    return [train(recipe, out, clean_env(SLURM_PROCID=str(r), SLURM_LOCALID=str(r), **env)) for r in (0, 1)]


@pytest.mark.slow
def test_requeued_two_rank_run_matches_uninterrupted(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()), TINY)))
    a, b = tmp_path / "a", tmp_path / "b"
    wait(train(recipe, a, clean_env()), 0)

    tasks = two_tasks(recipe, b, tmp_path)
    deadline = time.time() + 300
    while not (b / f"ckpt-{EVERY:06d}").is_dir():
        assert all(t.poll() is None for t in tasks) and time.time() < deadline, "run B ended before its first checkpoint"
        time.sleep(0.05)
    tasks[1].send_signal(signal.SIGTERM)  # one task warned: the other must stop with it
    outs = [wait(t, 3) for t in tasks]
    stop = json.loads([line for line in outs[0].splitlines() if '"preempted"' in line][-1])
    assert EVERY <= stop["step"] < STEPS
    resumed = [wait(t, 0) for t in two_tasks(recipe, b, tmp_path)]
    assert f'{{"event": "resumed", "step": {stop["step"]}, "checkpoint": "ckpt-{stop["step"]:06d}"}}' in resumed[0]

    ref, got = summary(a), summary(b)
    assert got["steps"] == STEPS and got["world_size"] == 2
    assert [h["step"] for h in got["history"]] == [h["step"] for h in ref["history"]]
    for mine, theirs in zip(got["history"], ref["history"]):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4) and mine["lr"] == theirs["lr"]
    expected = [f"ckpt-{s:06d}" for s in range(EVERY, STEPS + 1, EVERY)]
    assert sorted(p.name for p in b.iterdir() if p.name.startswith("ckpt-")) == expected
    assert sorted(p.name for p in a.iterdir() if p.name.startswith("ckpt-")) == expected
    assert sorted(p.name for p in (b / "export").iterdir()) == [f"{name}.safetensors" for name in expected]
    assert not list(b.glob(".*tmp"))

    # The frozen evaluator reads their exports (full weights, gathered by rank 0) in one process.
    subprocess.run([sys.executable, "evaluate.py", "--checkpoints", str(b), "--recipe", str(recipe), "--out",
                    str(b / "eval.json")], cwd=SUBSTRATE, env=clean_env(), check=True, capture_output=True)
    scores = json.loads((b / "eval.json").read_text())
    assert [c["step"] for c in scores["checkpoints"]] == list(range(EVERY, STEPS + 1, EVERY))


@pytest.mark.slow
def test_dist_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    """In process: save after a few AdamW steps, load into a fresh model and optimizer, same tensors; the
    export of the same model loads into a fresh one as the evaluator loads it."""
    import torch

    sys.path.insert(0, str(SUBSTRATE))
    import checkpoint
    import model as substrate_model
    import safe_weights

    substrate_model.init_parallel(seed=0)
    cfg = {"hidden": 32, "layers": 1, "heads": 4, "seq_len": 16}

    def fresh():
        net = substrate_model.build_model(cfg)
        return net, torch.optim.AdamW(net.parameters(), lr=1e-2)

    net, opt = fresh()
    ids = torch.randint(0, 30, (4, 17))
    for _ in range(3):
        opt.zero_grad()
        substrate_model.forward(net, ids[:, :-1], labels=ids[:, 1:]).mean().backward()
        opt.step()
    path = checkpoint.save(tmp_path, 3, net, opt, {"step": 3, "model_config": cfg}, "dist")
    assert path == tmp_path / "ckpt-000003" and checkpoint.paths(tmp_path) == [path]
    net2, opt2 = fresh()
    assert checkpoint.load(path, net2, opt2) == {"step": 3, "model_config": cfg}
    for (name, p), p2 in zip(net.named_parameters(), net2.parameters()):
        assert torch.equal(p, p2), name
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key]), (name, key)
    exported = safe_weights.write(tmp_path, 3, safe_weights.full_state(net))
    assert exported == tmp_path / "export" / "ckpt-000003.safetensors" and checkpoint.paths(tmp_path) == [path]
    net3, _ = fresh()
    safe_weights.load_into(net3, exported.read_bytes(), exported)
    for (name, p), p3 in zip(net.named_parameters(), net3.parameters()):
        assert torch.equal(p, p3), name
    with pytest.raises(ValueError, match=r"checkpoints.format: expected one of \('torch', 'dist'\) \(got 'npz'\)"):
        checkpoint.fmt_of({"checkpoints": {"format": "npz"}})
