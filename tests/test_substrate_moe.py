"""Mixture-of-experts llamas in the substrate (substrate/moe.py): the recipe's `model.moe` keys, the spec
choice per machine, the router's aux loss in the gradient, and a tiny MoE trained and scored on CPU.

Everything runs the real megatron-core MoELayer (SequentialMLP experts, allgather dispatcher, top-k router).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

import moe  # noqa: E402
from layers import Hardware, choose  # noqa: E402
from model import build_model, checked_model_config, forward, init_parallel, resolve_config  # noqa: E402

H100 = Hardware(cuda=True, capability=(9, 0), device_name="NVIDIA H100 80GB HBM3", te_installed=True)
CPU = Hardware(cuda=False, capability=None, device_name="cpu", te_installed=False)
LLAMA = {"arch": "llama", "hidden": 32, "layers": 1, "heads": 4, "seq_len": 64}
EXPERTS = {"experts": 4, "top_k": 2, "ffn_hidden": 32}
TINY_MOE = {"data.train_examples": 1000, "optim.steps": 40, "optim.batch_size": 8, "checkpoints.every": 20,
            "logging.every": 10, "model.arch": "llama", "model.hidden": 32, "model.layers": 1,
            "model.moe": EXPERTS}


def tiny_moe_recipe(path: Path, **overrides) -> Path:
    """The substrate's recipe with TINY_MOE and `overrides` (dotted keys, new ones added) set."""
    recipe = yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text())
    for dotted, value in {**TINY_MOE, **overrides}.items():
        *parents, leaf = dotted.split(".")
        node = recipe
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_defaults_fill_in_and_megatron_gets_them():
    cfg = resolve_config({**LLAMA, "moe": EXPERTS})
    assert cfg["moe"] == {**EXPERTS, "shared_ffn_hidden": 0, "shared_gate": False, "score": "softmax", "norm_top_k": True,
                          "balancing": "aux_loss", "aux_loss_coeff": 0.01, "capacity_factor": None}
    assert resolve_config({**LLAMA, "moe": {"experts": 4, "top_k": 2}})["moe"]["ffn_hidden"] == cfg["ffn_hidden"]
    kwargs = moe.config_kwargs(cfg["moe"], expert_parallel=2)
    assert kwargs["num_moe_experts"] == 4 and kwargs["moe_router_topk"] == 2 and kwargs["moe_ffn_hidden_size"] == 32
    assert kwargs["moe_router_pre_softmax"] is False  # softmax over the k chosen = renormalised top-k
    assert kwargs["moe_aux_loss_coeff"] == 0.01 and kwargs["expert_model_parallel_size"] == 2
    bias = resolve_config({**LLAMA, "moe": {**EXPERTS, "score": "sigmoid", "balancing": "bias"}})["moe"]
    assert bias["bias_update_rate"] == 1e-3 and "aux_loss_coeff" not in bias
    assert moe.config_kwargs(bias, 1)["moe_router_enable_expert_bias"] is True
    assert moe.config_kwargs(bias, 1)["moe_router_load_balancing_type"] == "none"


@pytest.mark.parametrize("section, message", [
    ("eight", r"model.moe: expected a mapping"),
    ({"experts": 4}, r"model.moe.top_k: required with model.moe"),
    ({**EXPERTS, "routers": 2}, r"model.moe.routers: not a recipe key \(expected among experts, top_k"),
    ({**EXPERTS, "experts": 1}, r"model.moe.experts: expected at least 2"),
    ({**EXPERTS, "experts": 4096}, r"model.moe.experts: expected an integer from 1 to 1024 \(got 4096\)"),
    ({**EXPERTS, "top_k": 5}, r"model.moe.top_k: expected at most model.moe.experts \(4\) \(got 5\)"),
    ({**EXPERTS, "top_k": 1.5}, r"model.moe.top_k: expected an integer"),
    ({**EXPERTS, "shared_ffn_hidden": -1}, r"model.moe.shared_ffn_hidden: expected an integer from 0"),
    ({**EXPERTS, "shared_gate": 1}, r"model.moe.shared_gate: expected true or false \(got 1\)"),
    ({**EXPERTS, "shared_gate": True}, r"model.moe.shared_gate: expected false without a shared expert"),
    ({**EXPERTS, "score": "relu"}, r"model.moe.score: expected one of softmax, sigmoid \(got 'relu'\)"),
    ({**EXPERTS, "norm_top_k": "yes"}, r"model.moe.norm_top_k: expected true or false"),
    ({**EXPERTS, "top_k": 1}, r"model.moe.norm_top_k: expected false with top_k 1 and softmax"),
    ({**EXPERTS, "score": "sigmoid", "norm_top_k": False}, r"model.moe.norm_top_k: expected true with sigmoid"),
    ({**EXPERTS, "balancing": "bias"}, r"model.moe.balancing: expected aux_loss or none with softmax"),
    ({**EXPERTS, "balancing": "loss"}, r"model.moe.balancing: expected one of aux_loss, bias, none"),
    ({**EXPERTS, "aux_loss_coeff": -0.1}, r"model.moe.aux_loss_coeff: expected a number from 0 \(got -0.1\)"),
    ({**EXPERTS, "balancing": "none", "aux_loss_coeff": 0.1},
     r"model.moe.aux_loss_coeff: expected nothing unless model.moe.balancing is aux_loss"),
    ({**EXPERTS, "bias_update_rate": 0.01}, r"model.moe.bias_update_rate: expected nothing unless"),
    ({**EXPERTS, "score": "sigmoid", "balancing": "bias", "bias_update_rate": 0},
     r"model.moe.bias_update_rate: expected a number above 0"),
    ({**EXPERTS, "capacity_factor": 0}, r"model.moe.capacity_factor: expected a number above 0 \(got 0\)"),
    ({**EXPERTS, "score": "sigmoid", "balancing": "bias", "capacity_factor": 1.0},
     r"model.moe.capacity_factor: expected null with bias balancing"),
])
def test_bad_moe_keys_are_one_line_errors(tmp_path, section, message):
    with pytest.raises(ValueError, match=r"^recipe " + message) as caught:
        checked_model_config({**LLAMA, "moe": section}, tmp_path)
    assert "\n" not in str(caught.value)


def test_moe_qk_norm_and_qkv_bias_need_a_llama(tmp_path):
    with pytest.raises(ValueError, match=r"recipe model.moe: needs model.arch llama \(got arch 'gpt'\)"):
        checked_model_config({"hidden": 32, "layers": 1, "heads": 4, "seq_len": 64, "moe": EXPERTS}, tmp_path)
    with pytest.raises(ValueError, match=r"recipe model.qk_norm: expected true or false"):
        checked_model_config({**LLAMA, "qk_norm": 1}, tmp_path)
    with pytest.raises(ValueError, match=r"recipe model.qkv_bias: expected true or false"):
        checked_model_config({**LLAMA, "qkv_bias": "yes"}, tmp_path)
    with pytest.raises(ValueError, match=r"recipe model.qkv_bias: needs model.arch llama"):
        checked_model_config({"hidden": 32, "layers": 1, "heads": 4, "seq_len": 64, "qkv_bias": True}, tmp_path)


def test_the_spec_choice_picks_experts_and_dispatcher_per_machine():
    """Local spec on CPU: SequentialMLP behind allgather (no CUDA); TE on a GPU: grouped GEMM behind alltoall."""
    assert choose({}, CPU).moe_kwargs() == {"moe_grouped_gemm": False, "moe_token_dispatcher_type": "allgather"}
    assert choose({}, H100).moe_kwargs() == {"moe_grouped_gemm": True, "moe_token_dispatcher_type": "alltoall"}
    spec = choose({}, CPU).spec(normalization="RMSNorm", num_experts=4)
    assert spec.submodules.mlp.submodules.experts.module.__name__ == "SequentialMLP"


def _router_grads(model, ids, coeff: float, scale: float) -> torch.Tensor:
    for router in moe.routers(model):
        router.config.moe_aux_loss_coeff = coeff
    moe.set_aux_loss_scale(int(1 / scale))
    model.zero_grad()
    forward(model, ids[:, :-1], labels=ids[:, 1:]).mean().backward()
    return torch.cat([r.weight.grad.flatten().clone() for r in moe.routers(model)])


def test_the_aux_loss_reaches_the_router_scaled_per_data_parallel_rank():
    """The router's load-balancing loss adds its gradient to the LM loss's; under data parallelism each
    rank's share is 1/dp, so the ranks' summed gradients carry the mean of their aux losses."""
    init_parallel(seed=0)
    model = build_model({**LLAMA, "layers": 2, "moe": EXPERTS}).train()
    ids = torch.randint(0, 44, (4, 17), generator=torch.Generator().manual_seed(0))
    plain = _router_grads(model, ids, 0.0, 1.0)
    full, half = _router_grads(model, ids, 0.1, 1.0) - plain, _router_grads(model, ids, 0.1, 0.5) - plain
    assert full.abs().max() > 1e-4
    torch.testing.assert_close(half, full / 2, rtol=1e-4, atol=1e-7)
    moe.set_aux_loss_scale(1)


def test_expert_bias_builds_on_cpu_and_moves_towards_balance():
    """Aux-loss-free balancing: megatron allocates the bias on the CUDA device (answered with the CPU here)
    and the trainer moves it after each step, down for an expert above the mean load."""
    init_parallel(seed=0)
    model = build_model({**LLAMA, "moe": {**EXPERTS, "score": "sigmoid", "balancing": "bias"}}).train()
    (router,) = moe.routers(model)
    ids = torch.randint(0, 44, (4, 17), generator=torch.Generator().manual_seed(0))
    forward(model, ids[:, :-1], labels=ids[:, 1:]).mean().backward()
    load = router.local_tokens_per_expert.clone()
    moe.update_expert_bias(model)
    assert torch.equal(torch.sign(router.expert_bias), torch.sign(load.mean() - load) * 1.0)
    assert router.local_tokens_per_expert.sum() == 0 and torch.equal(router.load.float(), load)


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=SUBSTRATE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_tiny_moe_trains_on_cpu_and_is_scored_from_its_export(tmp_path):
    """train.py trains a Mixtral-shaped MoE (aux loss logged, per-expert load in the summary); the evaluator
    scores its pickle-free exports, through transformers (a Mixtral export) and megatron alike."""
    recipe, out = tiny_moe_recipe(tmp_path / "recipe.yaml"), tmp_path / "out"
    _run("train.py", "--recipe", str(recipe), "--out", str(out))
    summary = json.loads((out / "train_summary.json").read_text())
    history = summary["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    assert all(0.5 < h["aux_loss"] < 4 for h in history)  # 1 at perfect balance (megatron's normalisation)
    (load,) = summary["expert_load"]  # the last logging interval's, every expert fed (none under 1/10 of 1/4)
    assert len(load) == 4 and sum(load) == pytest.approx(1, abs=1e-3) and min(load) > 0.025
    scores = {}
    for engine in ("transformers", "megatron"):
        _run("evaluate.py", "--checkpoints", str(out), "--recipe", str(recipe), "--engine", engine,
             "--out", str(tmp_path / f"{engine}.json"))
        scores[engine] = json.loads((tmp_path / f"{engine}.json").read_text())["checkpoints"]
    assert [c["step"] for c in scores["megatron"]] == [20, 40]
    assert scores["transformers"] == scores["megatron"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel, line", [
    ({"parallel.expert": 2}, "recipe checkpoints.format: expert parallelism (parallel.expert 2) needs dist (got 'torch')"),
    ({"parallel.tensor": 2, "checkpoints.format": "dist"},
     "recipe parallel.tensor: a mixture of experts trains with 1 (got 2): megatron trains its MoE under tensor "
     "parallelism with sequence parallelism only, which this trainer does not run (an MoE builds, imports and "
     "exports under tensor parallelism)"),
])
def test_a_parallel_layout_the_trainer_cannot_run_is_one_line(tmp_path, parallel, line):
    recipe = tiny_moe_recipe(tmp_path / "recipe.yaml", **parallel)
    proc = subprocess.run([sys.executable, "train.py", "--recipe", str(recipe), "--out", str(tmp_path / "out")],
                          cwd=SUBSTRATE, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"train.py: {recipe}: {line}"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_demo_sized_moe_campaign_runs_a_round(tmp_path):
    """A round end to end on the local backend with a tiny MoE standing recipe: the anchor and a scripted
    worker on the router axis (its operator edits model.moe) are trained, scored and collected."""
    from tiny_campaign import run_daemon, status, tiny_recipe, write_campaign

    campaign = write_campaign(tmp_path, rounds=1, workers=1)
    policy = yaml.safe_load((tmp_path / "initial.yaml").read_text())
    recipe = tiny_recipe()
    recipe["model"].update(arch="llama", moe=EXPERTS)
    policy.update(standing_recipe=recipe, active_axes=["router"])
    (tmp_path / "initial.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    done = run_daemon(campaign)
    assert done.returncode == 0, done.stderr[-3000:]
    (rnd, *_) = status(campaign)["rounds"]
    assert rnd["complete"] and [c["status"] for c in rnd["candidates"]] == ["evaluated", "evaluated"]
    assert all(c["dev"] is not None and c["leaderboard"] is not None for c in rnd["candidates"])
    worker = json.loads(next((tmp_path / "state").glob("rounds/r000/cand-01/manifest.json")).read_text())
    assert worker["axis"] == "router" and worker["mutation"].startswith("model.moe.")
    (load,) = worker["measured"]["expert_load"]  # the trainer's per-expert load, read into the manifest
    assert len(load) == 4 and sum(load) == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
def test_aux_loss_free_balancing_resumes_exactly_from_a_distributed_checkpoint(tmp_path):
    """The routers' expert bias is model state: a run resumed from its dist checkpoint of step 10 logs the
    uninterrupted run's losses and ends with its bias."""
    import shutil

    from safetensors.torch import load_file

    router = {**EXPERTS, "score": "sigmoid", "balancing": "bias", "bias_update_rate": 0.01}
    recipe = tiny_moe_recipe(tmp_path / "recipe.yaml", **{"model.moe": router, "optim.steps": 20,
                                                          "checkpoints.every": 10, "checkpoints.format": "dist",
                                                          "logging.every": 5})
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _run("train.py", "--recipe", str(recipe), "--out", str(whole))
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "ckpt-000020")
    for name in ("export/ckpt-000020.safetensors", "train_summary.json"):
        (resumed / name).unlink()
    _run("train.py", "--recipe", str(recipe), "--out", str(resumed))
    history = [json.loads((d / "train_summary.json").read_text())["history"] for d in (whole, resumed)]
    assert [h["loss"] for h in history[1]] == pytest.approx([h["loss"] for h in history[0]], rel=1e-6)
    bias = [load_file(d / "export/ckpt-000020.safetensors")["decoder.layers.0.mlp.router.expert_bias"]
            for d in (whole, resumed)]
    assert bias[0].abs().sum() > 0 and torch.equal(bias[0], bias[1])
