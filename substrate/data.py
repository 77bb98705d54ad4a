"""The data-construction pipeline: puzzle splits, the recipe's mixture and filters, tokenisation.

Built on Hugging Face `datasets`: one dataset per domain, interleaved with the recipe's mixture
probabilities, filtered by the recipe's rules and tokenised into fixed-length training rows with a
loss mask on the answer only: one example per row, padded, or (`data.pack`) packed many to a row. The dev split is fixed (the evaluator regenerates it from DEV_SEED);
the held-out leaderboard split is not here: the toolkit's leaderboard adapter draws it from a
shifted distribution and keeps it outside every sandbox.
"""

from __future__ import annotations

import datasets

import packing
import puzzles
import tokenizer

DEV_SEED = 10_001
DEV_PER_DOMAIN = 100
SEQUENCE_POOL = dict(pool_seed=1, size=40)

# Parameters of the training (and dev) distribution, per domain.
TRAIN_PARAMS = {
    "bits": {},
    "equation": {},
    "cipher": {},
    "base": {"n_range": (0, 99)},
    "sequence": {"templates": puzzles.sequence_templates(**SEQUENCE_POOL)},
}


def split(seed: int, per_domain: int, params: dict[str, dict] = TRAIN_PARAMS) -> datasets.Dataset:
    """`per_domain` examples of every domain, drawn from `params`, in domain order."""
    rows = [ex for d in puzzles.DOMAINS for ex in puzzles.generate(d, per_domain, seed, **params[d])]
    return datasets.Dataset.from_list(rows)


def dev_split() -> datasets.Dataset:
    return split(DEV_SEED, DEV_PER_DOMAIN)


def mixture_dataset(data_recipe: dict, seed: int) -> datasets.Dataset:
    """The training examples: the recipe's mixture of domains, then its filters."""
    mixture = data_recipe["mixture"]
    # Canonical domain order: the same mixture gives the same data whatever the recipe's key order.
    weights = {d: float(mixture[d]) for d in puzzles.DOMAINS if float(mixture.get(d, 0)) > 0}
    unknown = sorted(set(mixture) - set(puzzles.DOMAINS))
    if unknown or not weights:
        raise ValueError(f"recipe data.mixture: domains must be some of {puzzles.DOMAINS} with a positive weight (got {unknown or 'none positive'})")
    total = data_recipe["train_examples"]
    # A namespaced seed: no recipe seed can regenerate the dev split (or any other split) as training data.
    parts = [
        datasets.Dataset.from_list(puzzles.generate(d, total, f"train-{seed}", **TRAIN_PARAMS[d])) for d in weights
    ]
    norm = sum(weights.values())
    mixed = datasets.interleave_datasets(
        parts, probabilities=[w / norm for w in weights.values()], seed=seed, stopping_strategy="first_exhausted"
    ).select(range(total))
    return apply_filters(mixed, data_recipe.get("filter", {}))


def apply_filters(ds: datasets.Dataset, rules: dict) -> datasets.Dataset:
    """Recipe filters: drop long answers, drop exact duplicate prompts."""
    max_answer = rules.get("max_answer_chars")
    if max_answer:
        ds = ds.filter(lambda ex: len(ex["answer"]) <= max_answer)
    if rules.get("dedupe"):
        seen: set[str] = set()
        keep = []
        for i, prompt in enumerate(ds["prompt"]):
            if prompt not in seen:
                seen.add(prompt)
                keep.append(i)
        ds = ds.select(keep)
    return ds


def encode_example(ex: dict) -> tuple[list[int], list[int]]:
    """Prompt, answer and end-of-sequence ids with the active tokenizer (the model's, see
    tokenizer.use), with the loss on the answer and its EOS only."""
    tok = tokenizer.active()
    prompt, answer = tok.encode(ex["prompt"]), tok.encode(ex["answer"]) + [tok.eos]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def tokenize(ds: datasets.Dataset, seq_len: int, pack: bool = False) -> datasets.Dataset:
    """Rows of `seq_len` + 1 token ids (inputs and shifted labels): one example per row, padded;
    or, with `pack`, whole examples packed end to end with their segment ids (see packing.py)."""
    pad_id = tokenizer.active().pad
    if pack:
        return datasets.Dataset.from_list(packing.pack([encode_example(ex) for ex in ds], seq_len + 1, pad_id))

    def encode_row(ex):
        ids, mask = (part[: seq_len + 1] for part in encode_example(ex))
        pad = seq_len + 1 - len(ids)
        return {"ids": ids + [pad_id] * pad, "loss_mask": mask + [0] * pad}

    return ds.map(encode_row, remove_columns=ds.column_names)
