"""The growing KV-cache layer: the same keys/values as transformers' concatenating layer, written
in place between reallocations, and rebuilt when the engine replaces its tensors."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from openchat_cli.serve.engines.kv_cache import GrowingLayer


def test_growing_layer_matches_concatenation_through_merges_keeps_and_trims():
    torch.manual_seed(0)
    plain, growing = DynamicLayer(), GrowingLayer()
    prompt = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    plain.update(*prompt)
    growing.update(*prompt)
    moves = {8: "keep", 15: "trim", 22: "merge"}
    pointers = []
    for step in range(40):
        if moves.get(step) == "keep":  # the engine drops a finished row
            for layer in (plain, growing):
                index = torch.tensor([0, 2])
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        elif moves.get(step) == "trim":  # … and padding columns nobody needs
            for layer in (plain, growing):
                layer.keys, layer.values = layer.keys[:, :, 2:], layer.values[:, :, 2:]
        elif moves.get(step) == "merge":  # … and a prefilled row joins
            extra = torch.randn(1, 2, plain.keys.shape[2], 4)
            for layer in (plain, growing):
                layer.keys = torch.cat([layer.keys, extra])
                layer.values = torch.cat([layer.values, extra * 2])
        new = torch.randn(plain.keys.shape[0], 2, 1, 4), torch.randn(plain.keys.shape[0], 2, 1, 4)
        keys, values = growing.update(*new)
        expected_keys, expected_values = plain.update(*new)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
        assert growing.get_seq_length() == plain.get_seq_length()
        pointers.append(keys.data_ptr())
    # Written in place: far fewer buffers than steps (a new one after each move and when full).
    assert len(set(pointers)) <= 8
