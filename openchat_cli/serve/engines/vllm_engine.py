"""vLLM adapter: the only module that imports vllm, and only when this engine is chosen.

vLLM's async engine does the batching (continuous batching, paged attention, tensor
parallelism). This adapter only translates: our `SamplingParams` → vLLM's, prompt token ids in,
token ids out. Text, stop strings and the template's separator are handled by the same
`ReplyStream` as for the transformers engine, so vLLM is asked not to detokenize and is given
no stop strings (a matched stop string aborts the request from our side).

Kept version-tolerant: it works with the V0 `AsyncLLMEngine` and the V1 `AsyncLLM` (re-exported
under the same name), cumulative or delta outputs, and a sync or async `abort`.

Load (`stats`): `running` counts our requests in flight; `waiting` those of them that vLLM's
scheduler has not started, from the scheduler stats each engine core sends with its outputs
(V1 hands them to stat loggers, its extension point for custom metrics), or, where the engine takes
no such logger (V0) and until the first stats arrive, the requests that have no output yet.

Logprobs map one to one: our `logprobs` / `prompt_logprobs` are vLLM's; its per-position dicts
{token id: Logprob(logprob, rank, …)} (the token itself plus the top k) become `TokenLogprob`s.
vLLM cannot generate 0 tokens, so prompt scoring (`max_tokens` 0) runs with 1 and drops it, as
vLLM's own server does for `echo` with `max_tokens` 0.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from openchat_cli.serve.engines.base import (
    Engine,
    EngineError,
    EngineStats,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

log = logging.getLogger("openchat.serve.vllm")


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    """`--engine-arg KEY=VALUE` → {KEY: VALUE}, VALUE read as a Python/JSON literal when it is one."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise EngineError(f"--engine-arg expects KEY=VALUE, got '{item}'")
        value: Any = raw
        lowered = raw.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                try:
                    value = json.loads(raw)
                except ValueError:
                    value = raw
        out[key] = value
    return out


def to_vllm_sampling_params(vllm: Any, params: SamplingParams) -> Any:
    """Our per-sequence settings as a `vllm.SamplingParams` (n=1; choices are separate requests)."""
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": 0.0 if params.greedy else float(params.temperature),
        "top_p": float(params.top_p),
        "max_tokens": max(1, int(params.max_tokens)),
        "presence_penalty": float(params.presence_penalty),
        "frequency_penalty": float(params.frequency_penalty),
        "stop_token_ids": list(params.stop_token_ids),
        "ignore_eos": bool(params.ignore_eos),
        "skip_special_tokens": True,
        "detokenize": False,
    }
    if params.top_k > 0:
        kwargs["top_k"] = int(params.top_k)
    if params.seed is not None:
        kwargs["seed"] = int(params.seed)
    if params.logprobs is not None:
        kwargs["logprobs"] = int(params.logprobs)
    if params.prompt_logprobs is not None:
        kwargs["prompt_logprobs"] = int(params.prompt_logprobs)
    if params.min_p:
        kwargs["min_p"] = float(params.min_p)
    if params.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = float(params.repetition_penalty)
    if params.logit_bias:
        kwargs["logit_bias"] = {int(t): float(b) for t, b in params.logit_bias}
    if params.guide is not None:
        kwargs["structured_outputs"] = to_vllm_structured_outputs(vllm, params.guide)
    try:
        return vllm.SamplingParams(**kwargs)
    except (TypeError, ValueError):
        # Older/newer vLLMs without `detokenize`: let vLLM detokenize, we ignore its text.
        kwargs.pop("detokenize")
        return vllm.SamplingParams(**kwargs)


def to_vllm_structured_outputs(vllm: Any, guide: Any) -> Any:
    """A response_format guide (engines.guided.JsonGuide) as vLLM's structured-output request: the
    schema as the client sent it, or any JSON object. vLLM compiles it with its own backend; JSON
    without free whitespace, as our own engine's grammar has it (a weak model otherwise fills its
    token budget with blank lines inside the object)."""
    sampling = getattr(vllm, "sampling_params", None)
    if sampling is None:
        import importlib

        sampling = importlib.import_module(f"{vllm.__name__}.sampling_params")
    params_cls = sampling.StructuredOutputsParams
    if guide.schema_json:
        return params_cls(json=guide.schema_json, disable_any_whitespace=True)
    return params_cls(json_object=True, disable_any_whitespace=True)


def _structured_outputs_config(vllm_module: Any) -> Any:
    """vLLM's structured-output settings for response_format, matching our engine: llguidance
    (vLLM's `guidance` backend) and compact JSON. vLLM 0.32 reads `disable_any_whitespace` from
    this engine-wide config, not from the request. None when this vLLM has no such config."""
    import importlib

    try:
        config_cls = importlib.import_module(f"{vllm_module.__name__}.config").StructuredOutputsConfig
    except (ImportError, AttributeError):
        return None
    return config_cls(backend="guidance", disable_any_whitespace=True)


def to_token_logprob(token_id: int, position: Any, top: int) -> TokenLogprob | None:
    """One position of vLLM's logprobs ({token id: Logprob}) as our `TokenLogprob`."""
    if position is None:
        return None

    def value(item: Any) -> float:
        return float(getattr(item, "logprob", item))

    own = position.get(token_id)
    # The dict holds the top k plus the token itself when it is not among them.
    best = sorted(((int(t), value(v)) for t, v in position.items()), key=lambda tv: -tv[1])
    return TokenLogprob(
        int(token_id), value(own) if own is not None else float("-inf"), tuple(best[:top]) if top > 0 else ()
    )


def _context_length(engine: Any, model_dir: Path, fallback: int | None) -> int:
    for path in (
        "vllm_config.model_config.max_model_len",
        "model_config.max_model_len",
        "engine.model_config.max_model_len",
    ):
        obj = engine
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, int):
            return obj
    if fallback:
        return fallback
    try:
        return int(json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError):
        return 4096


def vllm_lora_rank(adapters: dict[str, str]) -> int:
    """The smallest rank vLLM accepts for `max_lora_rank` that fits every adapter."""
    ranks = []
    for path in adapters.values():
        try:
            ranks.append(int(json.loads((Path(path) / "adapter_config.json").read_text())["r"]))
        except (OSError, ValueError, KeyError):
            raise EngineError(f"LoRA adapter {path}: cannot read r from adapter_config.json") from None
    need = max(ranks, default=8)
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= need), need)


class WaitingLogger:
    """A per-engine-core stat logger (vLLM V1's `StatLoggerBase` shape) that keeps one number:
    the requests its scheduler holds waiting, deferred ones included."""

    def __init__(self, counts: dict[int, int], engine_index: int = 0):
        self.counts, self.engine_index = counts, engine_index

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0):
        if scheduler_stats is not None:
            waiting = getattr(scheduler_stats, "num_waiting_reqs", 0) + getattr(
                scheduler_stats, "num_skipped_waiting_reqs", 0
            )
            self.counts[engine_idx] = int(waiting)

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


def takes_stat_logger_factories(engine_cls: Any) -> bool:
    """V1's `from_engine_args(..., stat_loggers=[factory(vllm_config, engine_index)])`; V0 took a
    dict of logger objects instead."""
    try:
        param = inspect.signature(engine_cls.from_engine_args).parameters.get("stat_loggers")
    except (TypeError, ValueError):
        return False
    return param is not None and "dict" not in str(param.annotation).lower()


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(
        self,
        model_dir: Path,
        *,
        tokenizer: Any,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        served_model_name: str | None = None,
        vllm_module: Any = None,
        adapters: dict[str, str] | None = None,
        **engine_options: Any,
    ):
        if vllm_module is None:
            try:
                import vllm as vllm_module  # noqa: PLC0415 - the one place vllm is imported
            except ImportError as exc:
                raise EngineError(f"the vllm engine needs vLLM installed (pip install vllm): {exc}") from None
        self.vllm = vllm_module
        self.model_dir = Path(model_dir)
        self.tokenizer = tokenizer
        args = {
            "model": str(model_dir),
            "tokenizer": str(model_dir),
            "tensor_parallel_size": tensor_parallel_size,
            **engine_options,
        }
        if max_model_len:
            args["max_model_len"] = max_model_len
        if served_model_name:
            args["served_model_name"] = served_model_name
        self.adapters = dict(adapters or {})
        if self.adapters:  # vLLM's own LoRA support: adapters stay unmerged, batched with the base
            args.setdefault("enable_lora", True)
            args.setdefault("max_loras", len(self.adapters))
            args.setdefault("max_lora_rank", vllm_lora_rank(self.adapters))
        if "structured_outputs_config" not in args:
            structured = _structured_outputs_config(vllm_module)
            if structured is not None:
                args["structured_outputs_config"] = structured
        try:
            engine_args = vllm_module.AsyncEngineArgs(**args)
            engine_cls = getattr(vllm_module, "AsyncLLMEngine", None)
            if engine_cls is None:
                from vllm.engine.async_llm_engine import AsyncLLMEngine as engine_cls  # noqa: PLC0415
            # requests waiting in vLLM's scheduler, per engine core (None: this vLLM reports none)
            self._scheduler_waiting: dict[int, int] | None = None
            loggers: dict[str, Any] = {}
            if takes_stat_logger_factories(engine_cls):
                counts = self._scheduler_waiting = {}
                loggers["stat_loggers"] = [lambda vllm_config, engine_index=0: WaitingLogger(counts, engine_index)]
            self.engine = engine_cls.from_engine_args(engine_args, **loggers)
        except EngineError:
            raise
        except Exception as exc:  # vLLM raises many kinds at startup (CUDA, config, memory)
            raise EngineError(f"vLLM could not start: {type(exc).__name__}: {exc}") from None
        self.context_length = _context_length(self.engine, self.model_dir, max_model_len)
        self._active = 0  # our requests in flight
        self._unanswered = 0  # of which no output has come back yet

    def stats(self) -> EngineStats:
        waiting = sum(self._scheduler_waiting.values()) if self._scheduler_waiting else self._unanswered
        waiting = min(waiting, self._active)  # the scheduler's last word may predate requests that ended since
        return EngineStats(waiting=waiting, running=self._active - waiting)

    def describe(self) -> dict[str, Any]:
        # where `waiting` comes from: vLLM's scheduler, or our requests that have no output yet
        waiting_from = "scheduler" if self._scheduler_waiting else "first output"
        return {**super().describe(), "vllm": getattr(self.vllm, "__version__", "?"), "waiting_from": waiting_from}

    async def _abort(self, request_id: str) -> None:
        try:
            result = self.engine.abort(request_id)
            if inspect.isawaitable(result):
                await result
        except Exception:  # already finished / unknown id
            log.debug("abort of %s failed", request_id, exc_info=True)

    def _lora_request(self, name: str | None) -> Any:
        """vLLM's LoRARequest for an adapter name (ids are 1-based, fixed by --lora's order)."""
        if not name:
            return None
        if name not in self.adapters:
            raise EngineError(f"no LoRA adapter named '{name}' is loaded")
        request_cls = getattr(self.vllm, "LoRARequest", None)
        if request_cls is None:
            from vllm.lora.request import LoRARequest as request_cls  # noqa: PLC0415
        return request_cls(name, list(self.adapters).index(name) + 1, self.adapters[name])

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        sampling = to_vllm_sampling_params(self.vllm, params)
        lora = self._lora_request(params.adapter)
        prompt = {"prompt_token_ids": list(prompt_ids)}
        seen = 0
        finished = False
        prompt_sent = params.prompt_logprobs is None
        score_only = params.max_tokens <= 0
        answered = False
        self._active += 1
        self._unanswered += 1
        try:
            extra = {"lora_request": lora} if lora is not None else {}
            async for output in self.engine.generate(prompt, sampling, request_id, **extra):
                if not answered:
                    answered = True
                    self._unanswered -= 1
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                delta_kind = getattr(getattr(sampling, "output_kind", None), "name", "") == "DELTA"
                new = ids if delta_kind else ids[seen:]
                start = 0 if delta_kind else seen
                seen = seen + len(new) if delta_kind else len(ids)
                reason = completion.finish_reason if output.finished else None
                if reason not in (None, "stop", "length"):
                    reason = "error" if reason != "abort" else "length"
                if output.finished and reason is None:
                    reason = "length"
                event = TokenEvent(new, reason)
                if not prompt_sent and getattr(output, "prompt_logprobs", None) is not None:
                    event.prompt_logprobs = [
                        to_token_logprob(t, pos, params.prompt_logprobs)
                        for t, pos in zip(prompt_ids, output.prompt_logprobs)
                    ]
                    prompt_sent = True
                if params.logprobs is not None and new:
                    positions = list(getattr(completion, "logprobs", None) or [])[start : start + len(new)]
                    event.logprobs = [
                        to_token_logprob(t, pos, params.logprobs) or TokenLogprob(t, float("nan"))
                        for t, pos in zip(new, positions)
                    ]
                if score_only:  # the one token vLLM had to generate is not ours
                    if event.prompt_logprobs is None and not output.finished:
                        continue
                    event = TokenEvent([], "length", prompt_logprobs=event.prompt_logprobs)
                    reason = "length"
                finished = reason is not None
                yield event
                if finished:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            finished = True
            yield TokenEvent([], "error", f"{type(exc).__name__}: {exc}")
        finally:
            self._active -= 1
            if not answered:
                self._unanswered -= 1
            if not finished:
                await self._abort(request_id)

    async def shutdown(self) -> None:
        stop = getattr(self.engine, "shutdown", None)
        if callable(stop):
            try:
                result = stop()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.debug("vLLM shutdown failed", exc_info=True)
