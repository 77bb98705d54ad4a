"""Claude workers against the real bundled CLI and the loopback model stub: doing the job, and the debug turn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent_scripts import good_worker
from model_stub import Turn, mcp, text, tool_use
from tiny_campaign import write_campaign

from hpc_aevo.roles.claude import reaper
from hpc_aevo.sandbox import pids
from hpc_aevo.roles.claude.session import AgentSession
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.loop.daemon import Daemon
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.records import read_jsonl
from hpc_aevo.state.trace import Trace


def claude_daemon(tmp_path: Path, workers: int = 1, constitution: Path | None = None, **agents) -> Daemon:
    """A claude-backend campaign of round 0, forked (not yet proposed)."""
    policy = {"policy": {"constitution": str(constitution), "initial": str(tmp_path / "initial.yaml")}} \
        if constitution else {}
    path = write_campaign(tmp_path, workers=workers, agents={"backend": "claude", **agents}, **policy)
    daemon = Daemon(load_campaign(path), print_line=lambda line: None)
    record = daemon.prepare()
    daemon.phase_fork(0, Policy.load(daemon.tree.policy(0)), record)
    return daemon


def propose(daemon: Daemon) -> list[CandidateManifest]:
    record = daemon.prepare()
    daemon.phase_propose(0, Policy.load(daemon.tree.policy(0)), record)
    return daemon.manifests(0)


def minimal_proposal() -> dict:
    """A worker's record_proposal call with every field, and nothing more."""
    return mcp("hpc", "record_proposal", hypothesis="h", axis="mixture", rationale="r", expected_effect="e",
               failure_modes=[])


def sessions(daemon: Daemon) -> list[AgentSession]:
    return [AgentSession.load(p) for p in sorted((daemon.tree.round_dir(0) / "agents").glob("*.json"))]


@pytest.mark.slow
def test_worker_edits_smoke_tests_and_records(tmp_path, stub, os_sandbox):
    daemon = claude_daemon(tmp_path)
    sandbox = daemon.tree.sandbox(0, 1)
    stub.add("r000/cand-01", good_worker(sandbox))
    anchor, worker = propose(daemon)
    assert anchor.status == worker.status == "proposed" and anchor.mutation is None
    assert worker.mutation == "data.mixture.bits:up", worker
    assert worker.recipe_diff["data.mixture.bits"][1] == 3 * worker.recipe_diff["data.mixture.bits"][0]
    assert worker.proposal.hypothesis.startswith("more bits practice")
    events = read_jsonl(daemon.tree.trace(0, 1))
    smoke = [e for e in events if e["event"] == "smoke-test"]
    assert smoke and smoke[0]["returncode"] == 0, smoke
    assert [e["tool"] for e in events if e["event"] == "tool-call"] == [
        "Read", "Edit", "mcp__hpc__smoke_test", "mcp__hpc__record_proposal"]
    assert not [e for e in events if e["event"] in ("tool-denied", "tool-error")]
    (session,) = sessions(daemon)
    assert session.ok and session.role == "worker" and session.who == "cand-01"
    assert session.input_tokens > 0 and session.output_tokens > 0 and session.cost_usd > 0 and session.turns >= 5
    assert not (sandbox / ".smoke").exists()


@pytest.mark.slow
def test_worker_cannot_write_measured_fields_or_skip_its_axis(tmp_path, stub):
    daemon = claude_daemon(tmp_path)
    stub.add("r000/cand-01", [
        [mcp("hpc", "record_proposal", hypothesis="h", axis="mixture", rationale="r", expected_effect="e",
             dev=0.99, leaderboard=0.99)],
        [mcp("hpc", "record_proposal", hypothesis="h", axis="capacity", rationale="r", expected_effect="e")],
        [text("giving up")],
    ])
    _, worker = propose(daemon)
    assert worker.status == "failed" and "without record_proposal" in worker.failure
    assert worker.measured.dev is None and worker.measured.leaderboard is None
    events = read_jsonl(daemon.tree.trace(0, 1))
    refused = [e for e in events if e["event"] == "proposal-refused"]
    assert refused and refused[0]["fields"] == ["dev", "leaderboard"]
    denied = [e for e in events if e["event"] == "tool-denied"]
    assert [e["layer"] for e in denied] == ["tool", "tool"] and "assigned axis" in denied[1]["reason"]


@pytest.mark.slow
def test_session_error_fails_the_candidate_not_the_round(tmp_path, stub):
    daemon = claude_daemon(tmp_path, max_turns=2)
    stub.add("r000/cand-01", [[mcp("hpc", "job_logs")], [mcp("hpc", "job_logs")], [mcp("hpc", "job_logs")]])
    anchor, worker = propose(daemon)
    assert anchor.status == "proposed" and worker.status == "failed"
    assert "error_max_turns" in worker.failure
    (session,) = sessions(daemon)
    assert session.outcome == "error_max_turns" and session.is_error


def test_a_recipe_left_as_a_link_to_the_held_out_split_fails_the_candidate(tmp_path, stub, os_sandbox):
    """The daemon reads what the worker left as untrusted: the link is not followed, not written through
    and nothing behind it reaches the manifest, the sandbox or a debug turn."""
    daemon = claude_daemon(tmp_path)
    sandbox, heldout = daemon.tree.sandbox(0, 1), daemon.tree.heldout_split
    stub.add("r000/cand-01", [
        [tool_use("Bash", command="ln -sf ../../../../leader''board/heldout.jsonl recipe.yaml && ls -l recipe.yaml")],
        [minimal_proposal()],
        [text("done")]])
    split = heldout.read_bytes()
    anchor, worker = propose(daemon)
    assert anchor.status == "proposed" and worker.status == "failed", worker
    assert "no readable recipe" in worker.failure and "symbolic link" in worker.failure
    assert (sandbox / "recipe.yaml").is_symlink() and heldout.read_bytes() == split
    assert "answer" not in (daemon.tree.manifest(0, 1)).read_text()


def session_starts(daemon: Daemon) -> list[dict]:
    return [e for e in read_jsonl(daemon.tree.trace(0, 1)) if e["event"] == "session-start"]


def test_a_background_command_dies_with_its_session(tmp_path, stub, os_sandbox):
    daemon = claude_daemon(tmp_path)
    stub.add("r000/cand-01", [
        [tool_use("Bash", command="sleep 300", run_in_background=True)],
        [minimal_proposal()],
        [text("done")]])
    started = time.monotonic()
    _anchor, worker = propose(daemon)
    assert worker.status == "proposed" and time.monotonic() - started < 120
    (start,) = session_starts(daemon)
    assert reaper.marked(start["marker"]) == []  # the CLI and its background shell are gone


def test_a_session_past_its_wall_clock_cap_is_killed_and_fails_its_candidate(tmp_path, stub):
    daemon = claude_daemon(tmp_path, max_session_minutes=0.1)  # 6 s
    stub.add("r000/cand-01", [Turn([text("thinking")], delay_s=60)])
    started = time.monotonic()
    _anchor, worker = propose(daemon)
    assert time.monotonic() - started < 45, "the session outlived its cap"
    assert worker.status == "failed" and "error_max_wall_time" in worker.failure, worker.failure
    (session,) = sessions(daemon)
    assert session.outcome == "error_max_wall_time" and 6 <= session.wall_s < 45
    assert reaper.marked(session_starts(daemon)[0]["marker"]) == []


def test_what_a_killed_daemon_s_session_left_running_is_reaped_before_the_rerun(tmp_path, stub):
    daemon = claude_daemon(tmp_path)
    marker = reaper.new_marker()  # a session the daemon was killed during, and the command it left running
    daemon.tree.trace(0, 1).parent.mkdir(parents=True, exist_ok=True)
    Trace(daemon.tree.trace(0, 1)).log("agent:worker", "session-start", who="cand-01", marker=marker)
    cap = pids.Cap.create(marker, 64)
    if cap.path is None:  # without a cgroup, what the session left is found by the marker in its environment
        orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, reaper.MARKER: marker}, start_new_session=True)
    else:  # in its cgroup, even a process that cleared its environment and left the session's
        orphan = subprocess.Popen(cap.argv(["env", "-i", "sleep", "300"]), start_new_session=True)
    try:
        stub.add("r000/cand-01", [[minimal_proposal()], [text("done")]])
        _anchor, worker = propose(daemon)
        events = read_jsonl(daemon.tree.trace(0, 1))
        assert orphan.wait(timeout=10) == -signal.SIGKILL, events
    finally:
        orphan.kill()
    assert worker.status == "proposed", (worker, events)
    assert [e["processes"] for e in events if e["event"] == "session-reaped"] == [1], events


def test_denials_are_counted_from_how_the_call_ended_not_from_what_it_printed(tmp_path, stub, os_sandbox):
    daemon = claude_daemon(tmp_path)
    stub.add("r000/cand-01", [
        [tool_use("Bash", command="echo 'Read-only file system'; echo 'Permission denied'")],  # succeeded
        [tool_use("Bash", command="echo x > /etc/hpc-aevo-probe")],  # refused by the OS sandbox
        [tool_use("Bash", command="exit 3")],  # failed on its own
        [text("done")]])
    propose(daemon)
    events = [e for e in read_jsonl(daemon.tree.trace(0, 1)) if e["event"] in ("tool-result", "tool-denied", "tool-error")]
    assert [(e["event"], e.get("layer")) for e in events] == [
        ("tool-result", None), ("tool-denied", "os-sandbox"), ("tool-error", None)], events
    (session,) = sessions(daemon)
    assert session.denials == 1


@pytest.mark.slow
def test_the_round_budget_stops_sessions_and_fails_their_candidates_cleanly(tmp_path, stub):
    daemon = claude_daemon(tmp_path, workers=2, max_budget_usd_per_round=0.01)
    stub.add("r000/cand-01", good_worker(daemon.tree.sandbox(0, 1)))
    stub.add("r000/cand-02", [[text("idle")]])
    anchor, first, second = propose(daemon)
    assert anchor.status == "proposed" and first.status == second.status == "failed"
    assert "error_max_budget_usd" in first.failure and "agent budget spent" in second.failure
    by_who = {s.who: s for s in sessions(daemon)}
    assert by_who["cand-01"].outcome == "error_max_budget_usd" and by_who["cand-01"].cost_usd > 0.01
    assert by_who["cand-02"].outcome == "refused_round_budget" and by_who["cand-02"].cost_usd == 0
    assert not stub.answered("r000/cand-02")


def test_without_an_api_key_the_claude_backend_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    monkeypatch.setattr("hpc_aevo.roles.claude.session._api_key", None)
    path = write_campaign(tmp_path, agents={"backend": "claude"})
    with pytest.raises(ConfigError) as err:
        Daemon(load_campaign(path))
    assert str(err.value).count("\n") == 0 and str(path) in str(err.value) and "agents.backend" in str(err.value)
    assert "no ANTHROPIC_API_KEY" in str(err.value)


def test_credentials_leave_the_environment_and_an_oauth_token_is_refused(tmp_path, monkeypatch):
    """Jobs and sandboxed Bash inherit the daemon's environment: no credential may stay in it. An OAuth
    token, which the CLI reads from its environment only, is refused rather than handed to Bash."""
    from hpc_aevo.roles.claude import session

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-for-a-proxy")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "oauth-token")
    monkeypatch.setattr("hpc_aevo.roles.claude.session._api_key", None)
    session.take_api_key()
    assert "ANTHROPIC_AUTH_TOKEN" not in os.environ and "CLAUDE_CODE_OAUTH_TOKEN" not in os.environ
    assert session.session_env_ok() is None and session._api_key == "token-for-a-proxy"
    monkeypatch.setattr("hpc_aevo.roles.claude.session._api_key", None)
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "oauth-token")
    path = write_campaign(tmp_path, agents={"backend": "claude"})
    with pytest.raises(ConfigError) as err:
        Daemon(load_campaign(path))
    assert str(err.value).count("\n") == 0 and "CLAUDE_CODE_OAUTH_TOKEN is not used" in str(err.value)


@pytest.mark.slow
def test_without_an_os_sandbox_no_shell_is_offered(tmp_path, stub, monkeypatch):
    monkeypatch.setattr("hpc_aevo.sandbox.agents.os_sandbox_available", lambda: False)
    daemon = claude_daemon(tmp_path)
    stub.add("r000/cand-01", [[tool_use("Bash", command="echo hi > escaped.txt")], [mcp("hpc", "smoke_test")],
                              [text("no shell")]])
    _, worker = propose(daemon)
    assert worker.status == "failed"  # no proposal recorded
    events = read_jsonl(daemon.tree.trace(0, 1))
    assert [e["tools"] for e in events if e["event"] == "session-start"] == [["Read", "Edit", "Write", "Glob", "Grep"]]
    denied = [e for e in events if e["event"] == "tool-denied"]
    assert [(e["tool"], e["layer"]) for e in denied] == [("Bash", "not-offered"), ("mcp__hpc__smoke_test", "tool")]
    assert "No such tool available" in denied[0]["reason"] and not (daemon.tree.sandbox(0, 1) / "escaped.txt").exists()


@pytest.mark.slow  # the CLI waits about 20 s before it asks again without streaming
def test_a_broken_stream_is_answered_again_as_plain_json(tmp_path, stub):
    daemon = claude_daemon(tmp_path)
    stub.add("r000/cand-01", [Turn([mcp("hpc", "job_logs")], broken_stream=True), [text("done")]])
    propose(daemon)
    streamed = [r.get("stream", False) for r in stub.requests if "r000/cand-01" in json.dumps(r["messages"][:1])]
    assert False in streamed, streamed  # the CLI fell back to a non-streaming request, which the stub served
    events = read_jsonl(daemon.tree.trace(0, 1))
    assert [e["tool"] for e in events if e["event"] == "tool-call"] == ["mcp__hpc__job_logs"]
    assert [e["outcome"] for e in events if e["event"] == "session-end"] == ["success"]
