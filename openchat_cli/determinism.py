"""Same numbers on any machine: one fixed thread count for every process that computes.

A float sum depends on the order it is added in, and a CPU matmul's order depends on how many
threads split it; a model trained and decoded with 2 threads here and 16 there drifts apart,
and greedy answers (argmax) flip. `pinned_env` gives child processes a fixed thread count
whatever the machine or the caller's OMP_NUM_THREADS; each openchat process that computes
(`train` ranks, `serve`, `model init`) calls `apply_pinned_threads` before its first tensor op.
"""

from __future__ import annotations

import os

THREADS_ENV = "OPENCHAT_THREADS"


def pinned_env(env: dict[str, str], threads: int) -> dict[str, str]:
    """`env` with every thread-count knob set to `threads` (overriding what the caller had)."""
    count = str(threads)
    return {
        **env,
        THREADS_ENV: count,
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "TOKENIZERS_PARALLELISM": "false",
    }


def apply_pinned_threads() -> int | None:
    """If $OPENCHAT_THREADS is set: that many torch threads and one inter-op thread.

    Not `torch.use_deterministic_algorithms`: torch's CPU kernels already give the same result
    for the same thread count, and the flag swaps slow paths into the training step (measured
    ~100 tok/s with it, ~25,000 without, for the quickstart's model; the losses were identical)."""
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    import torch

    threads = max(1, int(value))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only possible before the first parallel op; later it is already fixed
        pass
    return threads
