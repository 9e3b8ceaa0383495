"""Adding control tokens to an existing model without disturbing what it already knows."""

from __future__ import annotations

from typing import Any

INITS = ("mean", "normal")


def add_special_tokens(
    model: Any, tokenizer: Any, tokens: list[str], *, init: str = "mean", std: float = 0.02, seed: int = 0
) -> list[str]:
    """Add `tokens` as special tokens and give them input and output embedding rows.

    `mean` (OpenChat's choice for Llama) starts each new row at the mean of the old rows: it keeps
    them inside the distribution of existing embeddings, so the model's outputs barely move until
    training teaches it the new tokens. `normal` draws N(0, std^2) (OpenChat's choice for
    StarCoder, matching its initializer range). Tied input/output embeddings are set once.
    """
    import torch

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}")

    vocab = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    if not new:
        return []
    old_size = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)

    def fill(weight: torch.Tensor) -> None:
        if init == "mean":
            weight[old_size:] = weight[:old_size].mean(dim=0, keepdim=True)
        else:
            rows = torch.randn(weight[old_size:].shape, generator=generator, dtype=torch.float32) * std
            weight[old_size:] = rows.to(weight.dtype)

    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        fill(emb)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            fill(head.weight)
    return new
