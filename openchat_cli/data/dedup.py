"""Duplicate detection: exact (a stable 64-bit hash of the normalised text) and near (MinHash
with banded LSH, optional).

Memory: exact dedup keeps one Python int per kept conversation (about 70 bytes with the set's
slot), about 70 MB for a million conversations. Near-dup keeps one int per band per kept
conversation, several times that, which is why it is behind a flag.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalized_text(system: str | None, messages: Iterable[dict[str, Any]]) -> str:
    """Lower-cased, whitespace-collapsed text with roles: equal for copies that differ only in
    case or spacing."""
    parts = [" ".join((system or "").lower().split())]
    for m in messages:
        body = m["content"] + ("\n" + m["input"] if m.get("input") else "")
        parts.append(m["role"] + "\x00" + " ".join(body.lower().split()))
    return "\x01".join(parts)


_WINDOW = 1 << 20  # characters normalised at a time by `normalized_hash`
_SPACE = re.compile(r"\s")


def _words_windows(text: str) -> Iterator[str]:
    """`" ".join(text.lower().split())` in pieces of about _WINDOW characters (cut at whitespace,
    so no word is split and lower-casing sees the same context): a 50 MB reply never exists as
    a list of millions of words or as a second lower-cased copy."""
    pos, n = 0, len(text)
    while pos < n:
        m = _SPACE.search(text, min(pos + _WINDOW, n)) if pos + _WINDOW < n else None
        cut = m.start() if m else n
        piece = " ".join(text[pos:cut].lower().split())
        if piece:
            yield piece
        pos = cut


def normalized_hash(system: str | None, messages: Iterable[dict[str, Any]]) -> int:
    """`stable_hash(normalized_text(system, messages))`, computed piece by piece in bounded memory."""
    digest = hashlib.blake2b(digest_size=8)

    def feed(text: str) -> None:
        digest.update(text.encode("utf-8", "surrogatepass"))

    first = True
    for piece in _words_windows(system or ""):
        feed(piece if first else " " + piece)
        first = False
    for m in messages:
        feed("\x01" + m["role"] + "\x00")
        first = True
        for text in (m["content"], m.get("input") or ""):
            for piece in _words_windows(text):
                feed(piece if first else " " + piece)
                first = False
    return int.from_bytes(digest.digest(), "little")


def stable_hash(text: str) -> int:
    """64 bits of BLAKE2b: stable across runs and machines (unlike Python's hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


class ExactDedup:
    def __init__(self) -> None:
        self.seen: set[int] = set()

    def check_and_add(self, text: str) -> bool:
        """True if `text` was seen before; otherwise remember it."""
        return self.check_and_add_hash(stable_hash(text))

    def check_and_add_hash(self, h: int) -> bool:
        """True if the text hashed to `h` (see `normalized_hash`) was seen before; else remember it."""
        if h in self.seen:
            return True
        self.seen.add(h)
        return False


_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives below and false negatives above `threshold`."""
    xs = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs**r) ** b
            fp = np.trapezoid(np.where(xs < threshold, p, 0.0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1.0 - p, 0.0), xs)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class NearDedup:
    """MinHash over word 5-gram shingles; a conversation sharing any LSH band with an earlier
    kept one is a near-duplicate (estimated Jaccard similarity ≥ `threshold`)."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        if not 0.0 < threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1")
        self.shingle = shingle
        self.bands, self.rows = optimal_bands(threshold, num_perm)
        rng = np.random.RandomState(seed)
        self.a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.buckets: set[int] = set()

    def signature(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        k = self.shingle
        grams = {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}
        hv = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
        with np.errstate(over="ignore"):
            ph = (hv[:, None] * self.a[None, :] + self.b[None, :]) % _MERSENNE & _MAX_HASH
        return ph.min(axis=0)

    def check_and_add(self, text: str) -> bool:
        sig = self.signature(text)
        keys = [
            stable_hash(f"{i}:" + sig[i * self.rows : (i + 1) * self.rows].tobytes().hex()) for i in range(self.bands)
        ]
        if any(k in self.buckets for k in keys):
            return True
        self.buckets.update(keys)
        return False
