"""The reference substrate's data side: generators, mixture, filters, tokenisation, splits, the planted trap.

Fast (no training): these are the properties every campaign's comparisons rest on. A generator
that is not a pure function of its seed, or a dev split that drifts, makes trials incomparable; a
held-out split that overlaps training makes the leaderboard a second dev set and hides the trap.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

SUBSTRATE = Path(__file__).resolve().parents[1] / "substrate"
sys.path.insert(0, str(SUBSTRATE))

import data  # noqa: E402
import puzzles  # noqa: E402
import tokenizer  # noqa: E402

from hpc_aevo.scoring.leaderboard import heldout_params  # noqa: E402

RECIPE = yaml.safe_load((SUBSTRATE / "recipe.yaml").read_text())
HELDOUT = heldout_params(puzzles)
# sha256 of the dev split as JSON: the evaluator's dev data is frozen, so a change here must be deliberate
# (it makes every dev score recorded before it incomparable).
DEV_SHA256 = "783d0b9e29bd6b71c1fdcb1d24a2fadc357daf1aa7f76a97e0db5f2e924c7f98"


def draw(params: dict[str, dict], seed: int | str, n: int) -> dict[str, list[dict]]:
    return {d: puzzles.generate(d, n, seed, **params[d]) for d in puzzles.DOMAINS}


@pytest.mark.parametrize("domain", puzzles.DOMAINS)
def test_generators_are_pure_functions_of_the_seed(domain):
    params = data.TRAIN_PARAMS[domain]
    assert puzzles.generate(domain, 50, 3, **params) == puzzles.generate(domain, 50, 3, **params)
    assert puzzles.generate(domain, 50, 3, **params) != puzzles.generate(domain, 50, 4, **params)


def test_every_split_fits_the_tokenizer_and_the_context():
    """Every character encodes, and prompt + answer + EOS fits the recipe's context, in every split."""
    seq_len = int(RECIPE["model"]["seq_len"])
    for params in (data.TRAIN_PARAMS, HELDOUT):
        for rows in draw(params, 0, 300).values():
            for ex in rows:
                assert set(ex) == {"domain", "prompt", "answer", "template"}
                assert len(tokenizer.encode(ex["prompt"] + ex["answer"])) + 1 <= seq_len, ex
                assert tokenizer.decode(tokenizer.encode(ex["answer"]) + [tokenizer.EOS, 5]) == ex["answer"]
    with pytest.raises(ValueError, match="alphabet"):
        tokenizer.encode("A")


def mixture_recipe(**changes) -> dict:
    recipe = {"train_examples": 4000, "mixture": dict.fromkeys(puzzles.DOMAINS, 1.0), "filter": {}}
    recipe.update(changes)
    return recipe


@pytest.mark.slow
def test_mixture_weights_are_respected():
    mixture = {"bits": 1.0, "equation": 1.0, "cipher": 1.0, "base": 0.0, "sequence": 6.0}
    ds = data.mixture_dataset(mixture_recipe(mixture=mixture), seed=0)
    counts = Counter(ds["domain"])
    assert len(ds) == 4000 and "base" not in counts
    for domain, weight in mixture.items():
        if weight:
            assert counts[domain] / 4000 == pytest.approx(weight / 9, abs=0.03), counts
    reordered = dict(reversed(mixture.items()))  # a recipe is a mapping: its key order means nothing
    assert ds["prompt"] == data.mixture_dataset(mixture_recipe(mixture=reordered), seed=0)["prompt"]
    assert ds["prompt"] != data.mixture_dataset(mixture_recipe(mixture=mixture), seed=1)["prompt"]


@pytest.mark.parametrize("mixture", [{"bits": 1.0, "arithmetic": 1.0}, {"bits": 0.0}])
def test_mixture_rejects_unknown_or_empty(mixture):
    with pytest.raises(ValueError, match="data.mixture"):
        data.mixture_dataset(mixture_recipe(mixture=mixture), seed=0)


def test_training_data_never_regenerates_the_dev_split():
    """No recipe seed turns the dev split into training data (training draws use their own seed namespace)."""
    dev_prompts = set(data.dev_split()["prompt"])
    train = data.mixture_dataset(mixture_recipe(mixture={"bits": 1.0}), seed=data.DEV_SEED)  # bits: no chance repeats
    assert not dev_prompts & set(train["prompt"])


def test_filters():
    ds = data.mixture_dataset(mixture_recipe(), seed=0)
    short = data.apply_filters(ds, {"max_answer_chars": 2})
    assert 0 < len(short) < len(ds) and max(map(len, short["answer"])) <= 2
    unique = data.apply_filters(ds, {"dedupe": True})
    assert len(set(unique["prompt"])) == len(unique) == len(set(ds["prompt"])) < len(ds)
    assert data.apply_filters(ds, {"max_answer_chars": 0, "dedupe": False})["prompt"] == ds["prompt"]


def test_tokenize_masks_only_the_answer_and_eos():
    rows = [{"domain": "base", "prompt": "bin 5>", "answer": "101", "template": "dec2bin"},
            {"domain": "bits", "prompt": "x" * 20, "answer": "y" * 20, "template": "long"}]
    out = data.tokenize(data.datasets.Dataset.from_list(rows), seq_len=16)
    ids, mask = out[0]["ids"], out[0]["loss_mask"]
    assert len(ids) == len(mask) == 17  # seq_len + 1: inputs and shifted labels
    answer = [i for i, m in zip(ids, mask) if m]
    assert answer == tokenizer.encode("101") + [tokenizer.EOS]
    assert ids[:6] == tokenizer.encode("bin 5>") and mask[:6] == [0] * 6
    assert ids[10:] == [tokenizer.PAD] * 7 and mask[10:] == [0] * 7
    assert out[1]["ids"] == tokenizer.encode("x" * 17) and out[1]["loss_mask"] == [0] * 17  # truncated


def test_dev_split_is_fixed():
    dev = data.dev_split().to_list()
    assert Counter(r["domain"] for r in dev) == dict.fromkeys(puzzles.DOMAINS, data.DEV_PER_DOMAIN)
    digest = hashlib.sha256(json.dumps(dev, sort_keys=True).encode()).hexdigest()
    assert digest == DEV_SHA256


@pytest.mark.slow
def test_the_planted_proxy_trap():
    """`sequence`: dev is answerable by memorising the training pool; the held-out split needs the rule."""
    pool = set(data.TRAIN_PARAMS["sequence"]["templates"])
    dev = [r for r in data.dev_split().to_list() if r["domain"] == "sequence"]
    train = {d: [] for d in puzzles.DOMAINS}
    for row in data.mixture_dataset(mixture_recipe(train_examples=16_000), seed=0):
        train[row["domain"]].append(row)
    heldout = draw(HELDOUT, 7_000_000, 100)
    template = lambda r: tuple(int(v) for v in r["template"][1:].split("d"))  # noqa: E731  "s17d5" -> (17, 5)
    assert {template(r) for r in dev} <= pool
    assert set(r["prompt"] for r in dev) <= set(r["prompt"] for r in train["sequence"])  # dev is memorisable
    assert not set(HELDOUT["sequence"]["templates"]) & pool
    assert not {template(r) for r in heldout["sequence"]} & pool
    # Every other domain is shifted too, and no held-out prompt appears in a training draw.
    for domain in puzzles.DOMAINS:
        assert HELDOUT[domain] != data.TRAIN_PARAMS[domain], domain
        assert not {r["prompt"] for r in heldout[domain]} & {r["prompt"] for r in train[domain]}, domain
    lo, hi = data.TRAIN_PARAMS["base"]["n_range"]
    assert all(not lo <= int(r["prompt"][4:-1]) <= hi for r in heldout["base"])
