"""A serving-only forward for Llama-shaped models (Llama, Mistral and Qwen2 without sliding windows):
the engine's ragged decode and packed prefill in a few torch ops per layer, not transformers' modules.

Why: on a small model the model step is Python and dispatch overhead, not arithmetic. Per layer the
transformers forward runs seven Linear modules, RMSNorm in five ops, rotary through cat/neg, the
attention-interface lookup, decorators and module hooks; at one decode row that overhead IS the step.
Here, per layer: one fused RMSNorm (`torch.rms_norm`), ONE linear for q/k/v and ONE for gate/up
(weights fused once at load), rotary from a cos/sin table precomputed for positions (grown as
needed), the same ragged KV cache (kv_cache.py) and attention kernels (ragged_attention.py) the
transformers path uses, o/down projections, and logits only for the rows the engine keeps (last
position per prompt, or every position when prompt logprobs need them). A decode step's rotary,
K/V column writes and attention are ONE kernel call per layer (`rope_append_decode_attention`, on
per-layer pointer tables built once per step), instead of five torch ops plus B tensor views per
layer; without the kernel (OPENCHAT_ATTENTION_KERNEL=0, no compiler) rotary is three torch ops and
the cache is written through `RaggedCache.update`. Measured (benchmarks/bench_serve_engine.py
--parts fast, one thread, 3.4M model): decode step 1.9x at batch 1, 1.7x at 8, 1.5x at 32.

Weights are the loaded model's: q/k/v (and gate/up) are concatenated into one tensor and the
modules' own weights become views of it, so memory does not grow and the transformers forward
(prompt scoring, LoRA rows, the warm-up) still runs on the same numbers. Weights loaded from
safetensors live in the file's mapping, which outlives the replaced ones: their pages are handed back
(`_release_mapped`), else RSS grew by the fused bytes (measured: +93 MiB on a 101 MiB model; now +19). Where packed_linear.py
prepacked the layers for oneDNN, the fused weights are prepacked instead (the per-module packed
copies of q/k/v/gate/up are dropped: the transformers forward then runs those on F.linear).

What it does not cover falls back to the transformers forward, decided once at load by `supports`
(logged once): other architectures, sliding windows, rope scaling that changes with the length
(dynamic, longrope), quantized or custom Linear layers, module hooks other than LoRA's, a device
other than the CPU. Per forward it also steps aside while LoRA rows are routed (their deltas are
forward hooks on the Linear modules). Checked, not assumed: at load the fast forward's logits for
two ragged prompts (prefill, then one decode step) must match the transformers ragged forward's.

`OPENCHAT_FAST_FORWARD=0` turns it off (the transformers forward serves every step).
"""

from __future__ import annotations

import array
import logging
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

from openchat_cli.serve.engines import packed_linear
from openchat_cli.serve.engines.kv_cache import RaggedCache, SequenceKV
from openchat_cli.serve.engines.ragged_attention import (
    decode_attention,
    fast_decode_kernel,
    prefill_attention,
    rope_append_decode_attention,
)
from openchat_cli.serve.engines.switches import env_switch

log = logging.getLogger("openchat.serve.engine")
ENV_SWITCH = "OPENCHAT_FAST_FORWARD"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Rope types whose frequencies do not depend on the sequence length: a position's cos/sin is fixed,
# so one table serves every forward ("dynamic" and "longrope" rescale with the length).
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
# Positions the cos/sin table holds at first; it doubles when a forward needs more.
ROPE_START = 4096
# Fast vs transformers logits at load: max |difference| allowed, times (1 + max |logit|).
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


def enabled_by_env() -> bool:
    """False when OPENCHAT_FAST_FORWARD is 0/false/off/no."""
    return env_switch(ENV_SWITCH, True)


class _Linear:
    """A linear layer called without nn.Module machinery: `F.linear`, or oneDNN on a prepacked weight
    with packed_linear.py's rules (which row counts go where)."""

    __slots__ = ("weight", "bias", "packed", "gemv_rows")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> None:
        self.weight, self.bias, self.packed, self.gemv_rows = weight, bias, None, 0
        if pack:
            packed = packed_linear._pack_weight(weight)
            ok, diff = packed_linear._matches(_Plain(weight, bias), packed)
            if ok:
                self.packed = packed
                small = weight.numel() < packed_linear.GEMV_MAX_WEIGHT
                self.gemv_rows = packed_linear.GEMV_ROWS[str(weight.dtype).removeprefix("torch.")] if small else 0
            else:
                log.warning(
                    "fast forward: a fused weight %s kept on F.linear (differs by %.3g)", tuple(weight.shape), diff
                )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self.gemv_rows < x.shape[0] <= packed_linear.PACKED_MAX_ROWS:
            return packed_linear._packed_linear(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class _Plain:
    """What packed_linear._matches reads of a module: its weight and bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias


class _Layer:
    """One decoder layer's weights, as the fast forward uses them."""

    __slots__ = ("input_norm", "qkv", "o", "post_norm", "gate_up", "down", "eps", "post_eps")

    def __init__(self, layer: Any, pack: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight
        self.eps = float(layer.input_layernorm.variance_epsilon)
        self.post_eps = float(layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj], pack)
        self.gate_up = _fuse([mlp.gate_proj, mlp.up_proj], pack)
        self.o = _module_linear(attn.o_proj)
        self.down = _module_linear(mlp.down_proj)

    def repack(self, layer: Any) -> None:
        _repack(self.qkv, None)
        _repack(self.gate_up, None)
        _repack(self.o, layer.self_attn.o_proj)
        _repack(self.down, layer.mlp.down_proj)


def _module_linear(module: Any) -> _Linear:
    """A Linear module as a `_Linear`, sharing its weight and (if packed_linear packed it) its packed copy."""
    out = _Linear(module.weight, module.bias, pack=False)
    out.packed = getattr(module, "_packed", None)
    out.gemv_rows = getattr(module, "_gemv_rows", 0)
    return out


def _repack(linear: _Linear, module: Any | None) -> None:
    """After weights changed in place: a fused weight is packed again, a module's packed copy re-read."""
    from openchat_cli.serve.engines.packed_linear import _pack_weight

    if module is not None:
        linear.packed = getattr(module, "_packed", None)
    elif linear.packed is not None:
        linear.packed = _pack_weight(linear.weight)


def _fuse(modules: list[Any], pack: bool) -> _Linear:
    """One weight for several Linear layers reading the same input (rows stacked in order). The
    modules' weights become views of it (no second copy), and their own packed copies are dropped
    when the fused one is packed."""
    from openchat_cli.serve.engines.packed_linear import PackedLinear, unpack_one

    originals = [m.weight for m in modules] + [m.bias for m in modules if m.bias is not None]
    with torch.no_grad():
        weight = torch.cat([m.weight.detach() for m in modules])
        biases = [m.bias for m in modules]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat(
                [b.detach() if b is not None else weight.new_zeros(m.out_features) for m, b in zip(modules, biases)]
            )
        start = 0
        for m in modules:
            rows = m.weight.shape[0]
            m.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
            if m.bias is not None:
                m.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
            start += rows
    packable = pack and all(isinstance(m, PackedLinear) for m in modules)
    fused = _Linear(weight, bias, pack=packable)
    if fused.packed is not None:
        for m in modules:
            unpack_one(m)
    _release_mapped(originals)
    return fused


# madvise(2) advice: reclaim these pages now (Linux 5.4+); the data stays (a file page is read back on use).
_MADV_PAGEOUT = 21


def _release_mapped(tensors: list[torch.Tensor]) -> None:
    """Hand back the resident pages of replaced weights that live in a file mapping. Why: weights
    loaded from safetensors are slices of the file's one mapping (a storage torch does not own, so
    not resizable), which stays mapped while any other weight uses it; without this the fused copies
    add their bytes to the process (measured: +70% of the weights' bytes in RSS). Weights torch owns
    are simply freed; elsewhere than Linux, or on an older kernel, this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import mmap

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.untyped_storage().resizable():
            continue
        start = -(-tensor.data_ptr() // page) * page  # whole pages inside the tensor's bytes only
        end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
        if end > start and madvise(start, end - start, _MADV_PAGEOUT) != 0:
            return  # EINVAL: a kernel without MADV_PAGEOUT


def supports(engine: Any) -> str | None:
    """None when the fast forward can serve this engine's model, else why not (one short phrase)."""
    model = engine.model
    config = model.config
    model_type = getattr(config, "model_type", None)
    if ARCHITECTURES.get(model_type) != type(model).__name__:
        return f"architecture {type(model).__name__} ({model_type})"
    if not getattr(engine, "_ragged", False):
        return "the ragged KV cache is off"
    if engine.device != "cpu":
        return f"device {engine.device}"
    if engine.quantized:
        return "quantized weights"
    if model.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {model.dtype}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)}"
    if getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return "layer types other than full attention"
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "?"
    if rope_type not in STATIC_ROPE:
        return f"rope type {rope_type}"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    from openchat_cli.serve.engines.packed_linear import PackedLinear

    inner = model.model
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if type(m) not in (torch.nn.Linear, PackedLinear):
                return f"a {type(m).__name__} layer"
        if set(vars(attn)["_modules"]) - {"q_proj", "k_proj", "v_proj", "o_proj"}:
            return "attention with extra parts (q/k norms…)"
    hooked = [
        name
        for name, m in model.named_modules()
        if (m._forward_hooks or m._forward_pre_hooks)
        and not (engine.lora is not None and isinstance(m, torch.nn.Linear))
    ]
    if hooked:
        return f"module hooks ({hooked[0]})"
    return None


class FastLlama:
    """The fast forward over one loaded model (see the module doc). `forward` takes what the
    engine's `_ragged_forward` takes and returns the same logits."""

    def __init__(self, model: Any, pack: bool) -> None:
        inner = model.model
        attn = inner.layers[0].self_attn
        self.model = model
        self.embed = inner.embed_tokens.weight
        self.layers = [_Layer(layer, pack) for layer in inner.layers[: model.config.num_hidden_layers]]
        self.norm, self.norm_eps = inner.norm.weight, float(inner.norm.variance_epsilon)
        self.lm_head = _module_linear(model.lm_head)
        self.head_dim = int(attn.head_dim)
        self.q_heads = int(model.config.num_attention_heads)
        self.kv_heads = int(model.config.num_key_value_heads)
        self.scale = float(attn.scaling)
        self.dtype = model.dtype
        self._rotary = inner.rotary_emb
        self._cos_sin = self._rope_table(ROPE_START)

    def repack(self) -> None:
        """After `load_weights` changed the weights in place (the fused ones are views of the same
        storage): rebuild the packed copies, as packed_linear.repack does for the modules."""
        for fast, layer in zip(self.layers, self.model.model.layers):
            fast.repack(layer)
        _repack(self.lm_head, self.model.lm_head)

    def _rope_table(self, positions: int) -> torch.Tensor:
        """[positions, 2, D]: cos and (rotate-half's sign folded in) sin per position, from the model's
        own rotary module (so every static rope type's frequencies and scaling are its own)."""
        ids = torch.arange(positions)[None]
        probe = torch.empty(0, dtype=self.dtype)
        cos, sin = self._rotary(probe, ids)
        half = self.head_dim // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        return torch.stack([cos[0], sin], dim=1).contiguous()

    def _table_for(self, positions: torch.Tensor) -> torch.Tensor:
        """A cos/sin table covering these positions: the shared one, grown (doubled) first if needed.
        The caller keeps the one it got for the whole forward: with the prefill thread another forward
        may swap in a table grown for its own positions meanwhile (kept only if larger)."""
        table = self._cos_sin
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > table.shape[0]:
            table = self._rope_table(max(top, 2 * table.shape[0]))
            if table.shape[0] > self._cos_sin.shape[0]:
                self._cos_sin = table
        return table

    @staticmethod
    def _rope(table: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [T, 1, D] for a flat tensor of positions (all inside `table`)."""
        both = table.index_select(0, positions)
        return both[:, 0:1], both[:, 1:2]

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on x [T, H, D]: x·cos + rotate_half(x)·sin, rotate_half as a flip of the two halves
        (its sign is in `sin`)."""
        T, H, D = x.shape
        swapped = x.view(T, H, 2, D // 2).flip(2).view(T, H, D)
        return torch.addcmul(x * cos, swapped, sin)

    def _decode_tables(self, rows: list[SequenceKV]) -> list[array.array] | None:
        """Per layer, the decode kernel's rows table for this step (buffers grown first where the new
        column would not fit): what `RaggedCache.update` builds as tensor views, as plain pointers.
        A sequence's layers are filled and grown together, so they share one capacity: one room check
        and one stride per sequence serve all its layers. None (the caller writes through
        `RaggedCache.update`) if a sequence's first and last layers ever differ in capacity."""
        layers = len(self.layers)
        lengths, strides, key_ptrs, value_ptrs = [], [], [], []
        for row in rows:
            keys, values = row.keys, row.values
            capacity = keys[0].shape[1]
            if keys[-1].shape[1] != capacity or values[0].shape[1] != capacity or values[-1].shape[1] != capacity:
                return None
            if row.length >= capacity:
                for layer in range(layers):
                    row.with_room(layer)
            lengths.append(row.length + 1)
            strides.append(keys[0].stride(0))
            key_ptrs.append([k.data_ptr() for k in keys])
            value_ptrs.append([v.data_ptr() for v in values])
        tail = lengths + strides + strides
        return [array.array("q", [*k, *v, *tail]) for k, v in zip(zip(*key_ptrs), zip(*value_ptrs))]

    def forward(self, cache: RaggedCache, ids: torch.Tensor, positions: torch.Tensor, logits_to_keep: Any):
        """One ragged forward; the logits `_ragged_forward` returns: [rows kept, V] for a packed prefill,
        [B, 1, V] for a decode step (one token per row)."""
        decoding = cache.segments is None
        flat_ids, flat_pos = ids.reshape(-1), positions.reshape(-1)
        T = flat_ids.shape[0]
        Hq, Hkv, D = self.q_heads, self.kv_heads, self.head_dim
        q_width, kv_width = Hq * D, Hkv * D
        x = F.embedding(flat_ids, self.embed)
        kernel = tables = None
        if decoding:
            kernel = fast_decode_kernel(self.dtype)
            tables = self._decode_tables(cache.rows) if kernel is not None else None
        rope = self._table_for(flat_pos)
        if tables is not None:  # rotary, cache write and attention in one kernel call per layer
            flat_pos = flat_pos.contiguous()
        else:
            cos, sin = self._rope(rope, flat_pos)
        if not decoding:
            starts = [s for s, _ in cache.segments]
            lengths = [n for _, n in cache.segments]
        for index, layer in enumerate(self.layers):
            h = torch.rms_norm(x, (x.shape[-1],), layer.input_norm, layer.eps)
            qkv = layer.qkv(h)
            qk = qkv[:, : q_width + kv_width].view(T, Hq + Hkv, D)
            v = qkv[:, q_width + kv_width :].view(T, Hkv, D)
            if tables is not None:
                attended = rope_append_decode_attention(kernel, qk, v, rope, flat_pos, tables[index], self.scale)
            else:
                qk = self._rotate(qk, cos, sin)
                q, k = qk[:, :Hq], qk[:, Hq:]
                if decoding:
                    keys, values = cache.update(k.unsqueeze(2), v.unsqueeze(2), index)
                    attended = decode_attention(q, keys, values, self.scale)
                else:
                    cache.update(k.transpose(0, 1)[None], v.transpose(0, 1)[None], index)
                    attended = prefill_attention(
                        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), starts, lengths, self.scale
                    )
            x = x + layer.o(attended.reshape(T, q_width))
            h = torch.rms_norm(x, (x.shape[-1],), layer.post_norm, layer.post_eps)
            gate_up = layer.gate_up(h)
            width = gate_up.shape[-1] // 2
            x = x + layer.down(F.silu(gate_up[:, :width]) * gate_up[:, width:])
        if decoding:
            kept = x
        elif isinstance(logits_to_keep, torch.Tensor):
            kept = x.index_select(0, logits_to_keep)
        elif logits_to_keep:
            kept = x[-int(logits_to_keep) :]
        else:
            kept = x
        logits = self.lm_head(torch.rms_norm(kept, (kept.shape[-1],), self.norm, self.norm_eps))
        return logits.unsqueeze(1) if decoding else logits


def attach(engine: Any) -> FastLlama | None:
    """The fast forward for this engine's model, or None (logged once, saying why) when it does not
    fit, is switched off, or its logits at load differ from the transformers ragged forward's."""
    if not enabled_by_env():
        log.info("fast forward: off (%s=%s)", ENV_SWITCH, os.environ.get(ENV_SWITCH))
        return None
    reason = supports(engine)
    if reason is not None:
        log.info("fast forward: not used for this model (%s): the transformers forward serves it", reason)
        return None
    try:
        fast = FastLlama(engine.model, pack=bool(engine.packing.packed))
        _check(engine, fast)
    except Exception as exc:  # a model the fast forward does not fit after all: transformers serves it
        log.warning("fast forward: disabled for this model (%s): the transformers forward serves it", exc)
        return None
    log.info("fast forward: on (fused q/k/v and gate/up, %s)", "oneDNN packed" if engine.packing.packed else "F.linear")
    return fast


def _check(engine: Any, fast: FastLlama) -> None:
    """Two ragged prompts prefilled packed and decoded one step: the fast forward's logits must be
    the transformers ragged forward's (`engine._ragged_forward` without the fast path)."""
    from openchat_cli.serve.engines.prefill import pack

    prompts = [[(7 * i + 3) % engine.vocab_limit for i in range(n)] for n in (6, 3)]
    nexts = [(11 + n) % engine.vocab_limit for n in (6, 3)]
    results = []
    with torch.inference_mode():
        if engine.lora is not None:
            engine.lora.route(None)
        for forward in (engine._transformers_forward, fast.forward):
            rows = [SequenceKV(len(fast.layers), 16) for _ in prompts]
            batch = pack(prompts, engine.device, None, engine.model.dtype)
            cache = RaggedCache(rows, batch.segments)
            first = forward(cache, batch.input_ids, batch.position_ids, batch.last_positions)
            cache.finish()
            cache = RaggedCache(rows)
            ids = torch.tensor([[t] for t in nexts])
            positions = torch.tensor([[len(p)] for p in prompts])
            second = forward(cache, ids, positions, 1)[:, -1]
            cache.finish()
            results.append(torch.cat([first, second]).float())
    want, got = results
    limit = TOLERANCE.get(fast.dtype, 5e-2) * (1 + float(want.abs().max()))
    diff = float((got - want).abs().max())
    if not diff <= limit:
        raise ValueError(f"fast logits differ from transformers' by {diff:.3g}")
