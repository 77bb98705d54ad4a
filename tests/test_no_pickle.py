"""No code path outside the trainer unpickles a file, checked on the source (AST), not by convention.

A training job runs the candidate's code, so what it writes may be a crafted pickle. Everywhere in
hpc_aevo/ and substrate/, `torch.load` must say `weights_only=True` (the trainer's resume is the one
reader of its own torch checkpoints). The evaluator's path (evaluate.py, engines.py, export_hf.py and
every substrate module they import) loads nothing but safetensors: no `torch.load` at all, no
`pickle.load(s)`, no megatron `dist_checkpointing.load` / `load_common_state_dict`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBSTRATE = REPO / "substrate"
EVALUATOR_ENTRIES = ("evaluate", "engines", "export_hf")
BANNED_IN_EVALUATOR = ("torch.load", "pickle.load", "pickle.loads", "dist_checkpointing.load",
                       "megatron.core.dist_checkpointing.load", "load_common_state_dict")


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` of a name or an attribute chain on a name."""
    if isinstance(node, ast.Attribute):
        owner = dotted(node.value)
        return owner and f"{owner}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else None


def banned(name: str) -> bool:
    return name in BANNED_IN_EVALUATOR or name.endswith(".load_common_state_dict")


def unsafe_torch_loads(tree: ast.AST) -> list[int]:
    """Lines of `torch.load(...)` calls without an explicit `weights_only=True`."""
    return [call.lineno for call in ast.walk(tree)
            if isinstance(call, ast.Call) and dotted(call.func) == "torch.load"
            and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in call.keywords)]


def banned_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Every use (call, reference or import) of a loader the evaluator must not touch."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names
                      if banned(f"{node.module}.{a.name}")]
        name = dotted(node)
        if name is not None and banned(name):
            found.append((node.lineno, name))
    return found


def substrate_imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if (SUBSTRATE / f"{n}.py").is_file()}


def evaluator_modules() -> set[str]:
    """The evaluator's entry points and every substrate module they import, transitively."""
    seen, todo = set(), list(EVALUATOR_ENTRIES)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += substrate_imports(ast.parse((SUBSTRATE / f"{name}.py").read_text()))
    return seen


def test_every_torch_load_is_weights_only():
    files = sorted((REPO / "hpc_aevo").rglob("*.py")) + sorted(SUBSTRATE.rglob("*.py"))
    offenders = {str(f.relative_to(REPO)): lines for f in files
                 if (lines := unsafe_torch_loads(ast.parse(f.read_text(), str(f))))}
    assert offenders == {}


def test_the_evaluator_path_loads_no_pickle():
    modules = evaluator_modules()
    # the closure is the real one: the model, the export format, the tokenizer; the trainer's checkpoints are not in it
    assert {"model", "safe_weights", "hf_checkpoint", "tokenizer", "data"} <= modules
    assert not modules & {"checkpoint", "train"}
    offenders = {m: uses for m in sorted(modules) if (uses := banned_uses(ast.parse((SUBSTRATE / f"{m}.py").read_text())))}
    assert offenders == {}


def test_the_checks_catch_what_they_look_for():
    code = ast.parse("import torch, pickle, safetensors.torch\nfrom megatron.core import dist_checkpointing\n"
                     "from megatron.core.dist_checkpointing import load_common_state_dict\n"
                     "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
                     "pickle.loads(b)\ndist_checkpointing.load(s, d)\nsafetensors.torch.load(b)\n")
    assert unsafe_torch_loads(code) == [4, 5]
    assert sorted(banned_uses(code)) == [
        (3, "from megatron.core.dist_checkpointing import load_common_state_dict"), (4, "torch.load"),
        (5, "torch.load"), (6, "torch.load"), (7, "pickle.loads"), (8, "dist_checkpointing.load")]
