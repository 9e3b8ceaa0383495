"""Attention over packed sequences that never scores one document against another.

A packed micro-batch is one row of several documents laid end to end (see `collate.py`):
`position_ids` restart at 0 per document and `cu_seqlens` holds the document boundaries.
Stock `sdpa` keeps the documents apart with a full pack x pack mask that transformers derives
from the position resets, which also switches off the causal fast path: at 2.5 documents per
4,096-token pack that is about twice the attention work of the documents themselves.

`PACKED` is our own attention function, registered in transformers' `AttentionInterface` (and
its mask counterpart in `AttentionMaskInterface`) so that every model whose attention layers
call `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` (Llama, Mistral, Qwen2/3, Gemma
1/2/3 and the families built from them) uses it without a model-specific copy. Per call it
picks its kernel from the tensors it gets:

- CUDA tensors in fp16/bf16 with `flash_attn` installed: flash-attention 2 varlen over the
  cumulative sequence lengths (GQA, sliding window and logit softcap handled by the kernel);
- otherwise, per document: causal `sdpa` on that document's slice only (an explicit in-document
  mask only for a sliding window shorter than the document; an eager in-document computation
  for logit softcapping, which `sdpa` cannot do).

Anything that is not a packed training forward (a padding mask, a KV cache, chunked prefill)
is handed to transformers' own `sdpa` with the mask transformers builds for it, so a model
loaded with `PACKED` is still correct everywhere, only not faster there.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

PACKED = "openchat_packed"
FLASH_DTYPES = (torch.float16, torch.bfloat16)


# -- choosing and describing the kernel ---------------------------------------------------------
@lru_cache(maxsize=1)
def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def uses_flash(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `PACKED` runs flash-attention varlen for tensors on this device in this dtype."""
    return device.type == "cuda" and dtype in FLASH_DTYPES and flash_attn_installed()


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """The kernel a training run will use, in words (for the run's log line)."""
    return "flash-attention varlen" if uses_flash(device, dtype) else "per-document sdpa"


def choose(device: torch.device) -> str:
    """The `attn_implementation` a training model is loaded with: always `PACKED` (registered
    on first use); the kernel behind it follows the tensors, see `uses_flash`."""
    register()
    return PACKED


def forward_kwargs(batch: Any, implementation: str) -> dict[str, Any]:
    """Keyword arguments for the model's forward on a packed batch. The boundaries travel as
    flash-attention's kwargs (transformers passes them through every layer to the attention
    function), so no layer recomputes them from the position ids."""
    kwargs: dict[str, Any] = {"input_ids": batch.input_ids, "position_ids": batch.position_ids, "use_cache": False}
    if implementation != "sdpa":  # PACKED or a flash implementation
        kwargs.update(
            cu_seq_lens_q=batch.cu_seqlens,
            cu_seq_lens_k=batch.cu_seqlens,
            max_length_q=batch.max_seqlen,
            max_length_k=batch.max_seqlen,
        )
    return kwargs


# -- registration -------------------------------------------------------------------------------
def register() -> None:
    """Make `PACKED` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if PACKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED, packed_attention)
        AttentionMaskInterface.register(PACKED, packed_mask)


def packed_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """No mask at all for a forward over whole documents (the attention function keeps them
    apart); transformers' sdpa mask whenever there is padding or a cache offset."""
    whole = q_length == kv_length and not _nonzero(q_offset) and not _nonzero(kv_offset)
    if whole and (attention_mask is None or bool(attention_mask[:, -kv_length:].all())):
        return None
    from transformers.masking_utils import sdpa_mask

    # Never skipped to `None`: `None` means "packed, whole documents" to the attention function.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        **kwargs,
    )


def _nonzero(offset: Any) -> bool:
    return bool(offset.item() if isinstance(offset, torch.Tensor) else offset)


# -- the attention function ---------------------------------------------------------------------
def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, T, D], key/value [B, Hkv, T, D] -> ([B, T, H, D], None), as transformers'
    attention functions do."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if attention_mask is not None or query.shape[2] != key.shape[2] or kwargs.get("s_aux") is not None:
        if softcap:  # sdpa cannot softcap: the same masked computation, eager
            return _attend(query, key, value, attention_mask, dropout, scaling, softcap).transpose(1, 2), None
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    window = sliding_window if sliding_window and sliding_window > 0 else None
    rows = [
        document_bounds(query, b, kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"))
        for b in range(query.shape[0])
    ]
    if uses_flash(query.device, query.dtype):
        return _flash_varlen(
            query, key, value, rows, kwargs.get("max_length_q"), dropout, scaling, window, softcap
        ), None
    out = [
        _per_document(
            query[b : b + 1], key[b : b + 1], value[b : b + 1], bounds.tolist(), dropout, scaling, window, softcap
        )
        for b, bounds in enumerate(rows)
    ]
    return (out[0] if len(out) == 1 else torch.cat(out)), None


def document_bounds(
    query: torch.Tensor, row: int, cu_seqlens: torch.Tensor | None, position_ids: torch.Tensor | None
) -> torch.Tensor:
    """Cumulative document lengths [docs + 1] of one row of the batch: given by the batch (one
    packed row), else where that row's position ids restart, else the row is one document."""
    length = query.shape[2]
    if cu_seqlens is not None and query.shape[0] == 1:
        return cu_seqlens.to(device=query.device, dtype=torch.int32)
    if position_ids is not None:
        pos = position_ids[min(row, position_ids.shape[0] - 1)].reshape(-1)
        starts = torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1
        return torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), length)]).to(torch.int32)
    return torch.tensor([0, length], dtype=torch.int32, device=query.device)


def _flash_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rows: list[torch.Tensor],
    max_length: int | None,
    dropout: float,
    scaling: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """flash-attention 2 varlen over every document of every row, flattened into one sequence of
    tokens (not run on this project's CPU machines: no GPU was lent)."""
    from flash_attn import flash_attn_varlen_func

    batch, length = query.shape[0], query.shape[2]
    q, k, v = (
        t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[3]) for t in (query, key, value)
    )  # [rows x T, heads, D]
    cu = rows[0]
    if batch > 1:
        cu = torch.cat(
            [bounds[:-1] + b * length for b, bounds in enumerate(rows)] + [cu.new_full((1,), batch * length)]
        )
        max_length = None
    if max_length is None:
        max_length = int((cu[1:] - cu[:-1]).max())
    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        max_seqlen_q=max_length,
        max_seqlen_k=max_length,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
        window_size=(window - 1, 0) if window else (-1, -1),
        softcap=softcap or 0.0,
    )
    return out.reshape(batch, length, out.shape[1], out.shape[2])  # [B, T, H, D]


def _per_document(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: list[int],
    dropout: float,
    scaling: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """One row [1, H, T, D]: attention within each document's slice, concatenated -> [1, T, H, D]."""
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        parts.append(_document(q, k, v, dropout, scaling, window, softcap))
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous()


def _document(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout: float,
    scaling: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Causal attention over one document: q [1, H, L, D], k/v [1, Hkv, L, D] (GQA when fewer
    heads), optionally windowed and softcapped -> [1, H, L, D]."""
    length = q.shape[2]
    if (window is None or window >= length) and not softcap:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=q.shape[1] != k.shape[1]
        )
    i = torch.arange(length, device=q.device)
    mask = i[:, None] >= i[None, :]
    if window is not None:
        mask &= i[None, :] > i[:, None] - window
    return _attend(q, k, v, mask, dropout, scaling, softcap)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    dropout: float,
    scaling: float,
    softcap: float | None,
) -> torch.Tensor:
    """Attention under an explicit mask (bool, True = attend; or additive float) -> [B, H, Q, D]."""
    gqa = q.shape[1] != k.shape[1]
    if not softcap:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
    if gqa:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    scores = torch.tanh(scores / softcap) * softcap
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, v)
