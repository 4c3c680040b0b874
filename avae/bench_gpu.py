"""The GPU benchmark: `benchmarks/gpu.sh OUT` (or `PYTHONPATH=. python -m avae.bench_gpu --out OUT`).

Side by side in one run, on one device, each in a short timed window after a warm-up:

- checks first: on the same seeds and batches, the graphed iteration's losses and weights against
  the eager iteration's (max |difference|, and whether bitwise equal), and resume exactness through
  the checkpoint payload (1 epoch, save, restore into a fresh state, 2 more, against 3 straight);
- ms per training step of every model at S = 1, 5, 40 members, eager against graphed (avae's own
  `run_epoch`, test pass excluded);
- the ceiling: a hand-written single-VAE step with the same shapes ([S, B, D] batched products,
  fused capturable Adam), captured whole in one CUDA graph;
- IWAE-1000 and AIS test points per second with `avae.scoring`'s drivers (VAE, 5 members).

Writes gpu_bench.json and GPU_BENCH.md under --out. Needs no install (PYTHONPATH=.), only torch,
numpy, scipy, safetensors, tqdm, matplotlib. Without CUDA it stops with a message, unless
`--device cpu` (there "graphed" is the same static-buffer iteration run eagerly: CUDA graphs need
CUDA); `--quick` shrinks everything for a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avae import scoring
from avae.config import Runtime, make_config
from avae.io import atomic_write_text, write_json
from avae.models import MODELS, build_model
from avae.train import checkpoint_payload, new_state, restore_state, run_epoch

GPU_JSON, GPU_MD = "gpu_bench.json", "GPU_BENCH.md"
BATCH = 100


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


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


def train_step_ms(
    model: str, members: int, graphed: bool, device: torch.device, x: torch.Tensor, seconds: float
) -> float:
    """ms per step of avae's training loop (`run_epoch` on `x`), graphs on or off."""
    cfg = make_config({"model": model, "seeds": tuple(range(members)), "batch_size": BATCH})
    state = new_state(cfg, device, graphs=graphed and device.type == "cuda")
    runtime = Runtime(device=str(device), progress=False)
    steps = len(x) // BATCH

    def epoch() -> int:
        run_epoch(state, cfg, x, runtime, _NoBar())
        return steps

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
        means = run_epoch(state, cfg, x, runtime, _NoBar())
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
            run_epoch(state, cfg, x, runtime, _NoBar())

    straight = new_state(cfg, device)
    epochs(straight, 3)
    first = new_state(cfg, device)
    epochs(first, 1)
    tensors, meta = checkpoint_payload(first, cfg)
    resumed = new_state(cfg, device)
    restore_state(resumed, cfg, {k: v.cpu() for k, v in tensors.items()}, meta)
    epochs(resumed, 2)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    out["resume_bitwise"] = all(torch.equal(a[k], b[k]) for k in a)
    out["resume_tensors_equal"] = f"{sum(torch.equal(a[k], b[k]) for k in a)} of {len(a)}"
    return out


def eval_points_per_s(device: torch.device, members: int, points: int, ais_steps: int) -> dict[str, Any]:
    """IWAE-1000 and AIS (8 chains, 10 leapfrog steps) test points/s with avae.scoring's drivers on an
    untrained VAE (the cost does not depend on the weights); AIS extrapolated to 1,000 steps."""
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
    out: str | Path, device_name: str = "cuda", quick: bool = False, members=(1, 5, 40), log=print
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
    results["ceiling"] = [{"members": s, "ms": ceiling_step_ms(s, device, window)} for s in counts]
    for c in results["ceiling"]:
        log(f"hand-written captured VAE step S={c['members']:2d}: {c['ms']:.3f} ms")
    results["evaluation"] = eval_points_per_s(
        device, 2 if quick else 5, 4 if quick else 100, 3 if quick else 100
    )
    log(f"evaluation: {results['evaluation']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / GPU_JSON, results)
    atomic_write_text(out / GPU_MD, markdown(results))
    log(f"written to {out / GPU_MD} and {out / GPU_JSON}")
    return results


def markdown(r: dict[str, Any]) -> str:
    c = r["checks"]
    ceiling = {e["members"]: e["ms"] for e in r["ceiling"]}
    lines = [
        "# avae GPU benchmark",
        "",
        f"Device: {r['device']}; torch {r['torch']} (CUDA {r['cuda']}); batch {r['batch_size']}"
        + ("; --quick" if r["quick"] else "")
        + ". Graphed: one CUDA graph replay per training iteration (on CPU: the same static-buffer "
        "iteration, eager).",
        "",
        "## Checks",
        "",
        f"- graphed vs eager iteration (AVAE, 2 members, 1 epoch): bitwise {c['graph_vs_eager_bitwise']}, "
        f"max |loss diff| {c['graph_vs_eager_loss_max_abs_diff']:.3g}, "
        f"max |weight diff| {c['graph_vs_eager_weight_max_abs_diff']:.3g}",
        f"- resume (VAE+eps, 1 + 2 epochs vs 3): bitwise {c['resume_bitwise']} ({c['resume_tensors_equal']} "
        "weight tensors equal)",
        "",
        "## Training step",
        "",
        "| model | S | eager ms/step | graphed ms/step | speed-up | graphed / hand-written ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for e in r["training"]:
        ratio = e["graphed_ms"] / ceiling[e["members"]] if e["model"] == "vae" else float("nan")
        lines.append(
            f"| {e['model']} | {e['members']} | {e['eager_ms']:.3f} | {e['graphed_ms']:.3f} | "
            f"{e['speedup']:.1f}x | {'-' if ratio != ratio else f'{ratio:.2f}'} |"
        )
    lines += ["", "Hand-written captured VAE step (the ceiling): "]
    lines[-1] += ", ".join(f"S={s}: {ms:.3f} ms" for s, ms in ceiling.items()) + "."
    ev = r["evaluation"]
    lines += [
        "",
        "## Evaluation (eager estimators)",
        "",
        f"VAE, {ev['members']} members, {ev['points']} points: IWAE-1000 {ev['iwae1000_points_per_s']:.1f} "
        f"points/s; AIS ({ev['ais_chains']} chains, {ev['ais_steps_timed']} steps timed) "
        f"{ev['ais_points_per_s_at_1000_steps']:.2f} points/s at 1,000 steps.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/gpu-bench", help="folder for gpu_bench.json and GPU_BENCH.md")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the code")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test of the code path)")
    parser.add_argument("--members", default="1,5,40", help="member counts S (default 1,5,40)")
    args = parser.parse_args(argv)
    members = tuple(int(s) for s in args.members.split(","))
    run(args.out, args.device, args.quick, members)
    return 0


if __name__ == "__main__":
    sys.exit(main())
