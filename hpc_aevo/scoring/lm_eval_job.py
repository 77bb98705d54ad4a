"""The lm-eval adapter's score job: one export scored by an lm-evaluation-harness task, offline.

    python hpc_aevo/scoring/lm_eval_job.py --checkpoint EXPORT --recipe RECIPE --substrate DEFAULT \
        (--task NAME | --task-yaml YAML --data DATA) --metric METRIC [--limit N] --out score.json

It runs inside the confined score job (no network; the job checked the export's hash before it started):
the frozen substrate's export_hf.py turns the export into an HF checkpoint directory beside `--out`, and
the harness runs the task on it (vLLM where CUDA is, the HF backend on CPU). A local task's relative
data files are read from DATA (the directory, or a file's directory): the private copy of `heldout`.
It writes `{"score": s, "per_subset": {name: s}}` (the subsets are the task's leaf tasks, or the task
alone; the score their mean weighted by documents) and, beside it, every document's filtered output
(outputs.json) for whoever audits a score. One line on stderr and exit 2 when it cannot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OUTPUTS = "outputs.json"


class JobError(RuntimeError):
    """What stops the job, in one line."""


def site_datasets_cache() -> Path:
    """Where the site's `datasets` cache lies, as the datasets library finds it."""
    if "HF_DATASETS_CACHE" in os.environ:
        return Path(os.environ["HF_DATASETS_CACHE"])
    home = os.environ.get("HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    return Path(os.path.expanduser(home)) / "datasets"


def private_datasets_cache(site: Path) -> Path:
    """A writable datasets cache that links to every Hub dataset of the site's (`<org>___<name>`). Offline,
    `datasets` loads a Hub dataset (a built-in task's) only from its own cache of prepared datasets, never from
    the Hub cache, and it takes a lock file at the cache's root, which the job's read-only view of the site's
    cache refuses. Nothing else is linked: a local task's `json` files are prepared here, writable."""
    private = Path(tempfile.mkdtemp(prefix="hf-datasets-"))
    for entry in site.iterdir() if site.is_dir() else ():
        if entry.is_dir() and "___" in entry.name:
            (private / entry.name).symlink_to(entry)
    return private


def export_checkpoint(substrate: Path, checkpoint: Path, recipe: Path, out: Path) -> Path:
    """The export as an HF directory, written by the frozen substrate's own converter (in its own process:
    it imports the training stack, the harness need not share its memory)."""
    script = substrate / "export_hf.py"
    if not script.is_file():
        raise JobError(f"the substrate has no export_hf.py ({script}): it cannot give the harness an HF checkpoint")
    code = subprocess.run([sys.executable, str(script), "--checkpoint", str(checkpoint), "--recipe", str(recipe),
                           "--out", str(out)], cwd=substrate).returncode
    if code != 0:
        raise JobError(f"export_hf.py exited with code {code} (its message is above)")
    return out


def metric_key(result: dict, metric: str, task: str) -> str:
    """`metric` as the harness keys it (`exact_match,none`): a bare name takes the unfiltered value, or the
    only filter's."""
    if "," in metric:
        keys = [metric] if metric in result else []
    else:
        keys = [f"{metric},none"] if f"{metric},none" in result else [k for k in result if k.split(",")[0] == metric]
    if len(keys) != 1:
        found = sorted(k for k in result if "," in k and "_stderr" not in k)
        raise JobError(f"task {task}: metric {metric!r} is not one of its results {found}")
    return keys[0]


def subset_names(leaves) -> dict[str, str]:
    """Each leaf task's subset name: without its group's prefix (`group::task`) where that stays unique."""
    short = {name: name.rsplit("::", 1)[-1] for name in leaves}
    return short if len(set(short.values())) == len(short) else {name: name for name in leaves}


def summarize(results: dict, metric: str) -> tuple[float, dict[str, float]]:
    """(score, per-subset scores): the leaf tasks' metric, and their mean weighted by documents scored."""
    groups = set(results.get("group_subtasks") or {})
    leaves = subset_names(name for name in results["results"] if name not in groups)
    if not leaves:
        raise JobError("the harness returned no task results")
    per_subset, counts = {}, {}
    for name, subset in sorted(leaves.items(), key=lambda item: item[1]):
        result = results["results"][name]
        per_subset[subset] = float(result[metric_key(result, metric, name)])
        counts[subset] = int(results["n-samples"][name]["effective"])
    return sum(per_subset[s] * counts[s] for s in counts) / sum(counts.values()), per_subset


def evaluate(hf_dir: Path, task: str, include: Path | None, limit: int | None) -> dict:
    """The harness's results for `task` on `hf_dir`, greedy as the task asks."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        model, args, device, batch = "vllm", f"pretrained={hf_dir},dtype=auto", None, "auto"
    else:
        model, args, device, batch = "hf", f"pretrained={hf_dir},dtype=float32", "cpu", 16
    manager = TaskManager(include_path=None if include is None else str(include))
    if include is not None:  # a YAML by its name: lm-eval 0.4.13 misnames a group that it loads by its path
        named = [name for name, entry in manager.task_index.items() if entry.yaml_path == Path(task)]
        task = named[0] if len(named) == 1 else task
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], device=device, batch_size=batch,
                                   limit=limit, task_manager=manager, log_samples=True)


def outputs(results: dict, metric: str) -> dict[str, list]:
    """Each leaf task's filtered output per document, in document order, under the filter `metric` is read from
    (a task with several filters logs every document once per filter: gsm8k's strict-match and flexible-extract)."""
    one = lambda resps: resps[0] if isinstance(resps, list) and len(resps) == 1 else resps  # noqa: E731
    samples, found = results.get("samples") or {}, {}
    for name, subset in subset_names(samples).items():
        chosen = metric_key(results["results"][name], metric, name).split(",", 1)[1]
        docs = sorted((s for s in samples[name] if s.get("filter", chosen) == chosen), key=lambda s: s["doc_id"])
        found[subset] = [one(s["filtered_resps"]) for s in docs]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--substrate", type=Path, required=True, help="the frozen substrate (its export_hf.py)")
    parser.add_argument("--task", help="a built-in task (or group) name")
    parser.add_argument("--task-yaml", type=Path, help="a local task YAML")
    parser.add_argument("--data", type=Path, help="with --task-yaml: the task's data (a file or a directory)")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # Offline whatever the site's environment says, with a datasets cache of its own (private_datasets_cache).
    site = site_datasets_cache()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      HF_DATASETS_CACHE=str(private_datasets_cache(site)))
    try:
        if (args.task is None) == (args.task_yaml is None):
            raise JobError("expected --task or --task-yaml (one of them)")
        hf_dir = export_checkpoint(args.substrate.resolve(), args.checkpoint.resolve(), args.recipe.resolve(),
                                   args.out.resolve().parent / "hf")
        task, include = args.task, None
        if args.task_yaml is not None:
            task, include = str(args.task_yaml.resolve()), args.task_yaml.resolve().parent
            if args.data is not None:  # the task's relative data files are the private copy's
                os.chdir(args.data if args.data.is_dir() else args.data.parent)
        results = evaluate(hf_dir, task, include, args.limit)
        score, per_subset = summarize(results, args.metric)
    except (JobError, KeyError, ValueError) as error:
        sys.exit(f"lm_eval_job: {error}")
    except ConnectionError as error:  # offline, the one way `datasets` says that it has no copy of a Hub dataset
        sys.exit(f"lm_eval_job: {error}: a built-in task's dataset must be prepared in the site's datasets cache "
                 f"({site}), once, by datasets.load_dataset on a machine with network")
    args.out.parent.joinpath(OUTPUTS).write_text(json.dumps(outputs(results, args.metric), indent=1) + "\n")
    args.out.write_text(json.dumps({"score": score, "per_subset": per_subset}) + "\n")
    print(f"lm_eval_job: {args.metric} {score:.4f}, per subset {per_subset}")


if __name__ == "__main__":
    main()
