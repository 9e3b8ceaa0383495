"""One rank of a training run: a DeepSpeed engine over packed, weighted micro-batches.

The engine wraps `PackedLM` (the model plus its loss), so `engine(batch)` is sum(w * CE) of
one packed micro-batch. Per optimizer step every rank runs the same number of micro-batches
(the sampler guarantees it). Before the first forward, the step's total loss weight is
all-reduced, so each micro-batch backpropagates sum(w * CE) * world / W_global: DeepSpeed
averages gradients over ranks, and accumulation is unscaled (`scale_wrt_gas=False`), which
makes the update exactly the gradient of sum(w * CE) / sum(w) over the whole global step.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openchat_cli.errors import OpenchatError
from openchat_cli.train import attention
from openchat_cli.train.collate import pack
from openchat_cli.train.config import TrainConfig
from openchat_cli.train.dataset import TokenizedData, load
from openchat_cli.train.loop_control import LoopControl, StopRequest
from openchat_cli.train.loss import PackedLM
from openchat_cli.train.pairs import load_pairs, pair_lengths
from openchat_cli.train.sampler import MultipackSampler, PackSpec
from openchat_cli.train.schedule import make_scheduler
from openchat_cli.train.spec import TrainSpec


# -- setup --------------------------------------------------------------------------------------
def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    """Join (or create) the process group: NCCL on GPU, gloo on CPU."""
    import deepspeed
    import deepspeed.ops

    if device.type == "cpu":
        # DeepSpeed would JIT-compile (minutes) a shared-memory all-reduce kernel for CPU ranks;
        # gloo does the job. DeepSpeed keeps this dict for edits like this one.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines drown the progress bar
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def deepspeed_config(cfg: TrainConfig, bf16: bool, device: torch.device) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero}
    if cfg.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
        if cfg.zero == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": device.type == "cuda"}
    if cfg.zero == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.micro_steps,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        # torch's AdamW on CPU-offloaded states: DeepSpeedCPUAdam needs a compiled op.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.offload and device.type == "cuda":
        # On GPU machines DeepSpeed builds its fast CPU Adam for offloaded optimizer states.
        config["optimizer"] = {"type": "AdamW", "params": _adam_kwargs(cfg, 0.0)}
    return config


def _adam_kwargs(cfg: TrainConfig, lr: float) -> dict[str, Any]:
    return {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-5, "weight_decay": cfg.weight_decay}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on norms, biases or other vectors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def load_model(
    spec: TrainSpec, cfg: TrainConfig, device: torch.device, bf16: bool, ds_config: dict[str, Any]
) -> tuple[Any, str, Any]:
    """The causal LM (LoRA-wrapped with --lora), its attention kernel, and a ZeRO-3 handle that
    must stay alive until the engine exists."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    impl = attention.choose(device)
    zero3_handle = None
    if cfg.zero == 3:
        # Lets from_pretrained build the model already partitioned (deepspeed.zero.Init).
        from transformers.integrations import HfDeepSpeedConfig

        zero3_handle = HfDeepSpeedConfig(ds_config)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if cfg.method == "rm":  # a scalar head (seeded) on the decoder: a sequence-classification model
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.model_path, dtype=dtype, attn_implementation=impl, num_labels=1, pad_token_id=spec.pad_id
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype, attn_implementation=impl)
    model.config.use_cache = False
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        from openchat_cli.train.lora import apply_lora

        model = apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            targets=cfg.lora_targets,
            task_type="SEQ_CLS" if cfg.method == "rm" else "CAUSAL_LM",
        )
    return model, impl, zero3_handle


PREFERENCE_METHODS = ("dpo", "rm")


def load_data(path: Path, cfg: TrainConfig, vocab: int) -> tuple[TokenizedData, np.ndarray]:
    """The dataset and the lengths the sampler packs (whole pairs for the preference methods)."""
    if cfg.method in PREFERENCE_METHODS:
        data = load_pairs(path, vocab_size=vocab)
        return data, pair_lengths(data)
    data = load(path, vocab_size=vocab)
    return data, data.lengths


# -- the run ------------------------------------------------------------------------------------
class Comm:
    """The few collectives the loop needs (float64 sums; on the rank's device for NCCL)."""

    def __init__(self, device: torch.device):
        import deepspeed.comm as dist

        self.dist = dist
        self.device = device
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            self.dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()


def evaluate(
    engine: Any, data: TokenizedData, sampler: MultipackSampler, comm: Comm, device: torch.device, make_batch: Any
) -> dict[str, float]:
    """Loss over a whole (unshuffled) eval set (weighted tokens, or pairs), plus the preference
    methods' per-pair metrics."""
    engine.eval()
    num = den = 0.0
    take_metrics = getattr(engine.module, "reset_totals", None)
    if take_metrics:
        take_metrics()
    with torch.no_grad():
        for step in range(len(sampler)):
            for rows in sampler.batches(step, comm.rank):
                batch = make_batch(data, rows).to(device)
                num += float(engine(batch))
                den += batch.weight_sum
    engine.train()
    extra = step_metrics(engine, comm)
    num, den = comm.sum(num, den)
    return {"loss": num / den if den else float("nan"), **{k: v / den for k, v in extra.items() if den}}


def step_metrics(engine: Any, comm: Comm) -> dict[str, float]:
    """The preference methods' per-pair sums since the last call, over all ranks (none for SFT)."""
    take = getattr(engine.module, "reset_totals", None)
    if take is None:
        return {}
    from openchat_cli.train.preference import METRICS

    totals = take()
    keys = METRICS if engine.module.method == "dpo" else [k for k in METRICS if k.startswith("rewards/")]
    return dict(zip(keys, comm.sum(*(totals.get(k, 0.0) for k in keys))))


def build_engine(
    spec: TrainSpec, cfg: TrainConfig, device: torch.device, lr: float, total: int, wrap: Any = None
) -> tuple[Any, Any, str]:
    """The DeepSpeed engine around PackedLM (or `wrap(model, impl)`: another method's module),
    its LR scheduler and the attention kernel used."""
    import deepspeed

    bf16 = use_bf16(cfg, device)
    ds_config = deepspeed_config(cfg, bf16, device)
    model, impl, zero3_handle = load_model(spec, cfg, device, bf16, ds_config)
    groups = param_groups(model, cfg.weight_decay)
    if "optimizer" in ds_config:
        ds_config["optimizer"]["params"]["lr"] = lr
        optimizer = None
    else:
        optimizer = torch.optim.AdamW(groups, **_adam_kwargs(cfg, lr))
    if wrap is not None:
        module = wrap(model, impl)
    elif cfg.method in PREFERENCE_METHODS:
        from openchat_cli.train.preference import PreferenceLM

        module = PreferenceLM(
            model,
            impl,
            cfg.method,
            beta=cfg.dpo_beta,
            label_smoothing=cfg.label_smoothing,
            loss_type=cfg.loss_type,
            rpo_alpha=cfg.rpo_alpha,
        )
    else:
        module = PackedLM(model, impl)
    engine, _, _, scheduler = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        model_parameters=groups if optimizer is None else None,
        lr_scheduler=lambda opt: make_scheduler(opt, total, cfg.warmup_ratio, cfg.min_lr_ratio),
        config=ds_config,
    )
    del zero3_handle
    return engine, scheduler, impl


def train(spec: TrainSpec, stop: StopRequest | None = None) -> dict[str, Any]:
    """Run (or resume) training on this rank; returns the run's outcome (rank 0's is complete).
    `stop`: installed by the caller as early as possible, so a signal during setup counts too."""
    stop = stop or StopRequest()
    cfg = TrainConfig.from_dict(spec.config)
    if cfg.method == "grpo":
        from openchat_cli.train import grpo

        return grpo.train(spec, stop)
    out = Path(spec.out)
    device = device_for_rank()
    init_distributed(device)
    comm = Comm(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    vocab = spec.vocab_size
    data, lengths = load_data(Path(spec.data_path), cfg, vocab)
    capacity = cfg.micro_capacity
    sampler = MultipackSampler(lengths, PackSpec(capacity, comm.world, cfg.micro_steps, cfg.seed), cfg.epochs)
    eval_data, eval_sampler = None, None
    if spec.eval_data_path:
        eval_data, eval_lengths = load_data(Path(spec.eval_data_path), cfg, vocab)
        eval_sampler = MultipackSampler(eval_lengths, PackSpec(capacity, comm.world, 1, shuffle=False))
    total = len(sampler)

    lr = spec.lr
    engine, scheduler, impl = build_engine(spec, cfg, device, lr, total)
    pad_id = spec.pad_id or 0
    control = LoopControl(
        engine, spec, cfg, comm, stop, total, sampler.fingerprint(), changed="the data, packing settings"
    )
    metrics = control.metrics
    make_batch, make_eval_batch = batch_makers(
        engine, cfg, data, eval_data, out, capacity, comm, device, pad_id, resuming=control.resuming
    )

    if comm.rank == 0:
        kernel = attention.describe(device, torch.bfloat16 if use_bf16(cfg, device) else torch.float32)
        control.open_reporter(
            f"{total} steps ({cfg.epochs} epoch(s)) x {comm.world} rank(s) x "
            f"{cfg.micro_steps} micro-batch(es) of {capacity} tokens; packing "
            f"{sampler.efficiency():.1%}; lr {lr:.2e}; {kernel} attention; "
            f"ZeRO-{cfg.zero}{' + offload' if cfg.offload else ''}"
        )
    reporter = control.reporter

    def run_eval(tag: str, step: int) -> None:
        if eval_sampler is not None:
            result = evaluate(engine, eval_data, eval_sampler, comm, device, make_eval_batch)
            metrics[tag] = metrics["eval_loss"] = result["loss"]
            when = tag.removeprefix("eval_loss_")
            accuracy = result.get("rewards/accuracies")
            if accuracy is not None:  # held-out preference accuracy (DPO: implicit rewards; RM: its scores)
                metrics[f"eval_accuracy_{when}"] = metrics["eval_accuracy"] = accuracy
                metrics["eval_margin"] = result["rewards/margins"]
            if reporter:
                extra_eval = {k: v for k, v in result.items() if k != "loss" and isinstance(v, (int, float))}
                reporter.eval(step, metrics[tag], tag, **extra_eval)

    if control.start == 0:
        run_eval("eval_loss_initial", 0)
    engine.train()
    with control:
        for step in range(control.start, total):
            t0 = time.perf_counter()
            # Randomness (LoRA dropout) is a function of (seed, step, rank): a resumed run draws
            # exactly what the uninterrupted run would have.
            torch.manual_seed(hash((cfg.seed, step, comm.rank)) % 2**63)
            batches = [make_batch(data, rows) for rows in sampler.batches(step, comm.rank)]
            # One all-reduce carries the step's loss weight and the loop control's two votes.
            weight, stops, state_votes = comm.sum(sum(b.weight_sum for b in batches), *control.votes())
            if control.stop_requested(stops):
                break
            scale = comm.world / weight if weight > 0 else 0.0
            loss_sum = 0.0
            for i, batch in enumerate(batches):
                loss = engine(batch.to(device))
                engine.backward(loss * scale, scale_wrt_gas=False)
                loss_sum += float(loss.detach())
                if i == len(batches) - 1:
                    (global_loss,) = comm.sum(loss_sum)
                    global_loss = global_loss / weight if weight > 0 else 0.0
                    if not math.isfinite(global_loss):
                        raise OpenchatError(
                            f"non-finite loss ({global_loss}) at step {step + 1}: "
                            "lower --lr or check the data; nothing was updated"
                        )
                lr_now = scheduler.get_last_lr()[0]
                engine.step()
            done = step + 1
            extra = {k: v / weight for k, v in step_metrics(engine, comm).items()} if weight > 0 else {}
            if reporter:
                rank_tokens = sampler.step_tokens(step)
                tokens = int(rank_tokens.sum())
                seconds = time.perf_counter() - t0
                epoch, _ = sampler.locate(step)
                reporter.step(
                    {
                        "step": done,
                        "epoch": epoch + 1,
                        "loss": global_loss,
                        "lr": lr_now,
                        "tokens": tokens,
                        "seconds": seconds,
                        "tokens_per_s": tokens / seconds,
                        "capacity": capacity * comm.world * cfg.micro_steps,
                        "packing_efficiency": sampler.step_efficiency(step),
                        "rank_tokens": rank_tokens.tolist(),
                        "weight": weight,
                        **extra,
                    }
                )
            if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                run_eval(f"eval_loss_step_{done}", done)
            if control.step_done(done, state_votes):
                break
        if control.completed:
            run_eval("eval_loss_final", total)
            control.save(total, final=True)
    return control.outcome({"packing_efficiency": sampler.efficiency(), "lr": lr})


def batch_makers(
    engine: Any,
    cfg: TrainConfig,
    data: TokenizedData,
    eval_data: TokenizedData | None,
    out: Path,
    capacity: int,
    comm: Comm,
    device: torch.device,
    pad_id: int,
    resuming: bool,
) -> tuple[Any, Any]:
    """How rows become micro-batches, for training and eval data. DPO's batches carry the
    reference log-probs, computed here before the first step (or read back on a resume)."""
    if cfg.method not in PREFERENCE_METHODS:
        return (lambda d, rows: pack(d, rows, pad_id)), (lambda d, rows: pack(d, rows, pad_id))
    from openchat_cli.train import reference
    from openchat_cli.train.preference import pack_pairs

    refs: dict[int, Any] = {}
    if cfg.method == "dpo":
        for name, part in (("train", data), ("eval", eval_data)):
            if part is not None:
                refs[id(part)] = reference.load_or_compute(
                    engine, part, out, name, capacity, comm, device, pad_id, resuming
                )

    def make(d: TokenizedData, rows: Any) -> Any:
        return pack_pairs(d, rows, pad_id, ref_logps=refs.get(id(d)))

    return make, make
