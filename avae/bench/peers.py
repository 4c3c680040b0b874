"""The CPU benchmark's peers, each training the same VAE (784-256-64-32-10 and back, Adam, batch 100)
on the same images: a plain one-model PyTorch loop (`plain_loop`), and Pythae 0.1.2's trainer run
in its own environment (`pythae_peer`, benchmarks/pythae_peer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import nn

from avae.bench.measure import step_flops, timed
from avae.repro.costs import BATCH

PYTHAE_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pythae_peer.py"


def plain_loop(seconds: float, images: torch.Tensor) -> dict[str, Any]:
    """The baseline: one standard VAE with nn.Linear MLPs (784-256-64-32-10 and back), Adam,
    batch 100, a typical loop (zero_grad, backward, step, loss.item() for logging each step)."""
    torch.manual_seed(0)

    def net(sizes: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU(0.2))
        return nn.Sequential(*layers)

    encoder, decoder = net([784, 256, 64, 32, 20]), net([10, 32, 64, 256, 784])
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    x_all = images
    steps = len(x_all) // BATCH

    def epoch() -> int:
        order = torch.randperm(len(x_all))
        total = 0.0
        for i in range(steps):
            x = x_all[order[i * BATCH : (i + 1) * BATCH]]
            mu, logvar = encoder(x).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            recon = nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
            loss = (recon + kl).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        return steps

    done, elapsed = timed(epoch, seconds)
    flops = step_flops("vae", BATCH)
    step_s = elapsed / done
    return {
        "steps": done,
        "ms_per_step": 1e3 * step_s,
        "images_per_s_per_member": BATCH / step_s,
        "gflops": flops / step_s / 1e9,
    }


def pythae_peer(seconds: float, images: torch.Tensor, python: str | None) -> dict[str, Any]:
    """Pythae's BaseTrainer on its VAE with the same MLPs, batch 100 and data, run by `python`
    (an environment with Pythae installed; see BENCH.md)."""
    if not python or not Path(python).exists():
        return {"skipped": f"no Python with Pythae given (--pythae-python {python or 'PATH'}); see BENCH.md"}
    if not PYTHAE_SCRIPT.exists():
        return {"skipped": f"{PYTHAE_SCRIPT} is missing (it ships in the repository, not the package)"}
    with tempfile.TemporaryDirectory() as tmp:
        script, array = PYTHAE_SCRIPT, Path(tmp) / "x.npy"
        numpy.save(array, images.numpy())
        threads = str(torch.get_num_threads())
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        try:
            done = subprocess.run(
                [python, str(script), str(array), str(seconds), threads],
                capture_output=True,
                text=True,
                timeout=300 + 3 * seconds,
                env=env,
                cwd=tmp,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"skipped": f"Pythae run failed ({exc})"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"Pythae run failed: {last}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    step_s = result["seconds"] / max(1, result["steps"])
    return {
        "version": result["version"],
        "steps": result["steps"],
        "ms_per_step": 1e3 * step_s,
        "images_per_s_per_member": BATCH / step_s,
        "gflops": step_flops("vae", BATCH) / step_s / 1e9,
    }
