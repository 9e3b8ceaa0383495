"""Linear layers on oneDNN with the weight prepacked once, for CPU serving (fp32 and bf16).

Why: `F.linear` on CPU hands the weight to MKL (fp32) or oneDNN (bf16) in its plain row-major
layout on every call, and the library reorders (or reads strided) each time. A decode step is
dozens of small GEMMs (M = rows in the batch) per layer, so that per-call work is a large share
of the step: prepacked into oneDNN's blocked layout once (what inductor's freezing pass does on
CPU: `mkldnn._reorder_linear_weight` + `mkldnn._linear_pointwise`), the lm_head of a 32k-vocab
model ran 1.9x faster in fp32 and 1.35x in bf16 at 32 rows. Decode only (see PACKED_MAX_ROWS).

How: each `nn.Linear` gets its class switched to `PackedLinear` (a subclass: same object, same
parameters and state_dict, forward hooks such as LoRA rows' (lora_rows.py) still run, and
`isinstance(m, nn.Linear)` still holds). It keeps the packed copy beside the original weight, so
tied embeddings keep reading the original and `load_weights` can repack (`repack`). Memory: one
extra copy of every Linear weight (lm_head included).

Checked, not assumed: each layer's packed output is compared with `F.linear` on one random input
at load; a layer that differs (or an op that is missing) keeps `F.linear`. `OPENCHAT_PACKED_LINEAR=0`
turns it off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn  # imported by the engine only once it loads a model (torch is loaded by then)
import torch.nn.functional as F

from openchat_cli.serve.engines.switches import env_switch

log = logging.getLogger("openchat.serve.engine")
ENV_SWITCH = "OPENCHAT_PACKED_LINEAR"
# The batch-size hint oneDNN picks the blocked layout for. 1, 8, 32 and 512 measured within noise
# of each other for decode (M = 1..32) and prefill (M = 512) shapes here, so one packing serves all.
PACK_HINT = 32
# One-row inputs (a decode step of a lone sequence) through a small fp32 weight stay on F.linear:
# MKL's GEMV beat the packed oneDNN call there (6 vs 23 us at 256x256, 34 vs 48 us at 512x512; the
# packed call has a ~15 us floor), while from 512k weights up (88 vs 75 us at 256x2048, 9.7 vs
# 5.2 ms for a 512x32000 lm_head), from 2 rows on, and in bf16 at every size, the packed call won.
GEMV_ROWS = {"float32": 1, "bfloat16": 0}
GEMV_MAX_WEIGHT = 512 * 1024  # elements
# Inputs of more rows (prefill) go to F.linear: oneDNN builds a primitive per new input shape
# (~1 ms per layer shape: 7.2 ms for the first call at M=300 on 256x688 vs 1.5 ms once cached), and
# prompt packs come in every length, which made TTFT worse; decode batches (<= max_batch_size rows)
# reuse a few dozen shapes that stay in oneDNN's primitive cache.
PACKED_MAX_ROWS = 64
# Packed vs F.linear on one random input: max |difference| allowed, times (1 + max |output|).
# fp32 differs only by accumulation order (~1e-6 relative); bf16 outputs round to 8 bits of mantissa,
# so two accumulation orders can land one bf16 step (2^-8 relative) apart.
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


# The op, looked up once (torch.ops attribute lookups cost microseconds per call); None where missing.
_packed_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _op_available() -> bool:
    import torch

    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


def enabled_by_env() -> bool:
    """False when OPENCHAT_PACKED_LINEAR is 0/false/off/no."""
    return env_switch(ENV_SWITCH, True)


def _pack_weight(weight: Any) -> Any:
    import torch

    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT)


class PackedLinear(nn.Linear):
    """An nn.Linear whose forward runs oneDNN on a prepacked copy of its weight (`_packed`)."""

    _packed: Any
    _gemv_rows: int  # inputs of at most this many rows go to F.linear (see GEMV_ROWS)

    def forward(self, x: Any) -> Any:
        # Few attribute lookups: at one decode row this runs ~30 times per token.
        rows = x.numel() // self.in_features
        if self._gemv_rows < rows <= PACKED_MAX_ROWS and x.dtype == self._packed.dtype and not x.requires_grad:
            return _packed_linear(x if x.is_contiguous() else x.contiguous(), self._packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class PackingReport:
    """What `pack_linears` did: for describe() and the start-up log."""

    path: str  # "onednn-prepacked" or "F.linear"
    packed: int = 0
    kept: int = 0  # Linear layers left on F.linear (a failed check, odd dtype or device)
    extra_bytes: int = 0  # the packed copies' size
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "packed_layers": self.packed,
            "kept_layers": self.kept,
            "extra_bytes": self.extra_bytes,
            **({"reason": self.reason} if self.reason else {}),
        }


def _matches(module: Any, packed: Any) -> tuple[bool, float]:
    """Packed output vs F.linear's on one random input (4 rows, the layer's dtype)."""
    import torch
    import torch.nn.functional as F

    weight = module.weight
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, weight.shape[1], generator=generator).to(weight.dtype)
    with torch.no_grad():
        want = F.linear(x, weight, module.bias).float()
        got = torch.ops.mkldnn._linear_pointwise(x, packed, module.bias, "none", [], "").float()
    if got.shape != want.shape:
        return False, float("inf")
    diff = float((got - want).abs().max())
    limit = TOLERANCE[str(weight.dtype).removeprefix("torch.")] * (1 + float(want.abs().max()))
    return diff <= limit, diff


def _candidates(model: Any) -> list[tuple[str, Any]]:
    import torch

    out = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, PackedLinear):  # quantized / custom Linear subclasses stay
            continue
        weight = module.weight
        if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and weight.dim() == 2:
            out.append((name, module))
    return out


def pack_linears(model: Any, *, enabled: bool | None = None) -> PackingReport:
    """Switch the model's CPU fp32/bf16 nn.Linear layers to `PackedLinear`, each checked
    against F.linear; returns what ran (a clean F.linear fallback when the op is missing)."""
    if enabled is None:
        enabled = enabled_by_env()
    if not enabled:
        return PackingReport("F.linear", reason=f"{ENV_SWITCH}=0")
    if not _op_available():
        return PackingReport("F.linear", reason="torch has no oneDNN linear ops here")
    report = PackingReport("onednn-prepacked")
    total = 0
    for name, module in _candidates(model):
        total += 1
        try:
            packed = _pack_weight(module.weight)
            ok, diff = _matches(module, packed)
        except (RuntimeError, KeyError, ValueError) as exc:
            ok, diff = False, float("nan")
            log.warning("packed linear: %s kept on F.linear (%s)", name, exc)
        if not ok:
            report.kept += 1
            unpack_one(module)
            if diff == diff:
                log.warning("packed linear: %s kept on F.linear (differs by %.3g)", name, diff)
            continue
        module._packed = packed
        small = module.weight.numel() < GEMV_MAX_WEIGHT
        module._gemv_rows = GEMV_ROWS[str(module.weight.dtype).removeprefix("torch.")] if small else 0
        module.__class__ = PackedLinear
        report.packed += 1
        report.extra_bytes += module.weight.numel() * module.weight.element_size()
    if report.packed == 0:
        return PackingReport(
            "F.linear", kept=total, reason="no Linear layer passed the check" if total else "no Linear"
        )
    return report


def unpack_one(module: Any) -> None:
    """Back to a plain nn.Linear (drops the packed copy)."""
    if isinstance(module, PackedLinear):
        module.__class__ = nn.Linear
        module.__dict__.pop("_packed", None)
        module.__dict__.pop("_gemv_rows", None)


def unpack_linears(model: Any) -> None:
    """Every PackedLinear back to nn.Linear (training, or switching the engine off)."""
    for _name, module in model.named_modules():
        unpack_one(module)


def repack(model: Any) -> None:
    """After weights changed in place (`load_weights`): rebuild every packed copy."""
    for _name, module in model.named_modules():
        if isinstance(module, PackedLinear):
            module._packed = _pack_weight(module.weight)
