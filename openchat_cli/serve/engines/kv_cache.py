"""A KV-cache layer that grows in place, so a decode step does not copy the whole cache.

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
from transformers.cache_utils import DynamicLayer

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
