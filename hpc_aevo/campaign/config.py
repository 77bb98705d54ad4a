"""The campaign YAML: the one file a user writes to define, and later steer, a campaign.

It is loaded into typed dataclasses by hpc_aevo.state.typed and checked completely (types, ranges,
referenced files) before anything is forked or submitted, so a mistake costs one line of output
naming the file, the key path and what was expected, not a failed job a day later.

Run `python -m hpc_aevo.config CAMPAIGN.yaml` to check a file: "ok: <name>" or the error, exit 2.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpc_aevo.campaign.reader import ConfigError, parse_mapping, read_bytes, read_yaml_mapping
from hpc_aevo.search.constitution import consistency_violations
from hpc_aevo.search.policy import Policy
from hpc_aevo.state.contract import RECIPE_FILE, REQUIRED_FILES
from hpc_aevo.state.typed import SchemaError, from_data

SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")


def _at_least(key: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise SchemaError(key, f"an integer >= {low}", value)


def _positive(key: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise SchemaError(key, "a number > 0", value)


@dataclass
class Agents:
    backend: Literal["scripted", "claude"] = "scripted"  # who plays workers and meta; "scripted" is offline
    model: str | None = None  # model name for the claude backend; None: the CLI's default
    max_turns: int | None = None  # cap on agent turns per worker/meta session; None: no cap
    max_budget_usd_per_session: float | None = None  # cap on API spend per session; None: no cap
    max_budget_usd_per_round: float | None = None  # cap on the API spend of all sessions of a round; None: no cap
    max_session_minutes: float = 30.0  # wall-clock cap per session; the session and all it started are killed
    max_processes: int = 1024  # processes and threads one session (its CLI and tools) or smoke test may run at once

    def validate(self) -> None:
        _at_least("max_turns", self.max_turns, 1)
        _positive("max_session_minutes", self.max_session_minutes)
        _at_least("max_processes", self.max_processes, 64)  # the CLI alone runs some 20 threads
        _positive("max_budget_usd_per_session", self.max_budget_usd_per_session)
        _positive("max_budget_usd_per_round", self.max_budget_usd_per_round)


MIN_MEM_GB = 0.01


@dataclass
class Stage:
    """Resources of one task of a job array (one candidate's training or evaluation)."""

    timeout_min: int  # wall-clock limit per task, minutes (SLURM --time)
    mem_gb: float  # memory per task, GB
    cpus: int = 1  # CPU cores per task
    gpus: int = 0  # GPUs per task; 0 for the CPU substrate

    def validate(self) -> None:
        _at_least("timeout_min", self.timeout_min, 1)
        if self.mem_gb < MIN_MEM_GB:  # below a megabyte SLURM is asked for --mem=0: the whole node
            raise SchemaError("mem_gb", f"a number >= {MIN_MEM_GB} (10 MB)", self.mem_gb)
        _at_least("cpus", self.cpus, 1)
        _at_least("gpus", self.gpus, 0)


STAGES = ("train", "eval", "score")


@dataclass
class Stages:
    train: Stage  # the training array
    eval: Stage  # the evaluation array, chained task by task after training
    score: Stage | None = None  # the leaderboard scoring array of the round's chosen candidates; default: eval's

    def of(self, name: str) -> Stage:
        """The resources of stage `name` (one of STAGES)."""
        stage = getattr(self, name)
        return self.eval if stage is None else stage


@dataclass
class SchedulerConfig:
    backend: Literal["local", "slurm"]  # "local": submitit's local executor; "slurm": the cluster
    max_parallel: int  # most tasks running at once (local: concurrent processes)
    stages: Stages  # per-stage task resources
    profile: str | None = None  # slurm only: cluster profile file (partition, container, setup lines)
    poll_interval_s: float = 2.0  # how often the daemon polls the scheduler, seconds
    # run each job stage under bubblewrap; auto: where it runs. None: required with agents, auto with scripted ones
    confine_jobs: Literal["auto", "required", "off"] | None = None
    max_processes: int = 4096  # processes and threads one job stage may run at once (a pids cgroup, where one can be made)

    def validate(self) -> None:
        _at_least("max_parallel", self.max_parallel, 1)
        _at_least("max_processes", self.max_processes, 64)
        _positive("poll_interval_s", self.poll_interval_s)
        if self.backend != "slurm" and self.profile is not None:
            raise SchemaError("profile", "no profile with the local backend (profiles are for slurm)", self.profile)
        if self.backend == "slurm" and self.profile is None:
            raise SchemaError("profile", "a cluster profile file with the slurm backend (e.g. ../sbatch/devcluster.yaml)")


# The keys each leaderboard adapter takes besides quota, per_round and adapter.
ADAPTER_KEYS = {"heldout-puzzles": ("examples_per_domain",), "jsonl": ("heldout", "rule", "tolerance", "pattern"),
                "command": ("heldout", "command"), "lm-eval": ("heldout", "task", "task_yaml", "metric", "limit")}
MAX_HELDOUT_PER_DOMAIN = 10_000  # a split the frozen evaluator answers in minutes on one core, not hours
LM_EVAL_NAME = re.compile(r"[\w.-]{1,128}")  # an lm-evaluation-harness task or metric name


@dataclass
class Leaderboard:
    quota: int  # submissions allowed over the whole campaign
    per_round: int  # submissions per round (the best candidates by dev score go first)
    adapter: Literal["heldout-puzzles", "jsonl", "command", "lm-eval"] = "heldout-puzzles"  # the external scorer
    # jsonl: a JSONL of prompt/answer[/subset] rows; command: the data its scorer reads; lm-eval: the task's data
    heldout: str | None = None
    rule: Literal["exact", "normalized", "numeric", "regex"] | None = None  # jsonl: how an answer is matched (exact)
    tolerance: float | None = None  # jsonl, rule numeric: the absolute difference still counted equal (1e-6)
    pattern: str | None = None  # jsonl, rule regex: extracts the answer from the output (its first group)
    command: list[str] = field(default_factory=list)  # command: the site's scorer, as an argument list
    task: str | None = None  # lm-eval: a built-in task (or group) name, its data in the site's HF cache
    task_yaml: str | None = None  # lm-eval: a local task YAML whose data files are `heldout`'s (the offline case)
    metric: str | None = None  # lm-eval: the metric that is the score (e.g. exact_match; `exact_match,FILTER`)
    limit: int | None = None  # lm-eval: score only the first `limit` documents of each task
    # heldout-puzzles: puzzles drawn per domain (default 100); more cut the seed noise a promotion must beat
    examples_per_domain: int | None = None

    def validate(self) -> None:
        _at_least("quota", self.quota, 1)
        _at_least("per_round", self.per_round, 1)
        if self.per_round > self.quota:
            raise SchemaError("per_round", f"an integer <= leaderboard.quota ({self.quota})", self.per_round)
        given = {"heldout": self.heldout, "rule": self.rule, "tolerance": self.tolerance, "pattern": self.pattern,
                 "command": self.command or None, "task": self.task, "task_yaml": self.task_yaml,
                 "metric": self.metric, "limit": self.limit, "examples_per_domain": self.examples_per_domain}
        takes = ADAPTER_KEYS[self.adapter]
        for key, value in given.items():
            if value is not None and key not in takes:
                raise SchemaError(key, f"no such key with adapter {self.adapter} (it takes: "
                                       f"{', '.join(takes) or 'none of its own'})", value)
        if "heldout" in takes and self.heldout is None and self.adapter != "lm-eval":
            raise SchemaError("heldout", f"the held-out data's path, with adapter {self.adapter}")
        if self.adapter == "lm-eval":
            self._validate_lm_eval()
        if self.adapter == "command":
            if not self.command or not all(arg.strip() and "\n" not in arg and "\0" not in arg for arg in self.command):
                raise SchemaError("command", "the scorer's command line as a list of non-empty one-line strings",
                                  self.command)
        if self.examples_per_domain is not None:
            _at_least("examples_per_domain", self.examples_per_domain, 10)
            if self.examples_per_domain > MAX_HELDOUT_PER_DOMAIN:
                raise SchemaError("examples_per_domain", f"an integer <= {MAX_HELDOUT_PER_DOMAIN}",
                                  self.examples_per_domain)
        if self.tolerance is not None and self.tolerance < 0:
            raise SchemaError("tolerance", "a number >= 0", self.tolerance)
        if self.tolerance is not None and self.rule != "numeric":
            raise SchemaError("tolerance", "no tolerance unless rule is numeric", self.tolerance)
        if (self.rule == "regex") != (self.pattern is not None):
            raise SchemaError("pattern", "a regular expression with rule regex, and only then", self.pattern)
        if self.pattern is not None:
            try:
                groups = re.compile(self.pattern).groups
            except re.error as exc:
                raise SchemaError("pattern", f"a regular expression ({exc})", self.pattern) from None
            if groups < 1:
                raise SchemaError("pattern", "a regular expression with a group that captures the answer", self.pattern)

    def _validate_lm_eval(self) -> None:
        if (self.task is None) == (self.task_yaml is None):
            raise SchemaError("task", "a built-in task name or (exclusive) task_yaml, a local task YAML", self.task)
        if self.task is not None and not LM_EVAL_NAME.fullmatch(self.task):
            raise SchemaError("task", "an lm-evaluation-harness task name (letters, digits, '_', '.', '-')", self.task)
        if self.task is not None and self.heldout is not None:
            raise SchemaError("heldout", "no heldout with a built-in task (its data is the site's HF cache)", self.heldout)
        if self.task_yaml is not None and self.heldout is None:
            raise SchemaError("heldout", "the data files of task_yaml (a file or a directory), with adapter lm-eval")
        name = LM_EVAL_NAME.pattern
        if self.metric is None or not re.fullmatch(f"{name}(,{name})?", self.metric):
            raise SchemaError("metric", "the lm-eval metric that is the score, e.g. exact_match (or exact_match,FILTER)",
                              self.metric)
        _at_least("limit", self.limit, 1)


@dataclass
class PolicyFiles:
    constitution: str  # the frozen constitution (meta's system prompt; its rules are checked in code)
    initial: str  # the round-0 search policy (YAML)


@dataclass
class Budget:
    cpu_hours: float | None = None  # campaign-wide CPU-hour cap; None: uncapped
    gpu_hours: float | None = None  # campaign-wide GPU-hour cap; None: uncapped

    def validate(self) -> None:
        _positive("cpu_hours", self.cpu_hours)
        _positive("gpu_hours", self.gpu_hours)


@dataclass
class Retries:
    max_attempts: int = 2  # training submissions per candidate, the first one included

    def validate(self) -> None:
        _at_least("max_attempts", self.max_attempts, 1)


@dataclass(frozen=True)
class CampaignPaths:
    """The campaign's paths resolved to absolute ones (relative paths are relative to the YAML file)."""

    state_root: Path
    substrate: Path
    constitution: Path
    initial_policy: Path
    profile: Path | None
    heldout: Path | None = None  # leaderboard.heldout: the adapter's held-out data
    task_yaml: Path | None = None  # leaderboard.task_yaml: the lm-eval adapter's local task


@dataclass
class Campaign:
    """A campaign YAML. Path keys hold the text as written; `paths` holds them resolved."""

    name: str  # slug [a-z0-9][a-z0-9-]*, used in job names
    state_root: str  # directory of the campaign's state tree (created on first run)
    substrate: str  # the reference substrate: a directory with recipe.yaml, train.py, evaluate.py
    rounds: int  # rounds to run
    workers_per_round: int  # mutating workers per round
    scheduler: SchedulerConfig
    leaderboard: Leaderboard
    policy: PolicyFiles
    anchors: int = 1  # pure-baseline candidates per round; cand-00.. are the anchors
    seed: int = 0  # campaign seed; per-candidate seeds derive from it
    agents: Agents = field(default_factory=Agents)
    budget: Budget = field(default_factory=Budget)
    retries: Retries = field(default_factory=Retries)
    # Set by load_campaign, not keys of the file:
    source: Path = field(init=False, repr=False, compare=False)  # the YAML file, absolute
    sha256: str = field(init=False, repr=False, compare=False)  # sha256 of the YAML file's bytes
    paths: CampaignPaths = field(init=False, repr=False, compare=False)

    @property
    def candidates(self) -> int:
        return self.anchors + self.workers_per_round

    @property
    def confine_jobs(self) -> str:
        """`scheduler.confine_jobs`, or its default: code an agent wrote never runs unconfined unless a person
        says so; the offline scripted workers' edits are the toolkit's own, so their jobs may."""
        if self.scheduler.confine_jobs is not None:
            return self.scheduler.confine_jobs
        return "auto" if self.agents.backend == "scripted" else "required"

    def validate(self) -> None:
        if not SLUG.fullmatch(self.name):
            raise SchemaError("name", "a slug of a-z, 0-9 and '-' starting with a letter or digit", self.name)
        _at_least("rounds", self.rounds, 1)
        _at_least("anchors", self.anchors, 1)
        _at_least("workers_per_round", self.workers_per_round, 0)
        if self.candidates < 2:
            raise SchemaError("workers_per_round", "anchors + workers_per_round >= 2 candidates per round",
                              self.workers_per_round)


def _resolve(base: Path, text: str) -> Path:
    return Path(os.path.abspath(base / Path(text).expanduser()))


def _require_file(key: str, path: Path) -> None:
    if not path.is_file():
        raise SchemaError(key, f"an existing file (no file at {path})")


def _resolve_paths(campaign: Campaign, base: Path) -> CampaignPaths:
    """Resolve the path keys against `base` and check that what they name is there."""
    profile = campaign.scheduler.profile
    paths = CampaignPaths(
        state_root=_resolve(base, campaign.state_root),
        substrate=_resolve(base, campaign.substrate),
        constitution=_resolve(base, campaign.policy.constitution),
        initial_policy=_resolve(base, campaign.policy.initial),
        profile=None if profile is None else _resolve(base, profile),
        heldout=None if campaign.leaderboard.heldout is None else _resolve(base, campaign.leaderboard.heldout),
        task_yaml=None if campaign.leaderboard.task_yaml is None else _resolve(base, campaign.leaderboard.task_yaml),
    )
    if paths.state_root.exists() and not paths.state_root.is_dir():
        raise SchemaError("state_root", f"a directory or a path not yet created ({paths.state_root} is a file)")
    existing = next(p for p in (paths.state_root, *paths.state_root.parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise SchemaError("state_root", f"a directory this user can create ({existing} is not a writable directory)",
                          campaign.state_root)
    # Every job stage hides the state tree: holding the substrate or the campaign's own files, it would
    # hide them from the stages that need them (and inside the substrate, a fork would copy it into each
    # sandbox). Inside the campaign file's folder it may be.
    state, substrate, folder = (Path(os.path.realpath(p)) for p in (paths.state_root, paths.substrate, base))
    if state.is_relative_to(substrate) or substrate.is_relative_to(state):
        raise SchemaError("state_root", f"a directory of its own, neither inside nor holding substrate ({substrate})",
                          campaign.state_root)
    if folder.is_relative_to(state):
        raise SchemaError("state_root", f"a directory of its own, not holding the campaign file's folder ({folder})",
                          campaign.state_root)
    if not paths.substrate.is_dir():
        raise SchemaError("substrate", f"an existing directory (no directory at {paths.substrate})")
    missing = [name for name in REQUIRED_FILES if not (paths.substrate / name).is_file()]
    if missing:
        raise SchemaError("substrate", f"a directory with {', '.join(REQUIRED_FILES)} "
                                       f"({paths.substrate} lacks {', '.join(missing)})")
    _require_file("policy.constitution", paths.constitution)
    if not paths.constitution.read_bytes().strip():
        raise SchemaError("policy.constitution", f"a constitution with its rules ({paths.constitution} is empty)")
    _require_file("policy.initial", paths.initial_policy)
    if paths.profile is not None:
        _require_file("scheduler.profile", paths.profile)
    if campaign.leaderboard.adapter == "jsonl":
        _require_file("leaderboard.heldout", paths.heldout)
    if paths.task_yaml is not None:
        _require_file("leaderboard.task_yaml", paths.task_yaml)
    elif paths.heldout is not None and not paths.heldout.exists():
        raise SchemaError("leaderboard.heldout", f"an existing file or directory (nothing at {paths.heldout})")
    if paths.heldout is not None and Path(os.path.realpath(paths.heldout)).is_relative_to(state):
        raise SchemaError("leaderboard.heldout", f"data outside the state tree ({state})", campaign.leaderboard.heldout)
    return paths


def load_campaign(path: Path | str) -> Campaign:
    """Load and fully check a campaign YAML; raise ConfigError on the first problem."""
    shown, source = str(path), Path(os.path.abspath(path))
    raw = read_bytes(Path(path))
    try:
        campaign = from_data(Campaign, parse_mapping(raw, shown))
        campaign.paths = _resolve_paths(campaign, source.parent)
    except SchemaError as exc:
        raise ConfigError.of(exc, shown) from None
    campaign.source = source
    campaign.sha256 = hashlib.sha256(raw).hexdigest()
    return campaign


# Keys the initial policy file must not set: it always governs round 0.
_IMPLIED_POLICY_KEYS = ("round", "standing_source")


def load_initial_policy(campaign: Campaign) -> Policy:
    """The round-0 policy: the initial policy file, with the substrate's recipe as standing recipe
    unless the file sets `standing_recipe` itself."""
    return read_initial_policy(campaign.paths.initial_policy, campaign.paths.substrate)


def read_initial_policy(path: Path, substrate: Path) -> Policy:
    """`load_initial_policy` from the two paths alone: `substrate check` has a policy file, no campaign."""
    path, substrate = Path(path), Path(substrate)
    data = read_yaml_mapping(path)
    for key in _IMPLIED_POLICY_KEYS:
        if key in data:
            raise ConfigError(key, "no such key in the initial policy (it is implied: round 0)", source=str(path))
    if "standing_recipe" in data:
        data["standing_source"] = "initial-policy"
    else:
        data["standing_recipe"] = read_yaml_mapping(substrate / RECIPE_FILE)
        data["standing_source"] = "substrate"
    try:
        policy = from_data(Policy, {"round": 0, **data})
    except SchemaError as exc:
        raise ConfigError.of(exc, path) from None
    if not policy.standing_recipe:
        source = path if data["standing_source"] == "initial-policy" else substrate / RECIPE_FILE
        raise ConfigError("standing_recipe" if source == path else "<root>", "a recipe with its keys (it is empty)",
                          source=str(source))
    broken = consistency_violations(policy)
    if broken:
        raise ConfigError("<root>", f"a policy the constitution accepts ({broken[0].rule}: {broken[0].message})",
                          source=str(path))
    return policy
