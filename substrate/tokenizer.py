"""Character-level tokenizer shared by training and evaluation (the puzzles use a tiny alphabet)."""

from __future__ import annotations

PAD, EOS = 0, 1
ALPHABET = " >,=+-" + "0123456789" + "abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = 2 + len(ALPHABET)
_IDS = {c: i + 2 for i, c in enumerate(ALPHABET)}


def encode(text: str) -> list[int]:
    try:
        return [_IDS[c] for c in text]
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the substrate's alphabet") from None


def decode(ids) -> str:
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= 2:
            out.append(ALPHABET[i - 2])
    return "".join(out)
