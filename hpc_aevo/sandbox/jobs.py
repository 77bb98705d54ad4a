"""What a job's stage process sees: the train stage runs the worker's code, so it runs confined.

Under bubblewrap (`hpc_aevo/sandbox/bwrap.py`) the filesystem is read-only and the state tree, the
campaign's files (JobSpec.hidden), the agents' credentials and munge are hidden. Beneath the
hidden state tree a stage sees again only what it needs:
- train: its sandbox (read-only, the cwd) and its checkpoints/ (writable);
- eval: the frozen evaluator (read-only), its candidate's checkpoints and recipe.yaml (read-only)
  and the attempt's eval output directory (writable; the job moves eval.json into place).
The stage's log is written through the file handle the job passes it, so jobs/ stays hidden.
The host network stays (multi-node training needs its rendezvous, and `scontrol show hostnames`
still works: the train stage sees $SLURM_CONF, wherever it lies), but without munge no scheduler
command can authenticate.

`scheduler.confine_jobs`: `auto` confines where bubblewrap runs and otherwise runs the stage
unconfined, saying so in the stage's log and in the outcome record (`StageRun.confined`);
`required` fails the stage instead; `off` never confines.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.sandbox import bwrap
from hpc_aevo.state.contract import RECIPE_FILE

HOST_SECRETS = ("/etc/munge", "/run/munge", "~/.claude", "~/.claude.json")  # scheduler auth, Claude logins


class ConfinementUnavailable(RuntimeError):
    """`scheduler.confine_jobs: required`, and bubblewrap cannot run on this host."""


def eval_out_dir(spec: JobSpec) -> Path:
    """The eval stage's one writable directory (the candidate's directory holds its manifest)."""
    return spec.files.eval_out


def views(spec: JobSpec, stage: str) -> list[tuple[Path, bool]]:
    """(path, writable) of the hidden tree that `stage` sees."""
    if stage == "train":
        seen = [(spec.sandbox, False), (spec.checkpoints, True)]
        conf = os.environ.get("SLURM_CONF", "")
        if os.path.isfile(conf):  # a multi-node trainer finds its master with `scontrol show hostnames`
            seen.append((conf, False))  # the file alone: slurmdbd.conf may lie beside it
    else:
        seen = [(spec.evaluator_dir, False), (spec.checkpoints, False), (Path(spec.sandbox) / RECIPE_FILE, False),
                (eval_out_dir(spec), True)]
    return [(Path(os.path.realpath(p)), writable) for p, writable in seen]


def hidden(spec: JobSpec) -> list[Path]:
    """The daemon's list, the host's secrets and its temp dir (where the agents' keys are), as real paths."""
    paths = [*spec.hidden, *(os.path.expanduser(p) for p in HOST_SECRETS), tempfile.gettempdir()]  # keys_dir() is there
    return sorted({Path(os.path.realpath(p)) for p in paths if os.path.lexists(p)} - {Path("/tmp")})  # /tmp: private


def confine(spec: JobSpec, stage: str, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
    """(the command line that runs `argv` in `cwd` for `stage`, None) when confined; (argv, why not) otherwise."""
    if spec.confine == "off":
        return argv, "scheduler.confine_jobs is off"
    if not bwrap.available():
        why = f"bubblewrap cannot run on {socket.gethostname()}"
        if spec.confine == "required":
            raise ConfinementUnavailable(f"scheduler.confine_jobs is required, but {why}")
        return argv, why
    wrapped = bwrap.command(argv, Path(cwd), hidden(spec), views(spec, stage), network=True, accelerators=True)
    return [sys.executable, "-P", bwrap.__file__, *wrapped], None  # -P: the relay imports the standard library only
