"""The installed substrate is read-only and hash-checked; forks copy it and overlay the recipe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from hpc_aevo.loop.fork import fork_candidate, load_recipe, recipe_diff
from hpc_aevo.loop.install import SubstrateManifest, SubstrateTampered, hash_tree, install_substrate, verify_substrate

RECIPE = {"steps": 50, "optim": {"lr": 0.01, "schedule": {"warmup": 5}}, "data": {"mixture": {"sequence": 1.0}}}


@pytest.fixture
def installed(tmp_path, substrate_dir):
    dest, manifest_path = tmp_path / "state" / "default", tmp_path / "state" / "default.manifest.json"
    return dest, manifest_path, install_substrate(substrate_dir, dest, manifest_path)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def force_write(path: Path, text: str) -> None:
    """Write through the read-only bits, as root (or the owner) can."""
    os.chmod(path.parent, 0o755)
    if path.exists():
        os.chmod(path, 0o644)
    path.write_text(text)


def test_install_is_read_only_hashed_and_skips_debris(installed, substrate_dir):
    dest, manifest_path, manifest = installed
    assert sorted(manifest.files) == ["data/build.py", "evaluate.py", "recipe.yaml", "train.py"]
    assert manifest.source == str(substrate_dir)
    assert (manifest.files, manifest.tree_sha256) == hash_tree(substrate_dir)
    assert SubstrateManifest.load(manifest_path) == manifest
    assert not (dest / "__pycache__").exists()
    assert modes(dest) == {".": 0o555, "data": 0o555, "data/build.py": 0o444, "evaluate.py": 0o444,
                           "recipe.yaml": 0o444, "train.py": 0o444}
    verify_substrate(dest, manifest)


def test_install_is_idempotent(installed, substrate_dir):
    dest, manifest_path, manifest = installed
    stamp = manifest_path.stat().st_mtime_ns
    assert install_substrate(substrate_dir, dest, manifest_path) == manifest
    assert manifest_path.stat().st_mtime_ns == stamp


def test_interrupted_install_is_redone(tmp_path, substrate_dir):
    dest, manifest_path = tmp_path / "default", tmp_path / "default.manifest.json"
    (dest / "half").mkdir(parents=True)
    (dest / "half" / "copied.py").write_text("partial")
    os.chmod(dest / "half", 0o555)
    manifest = install_substrate(substrate_dir, dest, manifest_path)
    assert not (dest / "half").exists()
    assert manifest.files == hash_tree(substrate_dir)[0]


@pytest.mark.parametrize("tamper,message", [
    (lambda d: force_write(d / "train.py", "print('pwned')\n"), "changed: train.py"),
    (lambda d: force_write(d / "data" / "extra.py", ""), "added: data/extra.py"),
    (lambda d: (os.chmod(d / "data", 0o755), (d / "data" / "build.py").unlink()), "removed: data/build.py"),
])
def test_tampering_is_caught_by_the_hash(installed, substrate_dir, tamper, message):
    dest, manifest_path, manifest = installed
    tamper(dest)
    with pytest.raises(SubstrateTampered, match=f"substrate {dest} no longer matches its manifest \\({message}\\)"):
        verify_substrate(dest, manifest)
    with pytest.raises(SubstrateTampered):
        install_substrate(substrate_dir, dest, manifest_path)


def test_debris_in_the_installed_tree_is_not_tampering(installed):
    dest, _, manifest = installed
    os.chmod(dest, 0o755)
    (dest / "__pycache__").mkdir()
    (dest / "__pycache__" / "train.cpython-311.pyc").write_text("bytecode")
    verify_substrate(dest, manifest)


def test_tamper_report_lists_only_the_first_few(installed):
    dest, _, manifest = installed
    for i in range(7):
        force_write(dest / f"extra{i}.py", "")
    first_five = ", ".join(f"extra{i}.py" for i in range(5))
    with pytest.raises(SubstrateTampered, match=rf"added: {first_five} \(\+2 more\)"):
        verify_substrate(dest, manifest)


def test_fork_copies_and_overlays_the_recipe(installed, tmp_path):
    dest, _, manifest = installed
    sandbox = tmp_path / "r000" / "cand-01" / "sandbox"
    fork_candidate(dest, manifest, sandbox, RECIPE)
    assert load_recipe(sandbox) == RECIPE
    assert list(yaml.safe_load((sandbox / "recipe.yaml").read_text())) == ["steps", "optim", "data"]
    assert (sandbox / "train.py").read_text() == (dest / "train.py").read_text()
    assert all(mode & stat.S_IWUSR for mode in modes(sandbox).values())
    verify_substrate(dest, manifest)
    (sandbox / "train.py").write_text("# the worker's edit\n")
    fork_candidate(dest, manifest, sandbox, {"steps": 1})  # already forked: left alone
    assert load_recipe(sandbox) == RECIPE and (sandbox / "train.py").read_text() == "# the worker's edit\n"
    assert sorted(p.name for p in sandbox.parent.iterdir()) == ["sandbox"]


def test_fork_refuses_a_tampered_default(installed, tmp_path):
    dest, _, manifest = installed
    force_write(dest / "evaluate.py", "score = 1.0\n")
    sandbox = tmp_path / "cand-00" / "sandbox"
    with pytest.raises(SubstrateTampered, match="changed: evaluate.py"):
        fork_candidate(dest, manifest, sandbox, RECIPE)
    assert not sandbox.parent.exists()


def test_interrupted_fork_is_cleaned_and_redone(installed, tmp_path):
    dest, _, manifest = installed
    sandbox = tmp_path / "cand-02" / "sandbox"
    leftover = sandbox.with_name(".sandbox.partial")
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "junk.py").write_text("half a copy")
    os.chmod(leftover / "data", 0o555)
    fork_candidate(dest, manifest, sandbox, RECIPE)
    assert not leftover.exists() and not (sandbox / "data" / "junk.py").exists()
    assert hash_tree(sandbox)[0].keys() == manifest.files.keys()
    assert load_recipe(sandbox) == RECIPE


def test_recipe_diff_on_nested_dicts():
    before = {"steps": 200, "optim": {"lr": 0.001, "schedule": {"warmup": 10, "decay": "cosine"}}, "seed": 1}
    after = {"steps": 200, "optim": {"lr": 0.002, "schedule": {"warmup": 10}}, "data": {"filter": {"max_len": 64}}}
    assert recipe_diff(before, after) == {
        "optim.lr": [0.001, 0.002],
        "optim.schedule.decay": ["cosine", None],
        "seed": [1, None],
        "data.filter.max_len": [None, 64],
    }
    assert recipe_diff(before, before) == {}
