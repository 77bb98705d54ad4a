"""Steering by editing the campaign YAML while the daemon runs (no restart): what applies at once, what waits
for the next round, what is refused in one line while the daemon carries on."""

from __future__ import annotations

import yaml

from hpc_aevo.campaign.config import load_campaign
from hpc_aevo.campaign.edits import Edit
from hpc_aevo.loop.daemon import Daemon
from hpc_aevo.state.trace import Trace
from tiny_campaign import write_campaign


def edit(path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def daemon_of(tmp_path):
    path = write_campaign(tmp_path, rounds=2, workers=1)
    lines: list[str] = []
    return path, Daemon(load_campaign(path), print_line=lines.append), lines


def test_budget_quota_retries_scheduler_and_rounds_apply_at_the_next_phase_and_are_traced(tmp_path):
    path, daemon, lines = daemon_of(tmp_path)
    daemon.steer(round_start=False)
    assert lines == []  # nothing edited, nothing said

    def change(data):
        data["rounds"] = 5
        data["budget"] = {"cpu_hours": 2.5}
        data["leaderboard"]["quota"] = 20
        data["retries"] = {"max_attempts": 3}
        data["scheduler"]["max_parallel"] = 1
        data["scheduler"]["stages"]["score"]["timeout_min"] = 3

    edit(path, change)
    daemon.steer(round_start=False)
    assert len(lines) == 1 and "campaign edit applied:" in lines[0], lines
    for said in ("rounds 2 -> 5", "budget.cpu_hours 2.0 -> 2.5", "leaderboard.quota", "retries.max_attempts 2 -> 3",
                 "scheduler.max_parallel", "scheduler.stages.score.timeout_min 10 -> 3"):
        assert said in lines[0], (said, lines[0])
    c = daemon.campaign
    assert (c.rounds, c.budget.cpu_hours, c.leaderboard.quota, c.retries.max_attempts) == (5, 2.5, 20, 3)
    assert daemon.scheduler.max_parallel == 1 and daemon.leaderboard.quota == 20  # rebuilt from the new values
    assert daemon.scheduler.timeout_min(daemon.candidate(0, 0).spec(1)) == 20  # train + eval, as before
    [event] = Trace(daemon.tree.campaign_trace).events()
    assert event["event"] == "campaign-edited" and event["changes"]["rounds"] == [2, 5]


def test_an_edit_of_what_defines_the_campaign_is_refused_once_and_nothing_changes(tmp_path):
    path, daemon, lines = daemon_of(tmp_path)
    edit(path, lambda data: data.update(name="renamed", rounds=7))
    for _ in range(3):
        daemon.steer(round_start=True)
    assert len(lines) == 1 and "campaign edit not taken: name cannot change while the campaign runs" in lines[0]
    assert "carrying on with the values it has" in lines[0] and daemon.campaign.rounds == 2  # the whole edit waits
    path.write_text("rounds: [\n")
    daemon.steer(round_start=True)
    assert len(lines) == 2 and "campaign edit not taken:" in lines[1] and str(path) in lines[1] and "\n" not in lines[1]
    assert daemon.campaign.name == "tiny"


def test_the_candidate_counts_wait_for_the_next_round(tmp_path):
    path, daemon, lines = daemon_of(tmp_path)
    edit(path, lambda data: data.update(workers_per_round=3, rounds=3))
    daemon.steer(round_start=False)  # mid-round: rounds applies, the counts wait (a forked round keeps its own)
    daemon.steer(round_start=False)
    assert daemon.campaign.rounds == 3 and daemon.campaign.workers_per_round == 1
    assert "takes effect when the next round starts" in lines[-1] and len(lines) == 2, lines
    daemon.steer(round_start=True)
    assert daemon.campaign.workers_per_round == 3 and "workers_per_round 1 -> 3" in lines[-1]


def test_an_edit_lists_each_changed_key(tmp_path):
    a = load_campaign(write_campaign(tmp_path / "a", rounds=1))
    b = load_campaign(write_campaign(tmp_path / "b", rounds=2))
    changed = Edit.between(a, b)
    assert set(changed.changes) == {"rounds", "state_root", "policy.initial"} and changed.fixed == ["policy.initial", "state_root"]
