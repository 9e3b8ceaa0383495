"""Adding control tokens to an existing model without disturbing what it already knows."""

from __future__ import annotations

from typing import Any


def add_special_tokens(model: Any, tokenizer: Any, tokens: list[str]) -> list[str]:
    """Add `tokens` as special tokens; new embedding rows start at the mean of the old ones.

    The mean keeps the new rows inside the distribution of existing embeddings, so the
    model's outputs barely move until training teaches it the new tokens.
    """
    import torch

    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if not new:
        return []
    old_size = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old_size:] = emb[:old_size].mean(dim=0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[old_size:] = head.weight[:old_size].mean(dim=0, keepdim=True)
    return new
