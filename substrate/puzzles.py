"""Rule-inference puzzle generators, one per domain, pure Python and seedable.

Every generator takes a `random.Random` and the distribution's parameters as keywords, so the
training, dev and held-out splits are the same puzzles drawn from different parameter ranges.
An example is a dict: domain, prompt, answer, template (the id two examples share when they are
instances of the same pattern).

`sequence` carries the planted proxy trap: its puzzles come from a small pool of templates
(start, step). The training and dev splits draw from the same pool, so a model can score on dev by
memorising the pool; the held-out leaderboard split draws from a disjoint pool and needs the rule.
"""

from __future__ import annotations

import random
import string

DOMAINS = ("bits", "equation", "cipher", "base", "sequence")

BIT_RULES = {
    "not": lambda b: [1 - x for x in b],
    "reverse": lambda b: b[::-1],
    "rotl": lambda b: b[1:] + b[:1],
    "rotr": lambda b: b[-1:] + b[:-1],
    "swap": lambda b: b[4:] + b[:4],
}


def _bits(value: int) -> list[int]:
    return [(value >> (7 - i)) & 1 for i in range(8)]


def _text(bits: list[int]) -> str:
    return "".join(map(str, bits))


def bits(rng: random.Random, popcounts=range(0, 9), shown=2) -> dict:
    """A hidden 8-bit rule shown by `shown` input>output pairs; answer the rule on a new input."""
    rule = rng.choice(sorted(BIT_RULES))
    values = [v for v in range(256) if bin(v).count("1") in popcounts]
    inputs = rng.sample(values, shown + 1)
    pairs = [f"{_text(_bits(v))}>{_text(BIT_RULES[rule](_bits(v)))}" for v in inputs[:-1]]
    query = _bits(inputs[-1])
    prompt = "bits " + ",".join(pairs) + "," + _text(query) + ">"
    return {"domain": "bits", "prompt": prompt, "answer": _text(BIT_RULES[rule](query)), "template": rule}


def equation(rng: random.Random, a_range=(1, 9), x_range=(0, 9), b_range=(0, 20)) -> dict:
    """Solve a*x+b=c for x."""
    a, x, b = (rng.randint(*a_range), rng.randint(*x_range), rng.randint(*b_range))
    prompt = f"solve {a}x+{b}={a * x + b} x="
    return {"domain": "equation", "prompt": prompt, "answer": str(x), "template": "axb"}


def cipher(rng: random.Random, keys=(1, 2, 3), lengths=(2, 4)) -> dict:
    """Caesar shift with the key given: apply it to a short word."""
    key = rng.choice(keys)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*lengths)))
    shifted = "".join(chr((ord(c) - 97 + key) % 26 + 97) for c in word)
    return {"domain": "cipher", "prompt": f"shift {key} {word}>", "answer": shifted, "template": f"k{key}"}


def base(rng: random.Random, n_range=(0, 63)) -> dict:
    """Write a decimal number in binary."""
    n = rng.randint(*n_range)
    return {"domain": "base", "prompt": f"bin {n}>", "answer": format(n, "b"), "template": "dec2bin"}


def sequence_templates(pool_seed: int, size: int, starts=(0, 30), steps=(1, 9)) -> list[tuple[int, int]]:
    """A pool of (start, step) templates for arithmetic sequences, fixed by `pool_seed`."""
    rng = random.Random(pool_seed)
    combos = [(s, d) for s in range(starts[0], starts[1] + 1) for d in range(steps[0], steps[1] + 1)]
    return sorted(rng.sample(combos, size))


def sequence(rng: random.Random, templates: list[tuple[int, int]], shown=(3, 5)) -> dict:
    """Continue an arithmetic sequence; the template (start, step) comes from a fixed pool.

    The prompt always starts at `start` (only its length varies), so a prompt names its template:
    disjoint template pools give disjoint prompts, and no held-out prompt can be answered from memory.
    """
    start, step = rng.choice(templates)
    terms = [start + step * i for i in range(rng.randint(*shown) + 1)]
    prompt = "next " + " ".join(map(str, terms[:-1])) + ">"
    return {"domain": "sequence", "prompt": prompt, "answer": str(terms[-1]), "template": f"s{start}d{step}"}


GENERATORS = {"bits": bits, "equation": equation, "cipher": cipher, "base": base, "sequence": sequence}


def generate(domain: str, n: int, seed: int | str, **params) -> list[dict]:
    """`n` examples of `domain` drawn with `params`, reproducible from `seed`."""
    rng = random.Random(f"{domain}:{seed}")
    return [GENERATORS[domain](rng, **params) for _ in range(n)]
