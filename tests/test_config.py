"""The campaign YAML is refused on one line naming file, key path and expectation; demo.yaml loads."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.campaign.config import load_campaign, load_initial_policy
from hpc_aevo.state.typed import SchemaError

REPO = Path(__file__).resolve().parents[1]
DELETE = object()


@pytest.fixture
def tree(tmp_path: Path, substrate_dir: Path) -> Path:
    """A copy of the repo's demo campaign layout: campaigns/demo.yaml, policy/, substrate/; its initial policy
    is policy/initial.yaml (the demo's own, policy/demo.yaml, sets a standing recipe for the reference substrate)."""
    (tmp_path / "campaigns").mkdir()
    demo = (REPO / "campaigns" / "demo.yaml").read_text()
    assert "initial: ../policy/demo.yaml\n" in demo
    (tmp_path / "campaigns" / "demo.yaml").write_text(demo.replace("../policy/demo.yaml", "../policy/initial.yaml"))
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "constitution.md").write_text("# constitution\n")
    (tmp_path / "policy" / "empty.md").write_text("\n")
    shutil.copy(REPO / "policy" / "initial.yaml", tmp_path / "policy" / "initial.yaml")
    incomplete = tmp_path / "substrate-incomplete"
    incomplete.mkdir()
    for name in ("recipe.yaml", "evaluate.py"):
        shutil.copy(substrate_dir / name, incomplete / name)
    return tmp_path


def edited(tree: Path, key: str, value: object) -> Path:
    """Write campaigns/bad.yaml: demo.yaml with the dotted `key` set to `value` (or deleted)."""
    data = yaml.safe_load((tree / "campaigns" / "demo.yaml").read_text())
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    path = tree / "campaigns" / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# (case id, dotted key to set, value or DELETE, key path in the message, fragment of the message)
BAD_VALUES = [
    ("unknown top-level key", "colour", "blue", "colour", "no such key (known keys: agents, anchors"),
    ("unknown nested key", "scheduler.stages.train.walltime", 5, "scheduler.stages.train.walltime", "no such key"),
    ("wrong type", "scheduler.max_parallel", [2], "scheduler.max_parallel", "expected an integer (got list [2])"),
    ("string for int", "scheduler.stages.train.timeout_min", "ten", "scheduler.stages.train.timeout_min",
     "expected an integer (got str 'ten')"),
    ("bool for int", "seed", True, "seed", "expected an integer (got bool True)"),
    ("missing required key", "rounds", DELETE, "rounds", "required key is missing"),
    ("missing nested required key", "scheduler.stages.eval.mem_gb", DELETE, "scheduler.stages.eval.mem_gb",
     "required key is missing"),
    ("missing substrate dir", "substrate", "../nowhere", "substrate",
     "expected an existing directory (no directory at "),
    ("substrate without train.py", "substrate", "../substrate-incomplete", "substrate",
     "substrate-incomplete lacks train.py)"),
    ("missing constitution", "policy.constitution", "../policy/missing.md", "policy.constitution",
     "expected an existing file (no file at "),
    ("missing initial policy", "policy.initial", "../policy/none.yaml", "policy.initial",
     "expected an existing file (no file at "),
    ("missing slurm profile", "scheduler", {"backend": "slurm", "profile": "nope.yaml", "max_parallel": 1,
     "stages": {"train": {"timeout_min": 1, "mem_gb": 1}, "eval": {"timeout_min": 1, "mem_gb": 1}}},
     "scheduler.profile", "expected an existing file (no file at "),
    ("profile with local backend", "scheduler.profile", "x.yaml", "scheduler.profile", "no profile with the local"),
    ("rounds 0", "rounds", 0, "rounds", "expected an integer >= 1 (got int 0)"),
    ("anchors 0", "anchors", 0, "anchors", "expected an integer >= 1"),
    ("negative workers", "workers_per_round", -1, "workers_per_round", "expected an integer >= 0"),
    ("one candidate", "workers_per_round", 0, "workers_per_round", "anchors + workers_per_round >= 2"),
    ("per_round > quota", "leaderboard.per_round", 13, "leaderboard.per_round", "<= leaderboard.quota (12)"),
    ("unknown scheduler backend", "scheduler.backend", "pbs", "scheduler.backend", "one of 'local', 'slurm'"),
    ("unknown agents backend", "agents.backend", "gpt", "agents.backend", "one of 'scripted', 'claude'"),
    ("unknown adapter", "leaderboard.adapter", "kaggle", "leaderboard.adapter", "one of 'heldout-puzzles'"),
    ("negative budget", "budget.cpu_hours", -1, "budget.cpu_hours", "expected a number > 0 (got float -1.0)"),
    ("zero max_attempts", "retries.max_attempts", 0, "retries.max_attempts", "expected an integer >= 1"),
    ("zero memory", "scheduler.stages.eval.mem_gb", 0, "scheduler.stages.eval.mem_gb", "a number >= 0.01 (10 MB)"),
    ("zero poll interval", "scheduler.poll_interval_s", 0, "scheduler.poll_interval_s", "a number > 0"),
    ("zero max_turns", "agents.max_turns", 0, "agents.max_turns", "an integer >= 1"),
    ("name not a slug", "name", "Demo_1", "name", "a slug"),
    ("state_root is a file", "state_root", "../policy/constitution.md", "state_root", "constitution.md is a file)"),
    ("state_root is the campaign's folder", "state_root", ".", "state_root", "not holding the campaign file's folder"),
    ("state_root holds the campaign's folder", "state_root", "..", "state_root", "neither inside nor holding"),
    ("state_root inside the substrate", "state_root", "../substrate/state", "state_root", "nor holding substrate"),
    ("empty constitution", "policy.constitution", "../policy/empty.md", "policy.constitution", "is empty)"),
]

# (case id, file text, key path in the message, fragment)
BAD_TEXTS = [
    ("bad YAML syntax", "name: demo\nrounds: 3\n  seed: 0\n", "line 3", "valid YAML (mapping values are not allowed"),
    ("unclosed list", "name: demo\nrounds: [1, 2\nseed: 0\n", "line 3", "valid YAML"),
    ("top-level list", "- name: demo\n", "<root>", "a mapping at the top level (got list"),
    ("empty file", "", "<root>", "a mapping at the top level (got NoneType None)"),
]


def assert_one_line(exc: ConfigError, path: Path, key_path: str, fragment: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key_path}: expected "), message
    assert fragment in message, message
    assert exc.key_path == key_path


@pytest.mark.parametrize("key,value,key_path,fragment", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_values_are_refused_on_one_line(tree, key, value, key_path, fragment):
    path = edited(tree, key, value)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path)
    assert_one_line(caught.value, path, key_path, fragment)


@pytest.mark.parametrize("text,key_path,fragment", [c[1:] for c in BAD_TEXTS], ids=[c[0] for c in BAD_TEXTS])
def test_bad_files_are_refused_on_one_line(tree, text, key_path, fragment):
    path = tree / "campaigns" / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_campaign(path)
    assert_one_line(caught.value, path, key_path, fragment)


def test_missing_campaign_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/nope\.yaml: <root>: expected a readable file \(No such file"):
        load_campaign(tmp_path / "nope.yaml")


def test_config_error_is_a_schema_error():
    assert issubclass(ConfigError, SchemaError)


def test_demo_loads_with_resolved_paths(tree):
    path = tree / "campaigns" / "demo.yaml"
    campaign = load_campaign(path)
    assert (campaign.name, campaign.rounds, campaign.anchors, campaign.workers_per_round) == ("demo", 3, 1, 3)
    assert campaign.candidates == 4
    assert campaign.scheduler.backend == "local" and campaign.scheduler.max_parallel == 2
    assert campaign.scheduler.stages.train.timeout_min == 10 and campaign.scheduler.stages.eval.mem_gb == 2.0
    assert (campaign.leaderboard.quota, campaign.leaderboard.per_round) == (12, 4)
    assert campaign.retries.max_attempts == 2 and campaign.budget.cpu_hours == 2.0
    assert campaign.source == path
    assert campaign.paths.state_root == tree / "logs" / "demo"
    assert campaign.paths.substrate == tree / "substrate"
    assert campaign.paths.constitution == tree / "policy" / "constitution.md"
    assert campaign.paths.initial_policy == tree / "policy" / "initial.yaml"
    assert campaign.paths.profile is None
    assert campaign.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_relative_paths_resolve_against_the_yaml_not_the_cwd(tree, monkeypatch):
    monkeypatch.chdir(tree / "substrate")
    campaign = load_campaign(Path("../campaigns/demo.yaml"))
    assert campaign.paths.substrate == tree / "substrate"


def test_initial_policy_takes_the_substrate_recipe(tree, substrate_dir):
    policy = load_initial_policy(load_campaign(tree / "campaigns" / "demo.yaml"))
    assert policy.round == 0 and policy.standing_source == "substrate"
    assert policy.standing_recipe == yaml.safe_load((substrate_dir / "recipe.yaml").read_text())
    assert policy.active_axes == ["mixture", "schedule", "budget"] and policy.retired_axes == []


def test_the_demo_starts_from_the_substrate_recipe_with_a_smaller_learning_rate():
    """The demo's start is deliberately under-trained (docs/calibration.md): the substrate's recipe, lr / 8."""
    policy = load_initial_policy(load_campaign(REPO / "campaigns" / "demo.yaml"))
    substrate = yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text())
    assert policy.standing_source == "initial-policy"
    assert policy.standing_recipe["optim"]["lr"] == substrate["optim"]["lr"] / 8
    policy.standing_recipe["optim"]["lr"] = substrate["optim"]["lr"]
    assert policy.standing_recipe == substrate


def test_initial_policy_may_set_its_own_recipe(tree):
    initial = tree / "policy" / "initial.yaml"
    initial.write_text(initial.read_text() + "standing_recipe: {steps: 5}\n")
    policy = load_initial_policy(load_campaign(tree / "campaigns" / "demo.yaml"))
    assert policy.standing_recipe == {"steps": 5} and policy.standing_source == "initial-policy"


@pytest.mark.parametrize("change,key_path,fragment", [
    ({"active_axes": ["mixture", "astrology"]}, "active_axes", "axis names from"),
    ({"round": 3}, "round", "it is implied"),
    ({"noise_band": -1}, "noise_band", "a non-negative number"),
    ({"schema": "hpc_aevo.policy"}, "schema", "no such key"),
    ({"promotion_threshold": 0.001}, "<root>", "C6: promotion threshold 0.0010 is below the noise band"),
    ({"retired_axes": ["mixture"]}, "<root>", "C6: axes both active and retired: mixture"),
    ({"standing_recipe": {}}, "standing_recipe", "a recipe with its keys (it is empty)"),
])
def test_bad_initial_policy_names_the_policy_file(tree, change, key_path, fragment):
    initial = tree / "policy" / "initial.yaml"
    initial.write_text(yaml.safe_dump({**yaml.safe_load(initial.read_text()), **change}))
    campaign = load_campaign(tree / "campaigns" / "demo.yaml")
    with pytest.raises(ConfigError) as caught:
        load_initial_policy(campaign)
    assert_one_line(caught.value, initial, key_path, fragment)


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hpc_aevo.config", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_ok_and_error(tree):
    ok = run_cli(tree, "campaigns/demo.yaml")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ok: demo\n", "")
    edited(tree, "rounds", 0)
    bad = run_cli(tree, "campaigns/bad.yaml")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "campaigns/bad.yaml: rounds: expected an integer >= 1 (got int 0)\n"


@pytest.mark.skipif(not (REPO / "policy" / "constitution.md").exists(),
                    reason="policy/constitution.md is not written yet")
def test_repo_demo_campaign_is_valid():
    result = run_cli(REPO, "campaigns/demo.yaml")
    assert (result.returncode, result.stdout) == (0, "ok: demo\n"), result.stderr
