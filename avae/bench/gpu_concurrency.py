"""Several configurations on one device (`concurrency`): N worker processes, spawned as `reproduce
--jobs N` spawns them, against N CUDA streams in one process, in training steps per second all
together."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from avae.bench.gpu_timing import BATCH, images_for, sync, timed_steps, train_config
from avae.training.steps import epoch_batches, new_state, train_step


def one_config_steps(model: str, members: int, device: torch.device, x: torch.Tensor, stream=None):
    """A fresh graphed (on CUDA) training state, captured on `stream` if given, and `step(i)`,
    training step i of one fixed epoch order."""
    cfg = train_config(model, members)
    state = new_state(cfg, device, graphs=device.type == "cuda")
    state.iteration.capture_stream = stream
    steps = len(x) // BATCH
    batches = epoch_batches(state.data_rng.permutations(len(x)), steps, BATCH)
    return state, steps, lambda i: train_step(state, cfg, x, batches[i % steps])


def streams_steps_per_s(
    count: int, model: str, members: int, device: torch.device, x: torch.Tensor, seconds: float
) -> float:
    """Training steps per second, all configurations together, of `count` configurations in one
    process, each on its own CUDA stream, their steps interleaved (the host queues step i of every
    configuration, then step i + 1: nothing waits for the device). Each configuration's graph is
    captured on its own stream, so that concurrent replays do not share a cuBLAS workspace."""
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in range(count)]
    configs = [one_config_steps(model, members, device, x, stream) for stream in streams]
    steps = configs[0][1]

    def rounds() -> int:
        for i in range(steps):
            for (_, _, step), stream in zip(configs, streams, strict=True):
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    step(i)
        return steps * count

    try:
        return 1.0 / timed_steps(rounds, device, seconds)
    finally:
        for state, _, _ in configs:
            state.iteration.release()


def _process_worker(job: tuple[str, int, str, float, int, Any]) -> float:
    """One configuration in its own process: warm up, wait for the others, train for `seconds`;
    returns its steps per second."""
    model, members, device_name, seconds, images, barrier = job
    device = torch.device(device_name)
    if device.type == "cpu":  # share the cores, as `reproduce --jobs` does
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // barrier.parties))
    _, steps, step = one_config_steps(model, members, device, images_for(images, device))
    for i in range(3):
        step(i)
    sync(device)
    barrier.wait()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(steps):
            step(i)
        done += steps
        sync(device)
    return done / (time.perf_counter() - start)


def processes_steps_per_s(
    count: int, model: str, members: int, device: torch.device, images: int, seconds: float
) -> float:
    """Training steps per second, all processes together, of `count` worker processes (spawned, as
    `reproduce --jobs` does), each training one configuration; they start timing together."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(count)
        jobs = [(model, members, str(device), seconds, images, barrier)] * count
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            return sum(pool.map(_process_worker, jobs))


def concurrency(device: torch.device, quick: bool, seconds: float, log=print) -> list[dict[str, Any]]:
    """Several configurations on one device: processes against streams (VAE and AVAE, S = 5)."""
    rows = []
    counts, members, images = ((1, 2), 2, 400) if quick else ((1, 4, 8, 16), 5, 5000)
    x = images_for(images, device)
    for model in ("vae", "avae"):
        for count in counts:
            row: dict[str, Any] = {"model": model, "members": members, "configurations": count}
            for kind in ("processes", "streams"):
                try:
                    if kind == "processes":
                        rate = processes_steps_per_s(count, model, members, device, images, seconds)
                    else:
                        rate = streams_steps_per_s(count, model, members, device, x, seconds)
                    row[f"{kind}_steps_per_s"] = rate
                except Exception as error:  # a benchmark records a failure and goes on
                    row[f"{kind}_error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            log(f"concurrency: {row}")
    return rows
