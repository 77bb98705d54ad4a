"""Mixture-of-experts llamas: the recipe's `model.moe` section and what megatron-core needs to run it here.

    model:
      arch: llama
      moe: {experts: 8, top_k: 2, ffn_hidden: 256}      # the other keys have defaults (MOE_DEFAULTS)

Every llama MLP becomes megatron-core's `MoELayer`: a top-k router, `experts` SwiGLU experts of width
`ffn_hidden` and, where the architecture has one, a shared expert of width `shared_ffn_hidden` that every
token goes through beside its routed ones, scaled by a sigmoid gate of its own with `shared_gate` (Qwen2-MoE).
Which experts and dispatcher run is the layer spec's choice (layers.py: `SequentialMLP` and the
`allgather` dispatcher on CPU, Transformer Engine grouped GEMM and `alltoall` on CUDA).

The router's knobs are what a campaign mutates, so each is checked here with a one-line error:
`score` (softmax | sigmoid), `norm_top_k` (renormalise the k chosen weights: Mixtral, Qwen3-MoE's
norm_topk_prob), `balancing` (`aux_loss`: the switch load-balancing loss times `aux_loss_coeff`;
`bias`: aux-loss-free balancing, a per-expert routing bias moved by `bias_update_rate` each step
towards the mean load, sigmoid scores only; `none`), `capacity_factor` (tokens beyond
capacity_factor x the even share of an expert are dropped; null: dropless).

Off Transformer Engine megatron's router moves its weight to CUDA in `gating` and calls TE's GEMM, and on
CPU it allocates its expert-bias buffers on the CUDA device at construction: `adapt_routers` and
`distributed.cuda_answers_cpu` answer for both.
The trainer scales the aux loss like the main loss (`set_aux_loss_scale`), updates the expert bias
after each step (`update_expert_bias`) and reports per-expert load per logging interval (`expert_load`).
"""

from __future__ import annotations

import hashlib
import re

import torch

MOE_KEYS = ("experts", "top_k", "ffn_hidden", "shared_ffn_hidden", "shared_gate", "score", "norm_top_k", "balancing",
            "aux_loss_coeff", "bias_update_rate", "capacity_factor")
# Fixed by an `init_from` checkpoint (the weights' shapes and what they were trained to mean); the others
# are the router's knobs a recipe may set over any model, top_k included (the same experts, more or fewer
# per token).
ARCH_KEYS = ("experts", "ffn_hidden", "shared_ffn_hidden", "shared_gate", "score", "norm_top_k")
MOE_LIMITS = {"experts": 1024, "top_k": 64, "ffn_hidden": 32768}
SCORES = ("softmax", "sigmoid")
BALANCING = ("aux_loss", "bias", "none")
MOE_DEFAULTS = {"shared_ffn_hidden": 0, "shared_gate": False, "score": "softmax", "norm_top_k": True,
                "balancing": "aux_loss"}
KNOB_DEFAULTS = {"aux_loss": ("aux_loss_coeff", 0.01), "bias": ("bias_update_rate", 1e-3)}
EXPERT_INDEX = re.compile(r"(\.local_experts\.)(\d+)(\.)|(\.experts\.linear_fc[12]\.weight)(\d+)$")


def _error(key: str, expected: str, got) -> ValueError:
    return ValueError(f"recipe model.moe.{key}: expected {expected} (got {got!r})")


def _positive_number(moe: dict, key: str) -> float:
    value = moe[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _error(key, "a number above 0", value)
    return float(value)


def checked(section, dense_ffn: int) -> dict:
    """The recipe's `model.moe` completed with its defaults, or a one-line error naming the key."""
    if not isinstance(section, dict):
        raise ValueError(f"recipe model.moe: expected a mapping of {', '.join(MOE_KEYS)} "
                         f"(got {type(section).__name__})")
    unknown = sorted(set(section) - set(MOE_KEYS))
    if unknown:
        raise ValueError(f"recipe model.moe.{unknown[0]}: not a recipe key (expected among {', '.join(MOE_KEYS)})")
    moe = {**MOE_DEFAULTS, "ffn_hidden": dense_ffn, **section}
    for key in ("experts", "top_k"):
        if key not in section:
            raise ValueError(f"recipe model.moe.{key}: required with model.moe")
    for key, limit in MOE_LIMITS.items():
        if type(moe[key]) is not int or not 1 <= moe[key] <= limit:
            raise _error(key, f"an integer from 1 to {limit}", moe[key])
    if moe["experts"] < 2:
        raise _error("experts", "at least 2 (one expert is a dense MLP: drop model.moe)", moe["experts"])
    if moe["top_k"] > moe["experts"]:
        raise _error("top_k", f"at most model.moe.experts ({moe['experts']})", moe["top_k"])
    if type(moe["shared_ffn_hidden"]) is not int or not 0 <= moe["shared_ffn_hidden"] <= MOE_LIMITS["ffn_hidden"]:
        raise _error("shared_ffn_hidden", f"an integer from 0 (no shared expert) to {MOE_LIMITS['ffn_hidden']}",
                     moe["shared_ffn_hidden"])
    for key, choices in (("score", SCORES), ("balancing", BALANCING)):
        if moe[key] not in choices:
            raise _error(key, f"one of {', '.join(choices)}", moe[key])
    for key in ("shared_gate", "norm_top_k"):
        if not isinstance(moe[key], bool):
            raise _error(key, "true or false", moe[key])
    if moe["shared_gate"] and not moe["shared_ffn_hidden"]:
        raise _error("shared_gate", "false without a shared expert (model.moe.shared_ffn_hidden 0)", True)
    if moe["score"] == "softmax" and moe["top_k"] == 1 and moe["norm_top_k"]:
        raise _error("norm_top_k", "false with top_k 1 and softmax (one renormalised weight is always 1: the "
                     "router would never learn)", True)
    if moe["score"] == "sigmoid" and moe["top_k"] > 1 and not moe["norm_top_k"]:
        raise _error("norm_top_k", "true with sigmoid scores (megatron renormalises the k sigmoid weights)", False)
    if moe["balancing"] == "bias" and moe["score"] != "sigmoid":
        raise _error("balancing", "aux_loss or none with softmax scores (bias balancing needs score: sigmoid)",
                     "bias")
    for balancing, (knob, default) in KNOB_DEFAULTS.items():
        if moe["balancing"] == balancing:
            value = moe.setdefault(knob, default)
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or not (value >= 0 if balancing == "aux_loss" else value > 0):
                raise _error(knob, "a number from 0" if balancing == "aux_loss" else "a number above 0", value)
        elif knob in section:
            raise _error(knob, f"nothing unless model.moe.balancing is {balancing}", section[knob])
    if moe.get("capacity_factor") is not None:
        _positive_number(moe, "capacity_factor")
        if moe["balancing"] == "bias":
            raise _error("capacity_factor", "null with bias balancing (megatron drops tokens with aux_loss or none)",
                         moe["capacity_factor"])
    moe.setdefault("capacity_factor", None)
    return moe


def config_kwargs(moe: dict, expert_parallel: int) -> dict:
    """megatron-core TransformerConfig fields for a checked `model.moe` (the spec's fields are layers.py's)."""
    return dict(
        num_moe_experts=moe["experts"], moe_router_topk=moe["top_k"], moe_ffn_hidden_size=moe["ffn_hidden"],
        moe_shared_expert_intermediate_size=moe["shared_ffn_hidden"] or None, moe_shared_expert_gate=moe["shared_gate"],
        moe_router_score_function=moe["score"],
        # softmax over the k chosen logits is the renormalised top-k of the full softmax (Mixtral)
        moe_router_pre_softmax=moe["score"] == "softmax" and not moe["norm_top_k"],
        moe_router_load_balancing_type="aux_loss" if moe["balancing"] == "aux_loss" else "none",
        moe_aux_loss_coeff=float(moe.get("aux_loss_coeff", 0.0)),
        moe_router_enable_expert_bias=moe["balancing"] == "bias",
        moe_router_bias_update_rate=float(moe.get("bias_update_rate", 1e-3)),
        moe_expert_capacity_factor=moe["capacity_factor"], moe_router_dtype="fp32",
        expert_model_parallel_size=expert_parallel,
    )


def routers(model) -> list:
    from megatron.core.transformer.moe.router import TopKRouter

    return [m for m in model.modules() if isinstance(m, TopKRouter)]


def adapt_routers(model, te: bool = False) -> None:
    """Count the tokens routed to each expert while training (`expert_load`), and off Transformer Engine
    (`te`: the layer choice's backend) keep each router's gate where it is: megatron's `gating` moves it to
    the CUDA device and calls TE's GEMM; the same product in fp32 (`moe_router_dtype`) is a plain linear."""
    for router in routers(model):
        router.load = torch.zeros(router.config.num_moe_experts, dtype=torch.float64)
        router.unlogged = 0  # training forwards since the aux loss was last read (aux_loss)
        if not te:
            router.gating = _plain_gating(router)

        def routing(logits, padding_mask=None, router=router, routing=router.routing):
            probs, routing_map = routing(logits, padding_mask=padding_mask)
            if router.training:  # counted where the routing is: no device sync per step
                router.load = router.load.to(routing_map.device) + routing_map.sum(dim=0)
                router.unlogged += 1
            return probs, routing_map

        router.routing = routing


def _plain_gating(router):
    def gating(inp):
        bias = None if router.bias is None else router.bias.float()
        return torch.nn.functional.linear(inp.float(), router.weight.float(), bias)

    return gating


def mark_expert_params(model, expert_parallel: int) -> None:
    """Flag routed-expert weights as megatron does (`allreduce = False`): under expert parallelism each rank
    holds its own experts, reduced over the expert-data-parallel group, not the data-parallel one."""
    for name, param in model.named_parameters():
        if ".experts." in name:
            param.allreduce = expert_parallel == 1


def _renumber(key: str, offset: int) -> str:
    """`key` with its expert index shifted by `offset` (a key without one as is)."""
    def shift(match: re.Match) -> str:
        if match.group(1):
            return f"{match.group(1)}{int(match.group(2)) + offset}{match.group(3)}"
        return f"{match.group(4)}{int(match.group(5)) + offset}"

    return EXPERT_INDEX.sub(shift, key)


def expert_index(key: str) -> int | None:
    match = EXPERT_INDEX.search(key)
    return None if match is None else int(match.group(2) or match.group(5))


def global_expert_key(key: str, ep_rank: int, local_experts: int) -> str:
    """A state-dict key of expert-parallel rank `ep_rank`'s local expert j, named by its global index."""
    return _renumber(key, ep_rank * local_experts)


def local_experts(full: dict, ep_rank: int, ep_size: int, experts: int) -> dict:
    """The part of a whole (global-expert) state dict that expert-parallel rank `ep_rank` holds, named by
    its local indices; every non-expert tensor as is."""
    per_rank = experts // ep_size
    first = ep_rank * per_rank
    return {_renumber(key, -first): tensor for key, tensor in full.items()
            if expert_index(key) is None or first <= expert_index(key) < first + per_rank}


def layout_free_init(model, seed: int) -> None:
    """Draw every weight matrix of a freshly built MoE again, each from a random stream of its own keyed by
    `seed` and its global name, with megatron's init method for it: the same model under any
    parallel.expert (megatron draws a rank's experts from that rank's stream, so the layout would change
    the model, and every weight built after them)."""
    from megatron.core import parallel_state

    config, ep = model.config, parallel_state.get_expert_model_parallel_world_size()
    ep_rank, local = parallel_state.get_expert_model_parallel_rank(), config.num_moe_experts // ep
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue  # norms (ones) and the like
            if re.search(r"(linear_proj|linear_fc2)\.weight\d*$", name):
                init = config.output_layer_init_method
            else:
                init = config.embedding_init_method if "word_embeddings" in name else config.init_method
            key = f"{seed}:{global_expert_key(name, ep_rank, local)}"
            torch.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
            init(param)


def set_aux_loss_scale(dp_size: int) -> None:
    """The trainer's loss is the global batch's mean, the ranks' gradients summed: each rank's aux loss
    (over its own tokens) then counts 1/dp, so the sum is the mean of the ranks' aux losses."""
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / dp_size))


def update_expert_bias(model) -> None:
    """Aux-loss-free balancing, after each optimizer step (megatron does it in finalize_model_grads, which
    this trainer does not use): the routing bias moves towards the mean load over all data-parallel ranks."""
    from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

    for router in routers(model):
        if router.expert_bias is not None:
            router.expert_bias.copy_(get_updated_expert_bias(router.local_tokens_per_expert, router.expert_bias,
                                                             router.config.moe_router_bias_update_rate))
            router.local_tokens_per_expert.zero_()


def aux_loss(model) -> float | None:
    """The load-balancing loss (without its coefficient) per training forward and MoE layer since the last
    call, on this rank, or None without one; megatron's tracker, which sums them, is reset."""
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    tracker = get_moe_layer_wise_logging_tracker().get("load_balancing_loss")
    layers = routers(model)
    forwards = max(1, layers[0].unlogged) if layers else 1
    value = float(tracker["values"].float().mean()) / forwards if tracker else None
    clear_aux_losses_tracker()
    for router in layers:
        router.unlogged = 0
    return value


def expert_load(model, sum_over_ranks=None) -> list[list[float]]:
    """Per MoE layer, the share of routed tokens each expert received in training since the last call, over
    the ranks `sum_over_ranks` sums (a tensor in, a list out; default this rank's); the counts start again.
    An even router gives 1/experts each; a collapsed one starves experts (near 0), its busiest taking up
    to 1/top_k (a token goes to top_k different experts)."""
    layers = routers(model)
    counts = torch.stack([router.load.double() for router in layers])
    for router in layers:
        router.load = torch.zeros_like(router.load)
    if sum_over_ranks is not None:
        counts = torch.tensor(sum_over_ranks(counts.flatten()), dtype=torch.float64).view_as(counts)
    return [[round(float(n) / max(float(row.sum()), 1.0), 4) for n in row] for row in counts.cpu()]
