"""A tiny campaign for end-to-end tests: the real substrate, a recipe small enough to train in seconds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def tiny_recipe() -> dict:
    """24 steps of a one-layer model, one checkpoint at the end: the evaluator's dev pass (500 greedy
    answers per checkpoint, fixed by the frozen evaluator) costs more than the training itself."""
    recipe = yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text())
    recipe["data"]["train_examples"] = 1000
    recipe["model"].update(hidden=64, layers=1, heads=4)
    recipe["optim"].update(steps=24, batch_size=16, warmup_steps=4)
    recipe["checkpoints"]["every"] = 24
    return recipe


def write_campaign(root: Path, rounds: int = 1, workers: int = 1, **overrides) -> Path:
    """A campaign YAML under `root` with its own initial policy; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    policy = yaml.safe_load((REPO / "policy" / "initial.yaml").read_text())
    policy["standing_recipe"] = tiny_recipe()
    (root / "initial.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    campaign = yaml.safe_load((REPO / "campaigns" / "demo.yaml").read_text())
    campaign.update(name="tiny", state_root=str(root / "state"), substrate=str(REPO / "substrate"),
                    rounds=rounds, workers_per_round=workers)
    campaign["policy"] = {"constitution": str(REPO / "policy" / "constitution.md"), "initial": str(root / "initial.yaml")}
    campaign["scheduler"]["poll_interval_s"] = 0.3
    campaign["leaderboard"].pop("examples_per_domain", None)  # the default split: the demo's larger one costs time
    campaign.update(overrides)
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign, sort_keys=False))
    return path


def run_daemon(campaign: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc_aevo.round", str(campaign), *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def status(campaign: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "hpc_aevo.status", str(campaign), "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def state_snapshot(root: Path) -> dict[str, str]:
    """Every file's bytes (hashed), directory and FIFO under `root`, but the daemon's own lock and pid files."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name in ("daemon.json", "daemon.lock") or path.name.endswith(".lock"):
            continue
        kind = "dir" if path.is_dir() else "fifo" if path.is_fifo() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root))] = kind
    return out


def truncate(path: Path) -> None:
    """Damage a record: its first half only."""
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def remove(path: Path) -> None:
    """Lose a file or a directory."""
    shutil.rmtree(path) if path.is_dir() else path.unlink()
