"""Scripted model turns for the agent tests: a worker that does its job, given its sandbox and axis."""

from __future__ import annotations

import json
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


def lazy_edit(sandbox: Path, old_new) -> Turn:
    """An Edit whose strings are read from the sandbox when the model is asked (the daemon forks it later)."""
    return Turn(lambda _request: [tool_use("Edit", file_path=str(sandbox / "recipe.yaml"), **dict(
        zip(("old_string", "new_string"), old_new(sandbox))))])


def running_worker(sandbox: Path, axis: str = "mixture", smoke_steps: int = 2, delay_s: float = 0.0) -> list:
    """good_worker for a sandbox the daemon has not forked yet; `delay_s` stalls the second turn."""
    return [
        [text("Reading the recipe."), tool_use("Read", file_path=str(sandbox / "recipe.yaml"))],
        Turn(lazy_edit(sandbox, mixture_edit).blocks, delay_s=delay_s),
        [mcp("hpc", "smoke_test", steps=smoke_steps)],
        [mcp("hpc", "record_proposal", hypothesis="more bits practice lifts the bits domain on the leaderboard",
             axis=axis, rationale="bits has headroom in the shifted split",
             expected_effect="raise the leaderboard score on bits", failure_modes=[])],
        [text("Proposal recorded.")],
    ]


def breaking_then_debugging_worker(sandbox: Path) -> list:
    """A worker that breaks its schedule without a smoke test, then, resumed with the job log, repairs it."""
    bad = lambda sb: ("schedule: cosine", "schedule: cosine-restarts")  # noqa: E731
    fix = lambda sb: ("schedule: cosine-restarts", "schedule: linear")  # noqa: E731
    return [
        lazy_edit(sandbox, bad),
        [mcp("hpc", "record_proposal", hypothesis="restarts escape a plateau", axis="schedule",
             rationale="warm restarts", expected_effect="raise the leaderboard score", failure_modes=[])],
        [text("Done, no need to test.")],
        # the debug turn (the same session, resumed with the failed job's log)
        [mcp("hpc", "job_logs")],
        lazy_edit(sandbox, fix),
        [mcp("hpc", "smoke_test", steps=1)],
        [mcp("hpc", "record_proposal", hypothesis="a linear decay instead of the unsupported restarts",
             axis="schedule", rationale="the trainer knows cosine, linear and constant only",
             expected_effect="raise the leaderboard score", failure_modes=["optim.schedule cosine-restarts unsupported"])],
        [text("Fixed.")],
    ]


def _starting_point(request: dict) -> dict:
    first = next(m for m in request["messages"] if m["role"] == "user")
    content = first["content"] if isinstance(first["content"], str) else " ".join(
        b.get("text", "") for b in first["content"] if isinstance(b, dict))
    return json.loads(content.split("a valid starting point:\n```json\n", 1)[1].split("```", 1)[0])


def lawful_meta() -> list:
    """A meta that proposes the mandatory update it was shown."""
    return [Turn(lambda request: [mcp("meta", "propose_policy", policy=_starting_point(request),
                                      changes=["keep the mandatory update"])]),
            [text("Proposed.")]]


def collector() -> list:
    return [[mcp("collector", "write_section", section="surprises", prose="Nothing beyond seed noise.")],
            [text("Written.")]]
