"""Small random Hugging Face Llama, Mixtral, Qwen3-MoE and Qwen2-MoE checkpoints for the import/export tests (and the
TP worker)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

# GQA (4 query heads over 2 key/value groups), SwiGLU, RMSNorm, RoPE with a non-default base; the
# character tokenizer's vocabulary, so the same model trains on the puzzles.
SMALL = dict(vocab_size=44, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=50000.0, max_position_embeddings=64)


# Four experts, two per token, narrower than the dense MLP (Qwen3-MoE keeps intermediate_size for its
# dense layers, which this model has none of).
EXPERTS = dict(num_experts_per_tok=2, router_aux_loss_coef=0.02)
MIXTRAL = dict(num_local_experts=4, **EXPERTS)
QWEN3_MOE = dict(num_experts=4, moe_intermediate_size=48, **EXPERTS)
QWEN2_MOE = dict(shared_expert_intermediate_size=80, **QWEN3_MOE)  # a gated shared expert, q/k/v biases


def random_llama(directory: Path, tied: bool, seed: int = 0, family: str = "llama", **extra) -> Path:
    """A random Llama (or Mixtral, Qwen3-MoE, Qwen2-MoE: `family`, with `extra` config) saved as safetensors;
    norms and biases randomised too, so they are checked, and routers (and the shared expert's gate) scaled up
    so that no token sits near a routing tie."""
    import transformers

    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
                                 "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
                                 "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM")}[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**SMALL, **extra, tie_word_embeddings=tied, eos_token_id=1,
                                                 pad_token_id=0)
    model = getattr(transformers, model_class)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
            elif name.endswith("gate.weight"):
                p.normal_(0, 1.0)
    model.save_pretrained(directory)
    return directory


def add_hf_tokenizer(directory: Path) -> Path:
    """A Hugging Face (fast) tokenizer over the puzzle alphabet, with ids in reverse order of the
    character tokenizer's: a model that trains and scores with it goes through the HF path for real."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokenizer import ALPHABET

    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(reversed(ALPHABET))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>").save_pretrained(directory)
    return directory


def hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits
