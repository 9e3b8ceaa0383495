"""DPO's reference log-probs: one pass over every pair before the first step, stored with the run.

DPO compares the policy with the model it started from. Instead of a second frozen copy in
memory, the starting model scores every pair once (under no_grad, with LoRA adapters switched
off so the reference is the base) and the numbers go to OUT/reference/NAME.npy ([pairs, 2]:
chosen, rejected). A resumed run reads them back: they must never be recomputed from weights
that have already trained.

Ranks split the pairs with the unshuffled multipack plan (every rank runs the same number of
forwards, which ZeRO-3 needs) and sum their parts with one all-reduce.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openchat_cli.atomic import temp_file_beside
from openchat_cli.errors import OpenchatError
from openchat_cli.train.dataset import TokenizedData
from openchat_cli.train.pairs import pair_lengths
from openchat_cli.train.preference import pack_pairs
from openchat_cli.train.sampler import MultipackSampler, PackSpec

REFERENCE_DIR = "reference"


def reference_path(out: Path, name: str) -> Path:
    return Path(out) / REFERENCE_DIR / f"{name}.npy"


def adapters_off(lm: Any) -> Any:
    """A context where a LoRA-wrapped model acts as its base (nothing for a plain model)."""
    return lm.disable_adapter() if hasattr(lm, "disable_adapter") else contextlib.nullcontext()


def compute(
    engine: Any, data: TokenizedData, capacity: int, comm: Any, device: torch.device, pad_id: int
) -> np.ndarray:
    """[pairs, 2] reference log-probs of the engine's model as it is now (adapters off)."""
    sampler = MultipackSampler(pair_lengths(data), PackSpec(capacity, comm.world, 1, shuffle=False))
    out = torch.zeros(len(data) // 2 * 2, dtype=torch.float64, device=device)
    engine.eval()
    with torch.no_grad(), adapters_off(engine.module.lm):
        for step in range(len(sampler)):
            for pairs in sampler.batches(step, comm.rank):
                batch = pack_pairs(data, pairs, pad_id, output="logps").to(device)
                logps = engine(batch)
                if batch.num_pairs:
                    rows = torch.stack([2 * batch.pair_ids, 2 * batch.pair_ids + 1], dim=1).reshape(-1)
                    out[rows] = logps.double()
    engine.train()
    if comm.world > 1:
        comm.dist.all_reduce(out)
    return out.view(-1, 2).cpu().numpy()


def load_or_compute(
    engine: Any,
    data: TokenizedData,
    out: Path,
    name: str,
    capacity: int,
    comm: Any,
    device: torch.device,
    pad_id: int,
    resuming: bool,
) -> np.ndarray:
    """The stored reference log-probs of this run, computing (and storing) them on a fresh start."""
    path = reference_path(out, name)
    pairs = len(data) // 2
    if path.exists():
        refs = np.load(path)
        if refs.shape != (pairs, 2):
            raise OpenchatError(
                f"{path} holds reference log-probs for {refs.shape[0]} pairs, the data has "
                f"{pairs}: start a new run in another --out"
            )
        return refs
    if resuming:
        raise OpenchatError(
            f"cannot resume: {path} (the reference log-probs computed before the first step) "
            "is missing; they cannot be recomputed from trained weights"
        )
    refs = compute(engine, data, capacity, comm, device, pad_id)
    if comm.rank == 0:
        fd, tmp = temp_file_beside(path)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, refs)
        os.replace(tmp, path)
    comm.barrier()
    return refs
