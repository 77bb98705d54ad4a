"""`python -m hpc_aevo.config FILE` and `python -m hpc_aevo.profile FILE`: check a file, run nothing.

Each prints `ok: <name>`, or the one-line error naming the file, the key path and what was
expected, with exit code 2.
"""

from __future__ import annotations

import sys
from typing import Callable

from hpc_aevo.campaign.config import load_campaign, load_initial_policy
from hpc_aevo.campaign.profile import load_profile
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.backends import make_scheduler


def check_command(argv: list[str] | None, usage: str, check: Callable[[str], str]) -> int:
    """`python -m hpc_aevo.<module> FILE`: prints `ok: <name>` (what `check` returns), or the one-line
    error naming the file, the key and what was expected, with exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(f"usage: {usage}\n\n{__doc__.strip()}")
        return 0
    if len(args) != 1:
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    try:
        name = check(args[0])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"ok: {name}")
    return 0


def _check_campaign(path: str) -> str:
    campaign = load_campaign(path)
    load_initial_policy(campaign)
    make_scheduler(campaign)  # the profile, and the campaign's stages against it
    return campaign.name


def check_campaign_main(argv: list[str] | None = None) -> int:
    return check_command(argv, "python -m hpc_aevo.config CAMPAIGN.yaml", _check_campaign)


def check_profile_main(argv: list[str] | None = None) -> int:
    return check_command(argv, "python -m hpc_aevo.profile PROFILE.yaml", lambda path: load_profile(path).name)
