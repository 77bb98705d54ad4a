"""The sbatch scripts of each stage, pinned against recorded files (as submitit pins its sbatch in
`slurm/test_slurm.py` and NeMo-Run its templates).

The shipped campaigns campaigns/devcluster.yaml and campaigns/h200.yaml (profiles sbatch/devcluster.yaml
and sbatch/h200.yaml) are rendered by the real `--dry-run` path with their state root moved to a fixed
path, so the log folder and the campaign id in `--comment` read the same everywhere; only the Python
interpreter is written as <python>. The recorded scripts are tests/artifacts/sbatch/<profile>.<stage>.sbatch.

A deliberate change to the scripts is one command, which rewrites the recorded files (review their diff):

    HPC_AEVO_REPIN=1 python -m pytest -p no:cacheprovider tests/test_sbatch_pinned.py

A second test checks that the dry run is what `submit` really hands to sbatch, with submitit's own
mocked SLURM commands.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import pytest
from submitit.slurm.test_slurm import mocked_slurm

from hpc_aevo.campaign.config import Campaign, load_campaign
from hpc_aevo.cli.round import dry_run
from hpc_aevo.jobs.backends import make_scheduler
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.scoring.score_stage import score_spec
from hpc_aevo.state.tree import StateTree
from tiny_campaign import REPO

PINNED = Path(__file__).parent / "artifacts" / "sbatch"
FIXED_STATE_ROOT = Path("/pinned-by-tests/hpc_aevo/state")  # never created: a dry run writes nothing
REPIN = os.environ.get("HPC_AEVO_REPIN") == "1"
SECTION = re.compile(r"^# ---- (train|eval|score) array: candidates (.*) ----\n", re.MULTILINE)
SCORING = re.compile(r"^# after the dev evaluation, the leaderboard scoring .*\n", re.MULTILINE)
PROFILES = ["devcluster", "h200"]
BATCH = "r000-0123456789"  # a batch token as the launcher makes them


def shipped_campaign(profile: str, state_root: Path) -> Campaign:
    """campaigns/<profile>.yaml, whose cluster profile is sbatch/<profile>.yaml, with its state tree at `state_root`."""
    campaign = load_campaign(REPO / "campaigns" / f"{profile}.yaml")
    assert campaign.paths.profile.resolve() == (REPO / "sbatch" / f"{profile}.yaml").resolve()
    campaign.paths = dataclasses.replace(campaign.paths, state_root=state_root)
    return campaign


def stage_scripts(text: str) -> dict[str, str]:
    """{stage: its sbatch script} of a dry run's output, checking its headers on the way."""
    preamble, *sections = SECTION.split(SCORING.sub("", text, count=1))
    assert re.fullmatch(r"# dry run of [a-z0-9-]+ round 0: nothing is submitted\n", preamble), preamble
    stages = sections[0::3]
    assert stages == ["train", "eval", "score"], stages
    scripts = sections[2::3]  # all but the last end with the newline that joins them
    return {stage: script.rstrip("\n") + "\n" for stage, script in zip(stages, scripts)}


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_sbatch_of_each_stage_matches_the_recorded_file(profile):
    assert not FIXED_STATE_ROOT.exists(), f"{FIXED_STATE_ROOT} exists here: the dry run would read its rounds"
    campaign = shipped_campaign(profile, FIXED_STATE_ROOT)
    text = dry_run(campaign).replace(sys.executable, "<python>")
    assert sys.executable not in text and not FIXED_STATE_ROOT.exists()
    for stage, script in stage_scripts(text).items():
        recorded = PINNED / f"{profile}.{stage}.sbatch"
        if REPIN:
            recorded.parent.mkdir(parents=True, exist_ok=True)
            recorded.write_text(script)
        assert recorded.exists(), f"no recorded {recorded.name}: HPC_AEVO_REPIN=1 records it"
        assert script == recorded.read_text(), (
            f"the {profile} {stage} sbatch changed; if deliberate, rerun with HPC_AEVO_REPIN=1 and commit the diff")


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_is_what_submit_hands_to_sbatch(tmp_path, profile):
    """The same scripts, but written by `SlurmScheduler.submit` for sbatch (submitit's mocked commands
    answer it): only the dry run's two placeholders differ, which it quotes for the shell. The score
    array is submitted apart (after the round's dev evaluation), as one array with no dependency."""
    campaign = shipped_campaign(profile, tmp_path / "state")
    scheduler, tree = make_scheduler(campaign), StateTree(campaign.paths.state_root)
    candidates = [Candidate(0, c, tree) for c in range(campaign.candidates)]
    rendered = stage_scripts(dry_run(campaign))
    with mocked_slurm():
        submitted = scheduler.submit([c.spec(1) for c in candidates], BATCH)
        scored = scheduler.submit([score_spec(c, 1, None) for c in candidates[: campaign.leaderboard.per_round]], BATCH)
    train_array, eval_array = (submitted[0].job_id.split("_")[0], submitted[0].eval_job_id.split("_")[0])
    score_array = scored[0].job_id.split("_")[0]
    assert scored[0].eval_job_id is None and len({train_array, eval_array, score_array}) == 3
    folder = tmp_path / "state" / "rounds" / "r000" / "slurm"
    for stage, array in (("train", train_array), ("eval", eval_array), ("score", score_array)):
        expected = (rendered[stage].replace("'hpc_aevo:", "hpc_aevo:")
                    .replace(f":<batch>:{stage}'", f":{BATCH}:{stage}")
                    .replace("'aftercorr:<train array job id>'", f"aftercorr:{train_array}"))
        assert (folder / f"{array}_submission.sh").read_text() == expected
