"""The report's four figures, drawn from a `CampaignReport` with matplotlib.

Each builder returns the figure and the series it plotted (plain numbers), so a test checks what a
figure shows, not its pixels, and the report can say in words what the picture shows. matplotlib is
imported here only, and without pyplot: no display, no global state in a long-running daemon.
"""

from __future__ import annotations

from typing import Any

from hpc_aevo.report.story import CampaignReport

Series = dict[str, Any]


def _figure(width: float = 9.0, height: float = 5.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _rounds_axis(ax, story: CampaignReport) -> None:
    ax.set_xlabel("round")
    if story.rounds:
        ax.set_xlim(story.rounds[0].round - 0.6, story.rounds[-1].round + 0.6)
    ax.set_xticks([r.round for r in story.rounds], [f"r{r.round:03d}" for r in story.rounds])
    ax.grid(True, alpha=0.3)


def trajectory(story: CampaignReport):
    """Per round: every candidate's leaderboard (filled) and dev (hollow) score, the anchors apart, the
    standing recipe's line with its noise band, promotions starred and dead ends and decoupling marked."""
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    data: Series = {"rounds": [r.round for r in story.rounds], "anchor_leaderboard": [], "anchor_dev": [],
                    "worker_leaderboard": [], "worker_dev": [], "standing": [], "band_low": [], "band_high": [],
                    "promotions": [], "dead_ends": [], "decoupled_rounds": []}
    for r in story.rounds:
        for c in r.candidates:
            role = "anchor" if c.role == "anchor" else "worker"
            if c.leaderboard is not None:
                data[f"{role}_leaderboard"].append([r.round, c.leaderboard, c.key])
            if c.dev is not None:
                data[f"{role}_dev"].append([r.round, c.dev, c.key])
        data["standing"].append(r.standing_leaderboard)
        low = None if r.standing_leaderboard is None else r.standing_leaderboard - r.noise_band
        data["band_low"].append(low)
        data["band_high"].append(None if low is None else r.standing_leaderboard + r.noise_band)
        if r.promotion is not None:
            score = next((c.leaderboard for c in r.candidates if c.key == r.promotion.candidate), None)
            data["promotions"].append([r.round, score, r.promotion.candidate, r.promotion.leaderboard_gain])
        if r.dead_ends:
            data["dead_ends"].append([r.round, [d.change for d in r.dead_ends]])
        if r.decoupled:
            data["decoupled_rounds"].append(r.round)

    def xy(points, jitter: float = 0.0):
        return [p[0] + jitter for p in points], [p[1] for p in points]

    standing = [(r.round, r.standing_leaderboard, r.noise_band) for r in story.rounds
                if r.standing_leaderboard is not None]
    for i, (x, y, band) in enumerate(standing):  # each round's standing score and band span the round's width
        ax.fill_between([x - 0.35, x + 0.35], y - band, y + band, color="tab:blue", alpha=0.12,
                        label="noise band (standing ± band)" if i == 0 else None)
        ax.hlines(y, x - 0.35, x + 0.35, color="tab:blue", lw=2,
                  label="standing recipe (anchors' mean leaderboard)" if i == 0 else None)
    if len(standing) > 1:
        ax.plot([p[0] for p in standing], [p[1] for p in standing], color="tab:blue", lw=0.8, ls="--")
    ax.scatter(*xy(data["worker_leaderboard"], 0.08), color="tab:orange", s=30, label="candidate leaderboard", zorder=3)
    ax.scatter(*xy(data["worker_dev"], 0.08), facecolors="none", edgecolors="tab:orange", s=30, label="candidate dev",
               zorder=3)
    ax.scatter(*xy(data["anchor_leaderboard"], -0.08), color="tab:blue", marker="s", s=30, label="anchor leaderboard",
               zorder=3)
    ax.scatter(*xy(data["anchor_dev"], -0.08), facecolors="none", edgecolors="tab:blue", marker="s", s=30,
               label="anchor dev", zorder=3)
    for rnd, score, key, gain_ in data["promotions"]:
        if score is not None:
            ax.scatter([rnd + 0.08], [score], marker="*", s=260, color="tab:green", edgecolors="black", zorder=4)
            ax.annotate(f"promoted {key}\n+{gain_:.3f}", (rnd + 0.08, score), textcoords="offset points", xytext=(8, 6),
                        fontsize=8, color="tab:green")
    for rnd, changes in data["dead_ends"]:
        ax.annotate("dead end: " + ", ".join(changes), (rnd, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 4), textcoords="offset points", fontsize=7, color="tab:red", rotation=0, ha="center")
        ax.axvline(rnd, color="tab:red", ls=":", lw=1)
    for rnd in data["decoupled_rounds"]:
        ax.axvspan(rnd - 0.4, rnd + 0.4, color="tab:red", alpha=0.08)
        ax.annotate("decoupling flag", (rnd, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -12),
                    textcoords="offset points", fontsize=8, color="tab:red", ha="center")
    # Legend entries for the markers drawn per event, so the key lists them even in a quiet campaign.
    ax.scatter([], [], marker="*", s=160, color="tab:green", edgecolors="black", label="promotion")
    ax.plot([], [], color="tab:red", ls=":", label="dead end registered")
    ax.fill_between([], [], [], color="tab:red", alpha=0.15, label="decoupling flagged")
    ax.set_title(f"{story.campaign}: scores per round (standing now: {story.standing_now})")
    ax.set_ylabel("score (fraction correct)")
    _rounds_axis(ax, story)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig, data


def dev_vs_leaderboard(story: CampaignReport):
    """Dev against leaderboard for every candidate with both, one colour per round, with each round's rank
    correlation: where the proxy stops predicting the target, the points stop lining up."""
    fig = _figure(7.5, 6)
    ax = fig.add_subplot()
    data: Series = {"rounds": []}
    cmap = _colours(len(story.rounds))
    for i, r in enumerate(story.rounds):
        points = [[c.dev, c.leaderboard, c.key] for c in r.candidates
                  if c.dev is not None and c.leaderboard is not None]
        rho = None if r.spearman is None else round(r.spearman, 3)
        data["rounds"].append({"round": r.round, "points": points, "spearman": rho, "decoupled": r.decoupled})
        if points:
            label = f"r{r.round:03d}: rank corr {'n/a' if rho is None else f'{rho:.3f}'} (n={len(points)})"
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=cmap[i], s=36,
                       marker="X" if r.decoupled else "o", label=label + (", decoupled" if r.decoupled else ""))
    ax.set_title(f"{story.campaign}: dev vs leaderboard per candidate")
    ax.set_xlabel("dev score (fraction correct)")
    ax.set_ylabel("leaderboard score (fraction correct)")
    ax.grid(True, alpha=0.3)
    if any(r["points"] for r in data["rounds"]):
        ax.legend(fontsize=8, title="round (Spearman)")
    return fig, data


def per_subset(story: CampaignReport):
    """The standing recipe's (the anchors') per-domain scores over rounds: leaderboard left, dev right, one
    colour per domain in both, on one score scale."""
    fig = _figure(11, 4.8)
    board_ax, dev_ax = fig.subplots(1, 2, sharey=True)
    domains = sorted({d for r in story.rounds
                      for d in (*r.standing_leaderboard_per_domain, *r.standing_dev_per_domain)})
    data: Series = {"rounds": [r.round for r in story.rounds], "leaderboard": {}, "dev": {}}
    cmap = _colours(len(domains))
    for kind, ax in (("leaderboard", board_ax), ("dev", dev_ax)):
        for i, domain in enumerate(domains):
            values = [getattr(r, f"standing_{kind}_per_domain").get(domain) for r in story.rounds]
            data[kind][domain] = values
            points = [(x, v) for x, v in zip(data["rounds"], values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=cmap[i], label=domain)
        ax.set_title(f"{kind} (held-out)" if kind == "leaderboard" else "dev")
        _rounds_axis(ax, story)
    board_ax.set_ylabel("score (fraction correct)")
    fig.suptitle(f"{story.campaign}: standing recipe per domain (anchors' mean)")
    if domains:
        dev_ax.legend(title="domain", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig, data


def compute(story: CampaignReport):
    """Compute charged per round (CPU- and GPU-hours, from the ledger) and agent API dollars on a second axis."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    data: Series = {"rounds": [r.round for r in story.rounds],
                    "cpu_hours": [round(r.cpu_hours, 4) for r in story.rounds],
                    "gpu_hours": [round(r.gpu_hours, 4) for r in story.rounds],
                    "api_usd": [round(r.api_usd, 4) for r in story.rounds]}
    width = 0.38
    ax.bar([x - width / 2 for x in data["rounds"]], data["cpu_hours"], width, color="tab:gray", label="CPU-hours")
    ax.bar([x + width / 2 for x in data["rounds"]], data["gpu_hours"], width, color="tab:purple", label="GPU-hours")
    ax.set_ylabel("hours charged (CPU-h, GPU-h)")
    _rounds_axis(ax, story)
    usd = ax.twinx()
    usd.plot(data["rounds"], data["api_usd"], color="tab:green", marker="o", label="agent API (USD)")
    usd.set_ylabel("agent API spend (USD)")
    usd.set_ylim(bottom=0, top=max([*data["api_usd"], 0.01]) * 1.2)
    handles = ax.get_legend_handles_labels()
    extra = usd.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    ax.set_title(f"{story.campaign}: compute per round ({story.backend} backend)")
    return fig, data


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]


BUILDERS = {"trajectory": trajectory, "dev_vs_leaderboard": dev_vs_leaderboard, "per_subset": per_subset,
            "compute": compute}
