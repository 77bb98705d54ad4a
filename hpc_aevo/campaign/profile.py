"""Cluster profiles: what a SLURM cluster needs in every sbatch script, in one YAML per cluster.

A campaign says how much work a candidate is (`scheduler.stages`: time, memory, CPUs, GPUs); a
profile says how that work lands on one cluster (partition, account, QOS, nodes and GPUs per node,
container, setup lines, extra sbatch options). Keeping them apart lets the same campaign move
between the devcluster and an H200 cluster by changing one key. A profile's stage keys, when set,
override the campaign's. Loaded and checked like the campaign YAML: an error names the file, the
key path and what was expected. `python -m hpc_aevo.profile FILE` checks one (hpc_aevo/cli/check.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_aevo.campaign.config import STAGES, Stage
from hpc_aevo.campaign.reader import ConfigError, read_yaml_mapping
from hpc_aevo.state.typed import SchemaError, from_data

_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
# Set by the backend itself from the campaign and the round: a profile may not override them.
_RESERVED = {"array", "dependency", "kill-on-invalid-dep", "job-name", "comment", "output", "error", "time", "signal",
             "open-mode", "requeue", "no-requeue"}


def _at_least(key: str, value: int | float | None, low: int) -> None:
    if value is not None and value < low:
        raise SchemaError(key, f"a number >= {low}", value)


@dataclass
class StageShape:
    """How one task of a stage's array is laid out on this cluster (unset keys: the campaign's)."""

    nodes: int = 1  # nodes per candidate task (multi-node data-parallel training when > 1)
    tasks_per_node: int = 1  # processes per node (one per GPU for torch.distributed)
    gpus_per_node: int | None = None  # default: the campaign stage's gpus
    cpus_per_task: int | None = None  # default: the campaign stage's cpus
    mem_gb: float | None = None  # per node; default: the campaign stage's mem_gb
    time_min: int | None = None  # wall-clock limit per task; default: the campaign stage's timeout_min
    exclusive: bool | None = None  # whole nodes for this stage's tasks; default: the profile's `exclusive`

    def validate(self) -> None:
        _at_least("nodes", self.nodes, 1)
        _at_least("tasks_per_node", self.tasks_per_node, 1)
        _at_least("gpus_per_node", self.gpus_per_node, 0)
        _at_least("cpus_per_task", self.cpus_per_task, 1)
        _at_least("mem_gb", self.mem_gb, 1)  # per node, whole GB
        _at_least("time_min", self.time_min, 1)


@dataclass
class StageShapes:
    train: StageShape = field(default_factory=StageShape)
    eval: StageShape = field(default_factory=StageShape)
    score: StageShape = field(default_factory=StageShape)  # the leaderboard scoring array


# Compute capability of the GPU kinds a profile's `gpu_type` may name: what precision a recipe may ask for
# there (bf16 from sm_80; FP8 from sm_89, Transformer Engine's bound, which substrate/layers.py enforces too).
GPU_CAPABILITY: dict[str, tuple[int, int]] = {
    "v100": (7, 0), "t4": (7, 5), "a100": (8, 0), "a10": (8, 6), "a40": (8, 6), "l4": (8, 9), "l40": (8, 9),
    "l40s": (8, 9), "h100": (9, 0), "h200": (9, 0), "gh200": (9, 0), "b200": (10, 0), "gb200": (10, 0)}


@dataclass
class Container:
    """pyxis/enroot: srun runs the task inside this image (`--container-image` and friends)."""

    image: str | None = None  # e.g. "nvcr.io#nvidia/pytorch:25.01-py3" or a .sqsh path; None: no container
    mounts: list[str] = field(default_factory=list)  # "src:dst" pairs for --container-mounts
    workdir: str | None = None  # --container-workdir

    def srun_args(self) -> list[str]:
        if self.image is None:
            return []
        args = [f"--container-image={self.image}"]
        if self.mounts:
            args.append(f"--container-mounts={','.join(self.mounts)}")
        if self.workdir:
            args.append(f"--container-workdir={self.workdir}")
        return args

    def shows(self, path: Path) -> bool:
        """Whether host `path` is at the same path inside the container: under a mount whose source and
        destination are the same directory (`SRC:DST[:FLAGS]`, or a lone `PATH`)."""
        for mount in self.mounts:
            src, _, rest = mount.partition(":")
            dst = rest.partition(":")[0] or src
            if src == dst and Path(path).is_relative_to(src):
                return True
        return False


@dataclass
class ClusterProfile:
    name: str  # shown in dry runs and the ledger
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    exclusive: bool = False  # whole nodes per task (--exclusive)
    gpus_per_node_available: int = 0  # GPUs a node has; a stage asking more per node is refused at load
    gpu_type: str | None = None  # the nodes' GPU kind (a key of GPU_CAPABILITY): which precisions can run there
    python: str | None = None  # the interpreter jobs run, where they run (in the container); default: this one
    signal_delay_s: int = 90  # SIGUSR2 this long before the time limit: the trainer checkpoints, submitit requeues
    max_requeues: int = 3  # timeouts a task may be requeued after (submitit's max_num_timeout)
    setup: list[str] = field(default_factory=list)  # shell lines before srun: module loads, NCCL env, venv
    container: Container = field(default_factory=Container)
    sbatch: dict[str, str | int | bool] = field(default_factory=dict)  # extra `#SBATCH --key=value` options
    stages: StageShapes = field(default_factory=StageShapes)

    def validate(self) -> None:
        for key, value in self._rendered_strings():
            if any(c in value for c in "\n\r\0"):  # a second line in an #SBATCH directive is a second directive
                raise SchemaError(key, "one line of text (no newline, carriage return or NUL)", value)
        if self.container.image is not None and not self.container.image.strip():
            raise SchemaError("container.image", "an image name or path (or null for no container)", self.container.image)
        _at_least("signal_delay_s", self.signal_delay_s, 10)
        _at_least("max_requeues", self.max_requeues, 0)
        _at_least("gpus_per_node_available", self.gpus_per_node_available, 0)
        if self.gpu_type is not None and self.gpu_type not in GPU_CAPABILITY:
            raise SchemaError("gpu_type", f"one of {', '.join(GPU_CAPABILITY)} (or null: no GPUs)", self.gpu_type)
        if self.python is not None and not self.python.startswith("/"):
            raise SchemaError("python", "an absolute path of the interpreter jobs run", self.python)
        for key in self.sbatch:
            if not _SBATCH_KEY.fullmatch(key):
                raise SchemaError(f"sbatch.{key}", "an sbatch long option name without dashes, e.g. 'mail-type'")
            if key in _RESERVED:
                raise SchemaError(f"sbatch.{key}", f"an option the backend does not set itself (not one of "
                                                   f"{', '.join(sorted(_RESERVED))})")
        for name in STAGES:
            shape: StageShape = getattr(self.stages, name)
            if shape.gpus_per_node is not None and shape.gpus_per_node > self.gpus_per_node_available:
                raise SchemaError(f"stages.{name}.gpus_per_node",
                                  f"at most gpus_per_node_available ({self.gpus_per_node_available})",
                                  shape.gpus_per_node)

    def _rendered_strings(self) -> list[tuple[str, str]]:
        """(key path, value) of every string that reaches an #SBATCH line or srun's command line."""
        found = [(k, v) for k, v in (("name", self.name), ("partition", self.partition), ("account", self.account),
                                     ("qos", self.qos), ("container.image", self.container.image),
                                     ("container.workdir", self.container.workdir), ("python", self.python))
                 if v is not None]
        found += [(f"container.mounts[{i}]", m) for i, m in enumerate(self.container.mounts)]
        return found + [(f"sbatch.{k}", v) for k, v in self.sbatch.items() if isinstance(v, str)]


@dataclass(frozen=True)
class TaskResources:
    """One array task's resources: the campaign stage merged with the profile's shape."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float
    time_min: int
    exclusive: bool = False

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def cpus(self) -> int:
        return self.nodes * self.tasks_per_node * self.cpus_per_task


def task_resources(stage: Stage, shape: StageShape, exclusive: bool = False) -> TaskResources:
    """`exclusive`: the profile's own, for a stage whose shape leaves it unset."""
    pick = lambda mine, default: default if mine is None else mine  # noqa: E731
    return TaskResources(nodes=shape.nodes, tasks_per_node=shape.tasks_per_node,
                         gpus_per_node=pick(shape.gpus_per_node, stage.gpus),
                         cpus_per_task=pick(shape.cpus_per_task, stage.cpus),
                         mem_gb=pick(shape.mem_gb, stage.mem_gb), time_min=pick(shape.time_min, stage.timeout_min),
                         exclusive=pick(shape.exclusive, exclusive))


def load_profile(path: Path | str) -> ClusterProfile:
    """Load and check a cluster profile; ConfigError (file, key path, expectation) on the first problem."""
    data: Any = read_yaml_mapping(Path(path))
    try:
        return from_data(ClusterProfile, data)
    except SchemaError as exc:
        raise ConfigError.of(exc, path) from None
