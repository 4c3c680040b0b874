"""The packed per-member cost: what one training step costs each member of the packs a profile's
Table 1 forms, beside the same step of one configuration with as many members at the pack's largest
sizes (so the cost of padding shows) and at `REFERENCE_MEMBERS` (the largest member count measured
in issue 23: the per-member cost packs should approach).

Each pack is built as `avae.reproduce --pack` builds it (`avae.training.packs.pack_groups` on the
profile's Table 1 configurations: one model, its data sets, latent and noise dimensions padded to
the largest) and timed with the benchmark's batches (`gpu_timing`): step costs do not depend on the
data or on the weights' values, so every member reads the same images and starts from the padded
model's own initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from avae.bench.gpu_timing import BATCH, timed_steps
from avae.repro.plan import runs_for, select
from avae.training.config import Runtime, TrainConfig
from avae.training.packs import PackEntry, member_dims, pack_groups, padded_config
from avae.training.steps import new_state, run_epoch

REFERENCE_MEMBERS = 180  # issue 23's largest S: 36 configurations x 5 seeds in one graph


def step_ms(
    cfg: TrainConfig,
    device: torch.device,
    x: torch.Tensor,
    seconds: float,
    seeds: list[int],
    dims: list[dict[str, int]] | None = None,
) -> float:
    """ms per training step (`run_epoch` on `x`, graphed on CUDA) of a model of `seeds` members,
    padded to `dims` when given (`avae.training.packs.member_dims`)."""
    cfg = replace(cfg, batch_size=BATCH)
    state = new_state(cfg, device, graphs=device.type == "cuda", seeds=seeds, member_dims=dims)
    runtime = Runtime(device=str(device), progress=False)
    steps = len(x) // BATCH

    def epoch() -> int:
        run_epoch(state, cfg, x, runtime)
        return steps

    with state.iteration:  # its graph is released at the end
        return 1e3 * timed_steps(epoch, device, seconds)


def pack_costs(
    profile: str,
    device: torch.device,
    x: torch.Tensor,
    seconds: float,
    reference: int = REFERENCE_MEMBERS,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """For each pack of `profile`'s Table 1: its members, ms per packed step and per member-step, the
    same for one configuration of as many members at the pack's largest sizes, and per member-step
    at `reference` members."""
    cfgs = [run.cfg for run in runs_for(select(profile, ("table1",), train_only=True))]
    rows = []
    for group in pack_groups(cfgs):
        entries = [PackEntry(cfgs[i], Path(str(i))) for i in group]
        cfg, dims = padded_config(entries), member_dims(entries)
        seeds = [seed for entry in entries for seed in entry.cfg.seeds]
        members = len(seeds)
        packed = step_ms(cfg, device, x, seconds, seeds, dims)
        plain = step_ms(cfg, device, x, seconds, list(range(members)))
        at_reference = step_ms(cfg, device, x, seconds, list(range(reference)))
        row = {
            "model": cfg.model.name,
            "configurations": len(entries),
            "members": members,
            "latent_dims": sorted({e.cfg.model.latent_dim for e in entries}),
            "noise_dims": sorted({e.cfg.model.noise_dim for e in entries}),
            "packed_ms": packed,
            "packed_us_per_member": 1e3 * packed / members,
            "plain_ms": plain,
            "reference_members": reference,
            "reference_us_per_member": 1e3 * at_reference / reference,
        }
        rows.append(row)
        log(
            f"pack {row['model']} ({row['configurations']} configurations, S={members}): "
            f"{packed:.3f} ms/step, {row['packed_us_per_member']:.1f} us per member-step; unpadded "
            f"S={members} {plain:.3f} ms; S={reference} {row['reference_us_per_member']:.1f} us "
            "per member-step"
        )
    return rows
