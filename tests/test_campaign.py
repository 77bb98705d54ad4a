"""End to end: the daemon runs whole campaigns with real training, and survives kill -9 anywhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tiny_campaign import REPO, remove, run_daemon, state_snapshot, status, truncate, write_campaign

from hpc_aevo.sandbox import bwrap

pytestmark = pytest.mark.slow

# A round's crash points in the order a round reaches them, but r0:train:submitted (r0:score:submitted):
# after the kill at r0:train:intent the restarted daemon adopts the still-running local jobs through their
# claims (then polls them by pid and start time, as after a kill at r0:train:submitted) and never submits
# again, so it cannot pass that point. tests/test_launcher.py takes each launcher point from a fresh start.
CRASH_POINTS = ["r0:fork:mid", "r0:propose:mid", "r0:train:start", "r0:train:intent", "r0:eval:mid",
                "r0:score:chosen", "r0:score:intent", "r0:collect:mid", "r0:meta:mid"]


def comparable(state_root: Path) -> dict:
    """The outcome of a campaign without timestamps and timings: what must not depend on a crash."""
    doc = {}
    for path in sorted(state_root.glob("rounds/r*/cand-*/manifest.json")):
        m = json.loads(path.read_text())
        m["measured"].pop("train_wall_s"), m["measured"].pop("eval_wall_s")
        doc[str(path.relative_to(state_root))] = m
    for name in ("policy.json", "decision.json", "evidence.json"):
        for path in sorted(state_root.glob(f"rounds/r*/{name}")):
            doc[str(path.relative_to(state_root))] = json.loads(path.read_text())
    return doc


def launches(state_root: Path) -> dict[str, int]:
    """How many times each candidate's training really ran (a claim is taken once per run)."""
    return {str(p.relative_to(state_root)): len(list(p.glob("attempt-*.claim")))
            for p in (*state_root.glob("rounds/r*/cand-*/jobs"), *state_root.glob("rounds/r*/cand-*/jobs/score"))}


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted two-round campaign, shared: the end-to-end test reads it, and its round 0 is
    the reference the crashed campaign must end as (a round does not depend on how many follow)."""
    root = tmp_path_factory.mktemp("two_rounds")
    campaign = write_campaign(root, rounds=2, workers=1)
    return campaign, run_daemon(campaign)


# The two tests share one campaign: under pytest-xdist, in one worker.
@pytest.mark.xdist_group("two_rounds")
def test_two_round_campaign_end_to_end(two_rounds):
    campaign, done = two_rounds
    assert done.returncode == 0, done.stderr
    for phase in ("fork", "propose", "train", "eval", "score", "collect", "meta"):
        assert f"r001] {phase}" in done.stdout
    doc = status(campaign)
    assert doc["schema"] == "hpc_aevo.status" and [r["round"] for r in doc["rounds"]][:2] == [0, 1]
    for rnd in doc["rounds"][:2]:
        assert rnd["complete"] and len(rnd["candidates"]) == 2
        assert all(c["status"] == "evaluated" and c["dev"] is not None and c["leaderboard"] is not None
                   for c in rnd["candidates"])
        assert rnd["decision"]["accepted"] and rnd["calibration"] is not None
    assert doc["rounds"][2]["policy"]["active_axes"]  # the policy for the next round was written
    state = campaign.parent / "state"
    evidence = (state / "rounds/r001/evidence.md").read_text()
    assert evidence.count("\n## ") == 5
    default = state / "default" / "train.py"
    assert not default.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert set(launches(state).values()) == {1}  # each training and each scoring ran once
    # The leaderboard scored every candidate in a job of its own, confined, charged to the compute ledger.
    charges = json.loads((state / "ledger.json").read_text())["charges"]
    for manifest in state.glob("rounds/r*/cand-*/manifest.json"):
        scoring = json.loads(manifest.read_text())["scoring"]
        assert (scoring["status"], scoring["attempts"]) == ("scored", 1), scoring
        outcome = json.loads((manifest.parent / "jobs/score/attempt-1.outcome.json").read_text())
        assert [(s["stage"], s["confined"]) for s in outcome["stages"]] == [("score", bwrap.available())]
        key = f"{manifest.parent.parent.name}/{manifest.parent.name}"
        assert charges[f"{key}#1/score"]["state"] == "COMPLETED"
    again = run_daemon(campaign)  # a finished campaign is a no-op
    assert again.returncode == 0 and "] fork" not in again.stdout


@pytest.mark.xdist_group("two_rounds")
def test_killed_at_each_crash_point_in_turn_the_campaign_ends_as_if_uninterrupted(tmp_path, two_rounds):
    """kill -9 at every crash point of a round, one after the other (each restart arms the next point and
    resumes what the last one left), then a plain restart: every candidate trained once, from step 0,
    and the outcome is round 0 of the uninterrupted campaign. One round of training for all the points."""
    reference, done = two_rounds
    assert done.returncode == 0, done.stderr
    campaign = write_campaign(tmp_path / "crashed")
    said = {}
    for point in CRASH_POINTS:
        crashed = run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": point})
        assert crashed.returncode == -signal.SIGKILL, (point, crashed.stdout + crashed.stderr)
        said[point] = crashed.stdout
    resumed = run_daemon(campaign)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Each restart says where it picks up, and what it takes over, before anything else happens.
    after_intent = said[CRASH_POINTS[CRASH_POINTS.index("r0:train:intent") + 1]]
    assert "] resuming r000 at train (begun " in after_intent and "adopting 2 train job(s)" in after_intent, after_intent
    assert "] resuming r000 at meta" in resumed.stdout, resumed.stdout
    state = tmp_path / "crashed" / "state"
    # A phase's time runs from when it first began, over every daemon that worked on it, not the last one's share.
    rnd = json.loads((state / "rounds/r000/round.json").read_text())
    for phase, done in rnd["phases"].items():
        span = (datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(rnd["started"][phase])).total_seconds()
        assert abs(done["elapsed_s"] - span) < 1.5, (phase, done, rnd["started"][phase])
    assert set(launches(state).values()) == {1}, launches(state)
    for train_log in state.glob("rounds/r*/cand-*/jobs/attempt-1.train.log"):
        assert "resumed" not in train_log.read_text()  # trained once, from step 0 to the end
    expected = {key: value for key, value in comparable(reference.parent / "state").items()
                if key.startswith("rounds/r000/") or key == "rounds/r001/policy.json"}
    assert comparable(state) == expected


# (what is damaged, how, what the one line must say), each to a copy of the finished two-round campaign:
# the damage only a later round can reveal (tests/test_fuzz_state.py takes every record of round 0).
DAMAGE = [
    ("rounds/r001/policy.json", truncate, "not a readable JSON record"),
    ("rounds/r000/round.json", remove, "round 1 already exists"),
    ("rounds/r000", remove, "round 0's policy"),
    ("rounds/r001/cand-01", remove, "has 1 of its 2 candidates"),
]


@pytest.mark.xdist_group("two_rounds")
@pytest.mark.parametrize("damaged, damage, said", DAMAGE, ids=[f"{d[1].__name__} {d[0]}" for d in DAMAGE])
def test_damaged_or_lost_state_stops_the_campaign_in_one_line_and_changes_nothing(tmp_path, two_rounds, damaged,
                                                                                 damage, said):
    """Nothing the campaign spent or decided is silently recreated: a lost ledger would reset the quota,
    a lost round would run again, a lost candidate would leave its round one short."""
    reference, done = two_rounds
    assert done.returncode == 0, done.stderr
    campaign = write_campaign(tmp_path, rounds=2)
    shutil.copytree(reference.parent / "state", tmp_path / "state", symlinks=True)
    target = tmp_path / "state" / damaged
    assert target.exists(), target
    damage(target)
    before = state_snapshot(tmp_path / "state")
    stopped = run_daemon(campaign, timeout=120)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert stopped.stderr.count("\n") == 1 and "Traceback" not in stopped.stderr and said in stopped.stderr, stopped.stderr
    assert state_snapshot(tmp_path / "state") == before


def test_second_daemon_is_refused(tmp_path):
    campaign = write_campaign(tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        info = tmp_path / "state" / "daemon.json"
        deadline = time.time() + 60
        while not info.exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run_daemon(campaign)
        assert second.returncode == 2
        assert "already driven by pid" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_bad_campaign_file_is_one_line(tmp_path):
    campaign = write_campaign(tmp_path, rounds=0)
    done = run_daemon(campaign)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "rounds" in done.stderr and "Traceback" not in done.stderr


def test_claude_backend_without_api_key_is_one_line(tmp_path):
    campaign = write_campaign(tmp_path)
    campaign.write_text(campaign.read_text().replace("backend: scripted", "backend: claude"))
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")}
    done = subprocess.run([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert str(campaign) in done.stderr and "agents.backend" in done.stderr and "ANTHROPIC_API_KEY" in done.stderr


def test_tampered_substrate_stops_the_campaign(tmp_path):
    campaign = write_campaign(tmp_path)
    assert run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": "r0:propose:mid"}).returncode == -signal.SIGKILL
    target = tmp_path / "state" / "default" / "evaluate.py"
    os.chmod(target, 0o644)
    target.write_text(target.read_text() + "\n# a worker was here\n")
    done = run_daemon(campaign)
    assert done.returncode == 2 and "evaluate.py" in done.stderr and "substrate" in done.stderr
