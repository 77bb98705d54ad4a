"""The pickle-free format the evaluator reads: `export/ckpt-<step:06d>.safetensors`.

A training job runs the candidate's code, so whatever it writes is hostile to the evaluator. The
trainer's own checkpoints (checkpoint.py: torch pickles, megatron directories) are read back by the
trainer alone; for evaluation it also exports each checkpoint as one safetensors file: the model's
full weights in the one-process layout (tensor-parallel shards and expert-parallel experts gathered,
TP vocabulary padding cut off), float32, and nothing else (its step is the one in its name). The same
weights give the same bytes, so a file's sha256 names its weights: safetensors writes its metadata map in
no fixed order, so the file carries one metadata key only.
The evaluator builds the model from the recipe, never from the file, and loads these tensors into it
with a strict check of names, shapes and dtype.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import torch
from safetensors.torch import load, save_file

import moe

EXPORT_DIR = "export"
NAME = re.compile(r"ckpt-(\d{6}|[1-9]\d{6,})\.safetensors")  # export_name(step) and nothing else
HEADER_BYTES = 1 << 20  # room for the safetensors header beyond the tensors' bytes
VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


class ExportError(ValueError):
    """An exported checkpoint the evaluator refuses (the message is one line naming the file)."""


def export_name(step: int) -> str:
    return f"ckpt-{step:06d}.safetensors"


def step_of(name: str) -> int:
    match = NAME.fullmatch(name)
    if match is None:
        raise ExportError(f"{name}: expected a file named ckpt-<step:06d>.safetensors")
    return int(match.group(1))


def weights(sd: dict) -> dict[str, torch.Tensor]:
    """Parameters only: megatron's `_extra_state` entries (TE, FP8 metadata) are not weights."""
    return {k: v.detach().cpu().float() for k, v in sd.items() if "_extra_state" not in k}


def _gather(tensor: torch.Tensor, dim: int, gated: bool, size: int, group) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(size)]
    torch.distributed.all_gather(parts, tensor.detach().contiguous(), group=group)
    if gated:  # each rank holds [gate_r; up_r] of a gated MLP: the whole is [gate; up]
        halves = [p.chunk(2, dim) for p in parts]
        return torch.cat([torch.cat([h[0] for h in halves], dim), torch.cat([h[1] for h in halves], dim)], dim)
    return torch.cat(parts, dim)


def full_state(model) -> dict[str, torch.Tensor]:
    """The model's whole weights in the one-process layout. Under tensor parallelism every rank of the
    tensor-parallel group must call (the shards are gathered along each parameter's own partition
    dimension, as megatron marks it), under expert parallelism every rank of the expert-parallel group
    (each contributes its experts, renamed to their global index), and every rank gets the whole."""
    from megatron.core import parallel_state

    size = parallel_state.get_tensor_model_parallel_world_size()
    ep = parallel_state.get_expert_model_parallel_world_size()
    params = dict(model.named_parameters())
    gated = bool(getattr(model.config, "gated_linear_unit", False))
    out = {}
    for key, tensor in model.state_dict().items():
        if "_extra_state" in key:
            continue
        param = params.get(key)
        if size > 1 and param is not None and getattr(param, "tensor_model_parallel", False):
            tensor = _gather(tensor, param.partition_dim, gated and ".linear_fc1." in key, size,
                             parallel_state.get_tensor_model_parallel_group())
        if key in VOCAB_ROWS and hasattr(model, "vocab"):
            tensor = tensor[: model.vocab]  # the rows tensor parallelism padded the vocabulary with
        named = {key: tensor}
        if ep > 1 and moe.expert_index(key) is not None:
            parts = [torch.empty_like(tensor) for _ in range(ep)]
            torch.distributed.all_gather(parts, tensor.detach().contiguous(),
                                         group=parallel_state.get_expert_model_parallel_group())
            named = {moe.global_expert_key(key, r, model.config.num_moe_experts // ep): part
                     for r, part in enumerate(parts)}
        out.update((name, t.detach().cpu().float().contiguous()) for name, t in named.items())
    return out


def write(out: Path, step: int, state: dict[str, torch.Tensor]) -> Path:
    """Write `OUT/export/ckpt-<step>.safetensors` atomically (temp name, fsync, rename)."""
    directory = Path(out) / EXPORT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / export_name(step)
    tmp = directory / f".{final.name}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})  # one key: a map of two is written in either order
    os.chmod(tmp, 0o644)  # readable by the evaluation job and the team, like the trainer's other files
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def max_bytes(model) -> int:
    """The largest export the recipe's model can need (its float32 weights plus a header): a bigger file
    is refused before it is read."""
    return HEADER_BYTES + sum(4 * t.numel() for k, t in model.state_dict().items() if "_extra_state" not in k)


def read_regular(path: Path, limit: int, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file `path` (relative to `dir_fd` when given), at most `limit`, read once:
    an export, or the recipe (the evaluator also runs unconfined, for the leaderboard). A symlink is
    refused, not followed, and a FIFO or device is refused, never waited on."""
    try:
        fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ExportError(f"{path}: is a symlink; expected a regular file") from None
        raise ExportError(f"{path}: cannot open ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ExportError(f"{path}: is not a regular file")
        if st.st_size > limit:
            raise ExportError(f"{path}: {st.st_size} bytes, more than the {limit} allowed")
        blob = handle.read(limit + 1)
    if len(blob) > limit:
        raise ExportError(f"{path}: grew past the {limit} bytes allowed while being read")
    return blob


def exports(directory: Path) -> tuple[int, list[Path]]:
    """(an open descriptor of `DIR/export`, its export files oldest step first): the directory is
    opened without following a symlink, and the files are then opened relative to it."""
    export_dir = Path(directory) / EXPORT_DIR
    try:
        fd = os.open(export_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ExportError(f"{export_dir}: expected a directory, not a symlink or a file") from None
        raise ExportError(f"{export_dir}: no exported checkpoints ({exc.strerror}); train.py writes them when "
                          f"it finishes") from None
    names = sorted((n for n in os.listdir(fd) if NAME.fullmatch(n)), key=step_of)
    return fd, [export_dir / n for n in names]


def load_into(model, blob: bytes, source: Path) -> None:
    """Load exported weights into `model` (built from the recipe): exactly the model's tensor names,
    shapes and dtype (float32), or one line saying what differs."""
    try:
        tensors = load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError on a malformed file
        raise ExportError(f"{source}: not a safetensors file ({' '.join(str(exc).split())})") from None
    expected = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ExportError(f"{source}: tensors do not match the recipe's model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    for key, tensor in tensors.items():
        want = expected[key]
        if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != torch.float32:
            raise ExportError(f"{source}: {key} is {str(tensor.dtype)[6:]} {list(tensor.shape)}; the recipe's model "
                              f"expects float32 {list(want.shape)}")
    model.load_state_dict(tensors, strict=False)  # every weight checked above; TE's _extra_state is not one
