"""Generation engines for the evaluator: the same greedy answers from megatron, transformers or vLLM.

Every engine takes prompts as token ids and returns the generated token ids (greedy, at most
`max_new` tokens and never past the model's `seq_len`, stopping at the tokenizer's end of sequence);
the evaluator decodes and scores them itself, so the scoring is identical whichever engine ran.

- `megatron`: the trained megatron-core model itself (batched, no KV cache): any architecture,
  the default for the tiny GPT and for a mixture of experts no HF architecture has (hf_checkpoint.hf_family).
- `transformers`: the model exported to an HF directory, `generate` with a KV cache on CPU:
  the default for llama models without a GPU.
- `vllm`: the exported directory in vLLM's offline engine (batched, greedy, token ids in and
  out, bf16): the default for llama models on a GPU when vLLM is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from pathlib import Path

import torch

import hf_checkpoint
import tokenizer
from model import export_model, greedy_generate, resolve_config

ENGINES = ("auto", "megatron", "transformers", "vllm")


def choose(name: str, model_cfg: dict) -> str:
    """The engine `auto` stands for: vLLM on a GPU, transformers on CPU, megatron for the tiny GPT."""
    if name not in ENGINES:
        raise ValueError(f"evaluate --engine: expected one of {ENGINES} (got {name!r})")
    cfg = resolve_config(model_cfg)
    arch = cfg["arch"]
    if name != "auto":
        if name != "megatron" and arch != "llama":
            raise ValueError(f"evaluate --engine {name}: needs a llama model (model.arch is {arch!r}); use megatron")
        return name
    if arch != "llama" or not _has_hf_family(cfg):
        return "megatron"
    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"


def _has_hf_family(cfg: dict) -> bool:
    try:
        hf_checkpoint.hf_family(cfg)
    except ValueError:
        return False
    return True


def _caps(prompts: list[list[int]], max_new: int, seq_len: int) -> list[int]:
    return [max(0, min(max_new, seq_len - len(p))) for p in prompts]


def _until_eos(ids: list[int], cap: int, eos: int) -> list[int]:
    ids = list(ids)[:cap]
    return ids[: ids.index(eos) + 1] if eos in ids else ids


class MegatronEngine:
    def __init__(self, model, seq_len: int):
        self.model, self.seq_len = model, seq_len

    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        outs = greedy_generate(self.model, prompts, max_new, self.seq_len)
        eos = tokenizer.active().eos
        return [_until_eos(o, cap, eos) for o, cap in zip(outs, _caps(prompts, max_new, self.seq_len))]


class TransformersEngine:
    """Batched greedy `generate` on an HF directory (left-padded, with the attention mask)."""

    def __init__(self, hf_dir: Path, seq_len: int):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.seq_len = seq_len

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        tok = tokenizer.active()
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                                  eos_token_id=tok.eos, pad_token_id=tok.pad)
        caps = _caps(prompts, max_new, self.seq_len)
        return [_until_eos(row[width:].tolist(), cap, tok.eos) for row, cap in zip(out, caps)]


class VLLMEngine:
    """vLLM's offline engine on an HF directory: token ids in and out (no tokenizer needed), greedy."""

    def __init__(self, hf_dir: Path, seq_len: int):
        from vllm import LLM

        self.seq_len = seq_len
        self.llm = LLM(model=str(hf_dir), skip_tokenizer_init=True, max_model_len=seq_len, seed=0, dtype="bfloat16",
                       gpu_memory_utilization=0.5)

    def generate(self, prompts: list[list[int]], max_new: int) -> list[list[int]]:
        from vllm import SamplingParams, TokensPrompt

        eos = tokenizer.active().eos
        caps = _caps(prompts, max_new, self.seq_len)
        todo = [i for i, cap in enumerate(caps) if cap > 0]  # a prompt that fills seq_len gets no answer
        params = [SamplingParams(temperature=0.0, max_tokens=caps[i], stop_token_ids=[eos], detokenize=False)
                  for i in todo]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in todo], params, use_tqdm=False)
        answers: list[list[int]] = [[] for _ in prompts]
        for i, o in zip(todo, outs):
            answers[i] = _until_eos(o.outputs[0].token_ids, caps[i], eos)
        return answers


@contextlib.contextmanager
def open_engine(name: str, model, model_cfg: dict):
    """The engine for `model` (built from the recipe's `model_cfg`, weights loaded); the HF export for
    transformers/vLLM lives in a temporary directory for the engine's lifetime."""
    seq_len = int(model_cfg["seq_len"])
    name = choose(name, model_cfg)
    if name == "megatron":
        yield MegatronEngine(model, seq_len)
        return
    with tempfile.TemporaryDirectory(prefix="hf-export-") as tmp:
        hf_dir = export_model(model, model_cfg, Path(tmp) / "hf")
        yield (TransformersEngine if name == "transformers" else VLLMEngine)(hf_dir, seq_len)
