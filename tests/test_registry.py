"""The record registry and the state-tree doc against the code: a record or a path the doc misses fails.

docs/state-tree.md draws the tree as an indented listing; it is parsed into relative paths and every
path `StateTree` can name (rendered with round 0, candidate 0, attempt 1) must be one of them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import hpc_aevo
from hpc_aevo.state.records import Record
from hpc_aevo.state.registry import BENCHMARK_RECORDS, STATE_TREE_RECORDS, record_classes
from hpc_aevo.state.tree import AttemptFiles, StateTree

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROOT = Path("/state")


def _all_record_classes() -> set[type]:
    for info in pkgutil.walk_packages(hpc_aevo.__path__, "hpc_aevo."):
        importlib.import_module(info.name)
    found, todo = set(), [Record]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return {cls for cls in found if cls.__module__.startswith("hpc_aevo.")}


def test_every_record_class_is_registered_once():
    registered = record_classes()
    assert len(registered) == len(set(registered))
    assert _all_record_classes() == set(registered)
    schemas = [cls.SCHEMA for cls in registered]
    assert len(schemas) == len(set(schemas)) and all(s.startswith("hpc_aevo.") for s in schemas)


@pytest.mark.parametrize("names, page", [(STATE_TREE_RECORDS, "state-tree.md"), (BENCHMARK_RECORDS, "benchmarks.md")])
def test_every_record_is_documented_with_its_schema(names, page):
    text = (DOCS / page).read_text()
    missing = [cls.SCHEMA for cls in record_classes(names) if f"`{cls.SCHEMA}`" not in text]
    assert not missing, f"docs/{page} does not document: {', '.join(missing)}"


def test_the_state_tree_doc_names_each_record_class():
    text = (DOCS / "state-tree.md").read_text()
    missing = [cls.__name__ for cls in record_classes(STATE_TREE_RECORDS) if cls.__name__ not in text]
    assert not missing, f"docs/state-tree.md does not name: {', '.join(missing)}"


def documented_paths() -> set[str]:
    """The relative paths drawn in the doc's `<state_root>/` listing (indentation: two spaces a level)."""
    lines = (DOCS / "state-tree.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "<state_root>/")
    base = len(lines[start]) - len(lines[start].lstrip())
    stack: list[tuple[int, str]] = []
    paths = set()
    for line in lines[start + 1:]:
        if not line.strip():
            break
        depth = (len(line) - len(line.lstrip()) - base) // 2
        name = line.split()[0].rstrip(",/")
        if name == "...":
            continue
        stack = [(d, n) for d, n in stack if d < depth]
        stack.append((depth, name))
        paths.add("/".join(n for _, n in stack))
    return paths


def tree_paths() -> dict[str, Path]:
    """Every path StateTree and AttemptFiles name, rendered for round 0, candidate 0, attempt 1."""
    tree = StateTree(ROOT)
    samples = {"r": 0, "c": 0, "n": 1, "who": "<who>", "role": "worker", "stage": "train", "rank": 1}
    rendered = {}

    def render(owner, prefix: str, extra: dict | None = None, skip: tuple[str, ...] = ()) -> None:
        for name, member in inspect.getmembers(type(owner)):
            if name.startswith("_") or name in ("root", "rounds", "candidate_manifests", "agent_records", "agent_record",
                                                "attempt", *skip):
                continue
            if isinstance(member, property):
                value = getattr(owner, name)
            elif inspect.isfunction(member):
                params = list(inspect.signature(member).parameters)[1:]
                value = getattr(owner, name)(**{p: (extra or samples)[p] for p in params})
            else:
                continue
            if isinstance(value, Path):
                rendered[f"{prefix}{name}"] = value

    render(tree, "StateTree.")
    # Training writes into checkpoints/ (no output directory of its own); a score job's attempts have their
    # own directory, jobs/score/, with the files of a single-stage attempt.
    render(tree.attempt(0, 0, 1), "AttemptFiles[train].", samples, skip=("out",))
    render(tree.attempt(0, 0, 1), "AttemptFiles[eval].", {**samples, "stage": "eval"})
    render(AttemptFiles(tree.score_jobs(0, 0), 1), "AttemptFiles[score].", {**samples, "stage": "score"},
           skip=("rank_log", "submitit_dir"))
    rendered["agent record"] = tree.agent_record(0, "cand-01", "worker", 1)
    return rendered


def test_every_state_tree_path_is_in_the_doc():
    documented = documented_paths()
    assert "rounds/r000/cand-00/jobs/attempt-1.outcome.json" in documented  # the parser reads the listing
    missing = {name: str(path.relative_to(ROOT)) for name, path in tree_paths().items()
               if str(path.relative_to(ROOT)) not in documented}
    assert not missing, f"docs/state-tree.md does not draw: {missing}"


def test_paths_are_named_in_the_state_package_only():
    """The tree's file names appear as literals in hpc_aevo/state/ only (the trainer's checkpoints, named by
    the substrate, excepted)."""
    leaves = {Path(p).name for p in documented_paths() if "." in Path(p).name}
    leaves = {leaf for leaf in leaves if not leaf.startswith("ckpt-")}
    offenders = []
    for path in Path(hpc_aevo.__file__).parent.rglob("*.py"):
        if "state" in path.relative_to(Path(hpc_aevo.__file__).parent).parts[:1] or "tools" in path.parts:
            continue
        text = path.read_text()
        for leaf in leaves:
            pattern = re.escape(re.sub(r"\d+", "#", leaf)).replace("\\#", r"(\d+|\{[^}]*\})")
            if re.search(rf"[\"'/]{pattern}[\"']", text):
                offenders.append(f"{path.name}: {leaf}")
    assert not offenders, offenders


def test_attempt_files_of_a_stage_task():
    files = AttemptFiles(Path("/j"), 3)
    assert (files.claim(), files.claim("train"), files.claim("eval")) == (
        Path("/j/attempt-3.claim"), Path("/j/attempt-3.claim"), Path("/j/attempt-3.eval.claim"))
    assert (files.outcome(), files.outcome("eval"), files.outcome("train")) == (
        Path("/j/attempt-3.outcome.json"), Path("/j/attempt-3.outcome.json"), Path("/j/attempt-3.train.outcome.json"))
