"""What a hostile training job can leave for the evaluator, fed to the real evaluate.py (cwd=substrate).

A tiny model is trained once; each test then works on a copy of its checkpoints directory in which
every trainer format carries a code-running pickle (a `.pt`, a distributed checkpoint's `.metadata`
and `common.pt`) that would create a marker file if unpickled. The evaluator reads only
`export/ckpt-<step>.safetensors`, builds the model and tokenizer from the recipe, and scores the bytes
it hashed: payloads are never run, a swapped, linked, malformed or mis-sized export is refused in one
line, and a file named for another step is scored for its content under its own hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from test_job_confinement import Payload

from hpc_aevo.tools.calibrate import apply_overrides

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
STEPS, EVERY = 24, 12
TINY = {"data.train_examples": 400, "model.hidden": 32, "model.layers": 1, "optim.steps": STEPS,
        "optim.batch_size": 8, "optim.warmup_steps": 4, "checkpoints.every": EVERY}

# Every test here shares the module's trained model: one pytest-xdist worker trains it once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_checkpoint_payloads")]


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", *map(str, args)], cwd=SUBSTRATE, capture_output=True,
                          text=True, timeout=600)


def refused(proc: subprocess.CompletedProcess) -> str:
    """The one line a refusal ends with (megatron's import warnings may precede it)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return last


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("payloads")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()), TINY)))
    out = root / "checkpoints"
    proc = subprocess.run([sys.executable, "train.py", "--recipe", str(recipe), "--out", str(out)], cwd=SUBSTRATE,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = root / "split.jsonl"
    split.write_text("".join(json.dumps({"domain": "bits" if i % 2 else "base", "prompt": f"bin {i}>",
                                         "answer": format(i, "b")}) + "\n" for i in range(8)))
    done = evaluate("--checkpoints", out, "--recipe", recipe, "--out", root / "eval.json")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"recipe": recipe, "out": out, "split": split, "eval": json.loads((root / "eval.json").read_text())}


@pytest.fixture
def hostile(trained, tmp_path) -> tuple[Path, Path]:
    """(a copy of the checkpoints directory with a payload in every trainer format, the payload's marker)."""
    marker, copy = tmp_path / "payload-ran", tmp_path / "checkpoints"
    shutil.copytree(trained["out"], copy)
    torch.save({"step": STEPS, "model": {}, "payload": Payload(marker)}, copy / f"ckpt-{STEPS:06d}.pt")
    dist = copy / f"ckpt-{EVERY:06d}"
    dist.mkdir()
    (dist / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"trainer": {"model_config": {}}, "payload": Payload(marker)}, dist / "common.pt")
    yield copy, marker
    assert not marker.exists(), "a payload ran"


def score_one(trained, checkpoint: Path, digest: str, tmp_path: Path, recipe: Path | None = None):
    return evaluate("--checkpoint", checkpoint, "--sha256", digest, "--recipe", recipe or trained["recipe"],
                    "--split-file", trained["split"], "--out", tmp_path / "score.json")


def test_pickles_in_the_trainer_formats_are_never_read(trained, hostile, tmp_path):
    """(a) a dist checkpoint whose .metadata and common.pt are payloads, (b) a payload .pt: the evaluator
    scores the exports as if they were not there."""
    copy, _ = hostile
    done = evaluate("--checkpoints", copy, "--recipe", trained["recipe"], "--out", tmp_path / "eval.json")
    assert done.returncode == 0, done.stderr[-3000:]
    body = json.loads((tmp_path / "eval.json").read_text())
    assert body["checkpoints"] == trained["eval"]["checkpoints"]
    assert body["selected_checkpoint"] == trained["eval"]["selected_checkpoint"]
    selected = body["selected_checkpoint"]
    assert (body["version"], selected["step"]) == (2, body["selected_step"])
    assert selected["path"] == f"export/ckpt-{selected['step']:06d}.safetensors"
    assert selected["sha256"] == sha256(copy / selected["path"])


@pytest.fixture(scope="module")
def evaluator():
    """The evaluate module itself, in this process: each refusal below is its code path without an
    evaluator start-up (~8 s each); one case per kind still goes through the command line."""
    sys.path.insert(0, str(SUBSTRATE))
    import evaluate
    from model import init_parallel

    init_parallel(seed=0)
    return evaluate


def test_an_export_is_scored_for_its_content_and_refused_under_another_hash(trained, hostile, tmp_path, evaluator):
    """(c) the selected export replaced by the other export's bytes: eval.json's hash refuses it; under its
    own hash it scores as the other does (the name gives the step, the bytes the score); garbage is refused."""
    copy, _ = hostile
    selected = trained["eval"]["selected_checkpoint"]
    target = copy / selected["path"]
    other = next(p for p in (copy / "export").iterdir() if p != target)
    shutil.copy(other, target)
    line = refused(score_one(trained, target, selected["sha256"], tmp_path))
    assert line == f"evaluate: {target}: sha256 is {sha256(other)}, expected {selected['sha256']} (--sha256)"

    def split_score(path: Path) -> dict:
        return evaluator.evaluate_split(path, sha256(path), trained["recipe"], trained["split"], tmp_path / "s.json")

    swapped, original = split_score(target), split_score(other)
    assert (swapped["step"], swapped["checkpoint_sha256"]) == (selected["step"], sha256(other))
    assert (swapped["score"], swapped["per_domain"]) == (original["score"], original["per_domain"])

    target.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + os.urandom(64))
    with pytest.raises(ValueError, match="not a safetensors file"):
        split_score(target)


def test_links_and_special_files_are_refused(trained, hostile, tmp_path, evaluator):
    """(d) a symlink under an export's name (file or directory), a FIFO, a linked recipe: one line each,
    never followed or waited on."""
    copy, _ = hostile
    export = copy / "export"
    name = f"ckpt-{STEPS:06d}.safetensors"
    for path in export.iterdir():
        path.unlink()
    (export / name).symlink_to(trained["out"] / "export" / name)
    args = ("--recipe", trained["recipe"], "--out", tmp_path / "eval.json")
    assert refused(evaluate("--checkpoints", copy, *args)) == f"evaluate: {export / name}: is a symlink; expected a regular file"

    def refusal(call, *call_args) -> str:
        with pytest.raises(ValueError) as caught:
            call(*call_args)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    split = (trained["recipe"], trained["split"], tmp_path / "s.json")
    assert "is a symlink" in refusal(evaluator.evaluate_split, export / name, sha256(export / name), *split)
    (export / name).unlink()
    os.mkfifo(export / name)
    dev = (trained["recipe"], tmp_path / "eval.json")
    assert refusal(evaluator.evaluate_checkpoints, copy, *dev) == f"{export / name}: is not a regular file"
    shutil.rmtree(export)
    export.symlink_to(trained["out"] / "export")
    assert "expected a directory, not a symlink" in refusal(evaluator.evaluate_checkpoints, copy, *dev)
    linked = tmp_path / "linked.yaml"  # the recipe too: the leaderboard runs the evaluator unconfined
    linked.symlink_to(trained["recipe"])
    assert refusal(evaluator.evaluate_checkpoints, trained["out"], linked, tmp_path / "eval.json") == \
        f"{linked}: is a symlink; expected a regular file"
    assert not (tmp_path / "eval.json").exists()


def _write_recipe(trained, path: Path, **model) -> Path:
    recipe = yaml.safe_load(trained["recipe"].read_text())
    recipe["model"].update(model)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_exports_and_recipes_that_disagree_are_refused(trained, hostile, tmp_path, evaluator):
    """(e) an extra or a missing tensor, another shape (the recipe asks another model size), sizes beyond
    the limits, a tokenizer or an init_from the recipe may not name: one line each."""
    copy, _ = hostile
    checkpoint = copy / "export" / f"ckpt-{STEPS:06d}.safetensors"
    tensors = load_file(checkpoint)
    key = "decoder.final_layernorm.weight"

    def refused_in_process(recipe: Path | None = None, state: dict | None = None) -> str:
        if state is not None:
            save_file(state, str(checkpoint))
        with pytest.raises(ValueError) as caught:
            evaluator.evaluate_split(checkpoint, sha256(checkpoint), recipe or trained["recipe"], trained["split"],
                                     tmp_path / "s.json")
        return str(caught.value)

    save_file({**{k: v for k, v in tensors.items() if k != key}, "extra.weight": torch.zeros(3)}, str(checkpoint))
    line = refused(score_one(trained, checkpoint, sha256(checkpoint), tmp_path))  # once through the command line
    assert line.endswith(f"tensors do not match the recipe's model (missing ['{key}'], unexpected ['extra.weight'])")
    line = refused_in_process(state={**tensors, key: torch.zeros(64)})
    assert line.endswith(f"{key} is float32 [64]; the recipe's model expects float32 [32]")
    line = refused_in_process(state={**tensors, key: tensors[key].double()})
    assert line.endswith(f"{key} is float64 [32]; the recipe's model expects float32 [32]")

    save_file(tensors, str(checkpoint))
    bigger = _write_recipe(trained, tmp_path / "bigger.yaml", hidden=64)
    assert "the recipe's model expects float32" in refused_in_process(bigger)
    inside = "recipe model.init_from: expected a directory inside the recipe's directory"
    cases = {
        "huge.yaml": ({"hidden": 100_000}, "recipe model.hidden: expected an integer from 1 to 8192 (got 100000)"),
        "tokenizer.yaml": ({"tokenizer": "hf", "hf_dir": str(tmp_path)}, "recipe model.hf_dir: not a recipe key"),
        "outside.yaml": ({"arch": "llama", "init_from": "../elsewhere"}, inside),
        "absolute.yaml": ({"arch": "llama", "init_from": str(SUBSTRATE)}, inside),
    }
    for name, (model, message) in cases.items():
        assert message in refused_in_process(_write_recipe(trained, tmp_path / name, **model)), name
