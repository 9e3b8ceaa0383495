"""LR schedule, OpenChat's automatic LR rule, and settings from flags and YAML."""

from __future__ import annotations

import math

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.train.config import TrainConfig, load_yaml, merge
from openchat_cli.train.schedule import auto_lr, lr_factor, make_scheduler


def test_warmup_then_cosine_to_floor():
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, 0.1) for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))  # linear warmup rises
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then only decays
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(0, 10, 0, 0.0) == 1.0  # no warmup: starts at the peak


def test_scheduler_drives_the_optimizer():
    import torch

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_scheduler(opt, total=20, warmup_ratio=0.1, min_ratio=0.2)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(2e-4, rel=0.05)


def test_auto_lr_follows_openchat_rule():
    # 3e-4 at 4M supervised tokens per step, scaled by the square root.
    assert auto_lr(tokens_per_step=8192, world=8 * 61, supervised_ratio=1.0) == pytest.approx(3e-4, rel=0.01)
    assert auto_lr(4_000_000, 1, 0.25) == pytest.approx(1.5e-4)


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ndata: d.parquet\nout: runs/x\nlr: 1e-4\ntokens-per-step: 4096\nepochs: 3\nlora: true\n")
    cfg = merge({"epochs": 5, "lr": None, "seed": 1}, {"epochs"}, load_yaml(path))
    assert cfg.epochs == 5  # typed flag wins
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # YAML's "1e-4" string becomes a float
    assert cfg.tokens_per_step == 4096 and cfg.lora is True
    assert cfg.seed == TrainConfig().seed  # an untyped flag's default does not override YAML/defaults
    cfg.validate()


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens_per_stpe: 10\n")
    with pytest.raises(OpenchatError, match="unknown setting 'tokens_per_stpe'"):
        load_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(OpenchatError, match="expected a mapping"):
        load_yaml(bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(OpenchatError, match="epochs"):
        merge({}, set(), load_yaml(bad))
    with pytest.raises(OpenchatError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_micro_batches_and_validation():
    cfg = TrainConfig(model="m", data="d", out="o", tokens_per_step=1000, micro_tokens=300)
    assert cfg.micro_capacity == 300 and cfg.micro_steps == 4
    for bad in (
        {"zero": 4},
        {"warmup_ratio": 1.0},
        {"lr": -1.0},
        {"precision": "fp8"},
        {"offload": True, "zero": 0},
        {"epochs": 0},
    ):
        with pytest.raises(OpenchatError):
            TrainConfig(model="m", data="d", out="o", **bad).validate()
    with pytest.raises(OpenchatError, match="missing --data"):
        TrainConfig(model="m", out="o").validate()
