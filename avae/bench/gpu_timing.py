"""What the GPU benchmark's measurements share: timed windows that synchronise the device
(`timed_steps`), test images whose values do not matter (`images_for`), the benchmark's training
configuration (`train_config`, batches of `BATCH`) and the switch that turns CUDA graphs on or off
for a block (`cuda_graphs`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch

from avae.core.graphs import ENV_SWITCH
from avae.training.config import make_config

BATCH = 100


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], int], device: torch.device, seconds: float) -> float:
    """Seconds per unit of work of `step()` (returning the units done), after one untimed call."""
    step()
    sync(device)
    done, start = 0, time.perf_counter()
    while True:
        done += step()
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / done


def images_for(count: int, device: torch.device) -> torch.Tensor:
    """Uniform grey images: a step's cost does not depend on the pixel values."""
    return torch.rand(count, 784, generator=torch.Generator().manual_seed(0)).to(device)


def train_config(model: str, members: int, precision: str = "fp32"):
    return make_config(
        {"model": model, "seeds": tuple(range(members)), "batch_size": BATCH, "precision": precision}
    )


@contextlib.contextmanager
def cuda_graphs(enabled: bool):
    """AVAE_CUDA_GRAPHS set for the block: the estimators' drivers read it (`graphs_wanted`)."""
    before = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "1" if enabled else "0"
    try:
        yield
    finally:
        os.environ.pop(ENV_SWITCH) if before is None else os.environ.__setitem__(ENV_SWITCH, before)
