"""Whole campaigns with `agents.backend: claude` against the model stub: the daemon runs the real CLI for
every role, a failed job gets its debug turn, and a daemon killed mid-session re-runs it after restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_scripts import breaking_then_debugging_worker, collector, lawful_meta, running_worker
from model_stub import ModelStub
from tiny_campaign import REPO, run_daemon, status, write_campaign

from hpc_aevo.state.records import read_jsonl

pytestmark = pytest.mark.slow


def launches(state: Path) -> dict[str, int]:
    """How many times each candidate's training really ran (each run takes its attempt's claim once)."""
    return {p.name: len(list(p.glob("jobs/attempt-*.claim"))) for p in sorted(state.glob("rounds/r*/cand-*"))}


def stub_env(stub: ModelStub) -> dict[str, str]:
    return {**stub.env(), "CLAUDE_CODE_MAX_RETRIES": "0", "PYTHONPATH": str(REPO)}


def test_demo_campaign_with_claude_agents(tmp_path):
    """Two workers (one breaks its job and debugs it), the collector and the meta agent, all through the
    CLI. cand-01's session is killed with the daemon at its stalled second turn: the restarted daemon
    re-runs that session, and no candidate's training launches twice."""
    campaign = write_campaign(tmp_path, workers=2, agents={"backend": "claude", "max_turns": 20,
                                                           "max_budget_usd_per_session": 5.0,
                                                           "max_budget_usd_per_round": 50.0})
    state = tmp_path / "state"
    with ModelStub({"r000/cand-01": running_worker(state / "rounds/r000/cand-01/sandbox", delay_s=4.0),
                    "r000/cand-02": breaking_then_debugging_worker(state / "rounds/r000/cand-02/sandbox"),
                    "collect r000": collector(), "meta r000": lawful_meta()}) as stub:
        daemon = subprocess.Popen([sys.executable, "-m", "hpc_aevo.round", str(campaign)], cwd=REPO,
                                  env={**os.environ, **stub_env(stub)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while stub.answered("r000/cand-01") < 2 and time.time() < deadline:  # the stalled second turn
            time.sleep(0.2)
        assert stub.answered("r000/cand-01") >= 2, daemon.communicate(timeout=5)[0]
        os.killpg(daemon.pid, signal.SIGKILL)  # the daemon and the CLI it started
        daemon.wait()
        assert "proposal-recorded" not in (state / "rounds/r000/cand-01/trace.jsonl").read_text()
        done = run_daemon(campaign, env=stub_env(stub))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = status(campaign)
    (rnd, _next) = doc["rounds"]
    assert rnd["complete"] and [c["status"] for c in rnd["candidates"]] == ["evaluated"] * 3
    assert [c["mutation"] for c in rnd["candidates"]] == [None, "data.mixture.bits:up", "optim.schedule:linear"]
    assert [c["attempts"] for c in rnd["candidates"]] == [1, 1, 2]
    assert rnd["decision"]["accepted"] and not rnd["decision"]["fallback_used"]
    assert rnd["agents"]["sessions"] == 5 and rnd["agents"]["cost_usd"] > 0  # 2 workers, 1 debug, collector, meta
    manifest = json.loads((state / "rounds/r000/cand-02/manifest.json").read_text())
    assert "optim.schedule cosine-restarts unsupported" in manifest["proposal"]["observed_failure_modes"]
    starts = [e for e in read_jsonl(state / "rounds/r000/cand-02/trace.jsonl") if e["event"] == "session-start"]
    assert [e["resume"] is not None for e in starts] == [False, True]  # the debug turn resumed the session
    # The killed session: started twice, ended once, re-run once; one proposal, one edit (not two).
    kinds = [e["event"] for e in read_jsonl(state / "rounds/r000/cand-01/trace.jsonl")]
    assert kinds.count("session-start") == 2 and kinds.count("session-end") == 1
    assert [e["interrupted"] for e in read_jsonl(state / "rounds/r000/cand-01/trace.jsonl")
            if e["event"] == "session-rerun"] == [1]
    assert kinds.count("proposal-recorded") == 1
    assert "Nothing beyond seed noise." in (state / "rounds/r000/evidence.md").read_text()
    decision = json.loads((state / "rounds/r000/decision.json").read_text())
    assert decision["proposer"] == "claude-meta"
    assert launches(state) == {"cand-00": 1, "cand-01": 1, "cand-02": 2}
