"""Forking: one writable sandbox per candidate, copied from the installed substrate.

A sandbox is the substrate plus the policy's standing recipe; it is the only place a worker
may write. The substrate's hash is checked before every fork so that no candidate is ever built
from a tampered default. A fork is built in a sibling temp directory and renamed into place,
so a sandbox either exists complete or not at all, and a daemon killed mid-fork just redoes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from hpc_aevo.loop.install import SubstrateManifest, ignore_debris, make_writable, remove_tree, verify_substrate
from hpc_aevo.state.contract import MAX_RECIPE_BYTES, RECIPE_FILE
from hpc_aevo.state.untrusted import UntrustedFile, read_yaml_mapping


def fork_candidate(default_dir: Path, manifest: SubstrateManifest, sandbox: Path, recipe: dict[str, Any]) -> None:
    """Create `sandbox` from `default_dir` with `recipe` as its recipe.yaml (no-op if it exists)."""
    default_dir, sandbox = Path(default_dir), Path(sandbox)
    verify_substrate(default_dir, manifest)
    if sandbox.exists():
        return
    partial = sandbox.with_name(f".{sandbox.name}.partial")
    if partial.exists():
        remove_tree(partial)
    shutil.copytree(default_dir, partial, ignore=ignore_debris)
    make_writable(partial)
    (partial / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    os.rename(partial, sandbox)


def load_recipe(sandbox: Path) -> dict[str, Any]:
    """The sandbox's recipe, which its worker wrote: read as untrusted (`UntrustedFile` when it is missing
    or not a plain, small YAML mapping inside the sandbox)."""
    path = Path(sandbox) / RECIPE_FILE
    try:
        return read_yaml_mapping(path, sandbox, MAX_RECIPE_BYTES)
    except FileNotFoundError:  # the worker removed it: its candidate fails like one that left a link
        raise UntrustedFile(f"{path}: missing") from None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def recipe_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """{dotted key: [before, after]} for every leaf that differs; a missing side is None."""
    old, new = _flatten(before), _flatten(after)
    return {key: [old.get(key), new.get(key)] for key in {**old, **new} if old.get(key) != new.get(key)}
