"""Padding-free micro-batches: sequences laid end to end in one row, no pad tokens at all.

`position_ids` restart at 0 for every sequence and `cu_seqlens` holds the boundaries; that is
what keeps attention inside each sequence (`attention.PACKED` runs attention per document, or
flash-attention varlen over `cu_seqlens` on a GPU; stock sdpa would build a block-diagonal
causal mask from the resets when no attention mask and no cache are passed).

Loss targets are prepared here too: logits at packed position j predict token j + 1, so the
batch carries only the positions whose next token is in the same sequence and has a non-zero
weight (`target_pos`), with that token (`labels`) and its weight (`label_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from openchat_cli.train.dataset import TokenizedData


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T] int64
    position_ids: torch.Tensor  # [1, T] int64
    cu_seqlens: torch.Tensor  # [sequences + 1] int32, for flash-attention varlen
    max_seqlen: int
    target_pos: torch.Tensor  # [K] int64: packed positions whose logits are scored
    labels: torch.Tensor  # [K] int64
    label_weights: torch.Tensor  # [K] float32
    num_tokens: int  # real tokens (0 for a dummy batch)
    num_sequences: int

    @property
    def weight_sum(self) -> float:
        return float(self.label_weights.sum())

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
        }
        return PackedBatch(**moved)


def pack(data: TokenizedData, rows: np.ndarray, pad_id: int = 0) -> PackedBatch:
    """One micro-batch from dataset rows; no rows gives a one-token dummy with nothing to score
    (ranks must all run the same number of forward/backward passes)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        one = torch.tensor([[pad_id]], dtype=torch.long)
        return PackedBatch(
            one,
            torch.zeros_like(one),
            torch.tensor([0, 1], dtype=torch.int32),
            1,
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.float32),
            0,
            0,
        )
    starts = data.offsets[rows]
    lengths = data.offsets[rows + 1] - starts
    ids = np.concatenate([data.ids[a : a + n] for a, n in zip(starts, lengths)])
    weights = np.concatenate([data.weights[a : a + n] for a, n in zip(starts, lengths)])
    total = len(ids)
    seq_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    positions = np.arange(total) - np.repeat(seq_starts, lengths)
    # Position j is scored when token j + 1 belongs to the same sequence and has weight.
    next_weight = np.zeros(total, dtype=np.float32)
    next_weight[:-1] = weights[1:]
    next_weight[seq_starts[1:] - 1] = 0.0  # last token of a sequence predicts nothing
    target_pos = np.flatnonzero(next_weight)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return PackedBatch(
        input_ids=torch.from_numpy(ids).view(1, -1),
        position_ids=torch.from_numpy(positions).view(1, -1),
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=int(lengths.max()),
        target_pos=torch.from_numpy(target_pos),
        labels=torch.from_numpy(ids[target_pos + 1]),
        label_weights=torch.from_numpy(next_weight[target_pos]),
        num_tokens=total,
        num_sequences=len(rows),
    )


def pad(data: TokenizedData, rows: np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """The conventional alternative (benchmarks only): a [B, longest] batch with an attention
    mask, padded on the right, labels/weights already shifted."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = data.offsets[rows + 1] - data.offsets[rows]
    width = int(lengths.max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    target_w = np.zeros((len(rows), width), dtype=np.float32)
    labels = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        seq, w = data.row(int(row))
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
        labels[r, : len(seq) - 1] = seq[1:]
        target_w[r, : len(seq) - 1] = w[1:]
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
        "label_weights": torch.from_numpy(target_w),
    }
