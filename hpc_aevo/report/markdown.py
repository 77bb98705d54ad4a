"""The report's Markdown: the campaign as a story read top to bottom, every number rounded for a person.

Why a story and not tables alone: a reader wants to know what the campaign settled on and why
(lineage, promotions against the band, dead ends and their reasons, axis rotations, where dev stopped
predicting the leaderboard) before the per-candidate detail, which follows per round.
"""

from __future__ import annotations

from hpc_aevo.report.story import CampaignReport, RoundStory
from hpc_aevo.state.tree import REPORT_FIGURES, StateTree

FIGURE_TITLES = {
    "trajectory": "Scores per round: candidates, anchors, the standing recipe and its band",
    "dev_vs_leaderboard": "Dev against leaderboard, with each round's rank correlation",
    "per_subset": "The standing recipe per domain over rounds",
    "compute": "Compute and API spend per round",
}


def score(value: float | None, signed: bool = False) -> str:
    """A score for people: three decimals, '-' when there is none."""
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def hours(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _headline(story: CampaignReport) -> list[str]:
    done = sum(r.decided for r in story.rounds)
    cpu, gpu = sum(r.cpu_hours for r in story.rounds), sum(r.gpu_hours for r in story.rounds)
    usd = sum(r.api_usd for r in story.rounds)
    promotions = [r.promotion for r in story.rounds if r.promotion]
    dead = sum(len(r.dead_ends) for r in story.rounds)
    flagged = [f"r{r.round:03d}" for r in story.rounds if r.decoupled]
    best = max(((c.leaderboard, c.key) for r in story.rounds for c in r.candidates if c.leaderboard is not None),
               default=None)
    lines = [
        f"- **Rounds:** {done} decided of {story.rounds_planned} planned"
        + (f" ({len(story.rounds) - done} in progress)" if len(story.rounds) > done else "") + ".",
        f"- **Standing recipe now:** `{story.standing_now}`; {len(promotions)} promotion(s)"
        + (": " + ", ".join(f"`{p.candidate}` (+{p.leaderboard_gain:.3f} > band {p.band:.3f})" for p in promotions)
           if promotions else "") + ".",
        "- **Best leaderboard score:** " + (f"{best[0]:.3f} (`{best[1]}`)" if best else "none yet") + ".",
        f"- **Dead ends registered:** {dead}. **Decoupling flagged in:** {', '.join(flagged) or 'no round'}.",
        f"- **Compute:** {hours(cpu)} CPU-h" + (f" of {story.cpu_hours_budget}" if story.cpu_hours_budget else "")
        + f", {hours(gpu)} GPU-h" + (f" of {story.gpu_hours_budget}" if story.gpu_hours_budget else "")
        + f" ({story.backend} backend); agent API ${usd:.2f}; leaderboard {story.leaderboard_used}/"
        f"{story.leaderboard_quota} submissions.",
    ]
    return lines


def _lineage(story: CampaignReport) -> list[str]:
    lines = ["| round | standing recipe from | its leaderboard (anchors) | its dev (anchors) | band |",
             "|---|---|---|---|---|"]
    for r in story.rounds:
        lines.append(f"| r{r.round:03d} | `{r.standing_source}` | {score(r.standing_leaderboard)} | "
                     f"{score(r.standing_dev)} | {r.noise_band:.3f} |")
    steps = story.lineage()
    mutations = {c.key: c.mutation for r in story.rounds for c in r.candidates}
    chain = " → ".join(f"`{source}` (" + (f"{mutations[source]}, " if mutations.get(source) else "")
                       + f"standing from r{rnd:03d})" for rnd, source in steps)
    if story.standing_now != (steps[-1][1] if steps else None):
        chain += f" → `{story.standing_now}` (next round)"
    return [f"Lineage: {chain}.", "", *lines]


def _round(r: RoundStory) -> list[str]:
    state = "decided" if r.decided else "in progress"
    lines = [f"## Round r{r.round:03d} ({state})", "",
             f"Standing recipe `{r.standing_source}`; active axes {', '.join(r.active_axes)}; noise band "
             f"{r.noise_band:.3f}, promotion threshold {r.promotion_threshold:.3f}.", "",
             "| candidate | role | axis | mutation | status | dev | leaderboard | gain vs anchors |",
             "|---|---|---|---|---|---|---|---|"]
    for c in r.candidates:
        lines.append(f"| `{c.key}` | {c.role} | {c.axis or '-'} | {c.mutation or '-'} | {c.status} | {score(c.dev)} | "
                     f"{score(c.leaderboard)} | {score(c.leaderboard_gain, signed=True)} |")
    failed = [c for c in r.candidates if c.status == "failed"]
    lines += [""] + [f"- `{c.key}` failed: {c.failure or 'no reason recorded'}" for c in failed]
    rho = "n/a" if r.spearman is None else f"{r.spearman:.3f}"
    lines.append(f"- **Calibration:** dev/leaderboard rank correlation {rho} over {r.calibration_n} candidate(s); "
                 + ("**decoupling flagged**" if r.decoupled else "no decoupling flag") + ".")
    lines += [f"  - {flag}" for flag in r.flags]
    if r.decided:
        p = r.promotion
        lines.append(f"- **Promotion:** `{p.candidate}`, leaderboard +{p.leaderboard_gain:.3f} over the anchors, "
                     f"clearing the band {p.band:.3f}." if p else "- **Promotion:** none (no gain above the band).")
        lines += [f"- **Dead end:** `{d.change}` ({d.axis}): {d.reason}" for d in r.dead_ends]
        if r.retired_axes or r.new_axes:
            lines.append(f"- **Axis rotation:** retired {', '.join(r.retired_axes) or 'none'}; "
                         f"activated {', '.join(r.new_axes) or 'none'}.")
        if r.changes:
            lines.append("- **Policy changes for the next round:**")
            lines += [f"  - {change}" for change in r.changes]
    lines.append(f"- **Compute:** {hours(r.cpu_hours)} CPU-h, {hours(r.gpu_hours)} GPU-h; agents: {r.agent_sessions} "
                 f"session(s), ${r.api_usd:.2f}.")
    return lines + [""]


def render(story: CampaignReport) -> str:
    """The page; figures and runs are named by the tree's paths, relative to the report's directory."""
    tree = StateTree(story.state_root)
    figure = {name: path.relative_to(tree.report_dir) for name, path in tree.report_figures.items()}
    run = tree.tensorboard(0, 0).relative_to(tree.root)
    lines = [f"# Campaign `{story.campaign}`", "",
             f"Generated {story.generated_at} from the state tree `{story.state_root}`. Every number below comes from "
             f"the records the daemon wrote (`python -m hpc_aevo.status` shows the same); "
             f"`{tree.report_record.name}` holds them all.",
             "", *_headline(story), "",
             f"![{FIGURE_TITLES['trajectory']}]({figure['trajectory']})", "",
             "## Lineage of the standing recipe", "", *_lineage(story), ""]
    for r in story.rounds:
        lines += _round(r)
    lines += ["## Figures", ""]
    for name in REPORT_FIGURES:
        lines += [f"### {FIGURE_TITLES[name]}", "", f"![{FIGURE_TITLES[name]}]({figure[name]})", ""]
    lines += [f"TensorBoard: `tensorboard --logdir {tree.root}` shows every candidate's run (e.g. `{run}`) and the "
              f"campaign's (`{tree.campaign_tensorboard.relative_to(tree.root)}`).", ""]
    return "\n".join(lines)
