"""`openchat train --method grpo`: online RL from rewards, group-relative (no value model).

Each step, on every rank: take `prompts_per_step` prompts, sample `group_size` completions of
each with the serving engine (rollout.py, weights synced from the policy), score them with the
reward functions (rewards.py), turn rewards into advantages within each group, and update the
policy on the completions packed end to end (padding-free, like SFT) with the clipped,
KL-regularised loss (grpo_math.py), `grpo_iterations` times per sampled batch.

The reference for the KL term is the starting model: with --lora, the same module with its
adapters switched off (no second copy); otherwise a frozen, gradient-free copy of the starting
weights. The loop keeps SFT's guarantees: DeepSpeed ZeRO, resumable state every
--state-minutes and on SIGTERM (prompt order and sampling seeds are functions of (seed, step,
rank), so a resumed run samples what the uninterrupted one would have), checkpoints in Hugging
Face format registered in the catalog, and per-step numbers in steps.jsonl and the run's curve:
reward, reward_std, frac_reward_zero_std, kl, completion_length, clip_ratio, one mean per
reward function (TRL's names).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from openchat_cli.errors import OpenchatError
from openchat_cli.train.config import TrainConfig
from openchat_cli.train.grpo_math import combine_rewards, group_advantages, policy_loss, token_logps
from openchat_cli.train.grpo_prompts import Prompt
from openchat_cli.train.loop_control import LoopControl
from openchat_cli.train.spec import TrainSpec


# -- checks in `openchat train`, before any rank starts -----------------------------------------
def prepare_inputs(cfg: TrainConfig) -> dict[str, Any]:
    """Read the prompts and check every reward against them (answers present, reward model
    loadable, judge reachable). Returns the spec's GRPO part."""
    from openchat_cli.train.grpo_prompts import read_prompt_file, resolve_prompts
    from openchat_cli.train.rewards import check, parse_rewards, to_config

    path, ds_id = resolve_prompts(str(cfg.prompts))
    prompts = read_prompt_file(path)
    specs = check(parse_rewards(cfg.reward), prompts, path)
    return {
        "prompts_path": str(path.resolve()),
        "dataset_id": ds_id,
        "num_prompts": len(prompts),
        "rewards": to_config(specs),
    }


# -- schedule -----------------------------------------------------------------------------------
def total_steps(num_prompts: int, cfg: TrainConfig, world: int) -> int:
    return max(1, math.ceil(num_prompts * cfg.epochs / (cfg.prompts_per_step * world)))


def prompt_indices(num_prompts: int, cfg: TrainConfig, step: int, rank: int, world: int) -> list[int]:
    """This rank's prompts at `step`: a fresh permutation each epoch, read in order."""
    per_step = cfg.prompts_per_step * world
    out = []
    for g in range(step * per_step + rank * cfg.prompts_per_step, step * per_step + (rank + 1) * cfg.prompts_per_step):
        epoch, i = divmod(g, num_prompts)
        order = np.random.default_rng((cfg.seed, epoch)).permutation(num_prompts)
        out.append(int(order[i]))
    return out


def epoch_of(step: int, num_prompts: int, cfg: TrainConfig, world: int) -> int:
    return step * cfg.prompts_per_step * world // num_prompts + 1


def seed_for(cfg: TrainConfig, step: int, rank: int, i: int) -> int:
    return int.from_bytes(hashlib.sha256(repr((cfg.seed, step, rank, i)).encode()).digest()[:8], "little") >> 1


# -- the policy's log-probabilities -------------------------------------------------------------
class PolicyLogps(torch.nn.Module):
    """forward(packed batch) -> log p(token) of every scored (completion) token, under the
    tempered distribution the completions were sampled from. `lm` may be LoRA-wrapped."""

    def __init__(self, lm: Any, attn_impl: str, temperature: float):
        super().__init__()
        self.lm = lm
        self.attn_impl = attn_impl
        self.temperature = temperature

    def forward(self, batch: Any) -> torch.Tensor:
        from openchat_cli.train.attention import forward_kwargs

        logits = self.lm(**forward_kwargs(batch, self.attn_impl), logits_to_keep=batch.target_pos).logits[0]
        return token_logps(logits, batch.labels, self.temperature)


def pack_completions(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> Any:
    """Prompt + completion of each sample, packed; only completion tokens are scored."""
    from openchat_cli.train.collate import pack

    ids, weights, offsets = [], [], [0]
    for p, c in zip(prompts, completions):
        ids.extend(p + c)
        weights.extend([0.0] * len(p) + [1.0] * len(c))
        offsets.append(len(ids))
    data = SimpleNamespace(
        ids=np.asarray(ids, dtype=np.int64),
        weights=np.asarray(weights, dtype=np.float32),
        offsets=np.asarray(offsets, dtype=np.int64),
    )
    batch = pack(data, np.arange(len(prompts)), pad_id)
    seq_index = torch.searchsorted(batch.cu_seqlens.long(), batch.target_pos, right=True) - 1
    return batch, seq_index


# -- the run ------------------------------------------------------------------------------------
class Rollouts:
    """Prompts -> encoded prompt ids, completions, their text and rewards (one step, one rank)."""

    def __init__(self, spec: TrainSpec, cfg: TrainConfig, device: torch.device):
        from openchat_cli.model_dir import load_tokenizer
        from openchat_cli.serve.engines.base import eos_token_ids
        from openchat_cli.templates import get_template
        from openchat_cli.train.grpo_prompts import read_prompt_file
        from openchat_cli.train.rewards import build, from_config
        from openchat_cli.train.rollout import Sampler

        model_dir = Path(spec.model_path)
        self.cfg = cfg
        self.prompts = read_prompt_file(Path(spec.prompts_path))
        self.tokenizer = load_tokenizer(model_dir)
        self.template = get_template(spec.template)
        specs = from_config(spec.rewards)
        self.weights = torch.tensor([s.weight for s in specs], dtype=torch.float64)
        self.functions = build(specs, device)
        self.stop_ids = eos_token_ids(model_dir, self.tokenizer, self.template.eot_token)
        self.sampler = Sampler(
            model_dir, self.tokenizer, self.stop_ids, device, max_batch_size=cfg.prompts_per_step * cfg.group_size
        )
        self._encoded: dict[int, list[int]] = {}

    def prompt_ids(self, index: int) -> list[int]:
        from openchat_cli.templates import Conversation

        if index not in self._encoded:
            conv = Conversation.from_dict({"messages": list(self.prompts[index].messages)})
            self._encoded[index] = self.template.encode_prompt(self.tokenizer, conv)
        return self._encoded[index]

    def text(self, ids: list[int]) -> str:
        kept = [t for t in ids if t not in self.stop_ids]
        return self.template.clean_reply(self.tokenizer.decode(kept, skip_special_tokens=True))

    def run(self, indices: list[int], seeds: list[int]) -> dict[str, Any]:
        k = self.cfg.group_size
        prompts: list[Prompt] = [self.prompts[i] for i in indices for _ in range(k)]
        prompt_ids = [self.prompt_ids(i) for i in indices for _ in range(k)]
        completions = self.sampler.sample(
            prompt_ids, seeds, max_tokens=self.cfg.max_completion_tokens, temperature=self.cfg.temperature
        )
        texts = [self.text(c.token_ids) for c in completions]
        per_function = torch.tensor([f(prompts, texts) for f in self.functions], dtype=torch.float64).T
        return {
            "prompt_ids": prompt_ids,
            "completions": [c.token_ids for c in completions],
            "texts": texts,
            "per_function": per_function,
            "rewards": combine_rewards(per_function, self.weights),
        }


def _reference(spec: TrainSpec, cfg: TrainConfig, engine: Any, impl: str, device: torch.device, bf16: bool) -> Any:
    """A callable batch -> reference log-probs (None when no KL is wanted or needed)."""
    if cfg.kl_beta == 0.0:
        return None
    if cfg.lora:
        policy = engine.module

        def with_adapters_off(batch: Any) -> torch.Tensor:
            with policy.lm.disable_adapter():
                return policy(batch)

        return with_adapters_off
    from transformers import AutoModelForCausalLM

    ref = (
        AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation=impl
        )
        .to(device)
        .eval()
    )
    ref.requires_grad_(False)
    return PolicyLogps(ref, impl, cfg.temperature)


def fingerprint(spec: TrainSpec, cfg: TrainConfig, world: int) -> str:
    h = hashlib.sha256(Path(spec.prompts_path).read_bytes())
    h.update(repr((cfg.seed, cfg.prompts_per_step, cfg.group_size, cfg.epochs, world)).encode())
    return h.hexdigest()[:16]


def train(spec: TrainSpec, stop: Any) -> dict[str, Any]:
    """Run (or resume) GRPO on this rank (called by loop.train for --method grpo)."""
    from openchat_cli.train import attention, loop

    cfg = TrainConfig.from_dict(spec.config)
    device = loop.device_for_rank()
    loop.init_distributed(device)
    comm = loop.Comm(device)
    torch.manual_seed(cfg.seed)
    bf16 = loop.use_bf16(cfg, device)

    num_prompts = spec.num_prompts
    total = total_steps(num_prompts, cfg, comm.world)
    lr = spec.lr
    engine, scheduler, impl = loop.build_engine(
        spec,
        cfg,
        device,
        lr,
        total * cfg.grpo_iterations,
        wrap=lambda model, impl: PolicyLogps(model, impl, cfg.temperature),
    )
    reference = _reference(spec, cfg, engine, impl, device, bf16)
    rollouts = Rollouts(spec, cfg, device)
    pad_id = spec.pad_id or 0

    control = LoopControl(
        engine,
        spec,
        cfg,
        comm,
        stop,
        total,
        fingerprint(spec, cfg, comm.world),
        changed="the prompts, GRPO batch settings",
    )
    metrics = control.metrics
    if comm.rank == 0:
        kernel = attention.describe(device, torch.bfloat16 if bf16 else torch.float32)
        control.open_reporter(
            f"GRPO: {total} steps x {comm.world} rank(s) x {cfg.prompts_per_step} prompts x "
            f"{cfg.group_size} completions (≤ {cfg.max_completion_tokens} tokens, temperature "
            f"{cfg.temperature:g}); rewards {', '.join(f.name for f in rollouts.functions)}; beta "
            f"{cfg.kl_beta:g}, epsilon {cfg.epsilon:g}; lr {lr:.2e}; {kernel} attention; ZeRO-{cfg.zero}"
        )
    reporter = control.reporter

    engine.train()
    try:
        with control:
            for step in range(control.start, total):
                t0 = time.perf_counter()
                torch.manual_seed(hash((cfg.seed, step, comm.rank)) % 2**63)
                stops, state_votes = comm.sum(*control.votes())
                if control.stop_requested(stops):
                    break
                record = _step(engine, scheduler, rollouts, reference, cfg, comm, device, pad_id, step, num_prompts)
                if reporter:
                    seconds = time.perf_counter() - t0
                    record.update(
                        {
                            "step": step + 1,
                            "epoch": epoch_of(step, num_prompts, cfg, comm.world),
                            "seconds": seconds,
                            "tokens_per_s": record["tokens"] / seconds,
                            "capacity": record["tokens"],
                            "packing_efficiency": 1.0,
                        }
                    )
                    reporter.step(record)
                    if step == control.start:
                        metrics.setdefault("reward_initial", record["reward"])
                    metrics["reward"] = record["reward"]
                if control.step_done(step + 1, state_votes):
                    break
            if control.completed:
                control.save(total, final=True)
    finally:
        rollouts.sampler.close()
    return control.outcome({"method": "grpo", "lr": lr})


def _step(
    engine: Any,
    scheduler: Any,
    rollouts: Rollouts,
    reference: Any,
    cfg: TrainConfig,
    comm: Any,
    device: torch.device,
    pad_id: int,
    step: int,
    num_prompts: int,
) -> dict[str, Any]:
    """Sample, score, update; returns the step's numbers (global over ranks)."""
    indices = prompt_indices(num_prompts, cfg, step, comm.rank, comm.world)
    n = len(indices) * cfg.group_size
    rollouts.sampler.sync(engine.module.lm)
    batch_out = rollouts.run(indices, [seed_for(cfg, step, comm.rank, i) for i in range(n)])
    rewards = batch_out["rewards"]
    stats = group_advantages(rewards, cfg.group_size)
    batch, seq_index = pack_completions(batch_out["prompt_ids"], batch_out["completions"], pad_id)
    batch, seq_index = batch.to(device), seq_index.to(device)
    advantages = stats.advantages.to(device=device, dtype=torch.float32)
    tokens = int(batch.label_weights.numel())
    (all_tokens,) = comm.sum(float(tokens))
    with torch.no_grad():
        ref_logps = reference(batch) if reference is not None else None
        old_logps = engine.module(batch) if cfg.grpo_iterations > 1 else None
    losses, kls, clips = [], [], []
    for _ in range(cfg.grpo_iterations):
        logps = engine(batch)
        parts = policy_loss(
            logps,
            old_logps,
            ref_logps,
            advantages,
            seq_index,
            n,
            beta=cfg.kl_beta,
            epsilon=cfg.epsilon,
            loss_type=cfg.grpo_loss,
            token_normalizer=all_tokens / comm.world,
        )
        if not math.isfinite(float(parts.loss.detach())):
            raise OpenchatError(f"non-finite GRPO loss at step {step + 1}: lower --lr")
        lr_now = scheduler.get_last_lr()[0]
        engine.backward(parts.loss)
        engine.step()
        losses.append(float(parts.loss.detach()))
        kls.append(parts.kl)
        clips.append(parts.clip_fraction)
    valid = rewards[~torch.isnan(rewards)]
    per_function = batch_out["per_function"]
    sums = comm.sum(
        float(valid.sum()),
        float((valid**2).sum()),
        float(len(valid)),
        float(stats.zero_std.sum()),
        float(len(stats.zero_std)),
        sum(losses) / len(losses),
        sum(kls) / len(kls),
        sum(clips) / len(clips),
        float(sum(len(c) for c in batch_out["completions"])),
        float(n),
        *[float(torch.nan_to_num(per_function[:, j], nan=0.0).sum()) for j in range(per_function.shape[1])],
        *[float((~torch.isnan(per_function[:, j])).sum()) for j in range(per_function.shape[1])],
    )
    r_sum, r_sq, r_n, zero, groups, loss, kl, clip, lengths, count = sums[:10]
    nf = per_function.shape[1]
    mean = r_sum / r_n if r_n else float("nan")
    var = (r_sq - r_n * mean * mean) / (r_n - 1) if r_n > 1 else float("nan")
    record = {
        "loss": loss / comm.world,
        "lr": lr_now,
        "tokens": int(all_tokens),
        "reward": mean,
        "reward_std": math.sqrt(max(0.0, var)) if r_n > 1 else float("nan"),
        "frac_reward_zero_std": zero / groups,
        "kl": kl / comm.world,
        "completion_length": lengths / count,
        "clip_ratio": clip / comm.world,
    }
    for j, f in enumerate(rollouts.functions):
        total_j, n_j = sums[10 + j], sums[10 + nf + j]
        record[f"rewards/{f.name}"] = total_j / n_j if n_j else float("nan")
    return record
