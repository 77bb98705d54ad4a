"""`substrate check`: hold a user's substrate to the contract before a campaign spends compute on it.

A campaign finds a broken substrate only when every candidate of round 0 fails, hours later on a
cluster. This check runs the same machinery a round does, on a scratch state tree: the substrate is
installed and forked as a round forks it (`loop/install.py`, `loop/fork.py`), its trainer runs two
steps and its evaluator runs, each as the job stage it would be (`jobs/body.start_stage`, confined by
`sandbox/jobs.py`), and what they wrote is read with the toolkit's own readers and checks
(`scoring/results.py`, the heldout-puzzles adapter's `record`). Each check is one line: ok, or what is wrong and where.

The cheap part (`contract_checks`: files, recipe, axes) runs no substrate code; the daemon runs it
before round 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from hpc_aevo.campaign.config import read_initial_policy
from hpc_aevo.campaign.reader import ConfigError, read_yaml_mapping
from hpc_aevo.jobs.body import start_stage
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.jobs.spec import JobSpec
from hpc_aevo.loop.fork import fork_candidate
from hpc_aevo.loop.install import install_substrate
from hpc_aevo.sandbox.jobs import preflight, unconfined_here
from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardError, LeaderboardLedger
from hpc_aevo.scoring.results import read_eval_result, read_train_summary, selected_file
from hpc_aevo.scoring.score_stage import score_spec
from hpc_aevo.search.axes import AXES, Axis, has_key
from hpc_aevo.state.contract import EVAL_RESULT, RECIPE_FILE, REQUIRED_FILES, SCORE_RESULT
from hpc_aevo.state.records import atomic_write_text
from hpc_aevo.state.tree import StateTree
from hpc_aevo.state.untrusted import UntrustedFile

CHECK_STEPS = 2  # train.py --max-steps: enough to write a checkpoint and its export, little more
EXPORT = re.compile(r"ckpt-(\d+)\.safetensors")  # export/ckpt-<step:06d>.safetensors (substrate/README.md)
PUZZLES = "puzzles.py"  # the reference substrate's generators, which the heldout-puzzles split is drawn from

Status = Literal["ok", "FAIL", "skip"]


@dataclass(frozen=True)
class CheckLine:
    """One check's verdict: `detail` says what passed, or what is wrong and where (file, key)."""

    check: str  # files | recipe | axes | train | eval | score
    status: Status
    detail: str

    def render(self) -> str:
        return f"{self.status:<4}  {self.check:<6}  {self.detail}"

    def __str__(self) -> str:
        return f"substrate check {self.check}: {self.detail}"


def _skipped(after: str, *checks: str) -> Iterator[CheckLine]:
    for check in checks:
        yield CheckLine(check, "skip", f"not run: the {after} check failed")


def _needed(axis: Axis) -> tuple[str, ...]:
    """The recipe keys an axis cannot work without: its areas, or, for an axis that needs a part of the recipe
    (the router's knobs under `model.moe`, each with its default), that part only."""
    return (axis.requires,) if axis.requires else axis.recipe_areas


def _axes_line(substrate: Path, policy_file: Path) -> CheckLine:
    """Every recipe key that the policy's active axes mutate is in the recipe the workers start from."""
    try:
        policy = read_initial_policy(policy_file, substrate)
    except ConfigError as exc:
        return CheckLine("axes", "FAIL", str(exc))
    source = f"{policy_file}: standing_recipe" if policy.standing_source == "initial-policy" else str(
        substrate / RECIPE_FILE)
    missing = [f"{key} (axis {axis})" for axis in policy.active_axes for key in _needed(AXES[axis])
               if not has_key(policy.standing_recipe, key)]
    if missing:
        return CheckLine("axes", "FAIL", f"{source}: no key {', '.join(missing)}, which the active axes of "
                                         f"{policy_file} mutate")
    return CheckLine("axes", "ok", f"{', '.join(policy.active_axes)} ({policy_file}) map to keys of {source}")


def contract_checks(substrate: Path, policy_file: Path) -> Iterator[CheckLine]:
    """The cheap checks, which run none of the substrate's code: its files, its recipe, the policy's axes."""
    substrate, policy_file = Path(substrate), Path(policy_file)
    if not substrate.is_dir():
        yield CheckLine("files", "FAIL", f"{substrate}: not a directory")
        yield from _skipped("files", "recipe", "axes")
        return
    missing = [name for name in REQUIRED_FILES if not (substrate / name).is_file()]
    if missing:
        yield CheckLine("files", "FAIL", f"{substrate}: missing {', '.join(missing)} (a substrate has "
                                         f"{', '.join(REQUIRED_FILES)}; substrate/README.md)")
        yield from _skipped("files", "recipe", "axes")
        return
    yield CheckLine("files", "ok", f"{', '.join(REQUIRED_FILES)} in {substrate}")
    try:
        recipe = read_yaml_mapping(substrate / RECIPE_FILE)
    except ConfigError as exc:
        yield CheckLine("recipe", "FAIL", str(exc))
        yield from _skipped("recipe", "axes")
        return
    yield CheckLine("recipe", "ok", f"{substrate / RECIPE_FILE} parses ({', '.join(recipe)})")
    yield _axes_line(substrate, policy_file)


def contract_failure(substrate: Path, policy_file: Path) -> CheckLine | None:
    """The first cheap check that fails (None: all pass); the daemon stops on it before round 0."""
    return next((line for line in contract_checks(substrate, policy_file) if line.status == "FAIL"), None)


@dataclass
class StageEnd:
    """How one confined stage of the check ended."""

    code: int | None  # None: killed at the time limit
    confined: bool
    last_line: str  # the log's last line: what a failing stage said


def _run_stage(spec: JobSpec, stage: str, timeout_s: float, extra: tuple[str, ...] = ()) -> StageEnd:
    """Run `stage` of `spec` as a job would (the same command line and confinement), within `timeout_s`."""
    log = spec.log_path(stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle, start_stage(spec, stage, handle, extra) as (process, confined):
        try:
            code: int | None = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.terminate()  # the relay passes it on; the trainer checkpoints and exits
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            code = None
    lines = log.read_text(errors="replace").strip().splitlines()
    return StageEnd(code, confined, lines[-1] if lines else "(nothing in its log)")


def _confinement(run: StageEnd) -> str:
    return "confined by bubblewrap" if run.confined else f"UNCONFINED: {unconfined_here('auto')}"


def _stage_failure(run: StageEnd, what: str, timeout_s: float, log: Path) -> str | None:
    if run.code is None:
        return f"{what} did not finish within {timeout_s:g}s ({_confinement(run)}; log: {log})"
    if run.code != 0:
        return f"{what} exited with code {run.code}: {run.last_line} ({_confinement(run)}; log: {log})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a safetensors file (None: its header is one): 8 bytes of header length, a JSON object.
    The trainer wrote it, so it is opened as untrusted: never through a link, never a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return f"unreadable without following a link: {exc.strerror}"
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        size = int.from_bytes(handle.read(8).ljust(8, b"\0"), "little")
        if not 2 <= size <= 100 * 1024 * 1024:
            return f"a header length of {size} bytes"
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, ValueError):
            return "a header that is not JSON"
    return None if isinstance(header, dict) else "a header that is not a JSON object"


def _train_line(spec: JobSpec, timeout_s: float) -> CheckLine:
    """train.py runs two steps confined and leaves a pickle-free export."""
    what = f"train.py --recipe {RECIPE_FILE} --out CK --max-steps {CHECK_STEPS}"
    problem = preflight(spec.hidden, "auto")
    if problem:
        return CheckLine("train", "FAIL", problem)
    checkpoints = Path(spec.checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    run = _run_stage(spec, "train", timeout_s, ("--max-steps", str(CHECK_STEPS)))
    failed = _stage_failure(run, what, timeout_s, spec.log_path("train"))
    if failed:
        return CheckLine("train", "FAIL", failed)
    export = checkpoints / "export"
    exports = sorted(p for p in export.glob("*.safetensors") if EXPORT.fullmatch(p.name)) if export.is_dir() else []
    if not exports:
        written = sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*") if p.is_file())
        pickles = [name for name in written if name.endswith((".pt", ".pth", ".pkl", ".bin"))]
        if pickles:
            why = (f"wrote only pickle checkpoints ({', '.join(pickles[:3])}), no export/ckpt-<step>.safetensors: "
                   "the toolkit never unpickles a candidate's file, its evaluator reads the pickle-free export only")
        else:
            why = f"wrote no checkpoint: expected export/ckpt-<step>.safetensors (it wrote {written or 'nothing'})"
        return CheckLine("train", "FAIL", f"{what} exited 0 but {why} (CK: {checkpoints})")
    bad = [(p, problem) for p in exports if (problem := _safetensors_problem(p))]
    if bad:
        path, problem = bad[0]
        return CheckLine("train", "FAIL", f"{path}: not a safetensors file ({problem})")
    try:
        read_train_summary(checkpoints)  # optional, but when written it is read into the manifest
    except UntrustedFile as exc:
        return CheckLine("train", "FAIL", str(exc))
    names = ", ".join(f"export/{p.name}" for p in exports)
    return CheckLine("train", "ok", f"{CHECK_STEPS} steps wrote {names} ({_confinement(run)})")


@dataclass(frozen=True)
class Selected:
    """The checkpoint eval.json selected, as the score stage is given it."""

    path: Path
    relative: str
    sha256: str
    step: int


def _eval_line(spec: JobSpec, timeout_s: float) -> tuple[CheckLine, Selected | None]:
    """evaluate.py --checkpoints writes an eval.json the toolkit reads, naming a file it can score."""
    what = f"evaluate.py --checkpoints CK --recipe {RECIPE_FILE}"
    run = _run_stage(spec, "eval", timeout_s)
    failed = _stage_failure(run, what, timeout_s, spec.log_path("eval"))
    if failed:
        return CheckLine("eval", "FAIL", failed), None
    result_path = spec.files.out("eval") / EVAL_RESULT
    checkpoints = Path(spec.checkpoints)
    try:
        result = read_eval_result(result_path)
        chosen = result.selected()
        path = selected_file(checkpoints, result.selected_checkpoint)
    except FileNotFoundError:
        return CheckLine("eval", "FAIL", f"{what} exited 0 but wrote no {EVAL_RESULT} ({result_path})"), None
    except StopIteration:
        return CheckLine("eval", "FAIL", f"{result_path}: selected_step {result.selected_step} is not the step of "
                                        "any entry of checkpoints"), None
    except (UntrustedFile, LeaderboardError) as exc:
        return CheckLine("eval", "FAIL", str(exc)), None
    selected = result.selected_checkpoint
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest != selected.sha256 or selected.step != result.selected_step:
        why = (f"selected_checkpoint.sha256 is {selected.sha256}, the file's is {digest}" if digest != selected.sha256
               else f"selected_checkpoint.step {selected.step} is not selected_step {result.selected_step}")
        return CheckLine("eval", "FAIL", f"{result_path}: {why}"), None
    relative = str(path.relative_to(checkpoints))
    line = CheckLine("eval", "ok", f"{EVAL_RESULT} accepted ({result.selection_rule}): selected {relative}, step "
                                   f"{chosen.step}, dev {chosen.dev:.3f} ({_confinement(run)})")
    return line, Selected(path, relative, selected.sha256, selected.step)


def _split_counts(split: Path) -> dict[str, int]:
    """Examples per domain of a JSONL split (rows `{"domain", "prompt", "answer", ...}`); one line if it is not."""
    counts: Counter[str] = Counter()
    for n, text in enumerate(split.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(text)
        except ValueError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("domain"), str)):
            raise LeaderboardError(f"{split} line {n}: expected a JSON object with a string \"domain\"")
        counts[row["domain"]] += 1
    if not counts:
        raise LeaderboardError(f"{split}: no rows")
    return dict(sorted(counts.items()))


def _held_out(tree: StateTree, split_file: Path | None) -> tuple[HeldoutPuzzles | None, str]:
    """The adapter whose `check` the result must pass, over `split_file`, or the heldout-puzzles split drawn
    as a campaign draws it; (None, why) when there is no split to score on."""
    adapter = HeldoutPuzzles(tree, quota=1, seed=0)
    if split_file is None:
        if not (tree.default_dir / PUZZLES).is_file():
            return None, f"no --split-file, and no {PUZZLES} to draw the heldout-puzzles split from"
        adapter.prepare()
        return adapter, f"the heldout-puzzles split of its {PUZZLES}"
    counts = _split_counts(split_file)
    atomic_write_text(adapter.split_file, split_file.read_text(encoding="utf-8"))
    LeaderboardLedger(quota=1, examples_per_domain=counts).save(adapter.ledger_file)
    return adapter, str(split_file)


def _score_line(cand: Candidate, selected: Selected, split_file: Path | None, timeout_s: float) -> CheckLine:
    """The selected checkpoint scores on a held-out split and the result passes the leaderboard's check."""
    try:
        adapter, split = _held_out(cand.tree, split_file)
    except (OSError, LeaderboardError) as exc:
        return CheckLine("score", "FAIL", str(exc))
    if adapter is None:
        return CheckLine("score", "skip", f"{split}: held-out scoring not checked (give --split-file)")
    spec = score_spec(cand, 1, None)
    spec.score = adapter.score_input(selected.path, selected.sha256, Path(spec.sandbox) / RECIPE_FILE,
                                     spec.files.out("score"))
    what = "evaluate.py --checkpoint F --sha256 H --recipe R --split-file S --out O"
    run = _run_stage(spec, "score", timeout_s)
    failed = _stage_failure(run, what, timeout_s, spec.log_path("score"))
    if failed:
        return CheckLine("score", "FAIL", failed)
    out = spec.files.out("score")
    try:
        score = adapter.record(cand.key, out, selected.relative, selected.sha256, selected.step)
    except FileNotFoundError:
        return CheckLine("score", "FAIL", f"{what} exited 0 but wrote no {SCORE_RESULT} ({out / SCORE_RESULT})")
    except (UntrustedFile, LeaderboardError) as exc:
        return CheckLine("score", "FAIL", str(exc))
    examples = sum(adapter.ledger().examples_per_domain.values())
    return CheckLine("score", "ok", f"{selected.relative} scored {score.score:.3f} on {examples} examples of {split}; "
                                    f"sha256 and step {score.step} as selected ({_confinement(run)})")


def check_substrate(substrate: Path, policy_file: Path, scratch: Path, split_file: Path | None = None,
                    timeout_s: float = 600.0) -> Iterator[CheckLine]:
    """Every check, one line each as it finishes; the trainer and the evaluator run on a state tree under
    `scratch` (installed and forked as a campaign's), so nothing of the user's substrate is written."""
    substrate = Path(substrate)
    cheap = list(contract_checks(substrate, policy_file))
    yield from cheap
    blocking = next((line.check for line in cheap if line.status == "FAIL" and line.check != "axes"), None)
    if blocking is not None:  # a wrong axis key does not stop the trainer; a missing file or recipe does
        yield from _skipped(blocking, "train", "eval", "score")
        return
    tree = StateTree(scratch)
    try:
        manifest = install_substrate(substrate, tree.default_dir, tree.substrate_manifest)
        fork_candidate(tree.default_dir, manifest, tree.sandbox(0, 0), read_yaml_mapping(substrate / RECIPE_FILE))
    except (OSError, shutil.Error) as exc:
        yield CheckLine("train", "FAIL", f"{substrate} could not be installed and forked into {scratch}: {exc}")
        yield from _skipped("train", "eval", "score")
        return
    cand = Candidate(0, 0, tree, confine="auto")
    spec = cand.spec(1)
    line = _train_line(spec, timeout_s)
    yield line
    if line.status != "ok":
        yield from _skipped("train", "eval", "score")
        return
    line, selected = _eval_line(spec, timeout_s)
    yield line
    if selected is None:
        yield from _skipped("eval", "score")
        return
    yield _score_line(cand, selected, split_file, timeout_s)


def new_scratch() -> Path:
    """A scratch directory for one check's state tree (the caller removes it: `loop.install.remove_tree`)."""
    return Path(tempfile.mkdtemp(prefix="hpc_aevo-substrate-check-"))
