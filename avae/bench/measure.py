"""What the CPU benchmark measures with: the FLOPs of one training iteration, counted by torch on a
real iteration (`step_flops`), timed windows after a warm-up (`timed`), and the machine's matmul peak
(`matmul_peak`) that throughput is set against."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from avae.repro.costs import BATCH
from avae.training.config import make_config
from avae.training.steps import new_state, take_step


def step_flops(model: str, batch: int = BATCH) -> float:
    """FLOPs of one training iteration (every phase, forward and backward) of one member of
    `model` at its default settings, counted by torch's FlopCounterMode on a real iteration."""
    cfg = make_config({"model": model, "batch_size": batch})
    state = new_state(cfg, torch.device("cpu"))
    x = torch.rand(1, batch, cfg.model.data_dim, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
            take_step(phase, optimizer, x, state.noise_rng)
    return float(counter.get_total_flops())


def timed(fn: Callable[[], int], seconds: float, warmup: int = 1) -> tuple[int, float]:
    """Call `fn` (returning units of work done) `warmup` times untimed, then until `seconds` pass."""
    for _ in range(warmup):
        fn()
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


def matmul_peak(dtype: torch.dtype, n: int, seconds: float) -> dict[str, Any]:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

    def work() -> int:
        torch.mm(a, b)
        return 1

    count, elapsed = timed(work, seconds)
    return {"n": n, "gflops": 2 * n**3 * count / elapsed / 1e9, "seconds": elapsed}
