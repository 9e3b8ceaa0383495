"""The vLLM adapter without vLLM: a fake module stands in for `vllm`."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from openchat_cli.serve.engines.base import EngineError, SamplingParams
from openchat_cli.serve.engines.vllm_engine import VLLMEngine, parse_engine_args, to_vllm_sampling_params


class FakeSamplingParams:
    FIELDS = {
        "n",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "presence_penalty",
        "frequency_penalty",
        "stop_token_ids",
        "ignore_eos",
        "skip_special_tokens",
        "detokenize",
        "seed",
        "logprobs",
        "prompt_logprobs",
        "min_p",
        "repetition_penalty",
        "logit_bias",
        "structured_outputs",
    }

    def __init__(self, **kwargs):
        unknown = set(kwargs) - self.FIELDS
        if unknown:
            raise TypeError(f"unexpected {unknown}")
        self.__dict__.update(kwargs)


class OldSamplingParams(FakeSamplingParams):
    FIELDS = FakeSamplingParams.FIELDS - {"detokenize"}


def position(token, k):
    """vLLM's logprobs for one position: the token itself plus the top k ({id: Logprob})."""
    ranked = {
        t: types.SimpleNamespace(logprob=-0.5 * r, rank=r, decoded_token=None)
        for r, t in enumerate(range(100, 100 + k), start=1)
    }
    ranked.setdefault(token, types.SimpleNamespace(logprob=-9.0 - token / 100, rank=50, decoded_token=None))
    return ranked


def fake_vllm(outputs_per_request, sampling_cls=FakeSamplingParams):
    """A module with AsyncEngineArgs, SamplingParams and AsyncLLMEngine that replays outputs."""
    module = types.ModuleType("vllm")
    module.__version__ = "0.0-fake"
    module.SamplingParams = sampling_cls
    module.AsyncEngineArgs = lambda **kw: types.SimpleNamespace(**kw)
    calls = {"aborted": [], "generated": []}

    class Engine:
        def __init__(self, args):
            self.args = args
            self.vllm_config = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=321))

        @classmethod
        def from_engine_args(cls, args):
            return cls(args)

        async def generate(self, prompt, sampling, request_id):
            calls["generated"].append((prompt, sampling, request_id))
            ids: list[int] = []
            k = getattr(sampling, "logprobs", None)
            pk = getattr(sampling, "prompt_logprobs", None)
            for step, (new, finish) in enumerate(outputs_per_request):
                ids = ids + new  # cumulative, like vLLM's default output kind
                completion = types.SimpleNamespace(
                    token_ids=list(ids),
                    finish_reason=finish,
                    logprobs=None if k is None else [position(t, k) for t in ids],
                )
                prompt_logprobs = None
                if pk is not None and step == 0:
                    tokens = prompt["prompt_token_ids"]
                    prompt_logprobs = [None] + [position(t, pk) for t in tokens[1:]]
                yield types.SimpleNamespace(
                    outputs=[completion], finished=finish is not None, prompt_logprobs=prompt_logprobs
                )
                await asyncio.sleep(0)

        async def abort(self, request_id):
            calls["aborted"].append(request_id)

    module.AsyncLLMEngine = Engine
    return module, calls


def test_sampling_params_translation():
    vllm, _ = fake_vllm([])
    params = SamplingParams(
        max_tokens=7,
        temperature=0.0,
        top_p=0.9,
        top_k=5,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        stop_token_ids=(2, 9),
        ignore_eos=True,
    )
    sp = to_vllm_sampling_params(vllm, params)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.seed) == (1, 0.0, 0.9, 5, 3)
    assert (sp.max_tokens, sp.presence_penalty, sp.frequency_penalty) == (7, 0.5, -0.5)
    assert sp.stop_token_ids == [2, 9] and sp.ignore_eos is True and sp.detokenize is False
    plain = to_vllm_sampling_params(vllm, SamplingParams(max_tokens=3))
    assert not hasattr(plain, "top_k") and not hasattr(plain, "seed") and plain.temperature == 1.0
    # A vLLM without `detokenize` still gets valid params.
    old, _ = fake_vllm([], OldSamplingParams)
    assert not hasattr(to_vllm_sampling_params(old, params), "detokenize")


def test_sampling_extras_and_response_format_reach_vllm():
    """min_p, repetition_penalty, logit_bias and a response_format schema are translated, not dropped."""
    import json
    import types

    from openchat_cli.serve.engines.guided import json_guide

    vllm, _ = fake_vllm([])

    class Structured:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    vllm.sampling_params = types.SimpleNamespace(StructuredOutputsParams=Structured)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    guide = json_guide({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    sp = to_vllm_sampling_params(
        vllm,
        SamplingParams(
            max_tokens=4, min_p=0.05, repetition_penalty=1.3, logit_bias=((7, -100.0), (9, 5.0)), guide=guide
        ),
    )
    assert (sp.min_p, sp.repetition_penalty, sp.logit_bias) == (0.05, 1.3, {7: -100.0, 9: 5.0})
    assert json.loads(sp.structured_outputs.json) == schema and sp.structured_outputs.disable_any_whitespace
    any_object = to_vllm_sampling_params(vllm, SamplingParams(max_tokens=4, guide=json_guide({"type": "json_object"})))
    assert any_object.structured_outputs.json_object is True
    plain = to_vllm_sampling_params(vllm, SamplingParams(max_tokens=4))
    assert not any(hasattr(plain, k) for k in ("min_p", "repetition_penalty", "logit_bias", "structured_outputs"))


def test_engine_args_parsing():
    assert parse_engine_args(
        [
            "enable_prefix_caching=true",
            "--max-num-seqs=64",
            "quantization=awq",
            "swap_space=4.5",
            "limit_mm_per_prompt={'image': 0}",
            "seed=none",
        ]
    ) == {
        "enable_prefix_caching": True,
        "max_num_seqs": 64,
        "quantization": "awq",
        "swap_space": 4.5,
        "limit_mm_per_prompt": {"image": 0},
        "seed": None,
    }
    with pytest.raises(EngineError):
        parse_engine_args(["no-equals-sign"])


def run_engine(engine, params, prompt=(1, 2, 3), take=None):
    async def main():
        events = []
        agen = engine.generate(list(prompt), params, "req-1")
        async for event in agen:
            events.append(event)
            if take and len(events) >= take:
                await agen.aclose()
                break
        return events

    return asyncio.run(main())


def test_engine_streams_deltas_and_finish(tmp_path):
    vllm, calls = fake_vllm([([5], None), ([6, 7], None), ([8], "stop")])
    engine = VLLMEngine(
        tmp_path,
        tokenizer=None,
        tensor_parallel_size=2,
        max_model_len=None,
        served_model_name="m",
        vllm_module=vllm,
        enable_prefix_caching=True,
    )
    assert engine.context_length == 321
    assert engine.engine.args.tensor_parallel_size == 2 and engine.engine.args.enable_prefix_caching
    events = run_engine(engine, SamplingParams(max_tokens=10))
    assert [e.token_ids for e in events] == [[5], [6, 7], [8]]
    assert [e.finish_reason for e in events] == [None, None, "stop"]
    assert calls["generated"][0][0] == {"prompt_token_ids": [1, 2, 3]}
    assert calls["aborted"] == [] and engine.stats().running == 0


def test_engine_aborts_when_the_consumer_leaves(tmp_path):
    vllm, calls = fake_vllm([([5], None), ([6], None), ([7], None), ([8], "length")])
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)
    events = run_engine(engine, SamplingParams(max_tokens=10), take=2)
    assert len(events) == 2
    assert calls["aborted"] == ["req-1"] and engine.stats().running == 0


def test_vllm_is_imported_only_by_the_adapter():
    import importlib

    for name in ("app", "cli", "engines.transformers_engine", "engines.vllm_engine"):
        importlib.import_module(f"openchat_cli.serve.{name}")
    assert "vllm" not in sys.modules


def test_missing_vllm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineError, match="needs vLLM"):
        VLLMEngine(tmp_path, tokenizer=None)


def test_logprobs_and_prompt_scoring(tmp_path):
    vllm, calls = fake_vllm([([5], None), ([6], "length")])
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)
    events = run_engine(engine, SamplingParams(max_tokens=2, logprobs=2, prompt_logprobs=1))
    sp = calls["generated"][0][1]
    assert (sp.logprobs, sp.prompt_logprobs) == (2, 1)
    first = events[0].prompt_logprobs
    assert first[0] is None and [p.token_id for p in first[1:]] == [2, 3]
    assert first[1].logprob == -9.02 and first[1].top == ((100, -0.5),)
    generated = [lp for e in events for lp in e.logprobs]
    assert [lp.token_id for lp in generated] == [5, 6]
    assert generated[1].top == ((100, -0.5), (101, -1.0)) and generated[1].logprob == -9.06
    assert events[1].prompt_logprobs is None

    # max_tokens 0 (echo scoring): vLLM generates one token, which is dropped.
    vllm, calls = fake_vllm([([5], "length")])
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)
    (event,) = run_engine(engine, SamplingParams(max_tokens=0, prompt_logprobs=0))
    assert calls["generated"][0][1].max_tokens == 1
    assert event.token_ids == [] and event.finish_reason == "length"
    assert [p and p.token_id for p in event.prompt_logprobs] == [None, 2, 3]
    assert all(p.top == () for p in event.prompt_logprobs[1:])


def test_lora_adapters_become_vllm_lora_requests(tmp_path):
    """`serve --lora` on vLLM: LoRA enabled with a rank that fits, and each request for an
    adapter carries vLLM's LoRARequest (stable 1-based ids in --lora's order)."""
    import json

    vllm, calls = fake_vllm([([5], "stop")])
    vllm.LoRARequest = lambda name, int_id, path: ("lora", name, int_id, path)
    seen = []

    class LoraEngine(vllm.AsyncLLMEngine):
        async def generate(self, prompt, sampling, request_id, lora_request=None):
            seen.append(lora_request)
            async for output in super().generate(prompt, sampling, request_id):
                yield output

    vllm.AsyncLLMEngine = LoraEngine
    for name, r in (("a", 4), ("b", 12)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": r}))
    adapters = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm, adapters=adapters)
    args = engine.engine.args
    assert (args.enable_lora, args.max_loras, args.max_lora_rank) == (True, 2, 16)
    run_engine(engine, SamplingParams(max_tokens=3, adapter="b"))
    run_engine(engine, SamplingParams(max_tokens=3))
    assert seen == [("lora", "b", 2, str(tmp_path / "b")), None]
    with pytest.raises(EngineError, match="no LoRA adapter named 'zzz'"):
        run_engine(engine, SamplingParams(max_tokens=3, adapter="zzz"))


def gated_vllm(stat_loggers_param: bool):
    """A fake vLLM whose requests each wait for their gate before their one output; with
    `stat_loggers_param`, its engine takes V1's stat logger factories and keeps the loggers."""
    module, _ = fake_vllm([])
    gates: dict[str, asyncio.Event] = {}

    class Engine(module.AsyncLLMEngine):
        loggers: list = []

        async def generate(self, prompt, sampling, request_id):
            await gates.setdefault(request_id, asyncio.Event()).wait()
            completion = types.SimpleNamespace(token_ids=[5], finish_reason="stop", logprobs=None)
            yield types.SimpleNamespace(outputs=[completion], finished=True, prompt_logprobs=None)

    if stat_loggers_param:

        def from_engine_args(cls, args, stat_loggers: list | None = None):
            engine = cls(args)
            engine.loggers = [factory(args, 0) for factory in stat_loggers or []]
            return engine

        Engine.from_engine_args = classmethod(from_engine_args)
    module.AsyncLLMEngine = Engine
    return module, gates


def load_while_in_flight(engine, gates, during):
    """Start three requests (none answered), call `during()` with them in flight, then let all
    finish; returns what it returned and the stats after."""

    async def main():
        async def one(i):
            return [e async for e in engine.generate([1, 2], SamplingParams(max_tokens=4), f"r{i}")]

        tasks = [asyncio.create_task(one(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        seen = await during()
        for i in range(3):
            gates.setdefault(f"r{i}", asyncio.Event()).set()
        await asyncio.gather(*tasks)
        return seen, engine.stats()

    return asyncio.run(main())


def test_waiting_counts_requests_with_no_output_when_vllm_reports_no_scheduler_stats(tmp_path):
    vllm, gates = gated_vllm(stat_loggers_param=False)
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)

    async def during():
        before = engine.stats()
        gates.setdefault("r1", asyncio.Event()).set()  # r1 answers (and ends)
        await asyncio.sleep(0.01)
        return before, engine.stats()

    (before, after_one), end = load_while_in_flight(engine, gates, during)
    assert (before.waiting, before.running) == (3, 0) and engine.describe()["waiting_from"] == "first output"
    assert (after_one.waiting, after_one.running) == (2, 0)
    assert (end.waiting, end.running) == (0, 0)


def test_waiting_is_what_vllms_scheduler_reports(tmp_path):
    vllm, gates = gated_vllm(stat_loggers_param=True)
    engine = VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)
    (logger,) = engine.engine.loggers  # our factory, called as V1 calls it

    async def during():
        logger.record(types.SimpleNamespace(num_waiting_reqs=1, num_skipped_waiting_reqs=1), None)
        reported = engine.stats()
        logger.record(types.SimpleNamespace(num_waiting_reqs=7, num_skipped_waiting_reqs=0), None)
        return reported, engine.stats()

    (reported, stale), end = load_while_in_flight(engine, gates, during)
    assert (reported.waiting, reported.running) == (2, 1) and engine.describe()["waiting_from"] == "scheduler"
    assert (stale.waiting, stale.running) == (3, 0)  # never more than our requests in flight
    logger.record(None, None)  # a step without scheduler stats changes nothing
    assert (end.waiting, end.running) == (0, 0) == (engine.stats().waiting, engine.stats().running)


def test_a_v0_engine_gets_no_stat_logger_factories(tmp_path):
    vllm, _ = gated_vllm(stat_loggers_param=False)

    def from_engine_args(cls, args, stat_loggers: dict | None = None):  # V0: a dict of logger objects
        assert stat_loggers is None
        return cls(args)

    vllm.AsyncLLMEngine.from_engine_args = classmethod(from_engine_args)
    VLLMEngine(tmp_path, tokenizer=None, vllm_module=vllm)
