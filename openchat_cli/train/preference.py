"""Learning from preference pairs on packed batches: DPO (sigmoid, cDPO, IPO) and reward models.

A pair's chosen and rejected sequences sit in the same padding-free micro-batch (the sampler
packs whole pairs; per-document attention keeps every sequence to itself). From one forward:
- DPO: each sequence's log-probability of its reply, sum over scored positions of
  w * log p(token), gathered by segment; the loss compares the policy's log-ratio against the
  reference's, which were computed once before training (`reference.py`), so no second model
  is held in memory. `--rpo-alpha` adds RPO's NLL term on the chosen reply (Pang et al. 2024,
  TRL's `loss_type=["sigmoid", "sft"]`): DPO alone can lower the chosen reply's likelihood while
  widening the margin; the NLL term keeps pushing it up.
- RM: a scalar head on each sequence's last token; Bradley-Terry loss -log sigmoid(r_c - r_r).

`PreferenceLM.forward` returns the sum of per-pair losses; the loop divides by the step's
all-reduced pair count (the pairs play the part SFT's token weights play), so a step's loss is
the mean over its pairs, as in TRL. Metrics are summed on the module and read by the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from openchat_cli.train.attention import forward_kwargs
from openchat_cli.train.collate import PackedBatch, pack
from openchat_cli.train.dataset import TokenizedData
from openchat_cli.train.loss import CHUNK_ELEMENTS, has_plain_head
from openchat_cli.train.pairs import pair_rows

# Per-pair metrics summed over a step (TRL's names); the loop divides by the pair count.
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
)


@dataclass
class PairBatch(PackedBatch):
    """A packed micro-batch of whole pairs: sequence 2k is pair k's chosen, 2k + 1 its rejected."""

    target_seq: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [K]
    pair_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [P] dataset pairs
    ref_logps: torch.Tensor | None = None  # [2P] reference log-probs, chosen/rejected interleaved (DPO)
    output: str = "loss"  # loss | logps (per-sequence log-probs) | rewards (per-sequence scores)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_ids)

    @property
    def weight_sum(self) -> float:  # what the loop normalises by: pairs
        return float(self.num_pairs)

    def to(self, device: torch.device | str) -> PairBatch:
        moved = {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()
        }
        return PairBatch(**moved)


def pack_pairs(
    data: TokenizedData, pairs: np.ndarray, pad_id: int = 0, ref_logps: np.ndarray | None = None, output: str = "loss"
) -> PairBatch:
    """One micro-batch from pair indices (no pairs: a dummy with nothing to score).
    `ref_logps`: the whole dataset's reference log-probs [pairs, 2], for DPO's loss."""
    pairs = np.asarray(pairs, dtype=np.int64)
    base = pack(data, pair_rows(pairs), pad_id)
    seq = np.searchsorted(base.cu_seqlens.numpy(), base.target_pos.numpy(), side="right") - 1
    refs = None
    if ref_logps is not None:
        refs = torch.from_numpy(np.asarray(ref_logps, dtype=np.float64)[pairs].reshape(-1))
    return PairBatch(
        **base.__dict__,
        target_seq=torch.from_numpy(seq.astype(np.int64)),
        pair_ids=torch.from_numpy(pairs),
        ref_logps=refs,
        output=output,
    )


# -- the losses (plain functions: what the TRL agreement tests compare) -------------------------
def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log pi_ref) of both sides.

    sigmoid: -(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d), d the difference of the
    log-ratios (e = --label-smoothing: conservative DPO). ipo: (d' - 1 / (2 beta))^2 with each
    log-ratio divided by its reply's scored tokens, as TRL does."""
    chosen_ratio = chosen_logps - ref_chosen
    rejected_ratio = rejected_logps - ref_rejected
    if loss_type == "ipo":
        d = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (d - 1 / (2 * beta)) ** 2
    elif loss_type == "sigmoid":
        d = chosen_ratio - rejected_ratio
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * d)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * d)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def rpo_nll_losses(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """RPO's term per pair: the chosen reply's negative log-likelihood per scored token. Averaged
    over pairs, as the RPO paper has it; TRL averages over the batch's chosen tokens instead, the
    same number for a one-pair batch or replies of equal length."""
    return -chosen_logps / chosen_tokens.clamp(min=1)


def bradley_terry_losses(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected) per pair."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


# -- per-sequence quantities from a packed forward ----------------------------------------------
def _token_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), labels, reduction="none")


def chunked_token_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(label) at each row of `hidden`, `chunk` rows of logits at a time (recomputed in
    backward, so memory holds one chunk of full-vocabulary logits)."""
    if len(labels) <= chunk:
        return _token_logps(head, hidden, labels)
    parts = [
        checkpoint(_token_logps, head, hidden[s : s + chunk], labels[s : s + chunk], use_reentrant=False)
        for s in range(0, len(labels), chunk)
    ]
    return torch.cat(parts)


def _decoder_and(lm: Any, head_name: str) -> tuple[Any, Any]:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix), getattr(base, head_name)


class PreferenceLM(torch.nn.Module):
    """forward(PairBatch) -> sum of per-pair losses (or per-sequence log-probs / rewards when
    the batch asks for them). `lm`: a causal LM for DPO, a sequence-classification model for RM."""

    def __init__(
        self,
        lm: Any,
        attn_impl: str,
        method: str,
        *,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_type: str = "sigmoid",
        rpo_alpha: float = 0.0,
        chunk_elements: int = CHUNK_ELEMENTS,
    ):
        super().__init__()
        self.lm = lm
        self.attn_impl = attn_impl
        self.method = method
        self.beta, self.label_smoothing, self.loss_type = beta, label_smoothing, loss_type
        self.rpo_alpha = rpo_alpha
        self.plain_head = method == "dpo" and has_plain_head(lm)
        self.chunk = max(1, chunk_elements // lm.config.vocab_size)
        self.totals: dict[str, float] = {}

    def reset_totals(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals

    def sequence_logps(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of w * log p over each sequence's scored tokens, count of scored tokens) [2P]."""
        kwargs = forward_kwargs(batch, self.attn_impl)
        if self.plain_head:
            hidden = self.lm.get_decoder()(**kwargs).last_hidden_state[0, batch.target_pos]
            token = chunked_token_logps(self.lm.get_output_embeddings(), hidden, batch.labels, self.chunk)
        else:
            logits = self.lm(**kwargs, logits_to_keep=batch.target_pos).logits[0]
            token = -F.cross_entropy(logits.float(), batch.labels, reduction="none")
        n = batch.num_sequences
        sums = token.new_zeros(n).index_add(0, batch.target_seq, token * batch.label_weights.to(token.dtype))
        counts = token.new_zeros(n).index_add(0, batch.target_seq, torch.ones_like(token))
        return sums, counts

    def sequence_rewards(self, batch: PairBatch) -> torch.Tensor:
        """The scalar head on each sequence's last token [2P]."""
        decoder, head = _decoder_and(self.lm, "score")
        hidden = decoder(**forward_kwargs(batch, self.attn_impl)).last_hidden_state[0]
        last = (batch.cu_seqlens[1:] - 1).long()
        return head(hidden[last]).squeeze(-1).float()

    def forward(self, batch: PairBatch) -> torch.Tensor:
        # A dummy micro-batch (no pairs) still runs the whole model: under ZeRO-3 every rank must
        # take part in gathering every layer's weights.
        if self.method == "rm":
            rewards = self.sequence_rewards(batch)
            if batch.num_pairs == 0:
                return rewards.sum() * 0.0
            if batch.output == "rewards":
                return rewards
            chosen, rejected = rewards[0::2], rewards[1::2]
            losses = bradley_terry_losses(chosen, rejected)
            self._record(chosen.detach(), rejected.detach())
            return losses.sum()
        logps, counts = self.sequence_logps(batch)
        if batch.num_pairs == 0:
            return logps.sum() * 0.0
        if batch.output == "logps":
            return logps
        ref = batch.ref_logps.to(logps.dtype)
        losses, chosen_r, rejected_r = dpo_losses(
            logps[0::2],
            logps[1::2],
            ref[0::2],
            ref[1::2],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_type=self.loss_type,
            chosen_tokens=counts[0::2],
            rejected_tokens=counts[1::2],
        )
        nll = rpo_nll_losses(logps[0::2], counts[0::2])
        if self.rpo_alpha:
            losses = losses + self.rpo_alpha * nll
        self._record(chosen_r, rejected_r, logps[0::2].detach(), logps[1::2].detach(), nll.detach())
        return losses.sum()

    def _record(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        chosen_logps: torch.Tensor | None = None,
        rejected_logps: torch.Tensor | None = None,
        nll: torch.Tensor | None = None,
    ) -> None:
        values = {
            "rewards/chosen": chosen.sum(),
            "rewards/rejected": rejected.sum(),
            "rewards/accuracies": (chosen > rejected).float().sum(),
            "rewards/margins": (chosen - rejected).sum(),
        }
        if chosen_logps is not None:
            values.update({"logps/chosen": chosen_logps.sum(), "logps/rejected": rejected_logps.sum()})
        if nll is not None:
            values["nll_loss"] = nll.sum()
        for key, value in values.items():
            self.totals[key] = self.totals.get(key, 0.0) + float(value)
