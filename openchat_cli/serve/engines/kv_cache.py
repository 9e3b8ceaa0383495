"""The engine's KV caches: buffers that grow in place, so a decode step does not copy the cache.

Two layouts. The ragged one (`SequenceKV`, `RaggedCache`, at the end) serves plain full-attention
`sdpa` models: one set of buffers per sequence. The padded one (`GrowingLayer`) serves the rest
(eager attention, sliding windows): one left-padded batch in a `DynamicCache`.

transformers' `DynamicLayer.update` concatenates: every decode step allocates a new key and a
new value tensor per layer and copies the whole cache into them. At 32 rows of ~300 tokens that
was over half of the engine process's time (profiled with py-spy `--idle` under
`benchmarks/bench_serve.py`'s load). `GrowingLayer` keeps each tensor in a buffer with room
on the time axis: `keys`/`values` are views of its first `length` columns and a step writes one
column. Whatever replaces `keys`/`values` from outside (the engine's merge, keep and trim, the
packed prefill's unpacking) simply makes the next update start a new buffer from them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

# Room added on the time axis when a buffer is (re)made: at least this many columns, or a
# quarter of the current length, so long replies reallocate rarely and short ones waste little.
MIN_ROOM = 32


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` whose keys/values are views of preallocated buffers (see the module doc)."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.keys is None or self.keys.dim() != 4 or self.keys.shape[-2] == 0:
            # First fill (a prefill): keep it as it is, the unpacking or the first step rebuilds it.
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        length, added = self.keys.shape[-2], key_states.shape[-2]
        if not (
            self._holds(self.keys, self._key_buffer)
            and self._holds(self.values, self._value_buffer)
            and length + added <= self._key_buffer.shape[-2]
            and key_states.shape[0] == self.keys.shape[0]
        ):
            room = max(MIN_ROOM, (length + added) // 4)
            self._key_buffer = self._with_room(self.keys, length + added + room)
            self._value_buffer = self._with_room(self.values, length + added + room)
        self._key_buffer[:, :, length : length + added] = key_states
        self._value_buffer[:, :, length : length + added] = value_states
        self.keys = self._key_buffer[:, :, : length + added]
        self.values = self._value_buffer[:, :, : length + added]
        return self.keys, self.values

    @staticmethod
    def _holds(view: torch.Tensor, buffer: torch.Tensor | None) -> bool:
        """Whether `view` is still the leading columns of `buffer` (nothing replaced it)."""
        return (
            buffer is not None
            and view.data_ptr() == buffer.data_ptr()
            and view.shape[:2] == buffer.shape[:2]
            and view.shape[-1] == buffer.shape[-1]
            and view.stride() == buffer.stride()
        )

    @staticmethod
    def _with_room(tensor: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, length, dim = tensor.shape
        buffer = tensor.new_empty((batch, heads, capacity, dim))
        buffer[:, :, :length] = tensor
        return buffer


def use_growing_layers(cache) -> None:
    """Swap a fresh `DynamicCache`'s plain layers (and the ones it will create) for growing ones."""
    layers = getattr(cache, "layers", None) or []
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and not layer.is_initialized:
            layers[i] = GrowingLayer()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer


# -- the ragged cache: one set of buffers per sequence ---------------------------------------------
class SequenceKV:
    """One sequence's keys and values, per layer, in [Hkv, capacity, D] buffers with room on the
    time axis. Why per sequence: a sequence joining or leaving the decode batch is then a list
    operation (nobody else's cache is copied), and decode attention reads exactly `length`
    columns (no padding, no mask). A buffer grows (this sequence's alone) when it is full; it
    never grows past `limit` columns (prompt + max_tokens, or the context)."""

    __slots__ = ("keys", "values", "length", "limit")

    def __init__(self, layers: int, limit: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.length = 0  # columns written by every layer (a forward's writes count once it is over)
        self.limit = max(1, int(limit))

    def capacity_for(self, needed: int) -> int:
        return max(needed, min(self.limit, needed + max(MIN_ROOM, needed // 4)))

    def fill(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A prompt's keys/values [Hkv, L, D] (a packed prefill's slice) become the layer's first
        `L` columns."""
        heads, length, dim = keys.shape
        capacity = self.capacity_for(length)
        for store, new in ((self.keys, keys), (self.values, values)):
            buffer = new.new_empty((heads, capacity, dim))
            buffer[:, :length] = new
            store[layer] = buffer

    def with_room(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's buffers, grown first if column `length` (the next decode step's) is past them."""
        keys, values = self.keys[layer], self.values[layer]
        if self.length >= keys.shape[1]:
            return self._grow(layer, self.length + 1)
        return keys, values

    def _grow(self, layer: int, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        capacity = max(needed, self.capacity_for(needed))
        for store in (self.keys, self.values):
            old = store[layer]
            buffer = old.new_empty((old.shape[0], capacity, old.shape[2]))
            buffer[:, : old.shape[1]] = old
            store[layer] = buffer
        return self.keys[layer], self.values[layer]

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys/values [Hkv, length, D] (views, no copy)."""
        return self.keys[layer][:, : self.length], self.values[layer][:, : self.length]


class RaggedCache(Cache):
    """The `cache` a ragged forward hands the model: which sequences' buffers this forward reads and
    writes, and how. Built per forward by the engine; the sequences own the tensors.

    - decode (`segments` None): one new token per row; `update` writes each row's column into its
      own buffers and returns the lists of exact-length views the attention function reads;
    - packed prefill (`segments` = [(start, length)] in the packed row, one per sequence): `update`
      copies each prompt's slice into its sequence's new buffers and returns the packed tensors
      (attention runs per segment on them, see `engine_attention.py`).

    Mask sizes say "no cache offset": with no 2-D mask, transformers' sdpa mask then skips to
    `None` (decode: one query; prefill: q_length == kv_length), so no dense mask is ever built."""

    def __init__(self, rows: list[SequenceKV], segments: list[tuple[int, int]] | None = None):
        super().__init__(layers=[])
        self.rows = rows
        self.segments = segments

    @property
    def decoding(self) -> bool:
        return self.segments is None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.segments is None:
            # Each row's new column goes into its own buffers: one foreach copy for all rows.
            keys, values, key_columns, value_columns = [], [], [], []
            for row in self.rows:
                k, v = row.with_room(layer_idx)
                key_columns.append(k.select(1, row.length))
                value_columns.append(v.select(1, row.length))
                keys.append(k.narrow(1, 0, row.length + 1))
                values.append(v.narrow(1, 0, row.length + 1))
            torch._foreach_copy_(
                key_columns + value_columns, [*key_states[:, :, 0].unbind(0), *value_states[:, :, 0].unbind(0)]
            )
            return keys, values
        for row, (start, length) in zip(self.rows, self.segments):
            row.fill(layer_idx, key_states[0, :, start : start + length], value_states[0, :, start : start + length])
        return key_states, value_states

    def finish(self) -> None:
        """After the forward: every layer wrote its columns, the sequences now hold them."""
        if self.segments is None:
            for row in self.rows:
                row.length += 1
        else:
            for row, (_, length) in zip(self.rows, self.segments):
                row.length = length

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0
