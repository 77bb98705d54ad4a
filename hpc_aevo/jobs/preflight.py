"""The preflight: will the cluster run what a round is about to submit? Checked before anything is submitted.

Why: a recipe the trainer refuses (FP8 on a GPU without FP8 GEMMs, packing on the Transformer Engine spec,
a tensor-parallel group wider than a node) or a job the cluster cannot start (an interpreter the container
lacks, a state tree it does not mount, a time limit beyond the partition's) is otherwise found out only
when its nodes have started, once per candidate. Each finding is one line naming the file and the key to
change. A refusal stops `round` (and fails a candidate whose worker wrote it); a note is printed and run on.

It reads the recipe keys the substrate contract documents (substrate/README.md: `model.precision`,
`model.fp8_recipe`, `data.pack`, `model.moe`, `parallel.*`, `checkpoints.format`); a substrate without one of
them is not checked for it. The confinement preflight (can a stage's Python start inside bubblewrap) is sandbox/jobs.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpc_aevo
from hpc_aevo.campaign.config import STAGES, Campaign
from hpc_aevo.campaign.profile import GPU_CAPABILITY, ClusterProfile, TaskResources
from hpc_aevo.jobs.scheduler import Scheduler, SchedulerUnavailable
from hpc_aevo.state.contract import recipe_value

# Which GPUs can run each FP8 scaling recipe (Transformer Engine: per-tensor FP8 from Ada/Hopper; MXFP8 blocks
# from Blackwell). bf16 needs Ampere.
FP8_RECIPE_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "mxfp8": (10, 0)}
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Finding:
    """One verdict: `where` is "FILE: KEY", the setting to change."""

    refused: bool
    where: str
    message: str

    def __str__(self) -> str:
        return f"preflight {'refused' if self.refused else 'note'}: {self.where}: {self.message}"


def _refused(where: str, message: str) -> Finding:
    return Finding(True, where, message)


def _note(where: str, message: str) -> Finding:
    return Finding(False, where, message)


@dataclass(frozen=True)
class Cluster:
    """What a round's jobs land on: the scheduler's per-stage resources, the campaign and its profile."""

    campaign: Campaign
    scheduler: Scheduler
    profile: ClusterProfile | None  # None: the local backend

    @classmethod
    def of(cls, campaign: Campaign, scheduler: Scheduler) -> "Cluster":
        return cls(campaign, scheduler, scheduler.profile)

    def setting(self, stage: str, profile_key: str, campaign_key: str | None = None) -> str:
        """"FILE: KEY" of whichever file sets this resource of `stage`: the profile's shape wins where set."""
        if self.profile is not None and getattr(getattr(self.profile.stages, stage), profile_key) is not None:
            return f"{self.campaign.paths.profile}: stages.{stage}.{profile_key}"
        return f"{self.campaign.source}: scheduler.stages.{stage}.{campaign_key}"

    def gpu_kind(self) -> str:
        return f"{self.campaign.paths.profile}: gpu_type" if self.profile is not None else "this machine's GPUs"


def _sm(capability: tuple[int, int]) -> str:
    return f"sm_{capability[0]}{capability[1]}"


def _precision(recipe: dict, key, cluster: Cluster, train: TaskResources) -> list[Finding]:
    precision = recipe_value(recipe, "model.precision", "auto")
    if precision not in ("bf16", "fp8"):
        return []
    gpus = cluster.setting("train", "gpus_per_node", "gpus")
    if train.gpus_per_node == 0:
        return [_refused(key("model.precision"), f"{precision} needs a GPU, and the train stage has none ({gpus} 0)")]
    kind = cluster.scheduler.gpu_type
    fp8_recipe = str(recipe_value(recipe, "model.fp8_recipe", "delayed"))
    need = FP8_RECIPE_CAPABILITY.get(fp8_recipe) if precision == "fp8" else BF16_CAPABILITY
    if need is None:
        return [_refused(key("model.fp8_recipe"), f"one of {', '.join(FP8_RECIPE_CAPABILITY)} (got {fp8_recipe!r})")]
    what = f"fp8 ({fp8_recipe} scaling)" if precision == "fp8" else "bf16"
    if kind is None:
        unknown = f"{what} needs a GPU of compute capability {_sm(need)}+, and the GPU kind is not known"
        if cluster.profile is None:
            return [_note(key("model.precision"), f"{unknown} (the trainer checks it when it starts)")]
        return [_refused(key("model.precision"), f"{unknown}: set {cluster.gpu_kind()} (one of {', '.join(GPU_CAPABILITY)})")]
    if GPU_CAPABILITY[kind] < need:
        which = "model.fp8_recipe" if precision == "fp8" and FP8_RECIPE_CAPABILITY["delayed"] <= GPU_CAPABILITY[kind] \
            else "model.precision"
        return [_refused(key(which), f"{what} needs a GPU of compute capability {_sm(need)}+; {cluster.gpu_kind()} "
                                     f"{kind} is {_sm(GPU_CAPABILITY[kind])}")]
    return []


def _packing(recipe: dict, key, train: TaskResources) -> list[Finding]:
    if recipe_value(recipe, "data.pack", None) is not True:
        return []
    why = "packed rows run on megatron's local spec only (train.py refuses them on the Transformer Engine spec"
    if recipe_value(recipe, "model.precision", "auto") == "fp8":
        return [_refused(key("data.pack"), f"{why}, which fp8 needs): set it false")]
    if train.gpus_per_node:
        return [_note(key("data.pack"), f"{why}, which a GPU node uses whenever its image has TE)")]
    return []


def _parallel(recipe: dict, key, cluster: Cluster, train: TaskResources) -> list[Finding]:
    tp, ep = recipe_value(recipe, "parallel.tensor", 1), recipe_value(recipe, "parallel.expert", 1)
    found = [_refused(key(f"parallel.{name}"), f"an integer >= 1 (got {value!r})")
             for name, value in (("tensor", tp), ("expert", ep)) if type(value) is not int or value < 1]
    if found:
        return found
    ranks = train.nodes * train.tasks_per_node
    per_node = f"{cluster.campaign.paths.profile}: stages.train.tasks_per_node" if cluster.profile \
        else "the local backend runs one process"
    if tp > train.tasks_per_node or (train.gpus_per_node and tp > train.gpus_per_node):
        gpus = f", {train.gpus_per_node} GPUs" if train.gpus_per_node else ""
        found.append(_refused(key("parallel.tensor"), f"{tp}: a tensor-parallel group must fit in one node, whose task "
                                                      f"has {train.tasks_per_node} rank(s){gpus} ({per_node})"))
    elif ranks % tp:
        found.append(_refused(key("parallel.tensor"), f"{tp} does not divide the train task's {ranks} ranks"))
    elif (ranks // tp) % ep:
        found.append(_refused(key("parallel.expert"), f"{ep} does not divide the {ranks // tp} data-parallel ranks"))
    if tp > 1 and recipe_value(recipe, "model.moe", None) is not None:
        found.append(_refused(key("parallel.tensor"), f"a mixture of experts trains with 1 (got {tp}): megatron trains "
                                                      "MoE under tensor parallelism with sequence parallelism only"))
    experts = recipe_value(recipe, "model.moe.experts", None)
    if type(experts) is int and experts % ep:
        found.append(_refused(key("parallel.expert"), f"{ep} does not divide model.moe.experts {experts}"))
    fmt = recipe_value(recipe, "checkpoints.format", "torch")
    if (tp > 1 or ep > 1) and fmt != "dist":
        found.append(_refused(key("checkpoints.format"), f"tensor or expert parallelism needs dist (got {fmt!r})"))
    return found


def recipe_findings(recipe: dict[str, Any], source: Path | str, prefix: str, cluster: Cluster) -> list[Finding]:
    """What the cluster refuses in one recipe (`prefix`: where the recipe sits in `source`, e.g.
    "standing_recipe." in a policy file). Runs no scheduler command: cheap enough for every candidate."""
    def key(dotted: str) -> str:
        return f"{source}: {prefix}{dotted}"

    train = cluster.scheduler.resources("train")
    return _precision(recipe, key, cluster, train) + _packing(recipe, key, train) + _parallel(recipe, key, cluster, train)


def _container(cluster: Cluster) -> list[Finding]:
    profile = cluster.profile
    if profile is None or profile.container.image is None:
        return []
    where, image = cluster.campaign.paths.profile, profile.container.image
    mounts = ", ".join(profile.container.mounts) or "none"
    found = []
    if profile.python is None and not profile.container.shows(Path(sys.executable)):
        found.append(_refused(f"{where}: python", f"jobs run in container {image}, whose mounts ({mounts}) do not "
                                                  f"show this interpreter ({sys.executable}): set the container's own"))
    root = cluster.campaign.paths.state_root
    if not profile.container.shows(root):
        found.append(_refused(f"{cluster.campaign.source}: state_root", f"{root} is under none of container {image}'s "
                                                                         f"mounts ({mounts} in {where}), and jobs write it"))
    package = Path(hpc_aevo.__file__).parent.parent
    if not profile.container.shows(package):
        found.append(_note(f"{where}: container.image", f"the jobs import hpc_aevo, and {package} is under none of "
                                                        f"the mounts: the image must have it installed"))
    return found


def _waste(cluster: Cluster) -> list[Finding]:
    """GPUs a stage holds without using: the profile's GPUs winning over the campaign's, and exclusive nodes."""
    profile, found = cluster.profile, []
    if profile is None:
        return []
    for stage in STAGES:
        res = cluster.scheduler.resources(stage)
        asked = cluster.campaign.scheduler.stages.of(stage).gpus
        if res.gpus_per_node != asked:
            found.append(_note(cluster.setting(stage, "gpus_per_node", "gpus"),
                               f"{res.gpus_per_node} GPUs per node win over the campaign's scheduler.stages.{stage}.gpus "
                               f"{asked}"))
        held = profile.gpus_per_node_available if res.exclusive else res.gpus_per_node
        needed = min(asked, res.gpus_per_node)
        if held > needed:
            tasks = cluster.campaign.leaderboard.per_round if stage == "score" else cluster.campaign.candidates
            hours = (held - needed) * res.nodes * tasks * res.time_min / 60
            exclusive = f"stages.{stage}.exclusive" if getattr(profile.stages, stage).exclusive is not None else "exclusive"
            where = f"{cluster.campaign.paths.profile}: {exclusive}" if res.exclusive \
                else cluster.setting(stage, "gpus_per_node", "gpus")
            found.append(_note(where, f"each {stage} task holds {held} GPUs per node"
                                      f"{' (whole nodes)' if res.exclusive else ''} where the campaign asks {needed}: "
                                      f"up to {hours:.0f} idle GPU-hours a round"))
    return found


def _limits(cluster: Cluster) -> list[Finding]:
    try:
        limits = cluster.scheduler.limits()
    except SchedulerUnavailable as exc:
        return [_note(f"{cluster.campaign.paths.profile}: partition", f"partition limits not checked: {exc}")]
    if limits is None:
        return []
    found = []
    for stage in STAGES:
        res = cluster.scheduler.resources(stage)
        for over, profile_key, campaign_key, what in (
            (limits.max_time_min is not None and res.time_min > limits.max_time_min, "time_min", "timeout_min",
             f"{res.time_min} min is over partition {limits.name}'s MaxTime of {limits.max_time_min} min"),
            (limits.max_nodes is not None and res.nodes > limits.max_nodes, "nodes", None,
             f"{res.nodes} nodes are over partition {limits.name}'s MaxNodes {limits.max_nodes}"),
            (limits.node_mem_gb is not None and res.mem_gb > limits.node_mem_gb, "mem_gb", "mem_gb",
             f"{res.mem_gb:g} GB per node is more than partition {limits.name}'s largest node has "
             f"({limits.node_mem_gb:g} GB)"),
            (limits.node_cpus is not None and res.cpus_per_task * res.tasks_per_node > limits.node_cpus,
             "cpus_per_task", "cpus", f"{res.cpus_per_task * res.tasks_per_node} CPUs per node is more than "
                                      f"partition {limits.name}'s largest node has ({limits.node_cpus})"),
        ):
            if over:
                found.append(_refused(cluster.setting(stage, profile_key, campaign_key), what))
    return found


def campaign_findings(cluster: Cluster) -> list[Finding]:
    """What the cluster refuses in the campaign and its profile, whatever the recipe: asks the scheduler once."""
    return _container(cluster) + _waste(cluster) + _limits(cluster)
