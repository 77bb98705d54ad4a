"""The installed reference substrate: one read-only, hashed copy per campaign.

Trials stay comparable only if every candidate forks the same substrate, so the campaign copies
it once into its state tree, removes every write bit and records a content hash of each file.
The hash is the real guard: running as root, chmod does not stop a write, but any write, added
or removed file makes `verify_substrate` fail, and the campaign stops before the next fork.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpc_aevo.state.records import Record

# Build and tool debris that may appear in a tree without changing what it does.
SKIP_PATTERNS = ("__pycache__", "*.pyc", ".git", ".pytest_cache")
ignore_debris = shutil.ignore_patterns(*SKIP_PATTERNS)


class SubstrateTampered(RuntimeError):
    """The installed substrate no longer matches the hashes recorded when it was installed."""


@dataclass
class SubstrateManifest(Record):
    SCHEMA = "hpc_aevo.substrate_manifest"
    VERSION = 1

    files: dict[str, str]  # path relative to the substrate root -> sha256 of its bytes
    tree_sha256: str  # sha256 over the sorted "relpath sha256" lines: one hash for the whole tree
    source: str  # the directory it was installed from


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIP_PATTERNS)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> tuple[dict[str, str], str]:
    """Hash every file under `root` (debris skipped): ({relpath: sha256}, tree sha256)."""
    root = Path(root)
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skipped(d)]
        for name in filenames:
            if not _skipped(name):
                path = Path(dirpath, name)
                files[path.relative_to(root).as_posix()] = _file_sha256(path)
    files = dict(sorted(files.items()))
    lines = "".join(f"{rel} {sha}\n" for rel, sha in files.items())
    return files, hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _chmod_tree(root: Path, file_mode: int, dir_mode: int) -> None:
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            os.chmod(Path(dirpath, name), file_mode)
        os.chmod(dirpath, dir_mode)


def make_writable(root: Path) -> None:
    """Give write bits back (to a fork of the substrate, or to a half-installed copy before removing it)."""
    _chmod_tree(root, 0o644, 0o755)


def remove_tree(root: Path) -> None:
    """Delete a tree even if it was made read-only."""
    make_writable(root)
    shutil.rmtree(root)


def install_substrate(src: Path, dest: Path, manifest_path: Path) -> SubstrateManifest:
    """Copy `src` into `dest` once, read-only, and record its hashes at `manifest_path`.

    The manifest is written last, so its presence means the install completed: a later call
    verifies and returns it, and a `dest` without a manifest is a leftover that is redone.
    """
    src, dest, manifest_path = Path(src), Path(dest), Path(manifest_path)
    manifest = SubstrateManifest.load_or_none(manifest_path)
    if manifest is not None:
        verify_substrate(dest, manifest)
        return manifest
    if dest.exists():
        remove_tree(dest)
    shutil.copytree(src, dest, ignore=ignore_debris)
    files, tree_sha = hash_tree(dest)
    _chmod_tree(dest, 0o444, 0o555)
    manifest = SubstrateManifest(files=files, tree_sha256=tree_sha, source=str(Path(os.path.abspath(src))))
    manifest.save(manifest_path)
    return manifest


def _first_few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def verify_substrate(dest: Path, manifest: SubstrateManifest) -> None:
    """Raise SubstrateTampered, naming the differing files, unless `dest` hashes as recorded."""
    files, tree_sha = hash_tree(Path(dest))
    if tree_sha == manifest.tree_sha256:
        return
    before, after = manifest.files, files
    differences = {
        "changed": sorted(k for k in before.keys() & after.keys() if before[k] != after[k]),
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
    }
    detail = "; ".join(f"{kind}: {_first_few(names)}" for kind, names in differences.items() if names)
    raise SubstrateTampered(
        f"substrate {dest} no longer matches its manifest ({detail or 'manifest tree hash is inconsistent'}); "
        "the campaign stops: restore the substrate or start a new campaign"
    )
