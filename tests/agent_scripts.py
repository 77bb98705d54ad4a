"""Scripted model turns for the agent tests: a worker that does its job, given its sandbox and axis."""

from __future__ import annotations

import re
from pathlib import Path

from model_stub import Turn, mcp, text, tool_use


def mixture_edit(sandbox: Path, domain: str = "bits", factor: float = 3.0) -> tuple[str, str]:
    """(old, new) lines of recipe.yaml that up-weight `domain` in the mixture."""
    line = re.search(rf"^(\s+{domain}:) (\S+)$", (sandbox / "recipe.yaml").read_text(), re.M)
    assert line, f"no mixture line for {domain} in {sandbox / 'recipe.yaml'}"
    return line.group(0), f"{line.group(1)} {float(line.group(2)) * factor:g}"


def good_worker(sandbox: Path, axis: str = "mixture", smoke_steps: int = 2) -> list:
    """Read the recipe, up-weight one domain, smoke-test it, record the hypothesis, finish."""
    old, new = mixture_edit(sandbox)
    return [
        [text("Reading the recipe."), tool_use("Read", file_path=str(sandbox / "recipe.yaml"))],
        [tool_use("Edit", file_path=str(sandbox / "recipe.yaml"), old_string=old, new_string=new)],
        [mcp("hpc", "smoke_test", steps=smoke_steps)],
        [mcp("hpc", "record_proposal", hypothesis="more bits practice lifts the bits domain on the leaderboard",
             axis=axis, rationale="bits has headroom in the shifted split",
             expected_effect="raise the leaderboard score on bits", failure_modes=[])],
        [text("Proposal recorded.")],
    ]


def slow(turn: list, delay_s: float) -> Turn:
    return Turn(turn, delay_s=delay_s)
