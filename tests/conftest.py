"""Shared fixtures: a minimal substrate like the one the campaign YAML points at, a model stub, and
the host's bubblewrap (skip without it here, fail in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from host import require

RECIPE = """\
data:
  mixture: {arithmetic: 0.5, sequence: 0.5}
optim:
  lr: 0.001
  schedule: {warmup: 10, decay: cosine}
steps: 200
"""


@pytest.fixture
def substrate_dir(tmp_path: Path) -> Path:
    """tmp_path/substrate with the three required files, a nested file and some debris to skip."""
    root = tmp_path / "substrate"
    (root / "data").mkdir(parents=True)
    (root / "recipe.yaml").write_text(RECIPE)
    (root / "train.py").write_text("print('train')\n")
    (root / "evaluate.py").write_text("print('evaluate')\n")
    (root / "data" / "build.py").write_text("MIX = 1\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0debris")
    return root


@pytest.fixture
def stub(monkeypatch):
    """A loopback model stub (tests/model_stub.py) that agent sessions of this process talk to."""
    from model_stub import ModelStub

    with ModelStub() as server:
        for key, value in {**server.env(), "CLAUDE_CODE_MAX_RETRIES": "0"}.items():
            monkeypatch.setenv(key, value)
        yield server


@pytest.fixture
def job_sandbox():
    """bubblewrap, which confines every job stage and the read-only views tests check through it."""
    from hpc_aevo.sandbox import bwrap

    require(bwrap.available(), "needs bubblewrap (apt: bubblewrap) to confine jobs")


@pytest.fixture
def os_sandbox():
    """bubblewrap with a network namespace and socat: the agents' Bash and the worker's smoke_test run there."""
    from hpc_aevo.sandbox.agents import os_sandbox_available

    require(os_sandbox_available(), "needs bubblewrap and socat (apt) for the agents' Bash and smoke_test tool")
