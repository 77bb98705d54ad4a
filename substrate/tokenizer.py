"""Tokenizers shared by training and evaluation: the character tokenizer (the puzzles use a tiny
alphabet) by default, or a Hugging Face tokenizer for a real pretrained model.

Which one is active is part of the model: `use(model_cfg)` picks it from the model config (the
trainer and the evaluator both call it), and the data pipeline and the scorer then encode and
decode through `active()`. Scoring decodes token ids with the same tokenizer whatever engine
generated them, so every engine is scored identically.
"""

from __future__ import annotations

PAD, EOS = 0, 1
ALPHABET = " >,=+-" + "0123456789" + "abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = 2 + len(ALPHABET)
_IDS = {c: i + 2 for i, c in enumerate(ALPHABET)}


class CharTokenizer:
    """One id per character of ALPHABET, plus PAD and EOS."""

    name = "char"
    pad, eos, vocab_size = PAD, EOS, VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        try:
            return [_IDS[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the substrate's alphabet") from None

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= 2:
                out.append(ALPHABET[i - 2])
        return "".join(out)


class HFTokenizer:
    """A Hugging Face tokenizer read from a model directory; no special tokens are added, and the
    model's end-of-sequence token ends an answer (padding reuses it: padded positions carry no loss)."""

    name = "hf"

    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory)
        if self.tok.eos_token_id is None:
            raise ValueError(f"tokenizer in {directory}: it defines no eos_token (the answer terminator)")
        self.eos = int(self.tok.eos_token_id)
        self.pad = self.eos if self.tok.pad_token_id is None else int(self.tok.pad_token_id)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        ids = list(ids)
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tok.decode(ids, skip_special_tokens=True)


_active: CharTokenizer | HFTokenizer = CharTokenizer()
_loaded: dict[str, HFTokenizer] = {}


def use(model_cfg: dict) -> CharTokenizer | HFTokenizer:
    """Activate the tokenizer a (resolved) model config names: `tokenizer: char` (default) or an HF
    model directory in `hf_dir` (set by model.resolve_config for `init_from` models)."""
    global _active
    if model_cfg.get("tokenizer", "char") == "char":
        _active = CharTokenizer()
    else:
        directory = str(model_cfg["hf_dir"])
        _active = _loaded.get(directory) or _loaded.setdefault(directory, HFTokenizer(directory))
    return _active


def active() -> CharTokenizer | HFTokenizer:
    return _active


def encode(text: str) -> list[int]:
    return _active.encode(text)


def decode(ids) -> str:
    return _active.decode(ids)
