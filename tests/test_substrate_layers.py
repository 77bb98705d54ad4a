"""The layer-spec choice: recipe x hardware -> local / TE spec, fp32 / bf16 / FP8, and the refusals.

The choice is a pure function of the recipe and a Hardware record, so the GPU cases are checked
here on CPU by describing the GPU; what runs on this machine is checked with the detected one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

import layers  # noqa: E402
from layers import Hardware, LayerChoice, LayerSpecError, choose  # noqa: E402

CPU = Hardware(cuda=False, capability=None, device_name="cpu", te_installed=False)
H100 = Hardware(cuda=True, capability=(9, 0), device_name="NVIDIA H100 80GB HBM3", te_installed=True)
H100_NO_TE = Hardware(cuda=True, capability=(9, 0), device_name="NVIDIA H100 80GB HBM3", te_installed=False)
A100 = Hardware(cuda=True, capability=(8, 0), device_name="NVIDIA A100-SXM4-80GB", te_installed=True)


def test_cpu_trains_the_local_spec_in_fp32():
    assert choose({}, CPU) == choose({"precision": "auto"}, CPU) == choose({"precision": "fp32"}, CPU)
    assert choose({}, CPU) == LayerChoice("local", "fp32")
    assert choose({}, CPU).config_kwargs() == {}


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_cpu_refuses_reduced_precision(precision):
    with pytest.raises(LayerSpecError, match=rf"model.precision: {precision} needs a CUDA GPU; this machine has none"):
        choose({"precision": precision}, CPU)


def test_cuda_picks_te_bf16_or_fp8_from_the_recipe():
    assert choose({}, H100) == LayerChoice("te", "bf16")
    assert choose({"precision": "fp8"}, H100) == LayerChoice("te", "fp8", "delayed")
    tensorwise = choose({"precision": "fp8", "fp8_recipe": "tensorwise"}, H100)
    assert tensorwise == LayerChoice("te", "fp8", "tensorwise")
    assert tensorwise.config_kwargs()["fp8"] == "hybrid" and tensorwise.config_kwargs()["fp8_recipe"] == "tensorwise"
    delayed = choose({"precision": "fp8"}, H100).config_kwargs()
    assert delayed["fp8_amax_history_len"] == 1024 and delayed["fp8_amax_compute_algo"] == "max"
    # Without TE, bf16 still runs, on megatron's local spec.
    assert choose({}, H100_NO_TE) == LayerChoice("local", "bf16")
    assert choose({}, A100) == LayerChoice("te", "bf16")


def test_fp8_where_it_cannot_run_is_a_clear_error():
    with pytest.raises(LayerSpecError, match="fp8 needs Transformer Engine, which is not installed"):
        choose({"precision": "fp8"}, H100_NO_TE)
    with pytest.raises(LayerSpecError, match="compute capability 8.9.*A100.*sm_80"):
        choose({"precision": "fp8"}, A100)
    with pytest.raises(LayerSpecError, match=r"model.fp8_recipe: expected one of \('delayed', 'tensorwise'\)"):
        choose({"precision": "fp8", "fp8_recipe": "mxfp8"}, H100)
    with pytest.raises(LayerSpecError, match=r"model.precision: expected one of .* \(got 'fp16'\)"):
        choose({"precision": "fp16"}, H100)


def test_precision_kwargs_make_valid_megatron_configs():
    """megatron's own TransformerConfig accepts what each choice passes (checked without TE)."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    for choice in (LayerChoice("local", "fp32"), LayerChoice("te", "bf16"), LayerChoice("te", "fp8", "delayed"),
                   LayerChoice("te", "fp8", "tensorwise")):
        config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, **choice.config_kwargs())
        assert config.params_dtype == (torch.float32 if choice.precision == "fp32" else torch.bfloat16)
        assert config.fp8 == ("hybrid" if choice.precision == "fp8" else None)


@pytest.mark.slow
def test_this_machine_trains_on_cpu_without_importing_te(tmp_path):
    """The real trainer on the detected hardware: local spec, and no transformer_engine module loaded;
    an FP8 recipe stops at once with one line naming the recipe file and the key."""
    assert Hardware.detect() == CPU
    probe = ("import sys, layers, model; model.init_parallel(0); m = model.build_model({'hidden': 32, 'layers': 1, "
             "'heads': 4, 'seq_len': 16}); print(layers.choose({}).backend, 'transformer_engine' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=SUBSTRATE, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["local", "False"]
    recipe = yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text())
    recipe["model"]["precision"] = "fp8"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = subprocess.run([sys.executable, "train.py", "--recipe", str(path), "--out", str(tmp_path / "ckpt")],
                         cwd=SUBSTRATE, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"train.py: {path}: recipe model.precision: fp8 needs a CUDA GPU; this machine has none "
        "(the CPU path trains the local spec in fp32: use auto or fp32)")
    assert not (tmp_path / "ckpt" / "train_summary.json").exists()
    assert layers.FP8_MIN_CAPABILITY == (8, 9)
