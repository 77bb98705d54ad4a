"""Which megatron layer spec and precision a model trains with: chosen by the recipe and the hardware.

- CPU: megatron-core's local spec in fp32 (what CI and the demo campaign run).
- CUDA with Transformer Engine: the TE spec in bf16, or FP8 (`fp8: hybrid`, E4M3 forward / E5M2
  backward) with the recipe's scaling, `delayed` or `tensorwise`. megatron's TransformerBlock
  enters TE's FP8 context itself once the config carries fp8 and fp8_recipe.
- CUDA without TE: the local spec in bf16 (slow, unfused attention; FP8 is refused).

A mixture-of-experts model (moe.py) follows the same choice: the local spec runs its experts one after
another (`SequentialMLP`) behind the `allgather` token dispatcher, which needs no CUDA; the TE spec
runs them as one grouped GEMM behind the `alltoall` dispatcher (it creates a CUDA stream).

Recipe keys: `model.precision` (auto | fp32 | bf16 | fp8; auto = bf16 on CUDA, fp32 on CPU) and
`model.fp8_recipe` (delayed | tensorwise). FP8 asked for where it cannot run is a one-line error
that names the key and what is missing. Transformer Engine is never imported on a CPU machine:
with TE installed there it raises at import (and breaks `import megatron.core`), so this module
only looks for it with importlib's finder, and imports the TE spec only on the CUDA path.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp8")
FP8_RECIPES = ("delayed", "tensorwise")
FP8_MIN_CAPABILITY = (8, 9)  # TE's FP8 GEMMs: Ada (sm_89) and Hopper (sm_90) onwards


class LayerSpecError(ValueError):
    """The recipe asks for a precision or spec this machine cannot run."""


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    capability: tuple[int, int] | None  # (major, minor) of the current CUDA device
    device_name: str
    te_installed: bool

    @classmethod
    def detect(cls) -> "Hardware":
        if not torch.cuda.is_available():
            return cls(False, None, "cpu", False)  # TE is not even looked for on CPU
        return cls(True, tuple(torch.cuda.get_device_capability()), torch.cuda.get_device_name(),
                   importlib.util.find_spec("transformer_engine") is not None)


@dataclass(frozen=True)
class LayerChoice:
    backend: str  # "local" | "te"
    precision: str  # "fp32" | "bf16" | "fp8"
    fp8_recipe: str | None = None

    def config_kwargs(self) -> dict:
        """TransformerConfig fields for this precision (parameters in bf16 for bf16 and FP8)."""
        if self.precision == "fp32":
            return {}
        kwargs = {"bf16": True, "params_dtype": torch.bfloat16}
        if self.precision == "fp8":
            kwargs.update(fp8="hybrid", fp8_recipe=self.fp8_recipe)
            if self.fp8_recipe == "delayed":  # megatron's recommended amax history for delayed scaling
                kwargs.update(fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
        return kwargs

    def spec(self, normalization: str | None = None, num_experts: int | None = None, qk_layernorm: bool = False):
        """The layer spec module (TE imported here, on the CUDA path only); `num_experts` makes every
        MLP a mixture of experts."""
        moe = dict(num_experts=num_experts, moe_grouped_gemm=self.backend == "te" and bool(num_experts),
                   qk_layernorm=qk_layernorm)
        if self.backend == "te":
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec(**moe)  # TE's fused norms take the config's normalization
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        return get_gpt_layer_local_spec(normalization=normalization, **moe)

    def moe_kwargs(self) -> dict:
        """TransformerConfig fields of a mixture of experts that follow the spec: experts and dispatcher."""
        te = self.backend == "te"
        return {"moe_grouped_gemm": te, "moe_token_dispatcher_type": "alltoall" if te else "allgather"}

    def describe(self) -> dict:
        return {"layer_spec": self.backend, "precision": self.precision, "fp8_recipe": self.fp8_recipe}


def choose(model_cfg: dict, hardware: Hardware | None = None) -> LayerChoice:
    hw = hardware or Hardware.detect()
    precision = str(model_cfg.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise LayerSpecError(f"recipe model.precision: expected one of {PRECISIONS} (got {precision!r})")
    fp8_recipe = str(model_cfg.get("fp8_recipe", "delayed"))
    if fp8_recipe not in FP8_RECIPES:
        raise LayerSpecError(f"recipe model.fp8_recipe: expected one of {FP8_RECIPES} (got {fp8_recipe!r})")
    if precision == "auto":
        precision = "bf16" if hw.cuda else "fp32"
    if not hw.cuda:
        if precision != "fp32":
            raise LayerSpecError(f"recipe model.precision: {precision} needs a CUDA GPU; this machine has none "
                                 "(the CPU path trains the local spec in fp32: use auto or fp32)")
        return LayerChoice("local", "fp32")
    if precision == "fp8":
        if not hw.te_installed:
            raise LayerSpecError(f"recipe model.precision: fp8 needs Transformer Engine, which is not installed "
                                 f"on this machine ({hw.device_name}); install the 'gpu' extra or use bf16")
        if hw.capability < FP8_MIN_CAPABILITY:
            raise LayerSpecError(f"recipe model.precision: fp8 needs a GPU of compute capability 8.9+ (Ada, Hopper); "
                                 f"{hw.device_name} is sm_{hw.capability[0]}{hw.capability[1]}: use bf16")
        return LayerChoice("te", "fp8", fp8_recipe)
    return LayerChoice("te" if hw.te_installed else "local", precision)
