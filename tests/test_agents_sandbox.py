"""The sandbox of the worker's smoke test (it runs the worker's own train.py) is as strict as a job
stage or stricter: Claude logins, the agents' key files, munge and the host's Unix sockets are hidden
wherever they live, no capabilities even as root, /proc/sys read-only, and its output bounded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from host import require

from hpc_aevo.roles.claude.worker import WorkerTools
from hpc_aevo.roles.interface import WorkerTask
from hpc_aevo.sandbox import bwrap, pids
from hpc_aevo.sandbox.agents import Confinement
from hpc_aevo.state.trace import Trace

PROBE = r'''
import json, os, socket, sys
found = {}
def attempt(name, call):
    try:
        found[name] = call()
    except Exception as exc:
        found[name] = "refused: " + type(exc).__name__
attempt("claude login", lambda: open(sys.argv[1]).read())
attempt("agent key", lambda: open(sys.argv[2]).read())
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[3])
    return "connected"
attempt("host socket", connect)
attempt("kernel knob", lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/bin/true"))
attempt("write its own agent config", lambda: open(".mcp.json", "w").write("{}"))
found["capabilities"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(found))
'''


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A daemon user's home with a Claude login, a key file in the host's temp dir, a socket under /run."""
    require(bwrap.available(), "needs bubblewrap")
    home, keys, sandbox = tmp_path / "home", tmp_path / "tmpdir" / "hpc-agent-keys-0" / "s1", tmp_path / "sandbox"
    for d in (home / ".claude", keys, sandbox):
        d.mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text("login")
    (keys / "api-key").write_text("sk-ant-secret")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmpdir"))
    require(os.access("/run", os.W_OK), "needs to create a socket under /run (root)")
    path = Path("/run") / f"hpc-aevo-test-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    yield sandbox, home / ".claude" / ".credentials.json", keys / "api-key", path
    server.close()
    path.unlink()


def test_the_smoke_test_sandbox_hides_logins_keys_and_host_sockets(host):
    sandbox, login, key, sock = host
    (sandbox / "probe.py").write_text(PROBE)
    argv = Confinement(sandbox, protected=[]).bwrap_argv([sys.executable, "probe.py", str(login), str(key), str(sock)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for name in ("claude login", "agent key", "host socket", "kernel knob"):
        assert str(found[name]).startswith("refused"), (name, found)
    assert found["capabilities"] == "0000000000000000"  # none, even when the daemon runs as root


def test_the_clis_bash_sandbox_is_told_to_hide_the_same(host):
    sandbox, login, key, _ = host
    denied = Confinement(sandbox, protected=[], bash=True).sandbox_settings()["filesystem"]["denyRead"]
    assert str(login.parent) in denied and str(key.parents[2]) in denied  # ~/.claude and the host's temp dir


def test_the_smoke_tool_bounds_its_output_and_removes_planted_agent_config(tmp_path):
    require(bwrap.available(), "needs bubblewrap")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "train.py").write_text(
        "import os, sys\nos.makedirs('.claude', exist_ok=True)\nopen('.claude/settings.json', 'w').write('{}')\n"
        "open('.mcp.json', 'w').write('{}')\nfor _ in range(200_000): print('x' * 100)\nprint('the end')\n")
    trace = Trace(tmp_path / "trace.jsonl")
    task = WorkerTask(round=0, candidate=1, name="cand-01", role="worker", axis="mixture", seed=1, sandbox=sandbox,
                      policy=None, trace=trace)
    tools = WorkerTools(task, Confinement(sandbox, protected=[], bash=True), tmp_path / "jobs")
    answer = tools.smoke_test(2)
    text = answer["content"][0]["text"]
    assert text.startswith("exit code 0") and text.rstrip().endswith("the end") and len(text) < 10_000
    assert not (sandbox / ".claude").exists() and not (sandbox / ".mcp.json").exists()
    removed = [e for e in trace.events() if e["event"] == "agent-config-removed"]
    assert len(removed) == 1 and {Path(p).name for p in removed[0]["paths"]} == {".claude", ".mcp.json"}


def test_the_clis_own_layer_has_no_capabilities_and_read_only_kernel_knobs_and_nests_a_sandbox(tmp_path):
    """What `bwrap.powerless` gives the CLI, as root or not: and the CLI's OS sandbox still starts inside it
    (a user namespace of its own, the layer's /proc bound: what the CLI does with enableWeakerNestedSandbox)."""
    require(bwrap.available("--unshare-user", "--uid", str(os.getuid() or bwrap.NOBODY)), "needs bubblewrap with user namespaces")
    probe = ("grep CapEff /proc/self/status; test -w /proc/sys/kernel/hostname && echo KNOB-WRITABLE; "
             "test -w /proc/sysrq-trigger && echo SYSRQ-WRITABLE; echo x > /sys/fs/cgroup/x 2>/dev/null && echo SYS-WRITABLE; "
             "bwrap --ro-bind / / --dev /dev --bind /proc /proc --unshare-user --unshare-pid --unshare-net "
             "--cap-drop ALL sh -c 'grep CapEff /proc/self/status; echo nested'")
    done = subprocess.run(bwrap.powerless(["sh", "-c", probe], tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["CapEff:\t0000000000000000", "CapEff:\t0000000000000000", "nested", ""], done


def test_a_pids_cgroup_caps_forks_and_ends_what_left_its_session():
    cap = pids.Cap.create(f"test-{uuid.uuid4().hex}", 64)
    if cap.path is None:
        pytest.skip(cap.why)
    bomb = ("import os, sys\nn = 0\nfor _ in range(500):\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        os.setsid()\n        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
            "        os.execvp('sleep', ['sleep', '300'])\n    n += 1\n"
            "print(n)")
    try:
        done = subprocess.run(cap.argv(["env", "-i", sys.executable, "-c", bomb]), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=60, start_new_session=True)
        assert 0 < int(done.stdout) < 64 and len(cap.pids()) == int(done.stdout)  # its sleeps outlived it
    finally:
        killed = cap.close()
    assert killed == int(done.stdout) and cap.pids() == [] and not cap.path.exists()
