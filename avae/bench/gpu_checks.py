"""The GPU benchmark's checks, run before anything is timed: on the same seeds and batches, the graphed
iteration against the eager one, resume through the checkpoint payload against a straight run, and
the estimators' graphed AIS and IWAE against their eager figures (`equivalence`)."""

from __future__ import annotations

from typing import Any

import torch

from avae.bench.gpu_timing import BATCH, cuda_graphs, images_for
from avae.likelihood import scoring
from avae.training.config import Runtime, make_config
from avae.training.resume import checkpoint_payload, restore_state
from avae.training.steps import new_state, run_epoch


def equivalence(device: torch.device, images: int = 600) -> dict[str, Any]:
    """Graphed against eager iteration (AVAE, 2 members, one epoch on the same batches), and resume
    through the checkpoint payload against a straight run (VAE+eps, graphed where CUDA is)."""
    x = images_for(images, device)
    runtime = Runtime(device=str(device), progress=False)
    out: dict[str, Any] = {"cuda_graphs": device.type == "cuda"}
    cfg = make_config({"model": "avae", "seeds": (0, 1), "batch_size": BATCH})
    results = {}
    for graphed in (False, True):
        state = new_state(cfg, device, graphs=graphed and device.type == "cuda")
        state.epoch = 1
        with state.iteration:
            means = run_epoch(state, cfg, x, runtime)
        results[graphed] = (means, state.model.state_dict())
    (m0, w0), (m1, w1) = results[False], results[True]
    out["graph_vs_eager_loss_max_abs_diff"] = max(float((m0[k] - m1[k]).abs().max()) for k in m0)
    out["graph_vs_eager_weight_max_abs_diff"] = max(float((w0[k] - w1[k]).abs().max()) for k in w0)
    out["graph_vs_eager_bitwise"] = all(torch.equal(w0[k], w1[k]) for k in w0) and all(
        torch.equal(m0[k], m1[k]) for k in m0
    )
    cfg = make_config({"model": "vae-noise", "seeds": (0, 1), "batch_size": BATCH, "epochs": 3})

    def epochs(state, count: int) -> None:
        for _ in range(count):
            state.epoch += 1
            run_epoch(state, cfg, x, runtime)

    straight = new_state(cfg, device)
    epochs(straight, 3)
    first = new_state(cfg, device)
    epochs(first, 1)
    tensors, meta = checkpoint_payload(first, cfg)
    resumed = new_state(cfg, device)
    restore_state(resumed, cfg, {k: v.cpu() for k, v in tensors.items()}, meta)
    epochs(resumed, 2)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for state in (straight, first, resumed):
        state.iteration.release()
    out["resume_bitwise"] = all(torch.equal(a[k], b[k]) for k in a)
    out["resume_tensors_equal"] = f"{sum(torch.equal(a[k], b[k]) for k in a)} of {len(a)}"
    out.update(estimator_equivalence(resumed.model, cfg.seeds, x[:6]))
    return out


def estimator_equivalence(model, seeds, x: torch.Tensor) -> dict[str, Any]:
    """AIS (2 chains, 30 steps) and IWAE-50 (chunks of 8) of `model` on `x`, graphed against eager:
    the largest |difference| of the per-point figures (0 where they agree bitwise)."""
    settings = scoring.EvalSettings(k=(50,), ais_chains=2, ais_steps=30, batch_size=len(x))
    figures = {}
    for graphed in (False, True):
        with cuda_graphs(graphed):
            ais, _ = scoring.ais_points(model, x, seeds, settings, "bench-check")
            iwae = scoring.iwae_points(model, x, seeds, settings, draws_per_chunk=8)[50]
        figures[graphed] = (ais, iwae)
    return {
        "ais_graph_vs_eager_max_abs_diff": float((figures[True][0] - figures[False][0]).abs().max()),
        "iwae_graph_vs_eager_max_abs_diff": float((figures[True][1] - figures[False][1]).abs().max()),
    }
