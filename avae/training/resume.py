"""Exact resume: what a checkpoint holds of the training state (`checkpoint_payload`: weights, Adam
moments, every member's RNG streams, the thread count) and how it is restored (`restore_state`,
`cpu_threads_of`), so that a resumed run ends with bitwise the weights of an uninterrupted one.

A padded pack's state (`avae.training.packs`) holds its members at the pack's latent and noise
dimensions; each configuration's share is cut to its own sizes (`resize_payload`), so that its
checkpoint is that of its unpacked run, and embedded again (padded entries 0) to resume the pack."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from avae.core.nets import MemberLinear, kept_positions
from avae.data import datasets as data
from avae.errors import CheckpointError
from avae.training.config import TrainConfig, config_dict, config_hash, versions
from avae.training.runs import load_weights
from avae.training.steps import TrainingState


@contextlib.contextmanager
def cpu_threads_of(checkpoint, device: torch.device):
    """On CPU, resume with the torch thread count the checkpoint was written with, whatever
    `Runtime.threads` (or `reproduce --jobs`) asks for: exactness wins over the requested count.

    CPU kernels (matrix products in particular) may split their reductions by thread, so the
    same run with 1 and 3 threads differs in the last bits. Every checkpoint records the count,
    and a resumed run uses it again, so that resuming gives bitwise the weights of an
    uninterrupted run even where another OMP_NUM_THREADS or CPU set would choose otherwise.
    """
    wanted = checkpoint[1].get("cpu_threads") if checkpoint is not None else None
    previous = torch.get_num_threads()
    if device.type != "cpu" or not isinstance(wanted, int) or wanted < 1 or wanted == previous:
        yield
        return
    print(
        f"avae: resuming with {wanted} CPU threads as the checkpoint was written (not {previous}) "
        "so that the result is the same as an uninterrupted run",
        file=sys.stderr,
    )
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def checkpoint_payload(
    state: TrainingState, cfg: TrainConfig, members: slice = slice(None)
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint of configuration `cfg`, whose members are rows `members` of the state (all of
    them unless the state is a pack's, `avae.training.packs`): every weight and Adam moment has a
    leading member dimension, Adam's step counter is one per parameter (shared by the members)."""
    tensors = {f"model.{k}": v[members] for k, v in state.model.state_dict().items()}
    groups = {}
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        saved = optimizer.state_dict()
        groups[phase.name] = saved["param_groups"]
        for index, slots in saved["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{phase.name}.{index}.{slot}"] = (
                    value.reshape(-1) if value.dim() == 0 else value[members]
                )
    for stream in ("data", "noise"):
        for member, rng_state in enumerate(getattr(state, f"{stream}_rng").get_state()[members]):
            tensors[f"rng.{stream}.{member}"] = rng_state
    tensors = resize_payload(state, tensors, own_dims(cfg), pad=False)  # at its own sizes
    meta = {
        "epoch": state.epoch,
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "optimizer_groups": groups,
        "versions": versions(),
        "data_md5": data.checksums(cfg.dataset, cfg.test_data),
        "cpu_threads": torch.get_num_threads(),
    }
    return tensors, meta


def own_dims(cfg: TrainConfig) -> dict[str, int]:
    """A configuration's latent and noise dimensions, as `LatentModel.pad_members` takes them."""
    return {"latent": cfg.model.latent_dim, "noise": cfg.model.noise_dim}


def resize_payload(
    state: TrainingState, tensors: dict[str, torch.Tensor], dims: dict[str, int], *, pad: bool
) -> dict[str, torch.Tensor]:
    """A configuration's checkpoint tensors cut from the state's sizes to its own latent and noise
    dimensions `dims` (`pad` False), or embedded from its own sizes into the state's (`pad` True:
    every padded entry 0). Each weight and Adam moment keeps the positions of its layer's input and
    output that are the member's (`MemberLinear.in_parts` / `out_parts`); RNG states and Adam's step
    counters are left as they are. The tensors themselves when the sizes are the state's."""
    if dims == {"latent": state.model.cfg.latent_dim, "noise": state.model.cfg.noise_dim}:
        return tensors
    names = {id(param): name for name, param in state.model.named_parameters()}
    params = dict(state.model.named_parameters())
    layers = {
        name: module for name, module in state.model.named_modules() if isinstance(module, MemberLinear)
    }
    of_key = {f"model.{name}": name for name in params}
    for phase in state.phases:
        for index, param in enumerate(phase.params):
            for slot in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                of_key[f"optim.{phase.name}.{index}.{slot}"] = names[id(param)]
    resized = {}
    for key, value in tensors.items():
        name = of_key.get(key)
        layer = layers.get(name.rsplit(".", 1)[0]) if name is not None else None
        if layer is None:
            resized[key] = value
            continue
        weight = name.endswith(".weight")  # [S, out, in]; a bias is [S, 1, out]
        cuts = [(1 if weight else 2, layer.out_parts)] + ([(2, layer.in_parts)] if weight else [])
        cuts = [
            (dim, kept_positions(parts, dims).to(value.device)) for dim, parts in cuts if parts is not None
        ]
        if not pad:
            for dim, positions in cuts:
                value = value.index_select(dim, positions)
            resized[key] = value.contiguous()
            continue
        full = value.new_zeros((value.shape[0], *params[name].shape[1:]))
        index: list[Any] = [slice(None)] * 3
        for dim, positions in cuts:
            index[dim] = positions
        if len(cuts) == 2:  # both dimensions cut: an outer index of out and in positions
            index[1], index[2] = index[1][:, None], index[2][None, :]
        full[tuple(index)] = value
        resized[key] = full
    return resized


def restore_state(
    state: TrainingState, cfg: TrainConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    load_weights(state.model, tensors)
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        slots: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"optim.{phase.name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, slot = key[len(prefix) :].split(".")
                slots.setdefault(int(index), {})[slot] = value.reshape(()) if slot == "step" else value
        optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer_groups"][phase.name]})
        for group in optimizer.param_groups:
            group["lr"] = phase.lr  # from this run's settings: a resumed run may lower the learning rate
            group["capturable"] = state.graphs  # as this run needs it, whatever wrote the checkpoint
    for stream in ("data", "noise"):
        rng = getattr(state, f"{stream}_rng")
        rng.set_state([tensors[f"rng.{stream}.{m}"] for m in range(len(state.seeds))])
    state.epoch = int(meta["epoch"])


def merge_payloads(
    payloads: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint of a pack (`avae.training.packs`) from its configurations' checkpoints, in
    member order: the inverse of `checkpoint_payload`'s share. Weights and Adam moments are joined
    along the member dimension, RNG streams renumbered; Adam's step counters (one per parameter)
    and the metadata are the first's, and every checkpoint must agree with them."""
    first_tensors, first_meta = payloads[0]
    tensors: dict[str, torch.Tensor] = {}
    for key, value in first_tensors.items():
        if key.startswith("rng."):
            continue
        parts = [payload[0][key] for payload in payloads]
        if key.endswith(".step"):
            if any(not torch.equal(part, value) for part in parts):
                raise CheckpointError(f"a pack's checkpoints disagree on Adam's step count ({key})")
            tensors[key] = value
        else:
            tensors[key] = torch.cat(parts)
    for stream in ("data", "noise"):
        states = [t[f"rng.{stream}.{m}"] for t, meta in payloads for m in range(len(meta["config"]["seeds"]))]
        tensors.update({f"rng.{stream}.{member}": state for member, state in enumerate(states)})
    return tensors, first_meta
