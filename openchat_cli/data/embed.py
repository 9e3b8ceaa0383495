"""Conversation embeddings for `openchat data map`: TF-IDF + truncated SVD (scikit-learn, no
model needed) or the mean-pooled last hidden states of a model, loaded as `serve` loads it.

Both return one L2-normalised float32 row per text and report progress per chunk (`tick(n)`),
so the command can show a progress bar on the embedding pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from openchat_cli.errors import OpenchatError

Tick = Callable[[int], None]
TFIDF_CHUNK = 2048


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise OpenchatError("`data map` needs scikit-learn and umap-learn: pip install 'openchat-cli[map]'") from None


def tfidf_svd(
    texts: Sequence[str], dims: int = 64, seed: int = 0, tick: Tick | None = None, fit_limit: int = 20_000
) -> np.ndarray:
    """TF-IDF (words and bigrams, sublinear tf) reduced by truncated SVD to `dims` dimensions.

    The vocabulary and the SVD are fitted on at most `fit_limit` texts (a seeded sample), then
    every text is transformed in chunks: the cost is linear in the data past the fit."""
    _require_sklearn()
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    n = len(texts)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=fit_limit, replace=False)) if n > fit_limit else np.arange(n)
    fit_texts = [texts[i] for i in fit_idx]
    vectorizer = TfidfVectorizer(
        sublinear_tf=True,
        ngram_range=(1, 2),
        min_df=2 if len(fit_texts) >= 50 else 1,
        max_features=50_000,
        dtype=np.float32,
    )
    try:
        fitted = vectorizer.fit_transform(fit_texts)
    except ValueError:  # no words at all (empty or punctuation-only texts)
        return np.zeros((n, 2), dtype=np.float32)
    dims = max(2, min(dims, fitted.shape[1] - 1, len(fit_texts) - 1)) if fitted.shape[1] > 2 else 2
    svd = TruncatedSVD(n_components=dims, random_state=seed) if fitted.shape[1] > dims else None
    if svd is not None:
        svd.fit(fitted)
    out = np.zeros((n, dims), dtype=np.float32)
    for start in range(0, n, TFIDF_CHUNK):
        chunk = vectorizer.transform(texts[start : start + TFIDF_CHUNK])
        dense = svd.transform(chunk) if svd is not None else chunk.toarray()
        out[start : start + len(dense), : dense.shape[1]] = dense
        if tick:
            tick(len(dense))
    return _normalise(out)


def model_hidden_states(
    texts: Sequence[str],
    model_dir: Path,
    *,
    batch_size: int = 16,
    max_tokens: int = 512,
    device: str = "cpu",
    dtype: str = "auto",
    tick: Tick | None = None,
) -> np.ndarray:
    """Mean of the last hidden layer over each text's tokens (padding masked), batched by length."""
    import torch
    from transformers import AutoModelForCausalLM

    from openchat_cli.model_dir import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    torch_dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        dtype, "bad"
    )
    if torch_dtype == "bad":
        raise OpenchatError(f"unknown --dtype '{dtype}' (choose auto, float32, bfloat16 or float16)")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype).to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    # An empty text still needs one real token (the padding embedding may be all zeros).
    empty = [next((t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None), pad)]
    encoded = [
        tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"] or empty
        for t in texts
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            hidden = (
                model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
                .hidden_states[-1]
                .float()
            )
            m = mask.to(device).unsqueeze(-1).float()
            pooled = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[batch] = pooled
            if tick:
                tick(len(batch))
    return _normalise(out if out is not None else np.zeros((0, 2), dtype=np.float32))
