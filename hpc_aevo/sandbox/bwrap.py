"""Bubblewrap command lines: the one builder for every process that runs a sandbox's code.

An agent's smoke test and a candidate's job stages both run code a worker wrote, so both run
under `command()`: the filesystem read-only, the hidden paths replaced by empty ones, only the
bound paths visible again beneath them (the binds come from the real filesystem, so a bound
directory inside a hidden one is still seen), a private /tmp, /proc of its own pid namespace
(no other process's environment to read), no capabilities (bubblewrap run by root would keep them:
a job runs as root under slurmstepd), and the confined process killed when its parent dies.

Bubblewrap neither forwards signals to the command nor survives them, so a job runs it through
`relay`: `python hpc_aevo/bwrap.py BWRAP-ARGV...` starts bwrap with those signals ignored and
passes SIGTERM, SIGINT and SIGUSR2 on to the confined command (the trainer's "checkpoint and
exit" signals). The confined command inherits the ignored dispositions: the trainer installs its
own handlers; the evaluator ends by SIGKILL. This file uses the standard library only, so it
runs as a script wherever the job runs.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

SECRET_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_")  # the agents' API keys and OAuth tokens
ACCELERATORS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/infiniband")  # GPUs and RDMA for training
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
# Writable by uid 0 even without capabilities (a job runs as root under slurmstepd): kernel.core_pattern
# alone would run a program as the host's root. Bubblewrap run by root leaves them writable.
KERNEL_KNOBS = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
# Hidden from every sandbox: scheduler auth (with munge a process can sign scheduler requests) and Claude
# logins, wherever the daemon's user keeps them; and the host's temp dir, where the agents' key files are.
HOST_SECRETS = ("/etc/munge", "/run/munge", "/var/run/munge", "~/.claude", "~/.claude.json")
# Hidden too with `strict` (agent tools): the host's Unix sockets (system bus, container and scheduler daemons).
SOCKET_DIRS = ("/run", "/var/run")
NOBODY = 65534  # the uid (and gid) a root daemon's agent CLI has in its user namespace


def scrubbed_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`env` without the agents' credentials: no sandbox code needs them."""
    return {k: v for k, v in env.items() if not k.startswith(SECRET_ENV_PREFIXES)}


@functools.lru_cache(maxsize=None)
def available(*flags: str) -> bool:
    """Whether bubblewrap runs here with these namespace flags (it needs user namespaces, or root)."""
    try:
        probe = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
                                "--as-pid-1", *flags, "true"], capture_output=True)
    except FileNotFoundError:
        return False
    return probe.returncode == 0


def host_secrets(strict: bool = False) -> list[Path]:
    """HOST_SECRETS (and with `strict` SOCKET_DIRS) as real paths where they exist, and the host's temp dir
    unless it is /tmp (private in every sandbox anyway)."""
    names = [*HOST_SECRETS, *(SOCKET_DIRS if strict else ()), tempfile.gettempdir()]
    return sorted({Path(os.path.realpath(os.path.expanduser(p))) for p in names
                   if os.path.lexists(os.path.expanduser(p))} - {Path("/tmp")})


def command(argv: list[str], chdir: Path, hidden: Iterable[Path], binds: Iterable[tuple[Path, bool]],
            network: bool = False, accelerators: bool = False, strict: bool = False) -> list[str]:
    """`argv` under bubblewrap: `hidden` paths and the host's secrets empty and read-only, `binds` ((path,
    writable)) visible again; without `network` in a network namespace of its own; with `accelerators`, the
    host's GPU and RDMA devices and its /dev/shm (NCCL between ranks) as well; with `strict`, the host's
    socket directories hidden too."""
    cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
           "--unshare-pid", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL", *_knobs_read_only()]
    if not network:
        cmd.append("--unshare-net")
    if accelerators:
        for device in sorted({d for pattern in ACCELERATORS for d in glob.glob(pattern)}):
            cmd += ["--dev-bind", device, device]
        cmd += ["--bind", "/dev/shm", "/dev/shm"]
    hidden = sorted({*hidden, *host_secrets(strict)})
    for p in hidden:
        cmd += ["--tmpfs", str(p)] if p.is_dir() else ["--ro-bind", "/dev/null", str(p)]
    for p, writable in binds:
        cmd += ["--bind" if writable else "--ro-bind", str(p), str(p)]
    for p in hidden:  # read-only once the binds have their mount points: a write there fails, not vanishes
        cmd += ["--remount-ro", str(p)] if p.is_dir() else []
    return cmd + ["--chdir", str(chdir), *argv]


def powerless(argv: list[str], chdir: Path) -> list[str]:
    """`argv` with its filesystem as it is but without power: for an agent's CLI, which confines its own tools
    (its OS sandbox nests inside this one). A user namespace where it is not root (a uid of its own is what
    lets the nested sandbox map one: root without capabilities could not), no capabilities, the kernel's
    knobs and /sys (cgroups) read-only, pid and IPC namespaces of its own: all it started dies with it, or
    with its parent."""
    uid, gid = os.getuid() or NOBODY, os.getgid() or NOBODY
    return ["bwrap", "--bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys",
            "--unshare-user", "--uid", str(uid), "--gid", str(gid), "--unshare-pid", "--unshare-ipc",
            "--die-with-parent", "--cap-drop", "ALL", *_knobs_read_only(), "--chdir", str(chdir), "--", *argv]


def _knobs_read_only() -> list[str]:
    return [arg for entry in KERNEL_KNOBS if os.path.exists(entry) for arg in ("--ro-bind", entry, entry)]


def relay(bwrap_argv: list[str]) -> int:
    """Run `bwrap_argv` (from `command`), passing RELAYED signals to the confined command; its exit code."""
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    for sig in RELAYED:
        signal.signal(sig, forward)
    read, write = os.pipe()
    process = subprocess.Popen([bwrap_argv[0], "--info-fd", str(write), *bwrap_argv[1:]], pass_fds=(write,),
                               preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in RELAYED])
    os.close(write)
    info = b""
    while (found := re.search(rb'"child-pid":\s*(\d+)', info)) is None:
        chunk = os.read(read, 4096)
        if not chunk:
            break
        info += chunk
    if found is not None:
        child.append(int(found.group(1)))
        for signum in pending:
            forward(signum, None)
    code = process.wait()
    os.close(read)  # only now: bwrap writes the rest of its info and would die of SIGPIPE
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(relay(sys.argv[1:]))
