"""The tiny GPT in megatron-core, with the layer spec layers.py picks (local on CPU, TE on CUDA).

megatron-core assumes CUDA in a few places; the accommodations below are the measured ones
(see the platform facts): CPU initialisation, the RNG tracker without CUDA seeding, a CPU
global memory buffer for attention, learned absolute positions instead of RoPE, and an explicit
causal mask. Checkpoints (checkpoint.py) carry the model config so the evaluator can rebuild
the model without the recipe.
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
import layers  # noqa: E402
from tokenizer import EOS, PAD, VOCAB_SIZE  # noqa: E402


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


def init_parallel(seed: int, tp: int = 1) -> distributed.Launch:
    """The process group (torchrun, SLURM or one process) and megatron's TP x DP parallel state."""
    torch.set_num_threads(int(os.environ.get("SUBSTRATE_THREADS", "1")))
    launch = distributed.init(tp)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        parallel_state._GLOBAL_MEMORY_BUFFER = _CPUMemoryBuffer()
        tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    return launch


def build_model(model_cfg: dict) -> GPTModel:
    choice = layers.choose(model_cfg)
    config = TransformerConfig(
        **choice.config_kwargs(),
        num_layers=int(model_cfg["layers"]),
        hidden_size=int(model_cfg["hidden"]),
        num_attention_heads=int(model_cfg["heads"]),
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return GPTModel(
        config,
        choice.spec(),
        vocab_size=VOCAB_SIZE,
        max_sequence_length=int(model_cfg["seq_len"]),
        position_embedding_type="learned_absolute",
    )


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """megatron's boolean mask: True where attention is NOT allowed."""
    return torch.triu(torch.ones(length, length, dtype=torch.bool, device=device), 1)[None, None]


def forward(model: GPTModel, ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device).unsqueeze(0).expand_as(ids)
    return model(ids, positions, causal_mask(length, ids.device), labels=labels)


def load_for_eval(path: Path) -> tuple[GPTModel, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


@torch.no_grad()
def greedy_generate(model: GPTModel, prompts: list[list[int]], max_new: int, seq_len: int) -> list[list[int]]:
    """Greedy continuation of each prompt until EOS or `max_new` tokens (batched, right-padded)."""
    batch = len(prompts)
    width = min(seq_len, max(len(p) for p in prompts) + max_new)
    ids = torch.full((batch, width), PAD, dtype=torch.long)
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
            done[i] = token == EOS
    return out
