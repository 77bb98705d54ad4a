"""The substrate's models in megatron-core: the tiny GPT (default) and the Llama family.

`model.arch: gpt` (default) is the tiny GPT: LayerNorm, GELU, learned absolute positions, the
character tokenizer. `model.arch: llama` is a Llama-family model: RMSNorm, SwiGLU, RoPE, grouped
query attention, tied or untied embeddings, optionally RMSNorm on queries and keys (`qk_norm`, as
Qwen3), biases on the query, key and value projections (`qkv_bias`, as Qwen2) and a mixture of experts in
place of every MLP (`model.moe`, see moe.py: Mixtral, Qwen3-MoE, Qwen2-MoE).
`model.init_from` starts from a pretrained Hugging Face Llama, Mixtral, Qwen3-MoE or Qwen2-MoE checkpoint (see
hf_checkpoint.py): the architecture and the tokenizer come from it and its weights are imported,
sharded for tensor (or expert) parallelism, when the model is built.

megatron-core assumes CUDA in a few places; the accommodations below are the measured ones
(see the platform facts): CPU initialisation, the RNG tracker without CUDA seeding, a CPU
global memory buffer for attention, RoPE frequencies kept on the CPU, and an explicit causal mask.
Under expert parallelism on CPU, `torch.cuda.current_device()` answers the CPU (the token dispatcher's
collectives allocate there). The layer spec comes from layers.py (local on CPU, Transformer Engine on CUDA). The evaluator
builds the model from the recipe (`checked_model_config` first), never from a checkpoint.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")

from megatron.core import parallel_state, tensor_parallel  # noqa: E402
from megatron.core.models.gpt import GPTModel  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

import distributed  # noqa: E402
import hf_checkpoint  # noqa: E402
import layers  # noqa: E402
import moe  # noqa: E402
import tokenizer  # noqa: E402
from tokenizer import VOCAB_SIZE  # noqa: E402

ARCHS = ("gpt", "llama")
MODEL_KEYS = ("arch", "hidden", "layers", "heads", "seq_len", "precision", "fp8_recipe", "kv_heads", "head_dim",
              "ffn_hidden", "norm_eps", "rope_theta", "tie_embeddings", "vocab", "init_from", "qk_norm",
              "qkv_bias", "moe")  # the recipe contract's
# Where an absolute model.init_from may point: directories the operator lists (os.pathsep-separated), e.g. a
# shared model store no candidate can write. The environment is the operator's; a recipe cannot set it.
MODEL_ROOTS_ENV = "HPC_AEVO_MODEL_ROOTS"
# The largest sizes a recipe (or its init_from config.json) may ask for: the evaluator allocates what it asks.
MODEL_LIMITS = {"hidden": 8192, "layers": 128, "heads": 128, "kv_heads": 128, "head_dim": 512, "ffn_hidden": 32768,
                "seq_len": 32768, "vocab": 262144}


class _CPUMemoryBuffer:
    """Drop-in for megatron's GlobalMemoryBuffer, which allocates on the current CUDA device."""

    def __init__(self):
        self.buffer: dict = {}

    def get_tensor(self, shape, dtype, name, mem_alloc_context=None):
        n = math.prod(shape)
        buf = self.buffer.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self.buffer[(name, dtype)] = torch.empty(n, dtype=dtype)
        return buf[:n].view(*shape)


def init_parallel(seed: int, tp: int = 1, ep: int = 1) -> distributed.Launch:
    """The process group (torchrun, SLURM or one process) and megatron's TP x DP (x EP) parallel state."""
    torch.set_num_threads(int(os.environ.get("SUBSTRATE_THREADS", "1")))
    launch = distributed.init(tp, ep)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        parallel_state._GLOBAL_MEMORY_BUFFER = _CPUMemoryBuffer()
        tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
        model_parallel = (parallel_state.get_tensor_model_parallel_world_size()
                          * parallel_state.get_expert_model_parallel_world_size())
        if model_parallel > 1:
            distributed.cpu_is_the_current_device()  # the token dispatcher's gathers over TP x EP ranks
    return launch


def resolve_config(model_cfg: dict) -> dict:
    """The recipe's model section completed: the architecture of an `init_from` model (from its
    config.json; the recipe may not contradict it), the defaults of a llama, the tokenizer and vocab."""
    cfg = dict(model_cfg)
    arch = cfg.setdefault("arch", "llama" if cfg.get("init_from") else "gpt")
    if arch not in ARCHS:
        raise ValueError(f"recipe model.arch: expected one of {ARCHS} (got {arch!r})")
    if cfg.get("init_from"):
        if arch != "llama":
            raise ValueError(f"recipe model.init_from: needs model.arch llama (got {arch!r})")
        cfg["hf_dir"] = str(hf_checkpoint.resolve_init_from(str(cfg["init_from"])))
        pretrained = hf_checkpoint.hf_to_model_config(hf_checkpoint.read_hf_config(cfg["hf_dir"]))
        for key, value in pretrained.items():
            if key != "moe" and key in model_cfg and model_cfg[key] != value:
                raise ValueError(f"recipe model.{key}: fixed by model.init_from to {value!r} (got {model_cfg[key]!r})")
        pretrained["moe"] = _pretrained_moe(pretrained.get("moe"), model_cfg.get("moe"))
        # A checkpoint without tokenizer files (a random test model) uses the character tokenizer.
        has_tokenizer = any((Path(cfg["hf_dir"]) / name).is_file() for name in hf_checkpoint.TOKENIZER_FILES[:2])
        cfg.update(pretrained, tokenizer="hf" if has_tokenizer else "char")
        if cfg["moe"] is None:
            del cfg["moe"]
        else:
            cfg["moe"] = moe.checked(cfg["moe"], cfg["ffn_hidden"])
        if not has_tokenizer and cfg["vocab"] < VOCAB_SIZE:
            raise ValueError(f"recipe model.init_from: {cfg['hf_dir']} has no tokenizer files and a vocabulary "
                             f"of {cfg['vocab']}, smaller than the character tokenizer's {VOCAB_SIZE}")
        return cfg
    cfg.setdefault("tokenizer", "char")
    cfg.setdefault("vocab", VOCAB_SIZE)
    if arch == "llama":
        hidden, heads = int(cfg["hidden"]), int(cfg["heads"])
        cfg.setdefault("kv_heads", heads)
        cfg.setdefault("head_dim", hidden // heads)
        cfg.setdefault("ffn_hidden", 64 * -(-8 * hidden // (3 * 64)))  # the Llama rule: ~8/3 h, a multiple of 64
        cfg.setdefault("norm_eps", 1e-5)
        cfg.setdefault("rope_theta", 10000.0)
        cfg.setdefault("tie_embeddings", True)
        for key in ("qk_norm", "qkv_bias"):
            if not isinstance(cfg.setdefault(key, False), bool):
                raise ValueError(f"recipe model.{key}: expected true or false (got {cfg[key]!r})")
        if cfg.get("moe") is not None:
            cfg["moe"] = moe.checked(cfg["moe"], int(cfg["ffn_hidden"]))
    else:
        for key in ("moe", "qk_norm", "qkv_bias"):
            if cfg.get(key) not in (None, False):
                raise ValueError(f"recipe model.{key}: needs model.arch llama (got arch {arch!r})")
    return cfg


def _pretrained_moe(pretrained: dict | None, recipe: dict | None) -> dict | None:
    """An `init_from` model's experts with the recipe's router knobs: the architecture's keys are the
    checkpoint's (a recipe may repeat, not change them); top_k, balancing, its coefficient or rate and
    the capacity are the recipe's where it sets them, else the checkpoint's."""
    if recipe is None:
        return pretrained
    if pretrained is None:
        raise ValueError("recipe model.moe: model.init_from is a dense model (no experts); drop model.moe")
    if not isinstance(recipe, dict):
        return recipe  # moe.checked says what is wrong with it
    for key in moe.ARCH_KEYS:
        if key in recipe and recipe[key] != pretrained[key]:
            raise ValueError(f"recipe model.moe.{key}: fixed by model.init_from to {pretrained[key]!r} "
                             f"(got {recipe[key]!r})")
    # the checkpoint's aux-loss coefficient goes with its balancing, which a recipe's own replaces
    return {**{k: v for k, v in pretrained.items() if k != "aux_loss_coeff" or "balancing" not in recipe}, **recipe}


def _model_roots() -> list[Path]:
    return [Path(r).resolve() for r in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if r]


def checked_model_config(model_cfg, base: Path) -> dict:
    """The recipe's model section, checked before anything is built from it: the contract's keys only
    (no tokenizer or config path of its own), every size within MODEL_LIMITS, and an `init_from`
    directory either relative to `base` (the recipe's directory, where the trainer runs) and inside it,
    or absolute under one of the operator's $HPC_AEVO_MODEL_ROOTS. Returns the section with that
    directory made absolute (and its symlinks resolved)."""
    if not isinstance(model_cfg, dict):
        raise ValueError(f"recipe model: expected a mapping (got {type(model_cfg).__name__})")
    unknown = sorted(set(model_cfg) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"recipe model.{unknown[0]}: not a recipe key (expected among {', '.join(MODEL_KEYS)})")
    cfg = dict(model_cfg)
    init_from = str(cfg.get("init_from") or "")
    if init_from and not init_from.startswith("pypi:"):
        given = Path(init_from)
        roots = _model_roots() if given.is_absolute() else [Path(base).resolve()]
        target = (Path(base).absolute() / given).resolve()
        if ".." in given.parts or not any(target.is_relative_to(root) for root in roots):
            raise ValueError(f"recipe model.init_from: expected a directory inside the recipe's directory {base} "
                             f"(relative, no '..', no symlink out), under ${MODEL_ROOTS_ENV} "
                             f"({os.environ.get(MODEL_ROOTS_ENV, 'unset')}) or pypi:<package>/<file>.gguf "
                             f"(got {init_from!r})")
        cfg["init_from"] = str(target)
    resolved = resolve_config(cfg)
    for key, limit in MODEL_LIMITS.items():
        value = resolved.get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= limit):
            raise ValueError(f"recipe model.{key}: expected an integer from 1 to {limit} (got {value!r})")
    return cfg


def use_tokenizer(model_cfg: dict):
    """Activate the tokenizer of this model (the data pipeline and the scorer encode through it)."""
    return tokenizer.use(resolve_config(model_cfg))


def _keep_rope_on_cpu(rope) -> None:
    """megatron's RotaryEmbedding moves its frequencies to CUDA on first use: on CPU, compute the same
    embedding (halves rotated, as HF Llama) without the move."""

    def get_emb(max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = rope.get_freqs_non_repeated(max_seq_len, offset)
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]

    rope.get_emb = get_emb


def build_model(model_cfg: dict, load_pretrained: bool = True) -> GPTModel:
    """The recipe's model; an `init_from` model gets its pretrained weights unless `load_pretrained`
    is False (the evaluator loads a trained checkpoint over it anyway)."""
    cfg = resolve_config(model_cfg)
    choice = layers.choose(cfg)
    experts = cfg.get("moe")
    spec = choice.spec(normalization="RMSNorm" if cfg["arch"] == "llama" else None,
                       num_experts=experts["experts"] if experts else None, qk_layernorm=bool(cfg.get("qk_norm")))
    moe_fields = _moe_config(experts, choice)  # also refuses parallel.expert without experts (any arch)
    common = dict(**choice.config_kwargs(), num_layers=int(cfg["layers"]), hidden_size=int(cfg["hidden"]),
                  num_attention_heads=int(cfg["heads"]), use_cpu_initialization=True,
                  hidden_dropout=0.0, attention_dropout=0.0)
    if cfg["arch"] == "gpt":
        return GPTModel(
            TransformerConfig(**common),
            spec,
            vocab_size=int(cfg["vocab"]),
            max_sequence_length=int(cfg["seq_len"]),
            position_embedding_type="learned_absolute",
        )
    config = TransformerConfig(
        **common, num_query_groups=int(cfg["kv_heads"]), kv_channels=int(cfg["head_dim"]),
        ffn_hidden_size=int(cfg["ffn_hidden"]), normalization="RMSNorm", layernorm_epsilon=float(cfg["norm_eps"]),
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        bias_activation_fusion=False, qk_layernorm=bool(cfg["qk_norm"]), add_qkv_bias=bool(cfg["qkv_bias"]),
        **moe_fields,
    )
    # a fresh MoE's own init stream, drawn before the construction, whose draws depend on the layout (moe.py)
    stream = int(torch.randint(0, 2**62, ())) if experts else None
    with distributed.cuda_answers_cpu():  # a router allocates its expert-bias buffers on the CUDA device
        model = GPTModel(
            config,
            spec,
            vocab_size=hf_checkpoint.padded_vocab(cfg, parallel_state.get_tensor_model_parallel_world_size()),
            max_sequence_length=int(cfg["seq_len"]),
            position_embedding_type="rope",
            rotary_base=float(cfg["rope_theta"]),
            share_embeddings_and_output_weights=bool(cfg["tie_embeddings"]),
        )
    if not torch.cuda.is_available():
        _keep_rope_on_cpu(model.rotary_pos_emb)
    if experts:
        moe.adapt_routers(model, te=choice.backend == "te")
        if not cfg.get("hf_dir"):
            moe.layout_free_init(model, stream)
        moe.mark_expert_params(model, parallel_state.get_expert_model_parallel_world_size())
    if cfg.get("hf_dir") and load_pretrained:
        hf_checkpoint.load_hf_into(model, cfg)
    model.vocab = int(cfg["vocab"])  # logits past the tokenizer's vocabulary are TP padding
    return model


def _moe_config(experts: dict | None, choice: layers.LayerChoice) -> dict:
    """The TransformerConfig fields of the recipe's experts under this process's parallel layout."""
    ep = parallel_state.get_expert_model_parallel_world_size()
    if not experts:
        if ep > 1:
            raise ValueError(f"recipe parallel.expert: {ep} needs a mixture of experts (model.moe)")
        return {}
    if experts["experts"] % ep:
        raise ValueError(f"recipe parallel.expert: {ep} does not divide model.moe.experts ({experts['experts']})")
    return {**choice.moe_kwargs(), **moe.config_kwargs(experts, ep)}


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """megatron's boolean mask: True where attention is NOT allowed."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)[None, None]


def forward(model: GPTModel, ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token losses given labels; else the logits, gathered over tensor-parallel ranks."""
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device).unsqueeze(0).expand_as(ids)
    if labels is not None:
        return model(ids, positions, causal_mask(length, ids.device), labels=labels)
    logits = model(ids, positions, causal_mask(length, ids.device))
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if tp_size > 1:  # megatron's own gather allocates on CUDA
        parts = [torch.empty_like(logits) for _ in range(tp_size)]
        torch.distributed.all_gather(parts, logits.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)
    return logits[..., : getattr(model, "vocab", logits.shape[-1])]


def export_model(model: GPTModel, model_cfg: dict, out: Path) -> Path | None:
    """A llama model as an HF directory (transformers, vLLM), with its tokenizer's special ids; rank 0
    writes it (every tensor-parallel rank must call)."""
    tok = tokenizer.active()
    bos = getattr(getattr(tok, "tok", None), "bos_token_id", None)
    return hf_checkpoint.export_hf(model, resolve_config(model_cfg), out, eos=tok.eos, bos=bos)


@torch.no_grad()
def greedy_generate(model: GPTModel, prompts: list[list[int]], max_new: int, seq_len: int) -> list[list[int]]:
    """Greedy continuation of each prompt until EOS or `max_new` tokens (batched, right-padded)."""
    batch = len(prompts)
    width = min(seq_len, max(len(p) for p in prompts) + max_new)
    eos = tokenizer.active().eos
    ids = torch.full((batch, width), tokenizer.active().pad, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    done = torch.zeros(batch, dtype=torch.bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(max_new):
        active = (~done) & (lengths < width)
        if not active.any():
            break
        logits = forward(model, ids[:, : int(lengths.max())])
        nxt = logits[torch.arange(batch), lengths - 1].argmax(-1)
        for i in torch.nonzero(active).flatten().tolist():
            token = int(nxt[i])
            out[i].append(token)
            ids[i, lengths[i]] = token
            lengths[i] += 1
            done[i] = token == eos
    return out
