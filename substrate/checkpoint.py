"""Trainer checkpoints in two formats: one torch file, or a megatron distributed checkpoint.

`checkpoints.format: torch` (default) writes `ckpt-<step>.pt`, a single file with the whole model,
optimizer and trainer state: the fastest on the CPU demo (a megatron distributed save starts a
multiprocessing manager, ~5 s the first time), and what it has always been.
`checkpoints.format: dist` writes `ckpt-<step>/`, a megatron-core `dist_checkpointing` directory:
every rank writes its own shards of the model and of the AdamW moments (as ShardedTensors keyed
like the parameters), rank 0 the trainer state; it can be loaded under another parallel layout.
Tensor parallelism needs it. Both are the trainer's own: only a resume reads them (they hold
pickles). The evaluator reads the pickle-free export of safe_weights.py instead.

Both are written under a temporary name and renamed into place, so a kill at any moment leaves
the earlier checkpoints intact, and both resume exactly (same loss curve). On CPU megatron's
saver asks CUDA for a device and a synchronize in two places; `distributed.cuda_answers_cpu` answers there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

import distributed

FORMATS = ("torch", "dist")
OPTIMIZER_STATE_KEYS = ("exp_avg", "exp_avg_sq")  # AdamW's per-parameter moments; its `step` is a scalar


def fmt_of(recipe: dict) -> str:
    fmt = str(recipe["checkpoints"].get("format", "torch"))
    if fmt not in FORMATS:
        raise ValueError(f"recipe checkpoints.format: expected one of {FORMATS} (got {fmt!r})")
    return fmt


def paths(directory: Path) -> list[Path]:
    """Every finished checkpoint (file or directory) in `directory`, oldest step first."""
    found = [p for p in Path(directory).glob("ckpt-*") if p.suffix == ".pt" or (p.is_dir() and p.suffix == "")]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    return int(Path(path).stem.split("-")[1])


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sharded_state(model, optimizer, trainer: dict | None = None) -> dict:
    """The sharded state dict of model + optimizer moments (+ trainer state, saved by rank 0 as is)."""
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    model_state = model.sharded_state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:  # a fresh optimizer has no moments yet: give the loader tensors of the right shape
        if not optimizer.state[p]:
            optimizer.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                      exp_avg_sq=torch.zeros_like(p))
    optim_state = optimizer.state_dict()
    steps = {pid: float(state["step"]) for pid, state in optim_state["state"].items()}
    optim_state_to_sharding_state(optim_state, get_param_id_to_sharded_param_map(model_state, params),
                                  exclude_keys=("step",))
    return {"model": model_state, "optimizer": optim_state, "optimizer_steps": steps, "trainer": trainer or {}}


def save(out: Path, step: int, model, optimizer, trainer: dict, fmt: str) -> Path:
    """Write checkpoint `step` (all ranks call this; rank 0 writes the torch format alone)."""
    final = out / (f"ckpt-{step:06d}.pt" if fmt == "torch" else f"ckpt-{step:06d}")
    tmp = out / f".{final.name}.tmp"
    if fmt == "torch":
        if distributed.is_main():
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **trainer}
            torch.save(state, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        distributed.barrier()
        return final
    from megatron.core import dist_checkpointing

    if distributed.is_main():
        if tmp.exists():
            shutil.rmtree(tmp)  # the debris of a save that was killed
        tmp.mkdir()
    distributed.barrier()
    with distributed.cuda_answers_cpu():
        dist_checkpointing.save(_sharded_state(model, optimizer, trainer), str(tmp))
    distributed.barrier()
    if distributed.is_main():
        os.replace(tmp, final)
    distributed.barrier()
    return final


def _optimizer_steps(saved: dict, params: int, path: Path) -> dict | float:
    """AdamW's step count per parameter id as saved; under another layout, where the ids change (expert
    parallelism changes how many parameters a rank holds), the one count every parameter shares."""
    if len(saved) == params:
        return saved
    if len(set(saved.values())) == 1:
        return next(iter(saved.values()))
    raise ValueError(f"checkpoint {path.name}: its parameters were stepped unevenly, so it resumes only under the "
                     f"parallel layout it was saved with ({len(saved)} parameters per rank there, {params} here)")


def load(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer from checkpoint `path` in place; returns the trainer state."""
    if path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    from megatron.core import dist_checkpointing

    with distributed.cuda_answers_cpu():
        loaded = dist_checkpointing.load(_sharded_state(model, optimizer), str(path))
    model.load_state_dict(loaded["model"])
    optim_state = loaded["optimizer"]
    optim_state["param_groups"] = optimizer.state_dict()["param_groups"]
    steps = _optimizer_steps(loaded["optimizer_steps"], len(optim_state["state"]), path)
    for pid, state in optim_state["state"].items():
        state["step"] = torch.tensor(steps[pid] if isinstance(steps, dict) else steps)
    optimizer.load_state_dict(optim_state)
    return loaded["trainer"]
