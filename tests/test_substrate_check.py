"""`python -m hpc_aevo.substrate check DIR`: a user's substrate held to the contract, one line per check.

The broken substrates are the reference recipe with a tiny trainer and evaluator (no model: a
hand-written safetensors header, a JSON record), so each check runs in seconds through the real
machinery: install, fork, the confined job stages, the toolkit's readers and the leaderboard's check.
Only the reference substrate trains a real model (2 steps).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.cli.substrate import main
from hpc_aevo.loop.daemon import CampaignStopped, Daemon
from hpc_aevo.sandbox import bwrap
from tiny_campaign import REPO, write_campaign

# A trainer in the contract's shape without a model: MODE says what it leaves in --out.
TRAIN = """\
import argparse, json, pathlib, pickle
parser = argparse.ArgumentParser()
parser.add_argument("--recipe"); parser.add_argument("--out"); parser.add_argument("--max-steps", type=int, default=500)
args = parser.parse_args()
out, step, MODE = pathlib.Path(args.out), args.max_steps, {mode!r}
if MODE == "pickle":
    (out / f"ckpt-{{step:06d}}.pt").write_bytes(pickle.dumps({{"step": step}}))
if MODE == "export":
    header = json.dumps({{"__metadata__": {{"step": str(step)}}}}).encode()
    (out / "export").mkdir(exist_ok=True)
    (out / "export" / f"ckpt-{{step:06d}}.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
print(json.dumps({{"step": step, "loss": 1.0}}))
"""

# An evaluator in the contract's shape; BREAK edits the eval.json it writes.
EVALUATE = """\
import argparse, collections, hashlib, json, pathlib
parser = argparse.ArgumentParser()
for flag in ("--checkpoints", "--checkpoint", "--sha256", "--recipe", "--split-file", "--out"):
    parser.add_argument(flag)
args = parser.parse_args()
if args.checkpoints:
    f = sorted(pathlib.Path(args.checkpoints, "export").glob("ckpt-*.safetensors"))[-1]
    step, sha = int(f.stem.split("-")[1]), hashlib.sha256(f.read_bytes()).hexdigest()
    record = {{"schema": "hpc_aevo.eval_result", "version": 2, "split": "dev", "selection_rule": "last",
              "selected_step": step, "selected_checkpoint": {{"path": f"export/{{f.name}}", "sha256": sha, "step": step}},
              "examples_per_domain": {{"toy": 2}}, "checkpoints": [{{"step": step, "dev": 0.5, "per_domain": {{"toy": 0.5}}}}]}}
    {brk}
else:
    f = pathlib.Path(args.checkpoint)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    if sha != args.sha256:
        raise SystemExit(f"evaluate: {{f}}: sha256 {{sha}}, not {{args.sha256}}")
    counts = collections.Counter(json.loads(line)["domain"] for line in open(args.split_file))
    record = {{"schema": "hpc_aevo.split_score", "version": 2, "checkpoint": str(f), "checkpoint_sha256": sha,
              "step": int(f.stem.split("-")[1]), "score": 0.5, "per_domain": {{d: 0.5 for d in counts}},
              "examples_per_domain": dict(counts)}}
pathlib.Path(args.out).write_text(json.dumps(record))
"""


CHECKS = ("files", "recipe", "axes", "train", "eval", "score")


def fake_substrate(root: Path, train: str = "export", eval_break: str = "pass") -> Path:
    """The reference recipe with the tiny trainer and evaluator above."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "substrate" / "recipe.yaml", root / "recipe.yaml")
    (root / "train.py").write_text(TRAIN.format(mode=train))
    (root / "evaluate.py").write_text(EVALUATE.format(brk=eval_break))
    return root


@pytest.fixture
def split(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"domain": "toy", "prompt": f"p{i}", "answer": "a"}) + "\n" for i in range(2)))
    return path


def check(capsys, substrate: Path, *args: str) -> tuple[int, dict[str, str]]:
    """Run the command in this process: its exit code and {check: its line} ("scratch": where it kept its tree)."""
    code = main(["check", str(substrate), "--timeout", "60", *args])
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[0 if line.startswith("scratch") else 1]: line for line in lines}


def test_a_substrate_in_the_contract_passes_every_check(tmp_path, capsys, split):
    code, lines = check(capsys, fake_substrate(tmp_path / "sub"), "--split-file", str(split),
                        "--scratch", str(tmp_path / "scratch"))
    assert code == 0, lines
    assert [lines[c].split()[0] for c in CHECKS] == ["ok"] * 6 and lines["scratch"].endswith(str(tmp_path / "scratch"))
    assert "export/ckpt-000002.safetensors scored 0.500 on 2 examples" in lines["score"]


def test_without_a_split_or_puzzles_the_score_check_is_skipped_and_says_why(tmp_path, capsys):
    code, lines = check(capsys, fake_substrate(tmp_path / "sub"))
    assert code == 0 and "scratch" not in lines  # a temp tree of its own, removed when no check fails
    assert lines["score"] == ("skip  score   no --split-file, and no puzzles.py to draw the heldout-puzzles split "
                              "from: held-out scoring not checked (give --split-file)")


def test_without_bubblewrap_the_stages_run_unconfined_and_each_line_says_so(tmp_path, capsys, split, monkeypatch):
    monkeypatch.setattr(bwrap, "available", lambda *flags: False)  # the host condition, as test_job_confinement does
    code, lines = check(capsys, fake_substrate(tmp_path / "sub"), "--split-file", str(split))
    assert code == 0
    for stage in ("train", "eval", "score"):
        assert lines[stage].startswith("ok") and "(UNCONFINED: bubblewrap cannot run on " in lines[stage]


def test_a_missing_file_fails_the_files_check_and_runs_nothing(tmp_path, capsys):
    substrate = fake_substrate(tmp_path / "sub")
    (substrate / "evaluate.py").unlink()
    code, lines = check(capsys, substrate)
    assert code == 2
    assert lines["files"] == (f"FAIL  files   {substrate}: missing evaluate.py (a substrate has recipe.yaml, "
                              "train.py, evaluate.py; substrate/README.md)")
    assert all(lines[c].startswith("skip") and "the files check failed" in lines[c]
               for c in CHECKS[1:])


def test_a_recipe_without_a_key_the_policy_axes_mutate_fails_with_the_key(tmp_path, capsys, split):
    substrate = fake_substrate(tmp_path / "sub")
    recipe = yaml.safe_load((substrate / "recipe.yaml").read_text())
    del recipe["optim"]["warmup_steps"], recipe["checkpoints"]["every"]
    (substrate / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, lines = check(capsys, substrate, "--split-file", str(split), "--scratch", str(tmp_path / "s"))
    assert code == 2
    assert lines["axes"] == (f"FAIL  axes    {substrate}/recipe.yaml: no key optim.warmup_steps (axis schedule), "
                             f"checkpoints.every (axis budget), which the active axes of {REPO}/policy/initial.yaml "
                             "mutate")
    assert lines["train"].startswith("ok")  # a missing axis key does not stop the stages from being checked


def test_a_recipe_that_is_not_yaml_fails_with_the_file_and_line(tmp_path, capsys):
    substrate = fake_substrate(tmp_path / "sub")
    (substrate / "recipe.yaml").write_text("optim:\n  lr: [1\n")
    code, lines = check(capsys, substrate)
    assert code == 2
    assert lines["recipe"].startswith(f"FAIL  recipe  {substrate}/recipe.yaml: line ")


def test_an_evaluator_writing_a_wrong_schema_fails_the_eval_check(tmp_path, capsys):
    substrate = fake_substrate(tmp_path / "sub", eval_break='record["selected_step"] = "last"')
    code, lines = check(capsys, substrate, "--scratch", str(tmp_path / "scratch"))
    assert code == 2
    eval_json = tmp_path / "scratch/rounds/r000/cand-00/jobs/attempt-1.eval-out/eval.json"
    assert lines["eval"] == f"FAIL  eval    {eval_json}: selected_step: expected an integer (got str 'last')"
    assert lines["score"] == "skip  score   not run: the eval check failed"


def test_a_trainer_that_writes_no_checkpoint_fails_the_train_check(tmp_path, capsys):
    code, lines = check(capsys, fake_substrate(tmp_path / "sub", train="none"), "--scratch", str(tmp_path / "s"))
    assert code == 2
    assert lines["train"] == ("FAIL  train   train.py --recipe recipe.yaml --out CK --max-steps 2 exited 0 but wrote "
                              "no checkpoint: expected export/ckpt-<step>.safetensors (it wrote nothing) "
                              f"(CK: {tmp_path}/s/rounds/r000/cand-00/checkpoints)")


def test_a_trainer_that_writes_only_a_pickle_checkpoint_fails_the_train_check(tmp_path, capsys):
    code, lines = check(capsys, fake_substrate(tmp_path / "sub", train="pickle"), "--scratch", str(tmp_path / "s"))
    assert code == 2
    assert lines["train"] == ("FAIL  train   train.py --recipe recipe.yaml --out CK --max-steps 2 exited 0 but wrote "
                              "only pickle checkpoints (ckpt-000002.pt), no export/ckpt-<step>.safetensors: the toolkit "
                              "never unpickles a candidate's file, its evaluator reads the pickle-free export only "
                              f"(CK: {tmp_path}/s/rounds/r000/cand-00/checkpoints)")
    assert lines["eval"] == "skip  eval    not run: the train check failed"


def test_round_runs_the_cheap_checks_before_round_0(tmp_path):
    substrate = fake_substrate(tmp_path / "sub")
    (substrate / "recipe.yaml").write_text("seed: 0\ndata: {mixture: {bits: 1.0}}\n")
    campaign = load_campaign(write_campaign(tmp_path / "c", substrate=str(substrate),
                                            policy={"constitution": str(REPO / "policy" / "constitution.md"),
                                                    "initial": str(REPO / "policy" / "initial.yaml")}))
    with pytest.raises(CampaignStopped, match=r"^substrate check axes: .*recipe.yaml: no key optim.lr \(axis schedule\)"):
        Daemon(campaign, print_line=lambda line: None).prepare()
    assert not Path(campaign.paths.state_root, "campaign.json").exists()


@pytest.mark.slow
def test_the_reference_substrate_passes_every_check():
    """The real trainer (2 steps), evaluator and held-out split, through the command as a person runs it."""
    result = subprocess.run([sys.executable, "-m", "hpc_aevo.substrate", "check", "substrate"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["ok", c] for c in CHECKS]
    assert "on 500 examples of the heldout-puzzles split of its puzzles.py" in lines[-1]
