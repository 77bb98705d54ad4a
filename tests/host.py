"""What a test needs from the host that pip does not install: bubblewrap, socat, the SLURM devcluster.

Without it a test skips, saying what it needs; in CI (CI=true) it fails instead, because .ci/run
installs bubblewrap and socat and starts the devcluster, so a missing piece there is a broken CI.
"""

from __future__ import annotations

import os

import pytest


def require(present: bool, what: str) -> None:
    """Skip (fail in CI) the calling test unless `present`; `what` says what it needs and how to get it."""
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(what)
    pytest.skip(what)
