"""What confines a worker to its sandbox: permission rules, the OS sandbox for Bash, a path guard.

Three layers, strongest first:
1. Permission rules with permission_mode "dontAsk": file tools are allowed on the sandbox only and
   everything not allowed is denied without asking. Protected paths are also denied explicitly.
2. The CLI's OS sandbox (bubblewrap) for Bash: writes only in the sandbox, the state tree and the
   constitution unreadable (the sandbox re-opened), no network; `failIfUnavailable`, so Bash never
   runs unconfined. Where bubblewrap cannot run, Bash is not offered at all.
3. A PreToolUse guard (defence in depth): a file tool's path must resolve, symlinks followed, inside
   the sandbox; a Bash command naming a protected path or a scheduler command is refused. String
   checks on shell commands are bypassable (quoting, python one-liners): only layers 1-2 confine Bash.
The worker's own smoke test runs the sandbox's code too, so it runs under bubblewrap as well.
Beneath all three, the CLI itself runs powerless (`bwrap.powerless`, started by roles/claude/session.py):
no capabilities and read-only kernel knobs even when the daemon is root, so its Bash has neither.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aevo.sandbox import bwrap

FILE_TOOLS = {"Read": "file_path", "Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path",
              "NotebookEdit": "notebook_path", "Glob": "path", "Grep": "path"}
SCHEDULER_COMMANDS = ("sbatch", "scancel", "srun", "salloc", "scontrol", "sacctmgr")
NETWORK_COMMANDS = ("curl", "wget", "nc", "ssh", "scp")
_WILDCARD = re.compile(r"[*?\[{]")
_COMMAND_WORD = re.compile(r"(?:^|[\s;&|()`$'\"])(" + "|".join(SCHEDULER_COMMANDS) + r")(?=$|[\s;&|()`'\"])")


@functools.lru_cache(maxsize=1)
def os_sandbox_available() -> bool:
    """Whether bubblewrap (and socat, which the CLI's network proxy needs) can confine a command here."""
    return shutil.which("socat") is not None and bwrap.available("--unshare-net")


@dataclass
class Confinement:
    """A worker's world: its sandbox, and the paths it must neither read nor write."""

    sandbox: Path
    protected: list[Path]  # what the worker must not see (state tree, constitution, substrate); the sandbox excepted
    bash: bool = field(default_factory=lambda: os_sandbox_available())
    max_processes: int = 1024  # what code run in the sandbox may run at once, threads included (agents.max_processes)

    def __post_init__(self) -> None:
        self.sandbox = Path(os.path.realpath(self.sandbox))
        self.protected = [Path(os.path.realpath(p)) for p in self.protected]

    @property
    def tools(self) -> list[str]:
        return ["Read", "Edit", "Write", "Glob", "Grep"] + (["Bash"] if self.bash else [])

    def allow_rules(self) -> list[str]:
        rules = [f"Read(/{self.sandbox}/**)", f"Edit(/{self.sandbox}/**)"]
        return rules + (["Bash"] if self.bash else [])

    @functools.cached_property
    def denied(self) -> list[Path]:
        """The protected paths with the sandbox carved out: a protected directory that holds the sandbox
        (the state tree) is replaced by its entries, down the sandbox's ancestors, so that a deny rule
        (which beats any allow rule) never covers the sandbox itself."""
        out: list[Path] = []
        pending = list(self.protected)
        while pending:
            p = pending.pop()
            if p in self.sandbox.parents:
                pending += [child for child in p.iterdir() if child != self.sandbox]
            elif p.exists() and p != self.sandbox and self.sandbox not in p.parents:
                out.append(p)
        return sorted(set(out))

    def deny_rules(self) -> list[str]:
        rules = [f"{tool}(/{p}{'/**' if p.is_dir() else ''})" for p in self.denied for tool in ("Read", "Edit")]
        return rules + [f"Bash({c}:*)" for c in SCHEDULER_COMMANDS + NETWORK_COMMANDS]

    def sandbox_settings(self) -> dict[str, Any] | None:
        if not self.bash:
            return None
        return {"enabled": True, "failIfUnavailable": True, "autoAllowBashIfSandboxed": True,
                "allowUnsandboxedCommands": False,
                "filesystem": {"allowWrite": [str(self.sandbox)],
                               "denyRead": [str(p) for p in (*self.denied, *bwrap.host_secrets())]},
                "network": {"allowedDomains": [], "allowLocalBinding": False}}

    def inside(self, path: str | Path) -> bool:
        real = Path(os.path.realpath(Path(self.sandbox, path)))  # relative paths are relative to the sandbox
        return real == self.sandbox or self.sandbox in real.parents

    def guard(self, tool: str, tool_input: dict[str, Any]) -> str | None:
        """Why this tool call must not run (None: let the permission rules decide)."""
        if tool in FILE_TOOLS:
            base = str(tool_input.get(FILE_TOOLS[tool]) or ".")
            pattern = str(tool_input.get({"Glob": "pattern", "Grep": "glob"}.get(tool, ""), "") or "")
            for path in (base, os.path.join(base, _WILDCARD.split(pattern, 1)[0])):  # a pattern may climb out too
                if not self.inside(path):
                    return (f"{tool} on {path} refused: it resolves to {os.path.realpath(Path(self.sandbox, path))}, "
                            f"outside this worker's sandbox {self.sandbox}")
        if tool == "Bash":
            command = str(tool_input.get("command", ""))
            named = [str(p) for p in self.denied if str(p) in command]
            if named:
                return f"Bash command refused: it names protected path(s) {', '.join(named)}"
            scheduler = _COMMAND_WORD.search(command)
            if scheduler:
                return f"Bash command refused: the daemon alone talks to the scheduler ({scheduler.group(1)})"
        return None

    def bwrap_argv(self, argv: list[str]) -> list[str]:
        """`argv` under bubblewrap, as strict as a job stage or stricter: the filesystem read-only, the
        protected paths, the host's secrets and its socket directories hidden, the sandbox writable, no
        network, no capabilities, its own pid namespace."""
        return bwrap.command(argv, self.sandbox, self.denied, [(self.sandbox, True)], strict=True)
