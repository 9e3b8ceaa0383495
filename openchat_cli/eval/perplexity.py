"""Perplexity of a model on held-out conversations: mean loss on supervised tokens, by position.

The question it answers is usually "which context-extension choice keeps the model sane past its
old length", so besides the overall number the loss is broken down by the position of the
predicted token (buckets of positions), e.g. positions beyond the original 2,048.

Sequences are scored padding-free, several to a pack, with the training code's per-document
attention (`train.attention`), so no sequence sees another and nothing is computed for padding.
Every supervised token counts once (C-RLFT weights do not scale a perplexity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.errors import OpenchatError


@dataclass
class Bucket:
    """Predicted tokens whose position (0-based, within their sequence) is in [start, end)."""

    start: int
    end: int | None  # None: no upper end
    tokens: int = 0
    loss_sum: float = 0.0

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        loss = self.mean_loss
        return math.exp(min(loss, 700.0)) if loss is not None else None

    def label(self) -> str:
        return f"{self.start}-{self.end - 1}" if self.end is not None else f"{self.start}+"

    def to_dict(self) -> dict[str, Any]:
        return {
            "positions": self.label(),
            "start": self.start,
            "end": self.end,
            "tokens": self.tokens,
            "mean_loss": self.mean_loss,
            "perplexity": self.perplexity,
        }


@dataclass
class PerplexityResult:
    sequences: int
    buckets: list[Bucket]
    longest: int = 0
    facts: dict[str, Any] = field(default_factory=dict)  # model, data, context…

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.buckets)

    @property
    def mean_loss(self) -> float | None:
        total = sum(b.loss_sum for b in self.buckets)
        return total / self.tokens if self.tokens else None

    @property
    def perplexity(self) -> float | None:
        loss = self.mean_loss
        return math.exp(min(loss, 700.0)) if loss is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.facts,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "longest": self.longest,
            "mean_loss": self.mean_loss,
            "perplexity": self.perplexity,
            "buckets": [b.to_dict() for b in self.buckets],
        }


def make_buckets(edges: list[int]) -> list[Bucket]:
    """Buckets [0, e1), [e1, e2), …, [en, ∞) from increasing edges."""
    clean = sorted(set(int(e) for e in edges if int(e) > 0))
    starts = [0, *clean]
    return [Bucket(s, clean[i] if i < len(clean) else None) for i, s in enumerate(starts)]


def default_edges(context: int | None, original: int | None) -> list[int]:
    """Quarter-context buckets, plus the original context's edge for an extended model."""
    if not context:
        return [512, 1024, 2048]
    edges = {max(1, context * k // 4) for k in (1, 2, 3)}
    if original and original < context:
        edges.add(original)
    return sorted(edges)


def batches(lengths: np.ndarray, tokens_per_batch: int) -> Iterator[np.ndarray]:
    """Row indices in packs of at most `tokens_per_batch` tokens (a longer row goes alone),
    longest first so the first pack shows the worst-case memory at once."""
    order = np.argsort(-lengths, kind="stable")
    rows: list[int] = []
    used = 0
    for row in order:
        n = int(lengths[row])
        if rows and used + n > tokens_per_batch:
            yield np.asarray(rows)
            rows, used = [], 0
        rows.append(int(row))
        used += n
    if rows:
        yield np.asarray(rows)


def score(
    model: Any,
    data: Any,
    *,
    buckets: list[Bucket],
    tokens_per_batch: int = 8192,
    on_batch: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Score every supervised token of `data` (a `train.dataset.TokenizedData`) with `model`."""
    import torch
    import torch.nn.functional as F

    from openchat_cli.train.attention import forward_kwargs
    from openchat_cli.train.collate import pack

    impl = getattr(model.config, "_attn_implementation", "sdpa")
    device = next(model.parameters()).device
    starts = np.array([b.start for b in buckets])
    lengths = data.lengths
    with torch.inference_mode():
        for rows in batches(lengths, tokens_per_batch):
            batch = pack(data, rows).to(device)
            if len(batch.target_pos):
                logits = model(**forward_kwargs(batch, impl), logits_to_keep=batch.target_pos).logits[0]
                ce = F.cross_entropy(logits.float(), batch.labels, reduction="none").cpu().numpy()
                predicted_at = batch.position_ids[0, batch.target_pos].cpu().numpy() + 1
                which = np.searchsorted(starts, predicted_at, side="right") - 1
                for i, bucket in enumerate(buckets):
                    hit = which == i
                    bucket.tokens += int(hit.sum())
                    bucket.loss_sum += float(ce[hit].sum())
            if on_batch:
                on_batch(len(rows))
    return PerplexityResult(sequences=len(lengths), buckets=buckets, longest=int(lengths.max()) if len(lengths) else 0)


def load_model(model_dir: Path, dtype: str = "fp32") -> Any:
    """The model for scoring, with the packed (per-document) attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from openchat_cli.train.attention import choose

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch_dtype, attn_implementation=choose(device)
        )
    except (OSError, ValueError) as exc:
        raise OpenchatError(f"cannot load the model in {model_dir}: {exc}") from None
    return model.to(device).eval()


def load_data(
    ref: str, model_dir: Path, *, template_name: str, tokenizer: Any, max_len: int, vocab_size: int, scratch: Path
) -> tuple[Any, str | None]:
    """Tokenized sequences to score: a tokenized Parquet file (or ds-… id) made for this model, or a
    conversations JSONL tokenized here through the model's template (split at turn boundaries at
    `max_len`, as `data tokenize` does). Returns (TokenizedData, dataset id or None)."""
    from openchat_cli.model_dir import tokenizer_hash
    from openchat_cli.train.dataset import load, read_meta_checked, resolve_data

    path = Path(ref).expanduser()
    if path.suffix == ".parquet" or not path.exists():
        parquet, ds_id = resolve_data(ref)
        meta = read_meta_checked(parquet, template=template_name, tokenizer_hash=tokenizer_hash(tokenizer))
        return load(parquet, meta, vocab_size=vocab_size), ds_id
    from openchat_cli.data.tokenize import tokenize_file
    from openchat_cli.templates import get_template
    from openchat_cli.tokenized import make_metadata

    dest = scratch / "perplexity.parquet"
    stats = tokenize_file(
        path,
        dest,
        get_template(template_name),
        tokenizer,
        max_len,
        metadata=lambda s: make_metadata(
            template=template_name, tokenizer_hash=tokenizer_hash(tokenizer), max_len=max_len, stats=s.to_dict()
        ),
    )
    if stats.sequences == 0:
        raise OpenchatError(
            f"{path}: no conversation with a supervised reply to score ({stats.malformed} malformed line(s))"
        )
    return load(dest, vocab_size=vocab_size), None
