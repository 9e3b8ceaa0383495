"""Packed prefill: several ragged prompts in one forward, without padding.

Why: left-padding a wave of ShareGPT-length prompts to the longest computes 2.2-2.4x the real
prompt tokens. Here the prompts are concatenated into one row, each with its own positions
(0..len-1, so RoPE sees what it would see alone) and a block-diagonal causal mask (a token
attends only to earlier tokens of its own prompt). The forward's KV cache, one long row, is then
cut into one left-padded row per prompt, the layout the decode batch uses.

Only for plain full-attention models with the `sdpa` or `eager` attention (a custom 4-D mask
replaces whatever mask the model would build: a sliding window would be lost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, total]
    position_ids: torch.Tensor  # [1, total]
    attention_mask: torch.Tensor | None  # [1, 1, total, total]: bool (sdpa), additive float (eager); None (ragged)
    starts: list[int]  # where each prompt begins in the packed row
    lengths: list[int]

    @property
    def last_positions(self) -> torch.Tensor:
        """Index of each prompt's last token in the packed row (whose logits predict its next)."""
        return torch.tensor([s + n - 1 for s, n in zip(self.starts, self.lengths)], device=self.input_ids.device)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(start, length) of each prompt in the packed row."""
        return list(zip(self.starts, self.lengths))


def pack(prompts: list[list[int]], device: str, attention: str | None, dtype: torch.dtype) -> PackedBatch:
    """Concatenate prompts with per-prompt positions and a block-diagonal causal mask (none when
    `attention` is None: the ragged attention keeps the prompts apart itself)."""
    lengths = [len(p) for p in prompts]
    starts, total = [], 0
    for n in lengths:
        starts.append(total)
        total += n
    ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=device)
    segment = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(lengths, device=device))
    offsets = torch.tensor(starts, device=device).repeat_interleave(torch.tensor(lengths, device=device))
    positions = (torch.arange(total, device=device) - offsets).unsqueeze(0)
    if attention is None:
        return PackedBatch(ids, positions, None, starts, lengths)
    index = torch.arange(total, device=device)
    allowed = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    if attention == "eager":
        mask = torch.zeros((total, total), dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    else:
        mask = allowed
    return PackedBatch(ids, positions, mask[None, None], starts, lengths)


def unpack_cache(cache, batch: PackedBatch) -> torch.Tensor:
    """Turn the packed one-row cache into one left-padded row per prompt, in place; returns the
    2-D attention mask (1 = a real token) of the new rows."""
    width = max(batch.lengths)
    rows = len(batch.lengths)
    device = batch.input_ids.device
    # gather[i, j]: where column j of row i comes from in the packed row (0 for padding).
    gather = torch.zeros((rows, width), dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for i, (start, n) in enumerate(zip(batch.starts, batch.lengths)):
        gather[i, width - n :] = torch.arange(start, start + n, device=device)
        mask[i, width - n :] = 1
    flat = gather.reshape(-1)
    for layer in cache.layers:
        for name in ("keys", "values"):
            packed = getattr(layer, name)[0]  # [heads, total, dim]
            heads, _, dim = packed.shape
            rows_t = packed.index_select(1, flat).view(heads, rows, width, dim).transpose(0, 1)
            setattr(layer, name, rows_t.contiguous())
    return mask
