"""Sequence packing: many short SFT examples per training row instead of one example and padding.

A puzzle example is a third of a row or less, so a padded row is mostly padding. Packing lays
examples end to end (best fit, in dataset order: each example goes into the open row it fills
most tightly; on the puzzle data this beats best-fit-decreasing) and keeps each example on its own:
- a segment id per token (1, 2, ... per example in the row, 0 for padding);
- attention is causal *within* a segment only (a block-diagonal causal mask), so no token sees
  another example;
- positions restart at 0 at every example, so an example sees exactly what it would see alone;
- the loss stays on answer tokens: an example's answer ends its tokens, and the token after a
  border is the next example's first prompt token, which carries no loss.

How full rows get depends on the row width: on the puzzle mixture, 92.6% of the tokens are real
at seq_len 64 (a 59-token `bits` example leaves 6 tokens no example fits), 96.7% at 128, 98.7% at
256; padded rows are 39.6% real at seq_len 64.
"""

from __future__ import annotations

import torch


def pack(examples: list[tuple[list[int], list[int]]], width: int, pad: int) -> list[dict]:
    """Rows of `width` tokens ({ids, loss_mask, segments}) holding every example whole, best fit.

    An example longer than `width` is cut to it (the padded path cuts it the same way)."""
    rows: list[dict] = []
    open_by_space: list[list[int]] = [[] for _ in range(width + 1)]  # free space -> rows with that much left
    for ids, mask in examples:
        ids, mask = ids[:width], mask[:width]
        need = len(ids)
        space = next((s for s in range(need, width + 1) if open_by_space[s]), None)
        if space is None:
            rows.append({"ids": [], "loss_mask": [], "segments": []})
            row_index, space = len(rows) - 1, width
        else:
            row_index = open_by_space[space].pop()
        row = rows[row_index]
        segment = (row["segments"][-1] if row["segments"] else 0) + 1
        row["ids"] += ids
        row["loss_mask"] += mask
        row["segments"] += [segment] * need
        open_by_space[space - need].append(row_index)
    for row in rows:
        fill = width - len(row["ids"])
        row["ids"] += [pad] * fill
        row["loss_mask"] += [0] * fill
        row["segments"] += [0] * fill
    return rows


def positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of each token within its own example (a row's padding counts from 0 too; it carries no loss)."""
    index = torch.arange(segments.shape[-1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - start_index


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """megatron's boolean mask [b, 1, s, s], True where attention is NOT allowed: other segments and the future."""
    length = segments.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return ~(same & causal)[:, None]


def useful_fraction(segments: torch.Tensor) -> float:
    """Share of tokens that belong to an example (not padding)."""
    return float((segments != 0).float().mean())
