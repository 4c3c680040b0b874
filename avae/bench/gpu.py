"""The GPU benchmark: `benchmarks/gpu.sh OUT` (or `PYTHONPATH=. python -m avae.bench.gpu --out OUT`).

Side by side in one run, on one device, each in a short timed window after a warm-up:

- checks first: on the same seeds and batches, the graphed iteration's losses and weights against
  the eager iteration's (max |difference|, and whether bitwise equal), and resume exactness through
  the checkpoint payload (1 epoch, save, restore into a fresh state, 2 more, against 3 straight);
- ms per training step of every model at S = 1, 5, 40 members, eager against graphed (avae's own
  `run_epoch`, test pass excluded);
- the ceiling: a hand-written single-VAE step with the same shapes ([S, B, D] batched products,
  fused capturable Adam), captured whole in one CUDA graph;
- the same training step under bf16 autocast (graphed), and its accuracy: the VAE trained 5 epochs
  on 20,000 MNIST images in fp32 and bf16 with the same seeds, final test -ELBO compared;
- IWAE-1000 and AIS test points per second with `avae.likelihood.scoring`'s drivers (VAE, 5 members), eager
  against graphed (the IWAE chunk and the AIS transition as CUDA-graph replays);
- several configurations on one device: N worker processes (as `reproduce --jobs N`) against N
  CUDA streams in one process, training steps per second all together;
- with `--protocol PROFILE`, the packed per-member cost of the packs PROFILE's Table 1 forms
  (`gpu_packs`), then the wall time of `avae reproduce --profile PROFILE --pack` (`--no-pack`:
  without packs): Table 1's training alone, then the rest of the profile.

Writes gpu_bench.json and GPU_BENCH.md under --out. Needs no install (PYTHONPATH=.), only torch,
numpy, scipy, safetensors, tqdm, matplotlib. Without CUDA it stops with a message, unless
`--device cpu` (there "graphed" is the same static-buffer iteration run eagerly: CUDA graphs need
CUDA); `--quick` shrinks everything for a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from avae.bench.cpu import bf16_accuracy
from avae.bench.gpu_checks import equivalence
from avae.bench.gpu_concurrency import concurrency
from avae.bench.gpu_packs import REFERENCE_MEMBERS, pack_costs
from avae.bench.gpu_timing import BATCH, cuda_graphs, images_for, sync, timed_steps, train_config
from avae.bench.report import gpu_markdown
from avae.core.models import MODELS, build_model
from avae.io import atomic_write_text, write_json
from avae.likelihood import scoring
from avae.training.config import Runtime, make_config
from avae.training.steps import new_state, run_epoch

GPU_JSON, GPU_MD = "gpu_bench.json", "GPU_BENCH.md"


def train_step_ms(
    model: str,
    members: int,
    graphed: bool,
    device: torch.device,
    x: torch.Tensor,
    seconds: float,
    precision: str = "fp32",
) -> float:
    """ms per step of avae's training loop (`run_epoch` on `x`), graphs on or off."""
    cfg = train_config(model, members, precision)
    state = new_state(cfg, device, graphs=graphed and device.type == "cuda")
    runtime = Runtime(device=str(device), progress=False)
    steps = len(x) // BATCH

    def epoch() -> int:
        run_epoch(state, cfg, x, runtime)
        return steps

    with state.iteration:  # its graph is released at the end (GraphedCall.release)
        return 1e3 * timed_steps(epoch, device, seconds)


def ceiling_step_ms(members: int, device: torch.device, seconds: float, steps: int = 50) -> float:
    """The hand-written VAE step (784-256-64-32-2x10, 10-32-64-256-784, leaky ReLU 0.2, Bernoulli
    likelihood, fused Adam) on static x [S, B, 784] and eps [S, B, 10], captured in one CUDA graph
    on CUDA (eager elsewhere): the fastest this step can go with these kernels."""
    gen = torch.Generator().manual_seed(0)
    sizes = ([784, 256, 64, 32, 20], [10, 32, 64, 256, 784])
    nets = [
        [
            (
                (torch.rand(members, a, b, generator=gen) * 2 - 1).div(a**0.5).to(device).requires_grad_(),
                torch.zeros(members, 1, b, device=device, requires_grad=True),
            )
            for a, b in zip(s[:-1], s[1:], strict=False)
        ]
        for s in sizes
    ]
    params = [t for net in nets for layer in net for t in layer]
    cuda = device.type == "cuda"
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=cuda)
    x = torch.rand(members, BATCH, 784, generator=gen).to(device)
    eps = torch.randn(members, BATCH, 10, generator=gen).to(device)

    def forward(net, h):
        for i, (w, b) in enumerate(net):
            h = torch.baddbmm(b, h, w)  # w [S, in, out]: its gradient comes out in its own layout
            if i < len(net) - 1:
                h = torch.nn.functional.leaky_relu(h, 0.2)
        return h

    def step() -> None:
        mu, logvar = forward(nets[0], x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = torch.nn.functional.binary_cross_entropy_with_logits(forward(nets[1], z), x, reduction="none")
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        loss = (recon.sum(-1) + kl).mean(-1).sum()
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        optimizer.step()

    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    else:
        run = step

    def many() -> int:
        for _ in range(steps):
            run()
        return steps

    return 1e3 * timed_steps(many, device, seconds)


def eval_points_per_s(
    device: torch.device, members: int, points: int, ais_steps: int, graphed: bool = True
) -> dict[str, Any]:
    """IWAE-1000 and AIS (8 chains, 10 leapfrog steps) test points/s with avae.likelihood.scoring's
    drivers on an untrained VAE (the cost does not depend on the weights); AIS extrapolated to 1,000
    steps. With `graphed` the IWAE chunk and the AIS transition are CUDA-graph replays (on CUDA)."""
    with cuda_graphs(graphed):
        return {"graphed": graphed, **_eval_points_per_s(device, members, points, ais_steps)}


def _eval_points_per_s(device: torch.device, members: int, points: int, ais_steps: int) -> dict[str, Any]:
    seeds = tuple(range(members))
    model = build_model(make_config({"model": "vae"}).model, seeds).to(device).requires_grad_(False)
    x = images_for(points, device)
    settings = scoring.EvalSettings(k=(1000,), batch_size=min(points, 100))
    scoring.iwae_points(model, x[: min(points, 10)], seeds, settings)  # warm-up
    sync(device)
    start = time.perf_counter()
    scoring.iwae_points(model, x, seeds, settings)
    sync(device)
    iwae_s = time.perf_counter() - start
    settings = scoring.EvalSettings(ais_chains=8, ais_steps=ais_steps, batch_size=min(points, 100))
    start = time.perf_counter()
    scoring.ais_points(model, x, seeds, settings, "bench-ais")
    sync(device)
    ais_s = time.perf_counter() - start
    return {
        "model": "vae",
        "members": members,
        "points": points,
        "iwae1000_points_per_s": points / iwae_s,
        "ais_steps_timed": ais_steps,
        "ais_chains": 8,
        "ais_points_per_s_at_1000_steps": points / ais_s * ais_steps / 1000,
    }


def protocol_seconds(
    out: Path, device: torch.device, profile: str, log=print, pack: bool = True
) -> dict[str, Any]:
    """The wall time of `avae reproduce --profile PROFILE` (with `--pack` unless `pack` is False)
    into OUT/protocol-PROFILE, in two timed child processes: first Table 1's training alone
    (`--experiments table1 --train-only`: every configuration with its test -ELBO after each epoch),
    then the whole profile on the same folder, which reuses those runs and adds the rest (training,
    every figure, every honest metric). The whole protocol's time is the sum. A rerun reuses
    finished runs: use a fresh OUT to time again."""
    base = [sys.executable, "-m", "avae", "reproduce", "--profile", profile]
    base += ["--out", str(out / f"protocol-{profile}"), "--device", str(device), "--no-progress"]
    base += ["--pack"] if pack else []
    phases = {}
    for phase, extra in (("table1_training", ["--experiments", "table1", "--train-only"]), ("rest", [])):
        command = base + extra
        log(f"timing: {' '.join(command)}")
        start = time.perf_counter()
        returncode = subprocess.run(command, check=False).returncode
        phases[phase] = {
            "seconds": time.perf_counter() - start,
            "returncode": returncode,
            "command": " ".join(command),
        }
        log(f"{phase}: {phases[phase]['seconds']:.0f} s (exit {returncode})")
    total = sum(p["seconds"] for p in phases.values())
    failed = max(p["returncode"] for p in phases.values())
    return {"profile": profile, "pack": pack, "seconds": total, "returncode": failed, "phases": phases}


def device_of(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "avae GPU benchmark: CUDA is not available to this torch "
            f"({torch.__version__}, built with CUDA {torch.version.cuda}); run it on a machine with an "
            "NVIDIA GPU, or pass --device cpu --quick to check the code path on the CPU"
        )
    return device


def run(
    out: str | Path,
    device_name: str = "cuda",
    quick: bool = False,
    members=(1, 5, 40),
    log=print,
    protocol: str = "",
    pack: bool = True,
) -> dict[str, Any]:
    device = device_of(device_name)
    window = 0.05 if quick else 1.0
    models = ("vae", "avae") if quick else tuple(MODELS)
    counts = (1, 2) if quick else tuple(members)
    x = images_for(400 if quick else 5000, device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "batch_size": BATCH,
        "quick": quick,
    }
    log(f"avae GPU benchmark on {results['device']} (torch {torch.__version__})")
    results["checks"] = equivalence(device, 200 if quick else 600)
    log(f"checks: {results['checks']}")
    results["training"] = []
    for model in models:
        for s in counts:
            row = {"model": model, "members": s}
            for graphed in (False, True):
                row["graphed_ms" if graphed else "eager_ms"] = train_step_ms(
                    model, s, graphed, device, x, window
                )
            row["speedup"] = row["eager_ms"] / row["graphed_ms"]
            results["training"].append(row)
            log(
                f"{model:9s} S={s:2d}: eager {row['eager_ms']:7.3f} ms/step, graphed "
                f"{row['graphed_ms']:7.3f} ms/step ({row['speedup']:.1f}x)"
            )
    results["bf16"] = []
    for model in models:
        row = {"model": model, "members": counts[-1]}
        row["graphed_ms"] = train_step_ms(model, counts[-1], True, device, x, window, "bf16")
        results["bf16"].append(row)
        log(f"{model:9s} S={counts[-1]:2d} bf16 autocast, graphed: {row['graphed_ms']:7.3f} ms/step")
    if not quick:  # graphed fp32 against bf16 training on real MNIST (skipped without the data)
        results["bf16_accuracy"] = bf16_accuracy(
            epochs=5, train_images=20000, seeds=(0, 1, 2), device=str(device)
        )
        log(f"bf16 accuracy: {results['bf16_accuracy']}")
    results["ceiling"] = [{"members": s, "ms": ceiling_step_ms(s, device, window)} for s in counts]
    for c in results["ceiling"]:
        log(f"hand-written captured VAE step S={c['members']:2d}: {c['ms']:.3f} ms")
    results["evaluation"] = [
        eval_points_per_s(device, 2 if quick else 5, 4 if quick else 100, 3 if quick else 100, graphed)
        for graphed in (False, True)
    ]
    for entry in results["evaluation"]:
        log(f"evaluation: {entry}")
    results["concurrency"] = concurrency(device, quick, window if quick else 5.0, log)
    if protocol:
        reference = counts[-1] if quick else REFERENCE_MEMBERS
        results["packs"] = pack_costs(protocol, device, x, window, reference, log)
        results["protocol"] = protocol_seconds(Path(out), device, protocol, log, pack)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / GPU_JSON, results)
    atomic_write_text(out / GPU_MD, gpu_markdown(results))
    log(f"written to {out / GPU_MD} and {out / GPU_JSON}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/gpu-bench", help="folder for gpu_bench.json and GPU_BENCH.md")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the code")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test of the code path)")
    parser.add_argument("--members", default="1,5,40", help="member counts S (default 1,5,40)")
    parser.add_argument(
        "--protocol",
        default="",
        metavar="PROFILE",
        help="also time the packs of PROFILE's Table 1 and a whole `avae reproduce --profile PROFILE "
        "--pack` (e.g. full; needs the data sets)",
    )
    parser.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the protocol's reproduction with --pack (default) or, with --no-pack, without",
    )
    args = parser.parse_args(argv)
    members = tuple(int(s) for s in args.members.split(","))
    run(args.out, args.device, args.quick, members, protocol=args.protocol, pack=args.pack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
