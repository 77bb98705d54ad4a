"""State tree layout, atomic and locked record writes, and the one-daemon-per-campaign lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpc_aevo.state.records import Record, RecordError
from hpc_aevo.state.lock import CampaignBusy, DaemonInfo, DaemonLock
from hpc_aevo.state.tree import CampaignRecord, StateTree

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Blob(Record):
    SCHEMA = "test.blob"

    n: int
    payload: str


@dataclass
class Counter(Record):
    SCHEMA = "test.counter"

    count: int = 0


def test_layout(tmp_path):
    tree = StateTree(tmp_path / "state")
    assert tree.default_dir == tmp_path / "state" / "default"
    assert tree.substrate_manifest == tmp_path / "state" / "default.manifest.json"
    assert tree.policy(2) == tmp_path / "state" / "rounds" / "r002" / "policy.json"
    assert tree.sandbox(1, 3) == tmp_path / "state" / "rounds" / "r001" / "cand-03" / "sandbox"
    assert tree.eval_result(12, 0).parent.name == "cand-00" and tree.eval_result(12, 0).parent.parent.name == "r012"
    assert tree.rounds() == []
    for name in ("r002", "r000", "r010", "notes", ".r001.tmp"):
        (tree.root / "rounds" / name).mkdir(parents=True)
    (tree.root / "rounds" / "r003").write_text("a file, not a round")
    assert tree.rounds() == [0, 2, 10]


def test_relative_root_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert StateTree("logs/x").campaign_record == tmp_path / "logs" / "x" / "campaign.json"


def test_reader_never_sees_a_partial_record(tmp_path):
    path = tmp_path / "blob.json"
    Blob(n=0, payload="a" * 200_000).save(path)
    done = threading.Event()
    seen, errors = set(), []

    def write() -> None:
        for n in range(1, 60):
            Blob(n=n, payload=("ab"[n % 2]) * 200_000).save(path)
        done.set()

    def read() -> None:
        while not done.is_set():
            try:
                blob = Blob.load(path)
            except RecordError as exc:
                errors.append(exc)
                return
            assert blob.payload == ("ab"[blob.n % 2] if blob.n else "a") * 200_000
            seen.add(blob.n)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) > 1 and Blob.load(path).n == 59


def test_temp_file_left_by_a_killed_writer_is_ignored(tmp_path):
    path = tmp_path / "blob.json"
    Blob(n=1, payload="x").save(path)
    (tmp_path / ".blob.json.k3j2.tmp").write_text('{"schema": "test.blob", "n": 2, "pay')
    assert Blob.load(path).n == 1
    Blob(n=3, payload="y").save(path)
    assert Blob.load(path).n == 3


def _increment(path: str, times: int) -> None:
    for _ in range(times):
        with Counter.locked_update(Path(path), Counter()) as counter:
            counter.count += 1


def test_locked_update_under_concurrency(tmp_path):
    path = tmp_path / "counter.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_increment, args=(str(path), 50)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert Counter.load(path).count == 200


def test_locked_update_sees_another_writer_and_forgets_a_failed_update(tmp_path):
    """locked_update reuses the record this process saved last, but never past a file another
    process replaced, and never one a failed update left half-changed."""
    path = tmp_path / "counter.json"
    with Counter.locked_update(path, Counter()) as counter:
        counter.count = 1
    Counter(count=10).save(path)  # another writer's atomic rename
    with Counter.locked_update(path, Counter()) as counter:
        assert counter.count == 10
        counter.count = 11
    with pytest.raises(RuntimeError), Counter.locked_update(path, Counter()) as counter:
        counter.count = 99
        raise RuntimeError("the caller fails before the save")
    with Counter.locked_update(path, Counter()) as counter:
        assert counter.count == 11
    assert Counter.load(path).count == 11


def test_record_load_error_names_file_and_key(tmp_path):
    path = tmp_path / "campaign.json"
    good = CampaignRecord(name="demo", campaign_file="/c.yaml", config_sha256="a", substrate_sha256="b",
                          constitution_sha256="c", created_at="2025-01-01T00:00:00+00:00")
    good.save(path)
    assert CampaignRecord.load(path) == good
    data = json.loads(path.read_text())
    data["created_at"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=rf"^{path}: created_at: expected a string \(got int 5\)$"):
        CampaignRecord.load(path)
    path.write_text(json.dumps({**data, "schema": "hpc_aevo.policy"}))
    with pytest.raises(RecordError, match=rf"^{path}: schema: expected 'hpc_aevo.campaign'"):
        CampaignRecord.load(path)


def test_daemon_lock_is_exclusive_and_released_on_exit(tmp_path):
    tree = StateTree(tmp_path / "state")
    with DaemonLock(tree) as info:
        assert DaemonInfo.load(tree.daemon_info) == info
        assert (info.pid, info.host) == (os.getpid(), socket.gethostname())
        with pytest.raises(CampaignBusy) as caught:
            DaemonLock(tree).__enter__()
        assert str(caught.value) == (f"campaign {tree.root} is already driven by pid {info.pid} on host {info.host} "
                                     f"since {info.started_at}; stop it first")
    assert not tree.daemon_info.exists()
    with DaemonLock(tree):
        pass


HOLD_LOCK = """
import sys, time
from hpc_aevo.state.lock import DaemonLock
from hpc_aevo.state.tree import StateTree
with DaemonLock(StateTree(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_daemon_lock_released_when_holder_is_killed(tmp_path):
    tree = StateTree(tmp_path / "state")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tree.root)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        busy = rf"already driven by pid {holder.pid} on host .* since .*; stop it first"
        with pytest.raises(CampaignBusy, match=busy):
            DaemonLock(tree).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        holder.stdout.close()
    assert tree.daemon_info.exists()  # stale after SIGKILL, and harmless:
    with DaemonLock(tree) as info:
        assert DaemonInfo.load(tree.daemon_info) == info
