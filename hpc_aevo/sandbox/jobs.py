"""What a job's stage process sees: the train stage runs the worker's code, so it runs confined.

Under bubblewrap (`hpc_aevo/sandbox/bwrap.py`) the filesystem is read-only and the state tree, the
campaign's files (JobSpec.hidden), the agents' credentials and munge are hidden. Beneath the
hidden state tree a stage sees again only what it needs:
- train: its sandbox (read-only, the cwd) and its checkpoints/ (writable);
- eval: the frozen evaluator (read-only), its candidate's checkpoints and recipe.yaml (read-only)
  and the attempt's eval output directory (writable; the job moves eval.json into place);
- score: the frozen evaluator, the one checkpoint file the eval stage selected, the recipe and the
  held-out split (all read-only) and the attempt's score output directory (writable; the daemon
  checks the result there before it records it). It has no network.
The stage's log is written through the file handle the job passes it, so jobs/ stays hidden.
The host network stays for train and eval (multi-node training needs its rendezvous, and `scontrol show hostnames`
still works: the train stage sees $SLURM_CONF, wherever it lies), but without munge no scheduler
command can authenticate.

`scheduler.confine_jobs`: `auto` confines where bubblewrap runs and otherwise runs the stage
unconfined, saying so in the stage's log and in the outcome record (`StageRun.confined`);
`required` fails the stage instead; `off` never confines.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.sandbox import bwrap
from hpc_aevo.state.contract import RECIPE_FILE


class ConfinementUnavailable(RuntimeError):
    """`scheduler.confine_jobs: required`, and bubblewrap cannot run on this host."""


def views(spec: JobSpec, stage: str) -> list[tuple[Path, bool]]:
    """(path, writable) of the hidden tree that `stage` sees."""
    if stage == "train":
        seen = [(spec.sandbox, False), (spec.checkpoints, True)]
        conf = os.environ.get("SLURM_CONF", "")
        if os.path.isfile(conf):  # a multi-node trainer finds its master with `scontrol show hostnames`
            seen.append((conf, False))  # the file alone: slurmdbd.conf may lie beside it
    elif stage == "eval":
        seen = [(spec.evaluator_dir, False), (spec.checkpoints, False), (Path(spec.sandbox) / RECIPE_FILE, False),
                (spec.files.out(stage), True)]
    else:  # score: one checkpoint file, the held-out split, nothing else of the candidate's but its recipe
        seen = [(spec.evaluator_dir, False), (spec.score.checkpoint, False), (Path(spec.sandbox) / RECIPE_FILE, False),
                *((view, False) for view in spec.score.views), (spec.files.out(stage), True)]
    return [(Path(os.path.realpath(p)), writable) for p, writable in seen]


def hidden_paths(daemons: Iterable[str]) -> list[Path]:
    """The daemon's list as real paths (the builder adds the host's secrets and its temp dir)."""
    return sorted({Path(os.path.realpath(p)) for p in daemons if os.path.lexists(p)})


def unconfined_here(confine: str) -> str | None:
    """Why job stages started from this host run unconfined (None: they are confined, or fail instead)."""
    if confine == "off":
        return "scheduler.confine_jobs is off"
    if confine == "auto" and not bwrap.available():
        return f"bubblewrap cannot run on {socket.gethostname()} and scheduler.confine_jobs is auto"
    return None


def preflight(daemons: Iterable[str], confine: str) -> str | None:
    """Why no job stage could start confined here, in one line (None: it can, or none is confined).

    A stage's interpreter and its packages must be visible inside the sandbox; a Python environment
    under /tmp (private there) or under a hidden path makes every confined stage die at exec, which
    would otherwise be read as each worker's failure."""
    if confine == "off" or not bwrap.available():
        return None  # `required` refuses each stage itself, with its reason in the outcome
    probe = bwrap.command([sys.executable, "-c", "import yaml"], Path("/"), hidden_paths(daemons), [], network=True)
    result = subprocess.run(probe, capture_output=True, text=True)
    if result.returncode == 0:
        return None
    said = (result.stderr.strip().splitlines() or ["no message"])[-1]
    return (f"a confined job stage cannot start its Python ({sys.executable}): {said}; every stage hides /tmp and "
            "the state tree, so install the environment elsewhere (or set scheduler.confine_jobs: off)")


def confine(spec: JobSpec, stage: str, argv: list[str], cwd: str) -> tuple[list[str], str | None]:
    """(the command line that runs `argv` in `cwd` for `stage`, None) when confined; (argv, why not) otherwise."""
    if spec.confine == "off":
        return argv, "scheduler.confine_jobs is off"
    if not bwrap.available():
        why = f"bubblewrap cannot run on {socket.gethostname()}"
        if spec.confine == "required":
            raise ConfinementUnavailable(f"scheduler.confine_jobs is required, but {why}")
        return argv, why
    # The network stays for training's rendezvous; scoring reads only files, so it has none.
    wrapped = bwrap.command(argv, Path(cwd), hidden_paths(spec.hidden), views(spec, stage), network=stage != "score",
                            accelerators=True)
    return [sys.executable, "-P", bwrap.__file__, *wrapped], None  # -P: the relay imports the standard library only
