"""The reference substrate's trainer and evaluator, run for real as the toolkit runs them.

The scripts run as subprocesses with cwd=substrate, on a short recipe. What the toolkit relies on:
training learns (loss down, dev up), a preempted trainer exits 3 and a restart continues exactly
where it stopped, and the evaluator writes an eval.json the toolkit can read, with the recipe's
selection rule applied.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

from hpc_aevo.tools.calibrate import apply_overrides  # noqa: E402
from hpc_aevo.scoring.results import EvalResult  # noqa: E402

STEPS, EVERY = 300, 100
# A short recipe (about 20 s of training on one core) that still learns visibly; test_proxy_trap uses it too.
SHORT = {"data.train_examples": 8000, "model.hidden": 64, "optim.steps": STEPS, "optim.lr": 4e-3,
         "checkpoints.every": EVERY}


def short_recipe() -> dict:
    return apply_overrides(yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text()), SHORT)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=SUBSTRATE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out[-3000:]
    return out


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# The tests that share this module's trained model run in one pytest-xdist worker: the model is trained once.
pytestmark = pytest.mark.xdist_group("test_substrate_training")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Run A straight through; run B preempted (SIGTERM) after its first checkpoint, then restarted."""
    root = tmp_path_factory.mktemp("training")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(short_recipe()))
    a, b = root / "a", root / "b"
    run_a = start("train.py", "--recipe", str(recipe), "--out", str(a))
    run_b = start("train.py", "--recipe", str(recipe), "--out", str(b))
    deadline = time.time() + 300
    while not (b / f"ckpt-{EVERY:06d}.pt").exists():
        assert run_b.poll() is None and time.time() < deadline, "run B ended before its first checkpoint"
        time.sleep(0.05)
    run_b.send_signal(signal.SIGTERM)
    preempted = finish(run_b, expect=3)
    resumed = finish(start("train.py", "--recipe", str(recipe), "--out", str(b)))
    finish(run_a)
    evaluated = finish(start("evaluate.py", "--checkpoints", str(a), "--recipe", str(recipe),
                             "--out", str(a / "eval.json")))
    return {"a": a, "b": b, "preempted": events(preempted), "resumed": events(resumed), "evaluated": evaluated}


def summary(directory: Path) -> dict:
    return json.loads((directory / "train_summary.json").read_text())


@pytest.mark.slow
def test_training_learns(runs):
    history = summary(runs["a"])["history"]
    assert [h["step"] for h in history] == list(range(25, STEPS + 1, 25))
    assert history[-1]["loss"] < 0.75 * history[0]["loss"], history
    scores = json.loads((runs["a"] / "eval.json").read_text())["checkpoints"]
    assert [c["step"] for c in scores] == [EVERY, 2 * EVERY, STEPS]
    assert scores[-1]["dev"] >= scores[0]["dev"] + 0.02, scores


@pytest.mark.slow
def test_preempted_run_resumes_exactly(runs):
    stop = runs["preempted"][-1]
    assert stop["event"] == "preempted" and stop["step"] >= EVERY
    resumed = runs["resumed"][0]
    assert resumed == {"event": "resumed", "step": stop["step"], "checkpoint": f"ckpt-{stop['step']:06d}.pt"}
    a, b = summary(runs["a"]), summary(runs["b"])
    assert b["steps"] == a["steps"] == STEPS
    assert [h["step"] for h in b["history"]] == [h["step"] for h in a["history"]]
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["loss"] == pytest.approx(ha["loss"], abs=1e-5) and hb["lr"] == ha["lr"]
    # The off-schedule preemption checkpoint is gone: both runs leave the same checkpoints to evaluate.
    names = lambda d: sorted(p.name for p in d.glob("ckpt-*.pt"))  # noqa: E731
    assert names(runs["b"]) == names(runs["a"]) == [f"ckpt-{s:06d}.pt" for s in (EVERY, 2 * EVERY, STEPS)]
    # and so are their exports, the files the evaluator reads (the preemption checkpoint's went with it)
    exports = lambda d: sorted(p.name for p in (d / "export").iterdir())  # noqa: E731
    assert exports(runs["b"]) == exports(runs["a"]) == [f"ckpt-{s:06d}.safetensors" for s in (EVERY, 2 * EVERY, STEPS)]


@pytest.mark.slow
def test_eval_json_is_what_the_toolkit_reads(runs):
    import evaluate

    body = json.loads((runs["a"] / "eval.json").read_text())
    assert set(body) == {"schema", "version", "split", "selection_rule", "selected_step", "selected_checkpoint",
                         "examples_per_domain", "checkpoints", "wall_s"}
    assert (body["schema"], body["version"], body["split"], body["selection_rule"]) == (
        "hpc_aevo.eval_result", 2, "dev", "best_dev")
    domains = {"bits", "equation", "cipher", "base", "sequence"}
    assert body["examples_per_domain"] == dict.fromkeys(sorted(domains), 100)
    for c in body["checkpoints"]:
        assert set(c) == {"step", "dev", "per_domain"} and set(c["per_domain"]) == domains
        assert c["dev"] == pytest.approx(sum(c["per_domain"].values()) / len(domains))
    assert body["selected_step"] == evaluate.select(body["checkpoints"], "best_dev")
    result = EvalResult.load(runs["a"] / "eval.json")
    assert result.selected().step == body["selected_step"] and result.wall_s > 0
    chosen = result.selected_checkpoint
    assert (chosen.path, chosen.step) == (f"export/ckpt-{body['selected_step']:06d}.safetensors", body["selected_step"])
    assert chosen.sha256 == hashlib.sha256((runs["a"] / chosen.path).read_bytes()).hexdigest()


def test_selection_rules():
    import evaluate

    def ckpt(step, dev, low):
        return {"step": step, "dev": dev, "per_domain": {"bits": low, "base": 2 * dev - low}}

    checkpoints = [ckpt(100, 0.30, 0.10), ckpt(200, 0.40, 0.05), ckpt(300, 0.35, 0.20), ckpt(400, 0.40, 0.00)]
    assert evaluate.select(checkpoints, "last") == 400
    assert evaluate.select(checkpoints, "best_dev") == 400  # a tie goes to the later checkpoint
    assert evaluate.select(checkpoints, "best_min_domain") == 300
    assert evaluate.select(checkpoints[:2], "best_dev") == 200
    with pytest.raises(ValueError, match="checkpoints.selection"):
        evaluate.select(checkpoints, "best_leaderboard")
