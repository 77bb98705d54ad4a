"""A team's own leaderboards: a held-out JSONL scored by a rule, the site's own scorer, or an
lm-evaluation-harness task.

Each copies the held-out data once into the state tree's private leaderboard directory (no sandbox sees
it there; a score job sees it read-only) and run only in the confined score job:

- `jsonl`: rows of `prompt`, `answer` and an optional `subset`. The score job sees the prompts alone and
  the frozen evaluator writes its answers (`evaluate.py --prompts-file P --predictions F`); the daemon
  matches them against the answers, which never leave the daemon, by the campaign's rule: `exact`,
  `normalized` (case, whitespace, punctuation), `numeric` (within `tolerance`) or `regex` (its first group
  extracts the answer from the output, and from a row's answer where it matches there: GSM8K's `#### 42`).
- `command`: the site's scorer, run as `COMMAND --checkpoint EXPORT --recipe RECIPE --data DATA --out FILE`.
  It gets the selected pickle-free export (checked against its hash before it starts), the candidate's
  recipe and the data (and the files its command line names by absolute path, read-only), and writes
  `{"score": s, "per_subset": {name: s}}`, every score a fraction in [0, 1] where higher is better; the
  first score recorded fixes the subsets every later one must report.
- `lm-eval`: an lm-evaluation-harness task (built-in, or a local task YAML over `heldout`'s files);
  `hpc_aevo.scoring.lm_eval_job` converts the export to an HF checkpoint with the frozen substrate's
  export_hf.py and runs the harness on it, offline, writing score.json as a site's scorer does.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aevo.campaign.config import Campaign, Leaderboard
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.spec import ScoreInput
from hpc_aevo.scoring.leaderboard import (HELDOUT_PER_DOMAIN, Adapter, HeldoutPuzzles, LeaderboardError,
                                         LeaderboardLedger, evaluator_input)
from hpc_aevo.state.contract import PREDICTIONS, SCORE_RESULT
from hpc_aevo.state.records import Record, atomic_write_text
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.untrusted import MIB, UntrustedFile, load_record, read_bytes, read_json, typed_fields

MAX_HELDOUT_BYTES = 256 * MIB  # a held-out set is read whole by the daemon, once
DEFAULT_SUBSET = "all"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


@dataclass
class HeldoutRow:
    prompt: str
    answer: str
    subset: str = DEFAULT_SUBSET


@dataclass
class Predictions(Record):
    """The evaluator's answers to a prompts file, in its order (the jsonl adapter's score job writes it)."""

    SCHEMA = "hpc_aevo.predictions"
    VERSION = 1

    checkpoint_sha256: str
    step: int
    outputs: list[str] = field(default_factory=list)


def read_heldout(path: Path) -> list[HeldoutRow]:
    """A person's held-out JSONL, every row checked; ConfigError names the file, the line and what was wrong."""
    try:
        text = read_bytes(path, path.parent, MAX_HELDOUT_BYTES).decode()
    except (UntrustedFile, UnicodeDecodeError) as exc:
        raise ConfigError("leaderboard.heldout", f"a UTF-8 JSONL file of at most {MAX_HELDOUT_BYTES} bytes ({exc})",
                          source=str(path)) from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {number}", f"a JSON object ({exc.msg})", source=str(path)) from None
        if not isinstance(row, dict) or set(row) - {"prompt", "answer", "subset"} or \
                not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), (str, int, float)) or \
                isinstance(row.get("answer"), bool) or not isinstance(row.get("subset", DEFAULT_SUBSET), str):
            raise ConfigError(f"line {number}", 'an object of "prompt" (text), "answer" (text or number) and an '
                              'optional "subset" (text), nothing else', line[:200], source=str(path))
        subset = row.get("subset", DEFAULT_SUBSET)
        if not re.fullmatch(r"[\w.-]{1,64}", subset):
            raise ConfigError(f"line {number}.subset", "a name of letters, digits, '_', '.' or '-' (64 at most)",
                              subset, source=str(path))
        rows.append(HeldoutRow(row["prompt"], str(row["answer"]), subset))
    if not rows:
        raise ConfigError("leaderboard.heldout", "at least one row", source=str(path))
    return rows


class Matcher:
    """The campaign's rule for whether an output answers a row."""

    def __init__(self, config: Leaderboard):
        self.rule = config.rule or "exact"
        self.tolerance = 1e-6 if config.tolerance is None else config.tolerance
        self.pattern = re.compile(config.pattern) if config.pattern else None

    def __call__(self, output: str, answer: str) -> bool:
        if self.rule == "normalized":
            return _normalized(output) == _normalized(answer)
        if self.rule == "numeric":
            got, want = _number(output), _number(answer)
            return got is not None and want is not None and abs(got - want) <= self.tolerance
        if self.rule == "regex":
            found = self.pattern.search(output)
            expected = self.pattern.search(answer)
            return found is not None and found.group(1).strip() == (expected.group(1) if expected else answer).strip()
        return output.strip() == answer.strip()


def _normalized(text: str) -> str:
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def _number(text: str) -> float | None:
    found = _NUMBER.search(text)
    if found is None:
        return None
    value = float(found.group(0).replace(",", ""))
    return value if math.isfinite(value) else None


class JsonlHeldout(Adapter):
    """The `jsonl` adapter: the evaluator answers the prompts in the score job, the daemon scores them."""

    def __init__(self, tree: StateTree, quota: int, config: Leaderboard, source: Path):
        super().__init__(tree, quota)
        self.matcher, self.source = Matcher(config), source
        self.answers_file = tree.heldout_split  # private: the daemon's alone
        self.prompts_file = tree.heldout_prompts  # what a score job sees

    def data_files(self) -> list[Path]:
        return [self.answers_file, self.prompts_file]

    def prepare(self) -> None:
        if self.answers_file.exists() and self.prompts_file.exists() and self.ledger_file.exists():
            return
        rows = read_heldout(self.source)
        atomic_write_text(self.answers_file, "".join(json.dumps(vars(r)) + "\n" for r in rows))
        atomic_write_text(self.prompts_file, "".join(json.dumps({"prompt": r.prompt}) + "\n" for r in rows))
        counts = dict(sorted(Counter(r.subset for r in rows).items()))
        LeaderboardLedger(quota=self.quota, examples_per_domain=counts).save(self.ledger_file)

    def score_input(self, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> ScoreInput:
        return evaluator_input(checkpoint, sha256, recipe, self.prompts_file,
                               "--prompts-file", str(self.prompts_file), "--predictions", str(out / PREDICTIONS))

    def result(self, out: Path, sha256: str, step: int) -> tuple[float, dict[str, float]]:
        path = out / PREDICTIONS
        predictions = load_record(Predictions, path, out, 64 * MIB)
        rows = [HeldoutRow(**json.loads(line)) for line in self.answers_file.read_text().splitlines()]
        if (predictions.checkpoint_sha256, predictions.step) != (sha256, step):
            raise LeaderboardError(f"{path}: refused (it answered sha256 {predictions.checkpoint_sha256!r} step "
                                   f"{predictions.step}, not {sha256} step {step})")
        if len(predictions.outputs) != len(rows):
            raise LeaderboardError(f"{path}: refused ({len(predictions.outputs)} answers for {len(rows)} prompts)")
        hits, counts = Counter(), Counter()
        for row, output in zip(rows, predictions.outputs):
            counts[row.subset] += 1
            hits[row.subset] += self.matcher(output, row.answer)
        return sum(hits.values()) / len(rows), {s: hits[s] / counts[s] for s in sorted(counts)}


@dataclass
class CommandScore:
    """What a site's scorer (or the lm-eval runner) writes."""

    score: float
    per_subset: dict[str, float]


def copy_in(source: Path, target: Path) -> None:
    """Copy a file or a directory, as it is, to `target` (replacing what a crash left half-copied)."""
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)


class ScoreFileAdapter(Adapter):
    """An adapter whose score job writes score.json itself: its data copied in as it is, the result held to
    `{"score": s, "per_subset": {name: s}}`, and the subsets fixed by the first score recorded."""

    def __init__(self, tree: StateTree, quota: int, source: Path | None):
        super().__init__(tree, quota)
        self.source = source
        self.data = None if source is None else tree.leaderboard_data / source.name

    def data_files(self) -> list[Path]:
        return [] if self.data is None else [self.data]

    def prepare(self) -> None:
        """Copy the data in; the subsets are what the scorer reports, so the ledger learns them from the first
        score (an empty `examples_per_domain` until then)."""
        if all(p.exists() for p in self.data_files()) and self.ledger_file.exists():
            return
        if self.data is not None:
            copy_in(self.source, self.data)
        LeaderboardLedger(quota=self.quota).save(self.ledger_file)

    def result(self, out: Path, sha256: str, step: int) -> tuple[float, dict[str, float]]:
        path = out / SCORE_RESULT
        data = read_json(path, out, MIB)
        if not isinstance(data, dict) or set(data) != {"score", "per_subset"}:
            raise LeaderboardError(f'{path}: refused (expected {{"score": number, "per_subset": {{name: number}}}})')
        written = typed_fields(CommandScore, data, path)
        return written.score, dict(written.per_subset)

    def record(self, candidate: str, out: Path, checkpoint: str, sha256: str, step: int):
        """As every adapter records, but the first score names the subsets every later one must have."""
        ledger = self.ledger()
        if not ledger.examples_per_domain and ledger.find(candidate) is None:
            _, per_subset = self.result(out, sha256, step)
            with LeaderboardLedger.locked_update(self.ledger_file, ledger) as locked:
                locked.examples_per_domain = locked.examples_per_domain or {name: 0 for name in sorted(per_subset)}
        return super().record(candidate, out, checkpoint, sha256, step)


class CommandScorer(ScoreFileAdapter):
    """The `command` adapter: the site's scorer, confined in the score job like the evaluator."""

    def __init__(self, tree: StateTree, quota: int, config: Leaderboard, source: Path):
        super().__init__(tree, quota, source)
        self.command = tuple(config.command)

    def score_input(self, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> ScoreInput:
        # The scorer's own files named on its command line stay visible where the sandbox hides their place
        # (its private /tmp), read-only like the data.
        code = tuple(arg for arg in self.command if os.path.isabs(arg) and os.path.exists(arg))
        return ScoreInput(str(checkpoint), sha256, ("--checkpoint", str(checkpoint), "--recipe", str(recipe),
                                                    "--data", str(self.data), "--out", str(out / SCORE_RESULT)),
                          views=(str(self.data), *code), command=self.command)


_TASK_REFERENCE = re.compile(r"^\s*include:\s*['\"]?([\w.-]+\.ya?ml)|!function\s+([\w-]+)\.\w+", re.M)


def task_files(task_yaml: Path) -> list[Path]:
    """The task YAML and the files beside it that it names, as deep as they go: `include: other.yaml` and
    `!function utils.fn` (utils.py). Nothing else of its folder (the campaign's own YAML may lie there)."""
    found, todo = [], [task_yaml]
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.append(path)
        if path.suffix != ".py":
            todo += [task_yaml.parent / (yaml_name or f"{module}.py")
                     for yaml_name, module in _TASK_REFERENCE.findall(path.read_text())]
    return found

# The lm-eval score job's program, run by path (it imports nothing of hpc_aevo): the toolkit's checkout may
# lie where a job stage sees nothing (under /tmp, private there), so the file alone is shown to the job.
RUNNER = Path(__file__).with_name("lm_eval_job.py")


class LmEvalTask(ScoreFileAdapter):
    """The `lm-eval` adapter: an lm-evaluation-harness task on the candidate's export as an HF checkpoint,
    run by `hpc_aevo.scoring.lm_eval_job` in the score job. A local task YAML is copied in with the files it
    names beside it (`task_files`), and the task's data (`heldout`)."""

    def __init__(self, tree: StateTree, quota: int, config: Leaderboard, source: Path | None,
                 task_yaml: Path | None):
        super().__init__(tree, quota, source)
        self.config, self.task_yaml = config, task_yaml
        self.task_dir = None if task_yaml is None else tree.leaderboard_dir / "task"

    def data_files(self) -> list[Path]:
        return [*super().data_files(), *([] if self.task_dir is None else [self.task_dir / self.task_yaml.name])]

    def prepare(self) -> None:
        if self.task_dir is not None and not (self.task_dir / self.task_yaml.name).exists():
            staged = self.task_dir.with_name(".task.partial")
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
            for path in task_files(self.task_yaml):
                shutil.copyfile(path, staged / path.name)
            shutil.rmtree(self.task_dir, ignore_errors=True)
            os.replace(staged, self.task_dir)
        super().prepare()

    def score_input(self, checkpoint: Path, sha256: str, recipe: Path, out: Path) -> ScoreInput:
        config = self.config
        task = ("--task", config.task) if self.task_dir is None else (
            "--task-yaml", str(self.task_dir / self.task_yaml.name), "--data", str(self.data))
        return ScoreInput(str(checkpoint), sha256, (
            "--checkpoint", str(checkpoint), "--recipe", str(recipe), "--substrate", str(self.tree.default_dir), *task,
            "--metric", config.metric, *(("--limit", str(config.limit)) if config.limit else ()),
            "--out", str(out / SCORE_RESULT)), views=tuple(str(p) for p in (self.data, self.task_dir, RUNNER) if p),
            command=(sys.executable, str(RUNNER)))


def make_adapter(campaign: Campaign, tree: StateTree) -> Adapter:
    """The campaign's leaderboard adapter."""
    config = campaign.leaderboard
    if config.adapter == "jsonl":
        return JsonlHeldout(tree, config.quota, config, campaign.paths.heldout)
    if config.adapter == "command":
        return CommandScorer(tree, config.quota, config, campaign.paths.heldout)
    if config.adapter == "lm-eval":
        return LmEvalTask(tree, config.quota, config, campaign.paths.heldout, campaign.paths.task_yaml)
    return HeldoutPuzzles(tree, config.quota, campaign.seed,
                          config.examples_per_domain or HELDOUT_PER_DOMAIN)
