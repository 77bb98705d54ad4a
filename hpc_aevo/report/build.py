"""Write `report/` under a campaign's state root (report.json, report.md, the four PNG figures) and the
TensorBoard runs (every candidate's, the campaign's).

Why a separate step the daemon calls at each round's end: the report is for people and must never
stand in the campaign's way, so `refresh` turns any failure into one line and the campaign goes on.
Every file is replaced atomically, so a reader (or a browser open on report.md) never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from hpc_aevo.campaign.config import Campaign
from hpc_aevo.report import figures, markdown, tensorboard
from hpc_aevo.report.story import CampaignReport, build_story
from hpc_aevo.state.records import atomic_write_text
from hpc_aevo.state.tree import StateTree


class ReportUnavailable(RuntimeError):
    """The report cannot be drawn here (its plotting library is missing); str() is one line."""


def campaign_story(campaign: Campaign) -> CampaignReport:
    return build_story(StateTree(campaign.paths.state_root), campaign.name, campaign.rounds, campaign.scheduler.backend,
                       campaign.leaderboard.quota, campaign.budget.cpu_hours, campaign.budget.gpu_hours)


def _save_figure(fig, path: Path) -> None:
    """savefig to a temp file beside `path`, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_report(campaign: Campaign) -> Path:
    """Build the story from the records and write every file of `report/`; returns the directory."""
    tree = StateTree(campaign.paths.state_root)
    if not tree.campaign_record.exists():
        raise ReportUnavailable(f"campaign {campaign.name} never ran: {tree.campaign_record} is missing "
                                f"(start it with python -m hpc_aevo.round {campaign.source})")
    try:
        import matplotlib  # noqa: F401
        import tensorboardX  # noqa: F401
    except ImportError as exc:
        raise ReportUnavailable(f"the report needs {exc.name}: pip install -e '.[report]'") from None
    story = campaign_story(campaign)
    tree.report_dir.mkdir(parents=True, exist_ok=True)
    for name, path in tree.report_figures.items():
        fig, _ = figures.BUILDERS[name](story)
        _save_figure(fig, path)
    tensorboard.write_runs(tree, story)
    atomic_write_text(tree.report_markdown, markdown.render(story))
    story.save(tree.report_record)
    return tree.report_dir


def refresh(campaign: Campaign, print_line: Callable[[str], None]) -> None:
    """The daemon's call at the end of a round: write the report, or say in one line why not and go on."""
    try:
        out = write_report(campaign)
        print_line(f"[{campaign.name}] report refreshed: {StateTree(campaign.paths.state_root).report_markdown} "
                   f"(tensorboard --logdir {out.parent})")
    except Exception as exc:  # noqa: BLE001 - the report is never a reason to stop a campaign
        print_line(f"[{campaign.name}] report not refreshed: {type(exc).__name__}: {' '.join(str(exc).split())}")
