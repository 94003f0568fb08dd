"""The learning-rate schedules: every parameter group goes from its own lr to its own floor lr·final_factor
(the new layers of ``head_lr_mult`` must not decay to the trunk's floor)."""

from __future__ import annotations

import math

import pytest
import torch

from sketchquant.lightning_modules.base import build_optimizer, build_schedule
from sketchquant.lightning_modules.config import OptimConfig

EPOCHS = 4


def _lrs_per_epoch(schedule: str, final_factor: float, head_lr_mult: float) -> list[list[float]]:
    trunk, head = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optim = OptimConfig(lr=1e-3, schedule=schedule, final_factor=final_factor)
    groups = [{"params": [trunk], "lr_mult": 1.0}, {"params": [head], "lr_mult": head_lr_mult}]
    opt = build_optimizer(groups, optim)
    sched = build_schedule(opt, optim, EPOCHS)
    out = []
    for _ in range(EPOCHS + 1):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_cosine_takes_each_group_to_its_own_floor():
    lrs = _lrs_per_epoch("cosine", final_factor=0.1, head_lr_mult=10.0)
    for epoch, (trunk, head) in enumerate(lrs):
        shape = 0.1 + 0.9 * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
        assert trunk == pytest.approx(1e-3 * shape, rel=1e-12)
        assert head == pytest.approx(1e-2 * shape, rel=1e-12)
    assert lrs[-1] == pytest.approx([1e-4, 1e-3], rel=1e-12)  # the head's floor is its own, not the trunk's
    assert lrs[2] == pytest.approx([5.5e-4, 5.5e-3], rel=1e-12)  # half way: the mean of start and floor


def test_exp_is_sakes_decay_for_each_group():
    lrs = _lrs_per_epoch("exp", final_factor=1e-3, head_lr_mult=10.0)
    for epoch, (trunk, head) in enumerate(lrs):
        assert trunk == pytest.approx(1e-3 * 1e-3 ** (epoch / EPOCHS), rel=1e-12)
        assert head == pytest.approx(1e-2 * 1e-3 ** (epoch / EPOCHS), rel=1e-12)


def test_none_is_constant_and_unknown_names_fail():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(schedule="none"))
    assert build_schedule(opt, OptimConfig(schedule="none"), EPOCHS) is None
    with pytest.raises(ValueError, match="model.optim.schedule='linear'"):
        build_schedule(opt, OptimConfig(schedule="linear"), EPOCHS)
