"""The toolkit's side of the checkpoint contract: eval.json's selected_checkpoint is what the leaderboard scores.

The path is resolved inside the candidate's checkpoints directory (which its training wrote: nothing
absolute, no '..', no symlink on the way), and the adapter hands the evaluator that file's sha256 and
the candidate's recipe, then records the score only if the evaluator says it scored those bytes. An
eval.json of version 1 (an evaluator from before) still loads, and its candidate is not submitted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpc_aevo.scoring.leaderboard import HeldoutPuzzles, LeaderboardError, LeaderboardLedger
from hpc_aevo.scoring.results import EvalResult, SelectedCheckpoint, selected_file, submit_to_leaderboard
from hpc_aevo.state.manifest import CandidateManifest
from hpc_aevo.state.trace import Trace
from hpc_aevo.state.tree import StateTree

SHA = "ab" * 32
BODY = {"schema": "hpc_aevo.eval_result", "version": 2, "split": "dev", "selection_rule": "best_dev",
        "selected_step": 24, "examples_per_domain": {"bits": 100},
        "checkpoints": [{"step": 24, "dev": 0.5, "per_domain": {"bits": 0.5}}], "wall_s": 1.0,
        "selected_checkpoint": {"path": "export/ckpt-000024.safetensors", "sha256": SHA, "step": 24}}


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    directory = tmp_path / "checkpoints"
    (directory / "export").mkdir(parents=True)
    (directory / "export" / "ckpt-000024.safetensors").write_bytes(b"weights")
    return directory


def test_the_selected_file_stays_inside_the_checkpoints_directory(checkpoints, tmp_path):
    assert selected_file(checkpoints, SelectedCheckpoint("export/ckpt-000024.safetensors", SHA, 24)) == (
        checkpoints / "export" / "ckpt-000024.safetensors")
    for path, message in (("../elsewhere.safetensors", "expected a path inside"), ("/etc/passwd", "expected a path inside"),
                          ("", "expected a path inside"), ("export/ckpt-000012.safetensors", "is not a regular file")):
        with pytest.raises(LeaderboardError, match=message):
            selected_file(checkpoints, SelectedCheckpoint(path, SHA, 24))
    with pytest.raises(LeaderboardError, match="sha256: expected 64 hex digits"):
        selected_file(checkpoints, SelectedCheckpoint("export/ckpt-000024.safetensors", "abc", 24))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ckpt-000024.safetensors").write_bytes(b"other")
    (checkpoints / "linked").symlink_to(tmp_path / "outside")
    (checkpoints / "export" / "ckpt-000036.safetensors").symlink_to(tmp_path / "outside" / "ckpt-000024.safetensors")
    for path in ("linked/ckpt-000024.safetensors", "export/ckpt-000036.safetensors"):
        with pytest.raises(LeaderboardError, match="is a symlink"):
            selected_file(checkpoints, SelectedCheckpoint(path, SHA, 24))


class Adapter:
    def __init__(self):
        self.calls = []

    def submit(self, *args):
        self.calls.append(args)
        from hpc_aevo.scoring.leaderboard import LeaderboardEntry

        return LeaderboardEntry("r000/cand-00", str(args[1]), 24, 0.25, {"bits": 0.25}, "now", args[2])


def _submit(tmp_path, checkpoints, body) -> tuple[Adapter, CandidateManifest, list[dict]]:
    (tmp_path / "eval.json").write_text(json.dumps(body))
    manifest = CandidateManifest(round=0, candidate=0, name="cand-00", role="worker", seed=0, axis=None)
    adapter, trace = Adapter(), Trace(tmp_path / "trace.jsonl")
    submit_to_leaderboard(adapter, "r000/cand-00", manifest, tmp_path / "eval.json", checkpoints,
                          tmp_path / "recipe.yaml", tmp_path / "score.json", trace)
    return adapter, manifest, trace.events()


def test_the_leaderboard_gets_the_selected_file_its_hash_and_the_recipe(checkpoints, tmp_path):
    adapter, manifest, events = _submit(tmp_path, checkpoints, BODY)
    assert adapter.calls == [("r000/cand-00", checkpoints / "export" / "ckpt-000024.safetensors", SHA,
                              tmp_path / "recipe.yaml", tmp_path / "score.json")]
    assert manifest.measured.leaderboard == 0.25 and events[-1]["event"] == "leaderboard-scored"


def test_a_version_1_eval_json_loads_but_is_not_submitted(checkpoints, tmp_path):
    old = {k: v for k, v in BODY.items() if k != "selected_checkpoint"} | {"version": 1}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert EvalResult.load(tmp_path / "old.json").selected_checkpoint is None
    adapter, manifest, events = _submit(tmp_path, checkpoints, old)
    assert adapter.calls == [] and manifest.measured.leaderboard is None
    assert events[-1]["event"] == "leaderboard-refused" and "names no selected_checkpoint" in events[-1]["reason"]
    with pytest.raises(Exception, match="version: expected 1, 2"):
        EvalResult.from_dict({**old, "version": 3})


FAKE_EVALUATOR = """
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
json.dump({"step": 24, "score": 0.5, "per_domain": {"bits": 0.5}, "checkpoint_sha256": args["--sha256"][::-1],
           "argv": sys.argv[1:]}, open(args["--out"], "w"))
"""


def test_the_adapter_records_only_the_hash_it_asked_for(checkpoints, tmp_path):
    """A stand-in evaluator that echoes the hash reversed (palindromes pass) shows both ways."""
    tree = StateTree(tmp_path / "state")
    tree.default_dir.mkdir(parents=True)
    (tree.default_dir / "evaluate.py").write_text(FAKE_EVALUATOR)
    tree.leaderboard_dir.mkdir(parents=True)
    tree.heldout_split.write_text("")
    LeaderboardLedger(quota=2).save(tree.leaderboard_ledger)
    adapter = HeldoutPuzzles(tree, quota=2, seed=0)
    checkpoint, recipe, out = checkpoints / "export" / "ckpt-000024.safetensors", tmp_path / "recipe.yaml", tmp_path / "s.json"
    with pytest.raises(LeaderboardError, match=f"scored sha256 '{SHA[::-1]}', not {SHA}"):
        adapter.submit("r000/cand-00", checkpoint, SHA, recipe, out)
    assert adapter.ledger().submissions == []
    palindrome = "ab" * 16 + "ba" * 16
    entry = adapter.submit("r000/cand-00", checkpoint, palindrome, recipe, out)
    assert (entry.checkpoint_sha256, entry.score) == (palindrome, 0.5)
    argv = json.loads(out.read_text())["argv"]
    assert argv[argv.index("--sha256") + 1] == palindrome and argv[argv.index("--recipe") + 1] == str(recipe)
