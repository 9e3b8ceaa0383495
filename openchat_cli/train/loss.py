"""Weighted next-token loss (C-RLFT), with the LM head run only where it counts.

`PackedLM` wraps a causal LM so that its forward takes a packed batch and returns
sum(w * CE) over the batch's scored positions (the DeepSpeed engine wraps this module, so the
loss is computed inside the engine's forward). The decoder runs over every packed token; the
LM head (hidden x vocabulary, the largest activation of a chat model) runs only at positions
whose next token has a non-zero weight, and in chunks whose logits are recomputed in backward
instead of stored, so memory holds one chunk of full-vocabulary logits at a time rather than
one row per packed token. Cross-entropy is taken in fp32.

Models whose head does more than one matmul (final-logit softcapping, logit scaling) run
their own forward with `logits_to_keep` set to the scored positions instead (supervised
positions only, unchunked).

The step loss is sum(w * CE) / sum(w) over the whole global step; the loop divides by the
all-reduced weight sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from openchat_cli.train.attention import forward_kwargs

# Logit elements per head chunk: 2^24 fp32 values = 64 MiB (130 positions of a 128k vocabulary,
# 512 of a 32k one): bounded memory, and rows enough per matmul to keep a GPU busy.
CHUNK_ELEMENTS = 2**24
# Config fields of heads that post-process logits; such models use their own forward.
POST_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def weighted_ce_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * CE) in fp32 (0, with a gradient path, when nothing is scored)."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    return (ce * weights.to(ce.dtype)).sum()


def _head_ce(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return weighted_ce_sum(head(hidden), labels, weights)


def chunked_head_ce(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, chunk: int
) -> torch.Tensor:
    """sum(w * CE) of head(hidden), `chunk` rows at a time, each recomputed in backward."""
    if len(labels) <= chunk:
        return _head_ce(head, hidden, labels, weights)
    total = None
    for start in range(0, len(labels), chunk):
        part = slice(start, start + chunk)
        value = checkpoint(_head_ce, head, hidden[part], labels[part], weights[part], use_reentrant=False)
        total = value if total is None else total + value
    return total


def has_plain_head(lm: Any) -> bool:
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (
        isinstance(head, torch.nn.Linear)
        and hasattr(lm, "get_decoder")
        and not any(getattr(lm.config, f, None) for f in POST_HEAD_FIELDS)
    )


class PackedLM(torch.nn.Module):
    """forward(packed batch tensors) -> sum(w * CE). `lm` is the (possibly LoRA-wrapped) model."""

    def __init__(self, lm: Any, attn_impl: str, supervised_only: bool = True, chunk_elements: int = CHUNK_ELEMENTS):
        super().__init__()
        self.lm = lm
        self.attn_impl = attn_impl
        self.supervised_only = supervised_only
        self.plain_head = has_plain_head(lm)
        self.chunk = max(1, chunk_elements // lm.config.vocab_size)

    def forward(self, batch: Any) -> torch.Tensor:
        kwargs = forward_kwargs(batch, self.attn_impl)
        if not self.supervised_only:  # the conventional way: full logits, then pick (benchmarks)
            logits = self.lm(**kwargs, logits_to_keep=0).logits[0, batch.target_pos]
            return weighted_ce_sum(logits, batch.labels, batch.label_weights)
        if not self.plain_head:
            logits = self.lm(**kwargs, logits_to_keep=batch.target_pos).logits[0]
            return weighted_ce_sum(logits, batch.labels, batch.label_weights)
        hidden = self.lm.get_decoder()(**kwargs).last_hidden_state[0, batch.target_pos]
        return chunked_head_ce(self.lm.get_output_embeddings(), hidden, batch.labels, batch.label_weights, self.chunk)
