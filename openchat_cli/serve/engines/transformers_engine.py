"""CPU (or single-GPU) engine on plain transformers, with continuous batching of its own.

Why not transformers' `generate_batch` / `ContinuousBatchingManager`: it samples with one
generation config for the whole manager (do_sample on or off for everyone, one global RNG),
so a greedy request and a sampled one cannot share a batch, per-request `seed`s cannot be
reproduced when other requests run beside them, and presence/frequency penalties are not
per-request. The API needs all three, so this module runs a small continuous-batching loop:

- one scheduler thread owns the model. Each step it drops cancelled sequences, admits waiting
  ones (their prompts are prefilled packed without padding, PACK_TOKENS per forward (prefill.py)),
  and runs ONE batched forward for every running sequence (opt-in, OPENCHAT_PREFILL_THREAD=1: a
  second thread admits and prefills while this one keeps decoding, see `overlapped`);
- the KV cache is ragged for plain full-attention `sdpa` models (kv_cache.py's `SequenceKV`,
  engine_attention.py): each sequence owns its buffers, joining or leaving the batch is a list
  operation, decode attention reads each row's exact length and the packed prefill attends per
  prompt, with no padding and no mask anywhere;
- other models (eager attention, sliding windows) keep the padded batch: decode rows are
  left-padded in one `DynamicCache`, the 2-D attention mask hides the padding, `position_ids` are
  each row's own length; finished or cancelled rows leave it at the next step (their cache rows
  are dropped and all-padding columns on the left are trimmed). Either way a row computes
  exactly what it would compute alone (up to float rounding);
- sampling is batched across the rows (sampling.py): temperature (0 = greedy), top-k/p, min-p,
  penalties, logit_bias and `response_format` masks (guided.py) as tensors, and one uniform draw
  per row from a per-sequence `torch.Generator` seeded from the request's `seed`, so a seeded
  request gives the same tokens whether it runs alone or batched with others;
- log-probabilities (`echo` + `logprobs`): prompts that want them are prefilled keeping every
  position's logits; prompts that only want scoring (`max_tokens` 0, what log-likelihood evals
  send) are scored together in one forward without a KV cache and never join the batch.

Generated tokens go back to the asyncio side with one `call_soon_threadsafe` per step, or, for
sequences `submit`ted with a key (the engine process), straight from the scheduler thread to
`sink` as one list per step: no asyncio wake-up per token per sequence on the engine's side.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.model.context import context_length
from openchat_cli.serve.engines import engine_attention, fast_llama, widening
from openchat_cli.serve.engines.base import (
    Engine,
    EngineError,
    EngineStats,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from openchat_cli.serve.engines.guided import GuideFactory
from openchat_cli.serve.engines.kv_cache import RaggedCache, SequenceKV
from openchat_cli.serve.engines.prefill import PACKABLE_ATTENTION, pack, unpack_cache
from openchat_cli.serve.engines.ragged_attention import kernel_status
from openchat_cli.serve.engines.sampling import RowState, new_row_state, sample
from openchat_cli.serve.engines.switches import env_switch

log = logging.getLogger("openchat.serve.engine")
SWITCH_INTERVAL_S = 0.001
# Prompt scoring keeps every position's logits: split a scoring batch so that they stay under
# this many floats (1 GiB in float32), whatever the vocabulary size.
MAX_SCORING_LOGITS = 256 * 1024 * 1024
# Prompts packed into one prefill forward hold at most this many tokens (a longer prompt goes
# alone). On the padded path the packed forward's attention is dense over the whole pack (masked
# block-diagonal), so its cost grows with the square of the pack: 32 ShareGPT prompts (5.3k
# tokens) prefilled 3-4x faster in packs of 512 than in packs of 4096 (small model, one thread,
# this 2-CPU box). The ragged path attends per prompt: packs of 256 to 2048 took the same time
# there, and smaller packs hand first tokens out sooner.
PACK_TOKENS = 512
PREFILL_THREAD_SWITCH = "OPENCHAT_PREFILL_THREAD"  # "1" (or on/true/yes): prefill on a thread of its own


def prefill_thread_by_env() -> bool:
    """True when OPENCHAT_PREFILL_THREAD is 1/true/on/yes (off by default: see `overlapped`)."""
    return env_switch(PREFILL_THREAD_SWITCH, False)


@dataclass(eq=False)
class _Seq:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    queue: asyncio.Queue | None  # None: events go to the engine's sink under `key`
    key: Any = None
    generated: list[int] = field(default_factory=list)
    length: int = 0  # real (non-padding) tokens held in the KV cache for this row
    next_token: int | None = None  # sampled, not yet fed to the model
    sampling: RowState | None = None  # seed's generator, penalty counts, guide (see sampling.py)
    kv: SequenceKV | None = None  # this sequence's own KV buffers (the ragged path)
    cancelled: bool = False
    done: bool = False
    queued_at: float = field(default_factory=time.monotonic)


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        # bf16/fp16 matmuls are slow on most CPUs: run float32 there unless told otherwise.
        return torch.float32 if device == "cpu" else "auto"
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise EngineError(f"unknown dtype '{name}' (choose auto, float32, bfloat16 or float16)")
    return table[name]


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(
        self,
        model_dir: Path,
        *,
        tokenizer: Any,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 64,
        max_model_len: int | None = None,
        max_prefill_tokens: int = 4096,
        threads: int | None = None,
        quantize: str | None = None,
        adapters: dict[str, str] | None = None,
        kv_cache: str = "auto",
        packed_linear: bool | None = None,
        fast_forward: bool | None = None,
        prefill_thread: bool | None = None,
        wide_threads: int | None = None,
    ):
        """`kv_cache`: "auto" (ragged where the model fits it, see `_enable_ragged`) or "padded"
        (the left-padded batch for every model: the reference the tests and benchmarks compare
        the ragged path against). `packed_linear`: Linear layers on prepacked oneDNN weights
        (packed_linear.py) on CPU; None: on unless OPENCHAT_PACKED_LINEAR=0. `fast_forward`: False keeps
        the transformers forward for Llama-shaped models (fast_llama.py; None: on unless
        OPENCHAT_FAST_FORWARD=0).
        `prefill_thread`:
        prefill newcomers on a thread of their own, beside the decode steps (see `_overlapped`);
        None: off unless OPENCHAT_PREFILL_THREAD=1.
        `wide_threads`: a thread count above `threads` that each forward may run on instead, where
        measuring shows it faster (widening.py; the engine process passes every CPU it may use;
        OPENCHAT_WIDE_THREADS=0 turns it off)."""
        import torch
        from transformers import AutoModelForCausalLM

        from openchat_cli.serve.engines import quantize as quantizing

        if threads:
            torch.set_num_threads(int(threads))
        self.model_dir = Path(model_dir)
        self.tokenizer = tokenizer
        self.device = device
        quantize = quantizing.check_quantize(quantize, device)
        extra = quantizing.load_kwargs(quantize, device)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=_torch_dtype(dtype, device), **extra)
            self.model = (model if extra else model.to(device)).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise EngineError(f"cannot load the model in {model_dir}: {exc}") from None
        if adapters:
            from openchat_cli.serve.engines.lora_rows import check_recorded_base

            check_recorded_base(self.model, adapters, self.model_dir)
        self.quantized = quantizing.quantize_loaded(self.model, quantize, device)
        self.weight_bytes = quantizing.weight_bytes(self.model)
        self.lora = None  # LoraRouter: adapters served unmerged, routed per token (lora_rows.py)
        if adapters:
            from openchat_cli.serve.engines.lora_rows import LoraRouter

            self.lora = LoraRouter(self.model, adapters, self.model_dir)
        self.packing = self._pack_linears(device, packed_linear)
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        positions = context_length(model_dir) or getattr(text_config, "max_position_embeddings", None) or 2048
        self.context_length = int(min(max_model_len, positions) if max_model_len else positions)
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_prefill_tokens = max(1, int(max_prefill_tokens))
        # Ids the tokenizer can decode; a model whose embedding matrix is padded past the
        # tokenizer's vocabulary must never sample the padding rows.
        self.vocab_limit = len(tokenizer)
        embeddings = self.model.get_input_embeddings()
        self.vocab_size = int(embeddings.num_embeddings) if embeddings is not None else None
        self._batchable = True
        self._full_cache = False
        self._attention = getattr(self.model.config, "_attn_implementation", None) or "eager"
        # transformers 5.2x renamed the forward's `past_key_values` to `cache` (the old name
        # goes in 5.40); models that still take the old name (remote code) get it.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward_args else "past_key_values"
        self._guides = GuideFactory(tokenizer, self.vocab_size or self.vocab_limit)
        self.prefill_tokens = 0  # tokens the prefill forwards computed (padding included)
        self._cond = threading.Condition()
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        # The prefill thread's sequences (see `_overlapped`): being prefilled, and prefilled (first
        # token delivered) but not yet in the decode batch.
        self._prefilling: list[_Seq] = []
        self._ready: list[_Seq] = []
        self._prefill_thread_wanted = prefill_thread_by_env() if prefill_thread is None else bool(prefill_thread)
        self._prefiller: threading.Thread | None = None
        self.threads = torch.get_num_threads()  # the forwards' own count (`_run` sets it in its thread)
        self._widths = self._widening(wide_threads)
        self._cache = None
        self._mask = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Called from the scheduler thread with [(key, event), …] for sequences `submit`ted by key.
        self.sink: Callable[[list[tuple[Any, TokenEvent]]], None] | None = None
        self._keyed: dict[Any, _Seq] = {}
        self.steps = 0
        self._first_tokens = 0  # tokens sampled after a prefill (the prefill thread's count)
        self._decoded_tokens = 0  # tokens sampled by decode steps (the scheduler thread's count)
        self.scoring_forwards = 0  # forwards that scored prompts only (max_tokens 0)
        self._layers = int(getattr(text_config, "num_hidden_layers", 0) or 0)
        self._warmup()
        self._fast = None  # fast_llama.py's forward, where the model fits it (after the ragged check)
        self._ragged = kv_cache != "padded" and self._enable_ragged()
        if self._ragged:  # the warm-up check built (or loaded) the attention kernel: say which path runs
            log.info("ragged KV cache; decode and prefill attention: %s", kernel_status())
            self._fast = fast_llama.attach(self) if fast_forward is not False else None

    def _widening(self, wide_threads: int | None) -> widening.Widths | None:
        """The per-forward thread chooser, where there is a wider count to choose: CPU only, and not
        beside the prefill thread (its forwards would share the extra cores with the decode steps')."""
        narrow = self.threads
        if not wide_threads or int(wide_threads) <= narrow or self.device != "cpu":
            return None
        if self._prefill_thread_wanted or not widening.enabled_by_env():
            return None
        return widening.Widths(narrow, int(wide_threads))

    def _pack_linears(self, device: str, enabled: bool | None):
        """CPU fp32/bf16 without --quantize: Linear layers on prepacked oneDNN weights
        (packed_linear.py; LoRA hooks still run on them). Says at start which path runs."""
        from openchat_cli.serve.engines.packed_linear import PackingReport, pack_linears

        if device != "cpu" or self.quantized:
            return PackingReport("F.linear", reason="quantized" if self.quantized else f"device {device}")
        report = pack_linears(self.model, enabled=enabled)
        log.info(
            "linear layers: %s (%d packed, %d kept on F.linear%s)",
            report.path,
            report.packed,
            report.kept,
            f"; {report.reason}" if report.reason else "",
        )
        return report

    # -- lifecycle -----------------------------------------------------------------------------
    def _warmup(self) -> None:
        """One prefill and one batched decode step, so the first request does not pay for
        lazy kernel initialisation."""
        import torch

        with torch.inference_mode():
            for _attempt in range(2):
                cache = self._new_cache()
                ids = torch.tensor([[self.tokenizer.eos_token_id or 0] * 4], device=self.device)
                self.model(input_ids=ids, **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)
                if self._check_batchable(cache):
                    break
            self.model(
                input_ids=ids[:, :1],
                **{self._cache_kw: cache},
                use_cache=True,
                position_ids=torch.tensor([[4]], device=self.device),
            )

    def _enable_ragged(self) -> bool:
        """Switch to the ragged KV cache and attention where the model fits them: a plain
        full-attention `sdpa` model whose attention layers call `cache.update` and then the
        registered attention function. Checked, not assumed: two ragged prompts prefilled packed
        and decoded one step must give the logits of plain forwards, else the padded path stays."""
        import torch

        if not (self.packable and self._attention == "sdpa" and self._layers > 0):
            return False
        if not engine_attention.enable(self.model):
            return False
        prompts = [[(7 * i + 3) % self.vocab_limit for i in range(n)] for n in (5, 3)]
        nexts = [(11 + n) % self.vocab_limit for n in (5, 3)]
        try:
            with torch.inference_mode():
                if self.lora is not None:
                    self.lora.route(None)
                rows = [SequenceKV(self._layers, 16) for _ in prompts]
                batch = pack(prompts, self.device, None, self.model.dtype)
                first = self._ragged_forward(
                    RaggedCache(rows, batch.segments), batch.input_ids, batch.position_ids, batch.last_positions
                )
                ids = torch.tensor([[t] for t in nexts], device=self.device)
                positions = torch.tensor([[len(p)] for p in prompts], device=self.device)
                second = self._ragged_forward(RaggedCache(rows), ids, positions, 1)[:, -1]
                for i, prompt in enumerate(prompts):
                    whole = torch.tensor([prompt + [nexts[i]]], device=self.device)
                    alone = self.model(input_ids=whole, use_cache=False).logits[0, -2:].float()
                    got = torch.stack([first[i], second[i]]).float()
                    tolerance = (1e-3 if self.model.dtype == torch.float32 and not self.quantized else 5e-2) * (
                        1 + float(alone.abs().max())
                    )
                    if not float((got - alone).abs().max()) <= tolerance:
                        raise ValueError(f"ragged logits differ by {float((got - alone).abs().max()):.3g}")
        except Exception as exc:  # a model the ragged path does not fit: the padded path serves it
            log.warning("ragged KV cache disabled for this model (%s): using the padded batch", exc)
            engine_attention.disable(self.model)
            return False
        return True

    def _ragged_forward(self, cache: RaggedCache, ids, positions, logits_to_keep):
        """One forward through the ragged cache (prefill or decode); the logits it keeps. Llama-shaped
        models run fast_llama.py's forward unless LoRA rows are routed this forward."""
        if self._fast is not None and not (self.lora is not None and self.lora.routed):
            logits = self._fast.forward(cache, ids, positions, logits_to_keep)
        else:
            logits = self._transformers_forward(cache, ids, positions, logits_to_keep)
        cache.finish()
        return logits

    def _transformers_forward(self, cache: RaggedCache, ids, positions, logits_to_keep):
        logits = self.model(
            input_ids=ids,
            position_ids=positions,
            **{self._cache_kw: cache},
            use_cache=True,
            ragged=cache,
            logits_to_keep=logits_to_keep,
        ).logits
        return logits[0] if cache.segments is not None else logits

    async def start(self) -> None:
        # Results are delivered to the loop that started us last (tests run several loops).
        self._loop = asyncio.get_running_loop()
        if self._thread is not None:
            return
        self._stopping = False
        # The scheduler thread and the event loop share the GIL. With Python's default 5 ms
        # switch interval the engine waits that long for it after torch ops whenever the loop
        # is busy with HTTP; 1 ms roughly doubles tokens/s at 32 concurrent streams.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, name="openchat-scheduler", daemon=True)
        if self.overlapped:
            self._prefiller = threading.Thread(target=self._prefill_loop, name="openchat-prefill", daemon=True)
            self._prefiller.start()
        self._thread.start()

    async def shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
            self._thread = None

    @property
    def overlapped(self) -> bool:
        """Whether newcomers are prefilled on a thread of their own while the scheduler thread keeps
        stepping the decode batch. Why: a prefill pack is a few large GEMMs (torch and the attention
        kernel release the GIL in them) while a decode step of a small model is mostly Python, so the
        two overlap on two cores without any OpenMP team that a busy neighbour can stall (two
        OpenMP threads per op ran 1.2x faster on an idle 2-CPU box and 4x slower when the other CPU
        was busy). Decode rows no longer stall while a pack prefills, and a newcomer's prefill no
        longer waits for the decode step in flight. Only on the ragged path (each sequence owns
        its KV buffers: nothing the two threads share is written) and without LoRA adapters (their
        routing is one setting on the model for the forward in flight).

        Off by default: measured on a shared 2-CPU box (benchmarks/bench_serve_engine.py --parts
        prefill-thread), the two threads' GIL hand-offs cost 15-20% more CPU per token; the 40M
        model at 32 streams gained ~9% tokens/s and a lower TTFT where a core was free, the small
        (3.4M, Python-bound) model lost ~20% and doubled its TTFT p50 on a busy box."""
        return self._ragged and self.lora is None and self._prefill_thread_wanted

    @property
    def generated_tokens(self) -> int:
        return self._first_tokens + self._decoded_tokens

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=len(self._waiting),
            running=len(self._running) + len(self._ready) + sum(not s.done for s in self._prefilling),
            extra={
                "steps": self.steps,
                "max_batch_size": self.max_batch_size,
                "scoring_forwards": self.scoring_forwards,
                **({"threads": dict(self._widths.last)} if self._widths is not None else {}),
            },
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "device": self.device,
            "dtype": str(self.model.dtype),
            "max_batch_size": self.max_batch_size if self._batchable else 1,
            "full_cache_for_sliding_window": self._full_cache,
            "kv_cache": "ragged" if self._ragged else "padded",
            "prefill_thread": self.overlapped,
            "attention_kernel": kernel_status() if self._ragged else None,
            "quantized": self.quantized,
            "weight_bytes": self.weight_bytes,
            "linear": self.packing.describe(),
            "fast_forward": self._fast is not None,
            "threads": self.threads if self.device == "cpu" else None,
            "wide_threads": self._widths.wide if self._widths else None,
            "lora_adapters": sorted(self.lora.adapters) if self.lora else [],
        }

    def load_weights(self, weights: Any) -> None:
        """Replace the model's weights in place (GRPO syncs the policy being trained into its
        sampler each step). `weights`: name -> tensor, the model's own state_dict names. Only
        while nothing is running: a half-updated model must never serve a step."""
        import torch

        with self._cond:
            if self._running or self._waiting or self._ready or self._prefilling:
                raise EngineError("load_weights while sequences are running")
            params = self.model.state_dict()
            unknown = [k for k in weights if k not in params]
            if unknown:
                raise EngineError(f"load_weights: names the model does not have: {unknown[:3]}")
            with torch.no_grad():
                for name, value in weights.items():
                    params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
            if self.packing.packed:
                from openchat_cli.serve.engines.packed_linear import repack

                repack(self.model)  # the packed copies hold the old weights
            if self._fast is not None:
                self._fast.repack()

    # -- the API side --------------------------------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        if self._thread is None:
            raise EngineError("engine not started")
        if params.adapter and (self.lora is None or params.adapter not in self.lora.adapters):
            raise EngineError(f"no LoRA adapter named '{params.adapter}' is loaded")
        seq = _Seq(request_id=request_id, prompt=list(prompt_ids), params=params, queue=asyncio.Queue())
        with self._cond:
            self._waiting.append(seq)
            self._cond.notify_all()
        finished = False
        try:
            while True:
                event = await seq.queue.get()
                # Coalesce whatever else is already there (the consumer fell behind).
                while event.finish_reason is None and not seq.queue.empty():
                    event = event.merged(seq.queue.get_nowait())
                if event.finish_reason is not None:
                    finished = True
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.abort(seq)

    def submit(self, key: Any, prompt_ids: list[int], params: SamplingParams, request_id: str) -> None:
        """Queue a sequence whose events go to `sink` under `key`, from the scheduler thread (the
        engine process relays them to its socket: no asyncio task per sequence on this side)."""
        if self._thread is None or self.sink is None:
            raise EngineError("engine not started, or no sink for keyed sequences")
        seq = _Seq(request_id=request_id, prompt=list(prompt_ids), params=params, queue=None, key=key)
        with self._cond:
            self._keyed[key] = seq
            self._waiting.append(seq)
            self._cond.notify_all()

    def cancel(self, key: Any) -> None:
        """`abort` for a sequence `submit`ted under `key` (unknown keys: already finished)."""
        with self._cond:
            seq = self._keyed.pop(key, None)
        if seq is not None:
            self.abort(seq)

    def abort(self, seq: _Seq) -> None:
        """Take a sequence out: it leaves the batch (or the queue) at the next step."""
        seq.cancelled = True
        with self._cond:
            self._cond.notify_all()

    # -- the scheduler thread ------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        # OpenMP's thread count is per thread: torch.set_num_threads in the thread that built the
        # engine does not reach this one, whose GEMMs (MKL and oneDNN) then ran on every core
        # (measured: 2 busy threads per matmul on a 2-CPU box set to 1). Set it here too.
        torch.set_num_threads(torch.get_num_threads())
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._scheduler_has_work():
                        self._cond.wait()
                    if self._stopping:
                        break
                    if self._prefiller is not None:  # the prefill thread admits; its rows join here
                        admitted = []
                        self._running, self._ready = self._running + self._ready, []
                    else:
                        admitted = self._admit()
                try:
                    self._step(admitted)
                except Exception as exc:  # keep serving: fail what was in flight, reset the batch
                    log.exception("engine step failed")
                    victims = [s for s in self._running + admitted if not s.done]
                    self._running, self._cache, self._mask = [], None, None
                    self._deliver([(s, TokenEvent([], "error", f"{type(exc).__name__}: {exc}")) for s in victims])
        # Shutting down: finish whatever is left so no client waits forever.
        if self._prefiller is not None:
            self._prefiller.join()
            self._prefiller = None
        leftovers = [s for s in list(self._waiting) + self._prefilling + self._ready + self._running if not s.done]
        self._waiting.clear()
        self._prefilling, self._ready = [], []
        self._running, self._cache, self._mask = [], None, None
        self._deliver([(s, TokenEvent([], "error", "server shutting down")) for s in leftovers])

    def _scheduler_has_work(self) -> bool:
        """Whether the scheduler thread has a step to run (lock held): with a prefill thread, only
        rows to decode; without, waiting sequences too."""
        if self._prefiller is not None:
            return bool(self._running or self._ready)
        return bool(self._waiting or self._running)

    def _prefill_loop(self) -> None:
        """The prefill thread (see `overlapped`): admits waiting sequences, prefills them pack by
        pack and hands each pack's rows, first token delivered, to the scheduler thread."""
        import torch

        torch.set_num_threads(torch.get_num_threads())  # per thread, as in `_run`
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not (self._waiting and self._room()):
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = self._admit()
                    self._prefilling = list(admitted)
                try:
                    self._prefill_newcomers(admitted, self._hand_over)
                except Exception as exc:  # fail this wave only: the decode batch goes on
                    log.exception("engine prefill failed")
                    with self._cond:
                        victims = [s for s in self._prefilling if not s.done]
                        self._prefilling = []
                    for seq in victims:
                        seq.kv = None
                    self._deliver([(s, TokenEvent([], "error", f"{type(exc).__name__}: {exc}")) for s in victims])

    @property
    def packable(self) -> bool:
        """Whether ragged prompts can be prefilled packed, without padding (see prefill.py)."""
        return self._batchable and not self._full_cache and self._attention in PACKABLE_ATTENTION

    def _room(self) -> int:
        """Free batch slots: the decode batch and the prefill thread's rows count (lock held)."""
        limit = self.max_batch_size if self._batchable else 1
        return limit - len(self._running) - len(self._ready) - len(self._prefilling)

    def _admit(self) -> list[_Seq]:
        """Waiting sequences that join the batch this step (called with the lock held). Their
        prompts are prefilled together: packed, their real tokens are bounded by
        `max_prefill_tokens`; padded (models that cannot pack), their padded size is (a longer
        prompt still goes, alone)."""
        admitted: list[_Seq] = []
        width = total = 0
        room = self._room()
        while self._waiting and len(admitted) < room:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            new_width = max(width, len(seq.prompt))
            cost = total + len(seq.prompt) if self.packable else new_width * (len(admitted) + 1)
            if admitted and cost > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            admitted.append(seq)
            width, total = new_width, total + len(seq.prompt)
        return admitted

    def _step(self, admitted: list[_Seq]) -> None:
        """One scheduler step: cancelled rows leave, the newcomers are prefilled (first token
        sampled and delivered) and join, then one batched decode step for every running row."""
        if any(s.cancelled for s in self._running):
            self._keep([i for i, s in enumerate(self._running) if not s.cancelled])
        self._prefill_newcomers(admitted, self._join)
        self._decode_step()

    def _prefill_newcomers(self, admitted: list[_Seq], join: Callable[[list[_Seq], Any, Any], None]) -> None:
        """Prefill the newcomers (packs of PACK_TOKENS, or one left-padded group), sample and deliver
        each pack's first tokens, then `join(group, cache, mask)` its rows to the decode batch."""
        out: list[tuple[_Seq, TokenEvent]] = []
        newcomers = [s for s in admitted if not s.cancelled]
        for seq in admitted:
            if seq.cancelled:
                seq.done = True
        scoring = [s for s in newcomers if s.params.max_tokens <= 0]
        if scoring:  # prompt scoring only: one forward, no cache, no batch slot
            out.extend(self._score(scoring))
            newcomers = [s for s in newcomers if s.params.max_tokens > 0]
        for seq in newcomers:
            self._init_sampling(seq)
        # Shortest prompts first: everyone admitted now is prefilled this step either way, and
        # the short ones' first tokens then wait for fewer others' prefill (lower TTFT p50).
        newcomers.sort(key=lambda s: len(s.prompt))
        for group in self._prefill_groups(newcomers):
            with self._width("prefill", sum(len(s.prompt) for s in group)):
                logits, cache, mask, prompt_logprobs = self._prefill(group)
            tokens, logprobs = self._sample(logits, group)
            for seq, token, lp, plp in zip(group, tokens, logprobs, prompt_logprobs):
                event = self._advance(seq, token, lp, first=True)
                event.prompt_logprobs = plp
                out.append((seq, event))
            # First tokens leave now, not after the other packs and the decode step, and before
            # their rows can decode (the scheduler thread then sends the second ones).
            self._deliver(out)
            out = []
            join(group, cache, mask)
        self._deliver(out)

    def _join(self, group: list[_Seq], cache, mask) -> None:
        """A prefilled group's unfinished rows join the decode batch (on the scheduler thread)."""
        import torch

        keep = [i for i, seq in enumerate(group) if not seq.done]
        if self._ragged:
            self._running = self._running + _unfinished(group)
        elif keep:
            if len(keep) < len(group):
                index = torch.tensor(keep, device=self.device)
                for layer in cache.layers:
                    layer.keys = layer.keys.index_select(0, index)
                    layer.values = layer.values.index_select(0, index)
                mask = mask.index_select(0, index)
            self._merge(cache, mask, [group[i] for i in keep])

    def _hand_over(self, group: list[_Seq], cache, mask) -> None:
        """`_join` from the prefill thread: the rows wait in `_ready` for the scheduler thread's next
        step (ragged path only: nothing to merge)."""
        with self._cond:
            self._ready.extend(_unfinished(group))
            handed = set(map(id, group))
            self._prefilling = [s for s in self._prefilling if id(s) not in handed]
            self._cond.notify_all()

    def _decode_step(self) -> None:
        """One batched decode forward for every running row; sample, deliver, drop finished rows."""
        import torch

        before = len(self._running)
        if any(s.cancelled for s in self._running):
            self._keep([i for i, s in enumerate(self._running) if not s.cancelled])
        out: list[tuple[_Seq, TokenEvent]] = []
        if self._running:
            rows = self._running
            ids = torch.tensor([[s.next_token] for s in rows], device=self.device)
            positions = torch.tensor([[s.length] for s in rows], device=self.device)
            self._route_rows(rows, 1)
            with self._width("decode", len(rows)):
                if self._ragged:
                    logits = self._ragged_forward(RaggedCache([s.kv for s in rows]), ids, positions, 1)[:, -1, :]
                else:
                    ones = torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)
                    self._mask = torch.cat([self._mask, ones], dim=1)
                    logits = self.model(
                        input_ids=ids,
                        attention_mask=self._mask,
                        position_ids=positions,
                        **{self._cache_kw: self._cache},
                        use_cache=True,
                    ).logits[:, -1, :]
            for s in rows:
                s.length += 1
            tokens, logprobs = self._sample(logits, rows)
            for seq, token, lp in zip(rows, tokens, logprobs):
                out.append((seq, self._advance(seq, token, lp)))
            self.steps += 1
            if any(s.done for s in rows):
                self._keep([i for i, s in enumerate(rows) if not s.done])
        self._deliver(out)
        if self._prefiller is not None and self._waiting and len(self._running) < before:
            with self._cond:  # slots freed: the prefill thread may admit
                self._cond.notify_all()

    def _width(self, kind: str, tokens: int):
        """The thread count for one forward (widening.py), or no change without a wider count."""
        return self._widths.forward(kind, tokens) if self._widths is not None else nullcontext()

    def _prefill_groups(self, seqs: list[_Seq]) -> list[list[_Seq]]:
        """The newcomers in prefill forwards: packs of at most PACK_TOKENS prompt tokens when the
        model packs, else one left-padded group (`_admit` already bounded its padded size)."""
        if not self.packable:
            return [seqs] if seqs else []
        groups: list[list[_Seq]] = []
        tokens = 0
        for seq in seqs:
            if groups and tokens + len(seq.prompt) <= PACK_TOKENS:
                groups[-1].append(seq)
                tokens += len(seq.prompt)
            else:
                groups.append([seq])
                tokens = len(seq.prompt)
        return groups

    def _advance(self, seq: _Seq, token: int, logprob: TokenLogprob | None = None, first: bool = False) -> TokenEvent:
        """Record a sampled token; decide whether the sequence is finished. `first`: sampled after
        the prefill (counted apart: the prefill thread and the scheduler thread both advance)."""
        seq.generated.append(token)
        if first:
            self._first_tokens += 1
        else:
            self._decoded_tokens += 1
        params = seq.params
        reason = None
        if token in params.stop_token_ids and not params.ignore_eos:
            reason = "stop"
        elif len(seq.generated) >= params.max_tokens or seq.length + 1 >= self.context_length:
            reason = "length"
        if reason:
            seq.done = True
        else:
            seq.next_token = token
            if seq.sampling is not None:
                seq.sampling.record(token)
        return TokenEvent([token], reason, logprobs=None if logprob is None else [logprob])

    def _deliver(self, items: list[tuple[_Seq, TokenEvent]]) -> None:
        items = [(s, e) for s, e in items if not s.cancelled or e.finish_reason]
        keyed = [(s.key, e) for s, e in items if s.queue is None]
        if keyed:
            with self._cond:
                for s, e in items:
                    if s.queue is None and e.finish_reason:
                        self._keyed.pop(s.key, None)
            try:
                self.sink(keyed)
            except Exception:  # the channel is gone: the engine process is shutting down
                log.exception("delivering events failed")
            items = [(s, e) for s, e in items if s.queue is not None]
        if items and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # loop closed while shutting down
                pass

    def _route_rows(self, seqs: list[_Seq], width: int) -> None:
        """Before a forward over one row per sequence: every token of a row goes through that
        sequence's LoRA adapter (if any)."""
        if self.lora is None:
            return
        import torch

        rows = torch.tensor([self.lora.index(s.params.adapter) for s in seqs], device=self.device)
        self.lora.route(rows[:, None].expand(len(seqs), width) if bool(rows.any()) else None)

    # -- KV cache bookkeeping ------------------------------------------------------------------
    def _new_cache(self):
        from transformers import DynamicCache

        from openchat_cli.serve.engines.kv_cache import use_growing_layers

        if self._full_cache:
            cache = DynamicCache()  # plain full-attention layers, created as the model fills them
        else:
            cache = DynamicCache(config=self.model.config)
        use_growing_layers(cache)  # a decode step writes its column in place (kv_cache.py)
        return cache

    def _check_batchable(self, cache) -> bool:
        """Left-padded merging needs plain full-attention cache layers. Sliding-window layers
        (Mistral, Gemma…) are swapped for full ones: they keep every token and the model's
        sliding mask still limits what each query sees. Anything else (linear attention, SSM
        state) runs one sequence at a time: still correct, just not batched."""
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        from openchat_cli.serve.engines.kv_cache import GrowingLayer

        kinds = {
            DynamicLayer if type(layer) is GrowingLayer else type(layer)
            for layer in getattr(cache, "layers", None) or []
        }
        if kinds and kinds <= {DynamicLayer}:
            self._batchable = True
        elif kinds and kinds <= {DynamicLayer, DynamicSlidingWindowLayer} and not self._full_cache:
            self._full_cache = True
            return False  # warm up again with a full cache
        else:
            log.warning(
                "this model's cache (%s) cannot be merged into a batch: serving one sequence at a time",
                sorted(k.__name__ for k in kinds),
            )
            self._batchable = False
        return True

    def _padded(self, seqs: list[_Seq]):
        """The prompts left-padded to the longest: ids, the 2-D mask, and the forward's extra
        arguments (mask and positions, only needed when rows differ in length)."""
        import torch

        width = max(len(s.prompt) for s in seqs)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        ids = torch.full((len(seqs), width), pad or 0, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for i, seq in enumerate(seqs):
            ids[i, width - len(seq.prompt) :] = torch.tensor(seq.prompt, device=self.device)
            mask[i, width - len(seq.prompt) :] = 1
            seq.length = len(seq.prompt)
        kwargs = {}
        if len(seqs) > 1:
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        return ids, mask, kwargs

    def _prefill(self, seqs: list[_Seq]):
        """One forward over the new prompts (packed when the model allows, else left-padded to
        the longest); returns the logits of each prompt's last token, the cache (one
        left-padded row per prompt), the 2-D attention mask, and each prompt's token logprobs
        (None for rows that did not ask). Every position's logits are kept only when some row
        asked for prompt logprobs."""
        if self._ragged:
            return self._prefill_ragged(seqs)
        if len(seqs) > 1 and self.packable:
            return self._prefill_packed(seqs)
        ids, mask, kwargs = self._padded(seqs)
        self.prefill_tokens += ids.numel()
        self._route_rows(seqs, ids.shape[1])
        cache = self._new_cache()
        wanted = any(s.params.prompt_logprobs is not None for s in seqs)
        logits = self.model(
            input_ids=ids, **{self._cache_kw: cache}, use_cache=True, logits_to_keep=0 if wanted else 1, **kwargs
        ).logits
        prompt_logprobs: list[list[TokenLogprob | None] | None] = [None] * len(seqs)
        if wanted:
            for i, seq in enumerate(seqs):
                if seq.params.prompt_logprobs is not None:
                    prompt_logprobs[i] = self._prompt_logprobs(
                        logits[i, logits.shape[1] - len(seq.prompt) :], seq.prompt, seq.params.prompt_logprobs
                    )
        return logits[:, -1, :], cache, mask, prompt_logprobs

    def _prefill_ragged(self, seqs: list[_Seq]):
        """`_prefill` into the ragged cache: the prompts packed without a mask, attention per
        prompt, each prompt's K/V copied into its sequence's own buffers (`seq.kv`); returns no
        batch cache and no mask."""
        batch = pack([s.prompt for s in seqs], self.device, None, self.model.dtype)
        self.prefill_tokens += batch.input_ids.shape[1]
        self._route_packed(seqs, batch)
        for seq in seqs:
            seq.length = len(seq.prompt)
            seq.kv = SequenceKV(self._layers, min(self.context_length, len(seq.prompt) + seq.params.max_tokens))
        wanted = any(s.params.prompt_logprobs is not None for s in seqs)
        cache = RaggedCache([s.kv for s in seqs], batch.segments)
        logits = self._ragged_forward(cache, batch.input_ids, batch.position_ids, 0 if wanted else batch.last_positions)
        prompt_logprobs = self._packed_prompt_logprobs(seqs, batch, logits) if wanted else [None] * len(seqs)
        if wanted:
            logits = logits[batch.last_positions]
        return logits, None, None, prompt_logprobs

    def _route_packed(self, seqs: list[_Seq], batch) -> None:
        """Before a packed forward: each prompt's tokens go through its sequence's LoRA adapter."""
        if self.lora is None:
            return
        import torch

        tokens = torch.zeros(batch.input_ids.shape[1], dtype=torch.long, device=self.device)
        for seq, start in zip(seqs, batch.starts):
            tokens[start : start + len(seq.prompt)] = self.lora.index(seq.params.adapter)
        self.lora.route(tokens)

    def _packed_prompt_logprobs(self, seqs: list[_Seq], batch, logits) -> list[list[TokenLogprob | None] | None]:
        """Prompt logprobs of the rows that asked, from a packed forward's every-position logits."""
        out: list[list[TokenLogprob | None] | None] = [None] * len(seqs)
        for i, (seq, start) in enumerate(zip(seqs, batch.starts)):
            if seq.params.prompt_logprobs is not None:
                out[i] = self._prompt_logprobs(
                    logits[start : start + len(seq.prompt)], seq.prompt, seq.params.prompt_logprobs
                )
        return out

    def _prefill_packed(self, seqs: list[_Seq]):
        """`_prefill` without padding: the prompts concatenated, each with its own positions
        and a block-diagonal causal mask; the cache is cut into rows afterwards."""
        batch = pack([s.prompt for s in seqs], self.device, self._attention, self.model.dtype)
        self.prefill_tokens += batch.input_ids.shape[1]
        self._route_packed(seqs, batch)
        for seq in seqs:
            seq.length = len(seq.prompt)
        cache = self._new_cache()
        wanted = any(s.params.prompt_logprobs is not None for s in seqs)
        logits = self.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=batch.attention_mask,
            **{self._cache_kw: cache},
            use_cache=True,
            logits_to_keep=0 if wanted else batch.last_positions,
        ).logits[0]
        mask = unpack_cache(cache, batch)
        prompt_logprobs = self._packed_prompt_logprobs(seqs, batch, logits) if wanted else [None] * len(seqs)
        if wanted:
            logits = logits[batch.last_positions]
        return logits, cache, mask, prompt_logprobs

    def _score(self, seqs: list[_Seq]) -> list[tuple[_Seq, TokenEvent]]:
        """Prompt logprobs for sequences that generate nothing: one forward, no KV cache (none
        at all for an echo without logprobs)."""
        out = []
        for seq in seqs:
            seq.done = True
            if seq.params.prompt_logprobs is None:
                out.append((seq, TokenEvent([], "length")))
        wanted = [s for s in seqs if s.params.prompt_logprobs is not None]
        vocab = self.vocab_size or len(self.tokenizer)
        group: list[_Seq] = []
        for seq in wanted + [None]:  # None flushes the last group
            width = max([len(s.prompt) for s in group] + [len(seq.prompt) if seq else 0])
            if group and (seq is None or width * (len(group) + 1) * vocab > MAX_SCORING_LOGITS):
                out.extend(self._score_group(group))
                group = []
            if seq is not None:
                group.append(seq)
        return out

    def _score_group(self, seqs: list[_Seq]) -> list[tuple[_Seq, TokenEvent]]:
        ids, _mask, kwargs = self._padded(seqs)
        self._route_rows(seqs, ids.shape[1])
        logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=0, **kwargs).logits
        self.scoring_forwards += 1
        out = []
        for i, seq in enumerate(seqs):
            scores = self._prompt_logprobs(
                logits[i, logits.shape[1] - len(seq.prompt) :], seq.prompt, seq.params.prompt_logprobs
            )
            out.append((seq, TokenEvent([], "length", prompt_logprobs=scores)))
        return out

    @staticmethod
    def _prompt_logprobs(logits, prompt: list[int], top: int) -> list[TokenLogprob | None]:
        """Each prompt token's logprob given the tokens before it (`logits[j]` predicts
        `prompt[j + 1]`), with the `top` most likely alternatives; None for the first token."""
        import torch

        scores = torch.log_softmax(logits[:-1].float(), dim=-1)
        targets = torch.tensor(prompt[1:], device=scores.device, dtype=torch.long)
        chosen = scores.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
        out: list[TokenLogprob | None] = [None]
        if top > 0:
            values, indices = scores.topk(min(top, scores.shape[-1]), dim=-1)
            tops = [tuple(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        else:
            tops = [()] * len(chosen)
        for token, lp, alternatives in zip(prompt[1:], chosen, tops):
            out.append(TokenLogprob(token, lp, alternatives))
        return out

    @staticmethod
    def _token_logprobs(logits, seqs: list[_Seq], tokens: list[int]) -> list[TokenLogprob | None]:
        """The sampled tokens' logprobs under the raw distribution, for rows that asked."""
        import torch

        rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        out: list[TokenLogprob | None] = [None] * len(seqs)
        if not rows:
            return out
        scores = torch.log_softmax(logits[rows].float(), dim=-1)
        k = max(seqs[i].params.logprobs for i in rows)
        if k > 0:
            values, indices = scores.topk(min(k, scores.shape[-1]), dim=-1)
            values, indices = values.tolist(), indices.tolist()
        for j, i in enumerate(rows):
            top = seqs[i].params.logprobs
            alternatives = tuple(zip(indices[j][:top], values[j][:top])) if top > 0 else ()
            out[i] = TokenLogprob(tokens[i], float(scores[j, tokens[i]]), alternatives)
        return out

    def _merge(self, cache, mask, seqs: list[_Seq]) -> None:
        """Add prefilled rows to the batch, left-padding both caches to a common length."""
        import torch
        import torch.nn.functional as F

        if not self._running:
            self._cache, self._mask, self._running = cache, mask, list(seqs)
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t, time_dim_from_end: int):
            missing = width - t.shape[-time_dim_from_end]
            if missing == 0:
                return t
            return F.pad(t, (0, 0, missing, 0) if time_dim_from_end == 2 else (missing, 0))

        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
            old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
        self._mask = torch.cat([pad(self._mask, 1), pad(mask, 1)], dim=0)
        self._running = self._running + list(seqs)

    def _keep(self, rows: list[int]) -> None:
        """Keep only these batch rows; trim padding columns nobody needs any more."""
        import torch

        if self._ragged:
            kept = set(rows)
            for i, seq in enumerate(self._running):
                if i not in kept:
                    seq.kv = None  # its buffers go with it; nobody else's move
            self._running = [self._running[i] for i in rows]
            return
        if not rows:
            self._running, self._cache, self._mask = [], None, None
            return
        if len(rows) < len(self._running):
            index = torch.tensor(rows, device=self.device)
            for layer in self._cache.layers:
                layer.keys = layer.keys.index_select(0, index)
                layer.values = layer.values.index_select(0, index)
            self._mask = self._mask.index_select(0, index)
            self._running = [self._running[i] for i in rows]
        used = self._mask.any(dim=0)
        first = int(used.nonzero()[0]) if bool(used.any()) else 0
        if first > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:, :]
                layer.values = layer.values[:, :, first:, :]
            self._mask = self._mask[:, first:]

    # -- sampling ------------------------------------------------------------------------------
    def _init_sampling(self, seq: _Seq) -> None:
        vocab = self.vocab_size or self.vocab_limit
        guide = None
        if seq.params.guide is not None:
            guide = self._guides.start(seq.params.guide, seq.params.stop_token_ids)
        seq.sampling = new_row_state(seq.params, seq.prompt, vocab, self.device, guide)

    def _sample(self, logits, seqs: list[_Seq]) -> tuple[list[int], list[TokenLogprob | None]]:
        """The next token of every row, and its logprob for rows that asked for logprobs."""
        import torch

        wanted = any(s.params.logprobs is not None for s in seqs)
        # Sampling never looks past the tokenizer (sampling.py): a bf16 batch converts only those ids.
        work = logits[:, : self.vocab_limit] if self.vocab_limit < logits.shape[-1] else logits
        if work.dtype != torch.float32:
            work = work.float()
        elif wanted:  # sampling edits its logits in place; the logprobs are of the raw ones
            work = work.clone()
        tokens = sample(work, [s.sampling for s in seqs], self.vocab_limit)
        return tokens, self._token_logprobs(logits, seqs, tokens)


def _unfinished(group: list[_Seq]) -> list[_Seq]:
    """A ragged group's rows still going; the finished ones let go of their KV buffers."""
    for seq in group:
        if seq.done:
            seq.kv = None
    return [seq for seq in group if not seq.done]


def _put_all(items: list[tuple[_Seq, TokenEvent]]) -> None:
    for seq, event in items:
        seq.queue.put_nowait(event)
