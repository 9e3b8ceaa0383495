"""Training settings: CLI flags, or `--config run.yaml` holding the same keys.

Precedence: built-in defaults < the YAML file < flags given on the command line. YAML keys are
the flag names with dashes or underscores (`tokens-per-step` or `tokens_per_step`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "bf16", "fp32")
METHODS = ("sft", "dpo", "rm", "grpo")
LOSS_TYPES = ("sigmoid", "ipo")
DPO_BETA = 0.1  # --beta when not given (TRL's and the DPO paper's default)
GRPO_LOSSES = ("grpo", "dapo")
# GRPO's KL weight when --beta is not given: DeepSeekMath's 0.04. TRL now defaults to 0 (no
# reference model); we keep the paper's value because a small model drifts from its SFT format
# within a few steps without it, and the KL it logs is how a user sees that drift.
GRPO_DEFAULT_BETA = 0.04
GRPO_DEFAULT_LR = 1e-6  # TRL's GRPOConfig default


@dataclass
class TrainConfig:
    model: str | None = None
    data: str | None = None
    out: str | None = None
    eval_data: str | None = None
    epochs: int = 1
    lr: float | None = None  # None: OpenChat's automatic rule (see schedule.auto_lr)
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    tokens_per_step: int = 8192  # per rank
    micro_tokens: int | None = None  # per forward pass; None: tokens_per_step (no accumulation)
    seed: int = 42
    grad_checkpointing: bool = False
    save_every: int = 0
    state_minutes: float = 10.0  # resumable state at least this often (0: only at --save-every and on a stop)
    eval_every: int = 0
    log_every: int = 10
    zero: int = 2
    offload: bool = False
    num_gpus: int = 1
    hostfile: str | None = None
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    precision: str = "auto"
    stop_after: int | None = None
    report_to: list[str] = field(default_factory=list)  # trackers: tensorboard, wandb, mlflow (train/trackers.py)
    method: str = "sft"  # sft | dpo | rm (preference methods read tokenized pairs) | grpo
    beta: float | None = None  # DPO/IPO strength or GRPO's KL weight; None: the method's default
    label_smoothing: float = 0.0  # cDPO: the share of pairs assumed flipped
    loss_type: str = "sigmoid"  # DPO's loss: sigmoid | ipo
    rpo_alpha: float = 0.0  # weight of RPO's NLL term on the chosen reply (0: plain DPO)

    @property
    def dpo_beta(self) -> float:
        return DPO_BETA if self.beta is None else self.beta

    # -- grpo (train/grpo.py) --
    prompts: str | None = None  # JSONL {"id", "messages"|"prompt", "answer"} or a ds-… id
    reward: list[str] = field(default_factory=list)  # grade | rm:ck-…|DIR | judge:URL, each with optional =WEIGHT
    group_size: int = 8
    prompts_per_step: int = 8  # per rank
    max_completion_tokens: int = 64
    temperature: float = 1.0
    epsilon: float = 0.2  # PPO clip range: ratios outside [1 - eps, 1 + eps] stop pulling
    grpo_iterations: int = 1  # updates per sampled batch (TRL's num_iterations, μ)
    grpo_loss: str = "grpo"  # grpo: mean over each completion's tokens, then over completions | dapo: over all tokens

    @property
    def kl_beta(self) -> float:
        return self.beta if self.beta is not None else (GRPO_DEFAULT_BETA if self.method == "grpo" else 0.0)

    @property
    def micro_capacity(self) -> int:
        return min(self.micro_tokens or self.tokens_per_step, self.tokens_per_step)

    @property
    def micro_steps(self) -> int:
        """Micro-batches per rank per optimizer step (gradient accumulation)."""
        return -(-self.tokens_per_step // self.micro_capacity)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> TrainConfig:
        if self.method not in METHODS:
            raise OpenchatError(f"--method must be one of {', '.join(METHODS)}")
        for name in ("model", "prompts" if self.method == "grpo" else "data", "out"):
            if not getattr(self, name):
                raise OpenchatError(f"missing --{name.replace('_', '-')} (or `{name}:` in --config)")
        positive = ("epochs", "tokens_per_step", "num_gpus", "log_every", "lora_r", "lora_alpha")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise OpenchatError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("save_every", "state_minutes", "eval_every", "weight_decay", "max_grad_norm", "lora_dropout"):
            if getattr(self, name) < 0:
                raise OpenchatError(f"--{name.replace('_', '-')} must not be negative")
        if self.micro_tokens is not None and self.micro_tokens < 1:
            raise OpenchatError("--micro-tokens must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise OpenchatError("--lr must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise OpenchatError("--warmup-ratio must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise OpenchatError("--min-lr-ratio must be in [0, 1]")
        if self.zero not in ZERO_STAGES:
            raise OpenchatError(f"--zero must be one of {', '.join(map(str, ZERO_STAGES))}")
        if self.offload and self.zero < 1:
            raise OpenchatError("--offload needs ZeRO stage 1, 2 or 3")
        if self.precision not in PRECISIONS:
            raise OpenchatError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.stop_after is not None and self.stop_after < 1:
            raise OpenchatError("--stop-after must be at least 1")
        from openchat_cli.train.trackers import chosen

        self.report_to = chosen([self.report_to] if isinstance(self.report_to, str) else self.report_to)
        if self.method not in METHODS:
            raise OpenchatError(f"--method must be one of {', '.join(METHODS)}")
        if self.loss_type not in LOSS_TYPES:
            raise OpenchatError(f"--loss-type must be one of {', '.join(LOSS_TYPES)}")
        if self.beta is not None and not self.beta > 0 and self.method != "grpo":  # grpo: 0 turns the KL off
            raise OpenchatError("--beta must be positive")
        if not 0 <= self.label_smoothing < 0.5:
            raise OpenchatError("--label-smoothing must be in [0, 0.5)")
        if self.method not in ("dpo", "grpo") and self.beta is not None:
            raise OpenchatError(
                "--beta applies to --method dpo and grpo only (--label-smoothing and --loss-type "
                "apply to --method dpo only)"
            )
        if self.method != "dpo" and (self.label_smoothing or self.loss_type != "sigmoid"):
            raise OpenchatError("--label-smoothing and --loss-type apply to --method dpo only")
        if not (math.isfinite(self.rpo_alpha) and self.rpo_alpha >= 0):
            raise OpenchatError("--rpo-alpha must be a finite number, 0 or more")
        if self.rpo_alpha and self.method != "dpo":
            raise OpenchatError("--rpo-alpha applies to --method dpo only")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise OpenchatError("--label-smoothing applies to --loss-type sigmoid only")
        if self.method == "grpo":
            self._validate_grpo()
        return self

    def _validate_grpo(self) -> None:
        if not self.reward:
            raise OpenchatError("--method grpo needs at least one --reward (grade, rm:ck-…|DIR or judge:URL)")
        if self.group_size < 2:
            raise OpenchatError("--group-size must be at least 2 (advantages compare completions of one prompt)")
        for name in ("prompts_per_step", "max_completion_tokens", "grpo_iterations"):
            if int(getattr(self, name)) < 1:
                raise OpenchatError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.temperature > 0:
            raise OpenchatError("--temperature must be positive (GRPO needs different completions per prompt)")
        if not 0 < self.epsilon < 1:
            raise OpenchatError("--epsilon must be in (0, 1)")
        if self.beta is not None and self.beta < 0:
            raise OpenchatError("--beta must not be negative")
        if self.grpo_loss not in GRPO_LOSSES:
            raise OpenchatError(f"--grpo-loss must be one of {', '.join(GRPO_LOSSES)}")
        if self.micro_tokens is not None:
            raise OpenchatError("--micro-tokens is for sft: GRPO updates on each step's completions in one pass")
        if self.zero == 3:
            raise OpenchatError(
                "--method grpo needs whole weights on each rank to sync its sampler: use --zero 0, 1 or 2"
            )
        if self.data or self.eval_data:
            raise OpenchatError(
                "--method grpo samples its own completions from --prompts: --data and --eval-data are for sft"
            )


def load_yaml(path: Path) -> dict[str, Any]:
    """Settings from a YAML mapping; unknown keys are an error (a typo must not be ignored)."""
    import yaml

    if not Path(path).is_file():
        raise OpenchatError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise OpenchatError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise OpenchatError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(TrainConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise OpenchatError(
                f"{path}: unknown setting '{key}' (known: {', '.join(n.replace('_', '-') for n in known)})"
            )
        out[name] = value
    return out


def merge(cli_values: dict[str, Any], given: set[str], yaml_values: dict[str, Any]) -> TrainConfig:
    """Defaults, then YAML, then the flags actually typed (`given`)."""
    merged = TrainConfig().to_dict()
    merged.update(yaml_values)
    merged.update({k: v for k, v in cli_values.items() if k in given})
    config = TrainConfig.from_dict(merged)
    _coerce(config)
    return config


def _coerce(config: TrainConfig) -> None:
    """YAML may hold `1e-4` as a string or `2` where a float is meant: normalise the types."""
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if value is None:
            continue
        kind = f.type.split(" |")[0] if isinstance(f.type, str) else f.type
        try:
            if kind == "int" and not isinstance(value, bool):
                value = int(value)
            elif kind == "float":
                value = float(value)
            elif kind == "bool" and not isinstance(value, bool):
                raise ValueError(value)
            elif kind == "str":
                value = str(value)
            elif kind == "list[str]":
                value = [value] if isinstance(value, str) else [str(v) for v in value]
        except (TypeError, ValueError):
            raise OpenchatError(f"setting '{f.name.replace('_', '-')}': expected {kind}, got {value!r}") from None
        setattr(config, f.name, value)
