"""The messages between the API process and the engine process, as msgpack frames.

A Unix socket pair carries a stream of msgpack values; each value is a list whose first item
names the message. Only plain lists, ints, floats and strings cross, so either side can be
read without the other's classes.

API → engine:  ["gen", key, prompt_ids, params]  ·  ["abort", key]  ·  ["quit"]
engine → API:  ["ready", facts]  ·  ["fail", message]  ·  ["events", [[key, event], …], stats]
               ·  ["stats", stats]

`key` is the client's own integer for one sequence (request ids need not be unique).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from openchat_cli.serve.engines.base import EngineStats, SamplingParams, TokenEvent, TokenLogprob


def pack(message: list[Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpacker() -> msgpack.Unpacker:
    """A streaming reader: feed it bytes as they come, iterate it for whole messages."""
    return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=1 << 30)


_BIG = "bigint:"  # msgpack integers stop at 64 bits; the API accepts larger (top_k 1e30, seeds)


def params_to_wire(params: SamplingParams) -> dict[str, Any]:
    out = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    out["stop_token_ids"] = list(params.stop_token_ids)
    out["logit_bias"] = [[int(t), float(b)] for t, b in params.logit_bias]
    if params.guide is not None:  # a JsonGuide: plain strings, rebuilt on the engine's side
        out["guide"] = {f.name: getattr(params.guide, f.name) for f in dataclasses.fields(params.guide)}
    for name, value in out.items():
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            out[name] = _BIG + str(value)
    return out


def params_from_wire(data: dict[str, Any]) -> SamplingParams:
    data = dict(data)
    data["stop_token_ids"] = tuple(data.get("stop_token_ids") or ())
    data["logit_bias"] = tuple((int(t), float(b)) for t, b in data.get("logit_bias") or ())
    if data.get("guide") is not None:
        from openchat_cli.serve.engines.guided import JsonGuide

        data["guide"] = JsonGuide(**data["guide"])
    for name, value in data.items():
        if isinstance(value, str) and value.startswith(_BIG):
            data[name] = int(value[len(_BIG) :])
    return SamplingParams(**data)


def _logprob_to_wire(item: TokenLogprob | None) -> list[Any] | None:
    if item is None:
        return None
    return [item.token_id, item.logprob, [[t, lp] for t, lp in item.top]]


def _logprob_from_wire(item: list[Any] | None) -> TokenLogprob | None:
    if item is None:
        return None
    token_id, logprob, top = item
    return TokenLogprob(token_id, logprob, tuple((t, lp) for t, lp in top))


def event_to_wire(event: TokenEvent) -> list[Any]:
    return [
        event.token_ids,
        event.finish_reason,
        event.error,
        None if event.logprobs is None else [_logprob_to_wire(x) for x in event.logprobs],
        None if event.prompt_logprobs is None else [_logprob_to_wire(x) for x in event.prompt_logprobs],
    ]


def event_from_wire(data: list[Any]) -> TokenEvent:
    token_ids, finish_reason, error, logprobs, prompt_logprobs = data
    return TokenEvent(
        list(token_ids),
        finish_reason,
        error,
        None if logprobs is None else [_logprob_from_wire(x) for x in logprobs],
        None if prompt_logprobs is None else [_logprob_from_wire(x) for x in prompt_logprobs],
    )


def stats_to_wire(stats: EngineStats) -> list[Any]:
    return [stats.waiting, stats.running, stats.extra]


def stats_from_wire(data: list[Any]) -> EngineStats:
    waiting, running, extra = data
    return EngineStats(waiting=waiting, running=running, extra=dict(extra))
