"""A damaged state tree stops the daemon in one line, exit 2, before anything is submitted, and nothing in
the tree changes. The tree is a campaign stopped just before its first training (a killed daemon), each
record of it damaged in turn: truncated, garbage, the wrong JSON type, another schema, deleted, or
replaced by a directory or a FIFO. Fast: nothing trains (a submission would fail the test).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from bounded import within
from tiny_campaign import remove, run_daemon, state_snapshot, truncate, write_campaign

from hpc_aevo.cli.round import main as round_main
from hpc_aevo.jobs.backends.local import LocalScheduler

RECORDS = ["campaign.json", "default.manifest.json", "leaderboard/ledger.json", "rounds/r000/policy.json",
           "rounds/r000/round.json", "rounds/r000/cand-00/manifest.json", "rounds/r000/cand-01/manifest.json"]


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage")


def _json_list(path: Path) -> None:
    path.write_text("[1, 2, 3]\n")


def _other_schema(path: Path) -> None:
    path.write_text('{"schema": "hpc_aevo.something_else", "version": 1}\n')


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


DAMAGES = [truncate, _garbage, _json_list, _other_schema, _directory, _fifo]
# Lost, not damaged: each is something the started campaign spent or decided.
LOST = ["leaderboard/ledger.json", "leaderboard/heldout.jsonl", "default.manifest.json", "rounds/r000/policy.json",
        "rounds/r000/cand-01/manifest.json", "leaderboard"]
CASES = [(f"{d.__name__.lstrip('_')} {r}", r, d) for r in RECORDS for d in DAMAGES] + \
        [(f"lost {r}", r, remove) for r in LOST]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A campaign killed just before its first training: forked, proposed, nothing submitted."""
    root = tmp_path_factory.mktemp("stopped")
    campaign = write_campaign(root)
    assert run_daemon(campaign, env={"HPC_AEVO_CRASH_AT": "r0:train:start"}).returncode == -signal.SIGKILL
    return root


@pytest.mark.xdist_group("test_fuzz_state")
@pytest.mark.parametrize("damaged, damage", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damage_stops_the_daemon_in_one_line_and_changes_nothing(stopped, tmp_path, monkeypatch, capsys, damaged,
                                                                   damage):
    shutil.copytree(stopped, tmp_path / "c", symlinks=True)
    campaign = tmp_path / "c" / "campaign.yaml"
    campaign.write_text(campaign.read_text().replace(str(stopped), str(tmp_path / "c")))
    damage(tmp_path / "c" / "state" / damaged)
    before = state_snapshot(tmp_path / "c" / "state")

    def no_submission(*args, **kwargs):
        raise AssertionError(f"the daemon went on to submit with {damaged} damaged")

    monkeypatch.setattr(LocalScheduler, "submit", no_submission)
    code = within(60, lambda: round_main([str(campaign)]), f"the daemon with {damaged} damaged")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert state_snapshot(tmp_path / "c" / "state") == before


def test_the_cases_are_many():
    assert len(CASES) >= 30, len(CASES)
