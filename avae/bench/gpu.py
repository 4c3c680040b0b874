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
- with `--protocol PROFILE`, the wall time of `avae reproduce --profile PROFILE`: Table 1's training
  alone, then the rest of the profile.

Writes gpu_bench.json and GPU_BENCH.md under --out. Needs no install (PYTHONPATH=.), only torch,
numpy, scipy, safetensors, tqdm, matplotlib. Without CUDA it stops with a message, unless
`--device cpu` (there "graphed" is the same static-buffer iteration run eagerly: CUDA graphs need
CUDA); `--quick` shrinks everything for a test.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from avae.bench.cpu import bf16_accuracy
from avae.bench.report import gpu_markdown
from avae.core.graphs import ENV_SWITCH
from avae.core.models import MODELS, build_model
from avae.io import atomic_write_text, write_json
from avae.likelihood import scoring
from avae.training.config import Runtime, make_config
from avae.training.resume import checkpoint_payload, restore_state
from avae.training.steps import epoch_batches, new_state, run_epoch, train_step

GPU_JSON, GPU_MD = "gpu_bench.json", "GPU_BENCH.md"
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


@contextlib.contextmanager
def cuda_graphs(enabled: bool):
    """AVAE_CUDA_GRAPHS set for the block: the estimators' drivers read it (`graphs_wanted`)."""
    before = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "1" if enabled else "0"
    try:
        yield
    finally:
        os.environ.pop(ENV_SWITCH) if before is None else os.environ.__setitem__(ENV_SWITCH, before)


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


def protocol_seconds(out: Path, device: torch.device, profile: str, log=print) -> dict[str, Any]:
    """The wall time of `avae reproduce --profile PROFILE` into OUT/protocol-PROFILE, in two timed
    child processes: first Table 1's training alone (`--experiments table1 --train-only`: every
    configuration with its test -ELBO after each epoch), then the whole profile on the same folder,
    which reuses those runs and adds the rest (training, every figure, every honest metric). The
    whole protocol's time is the sum. A rerun reuses finished runs: use a fresh OUT to time again."""
    base = [sys.executable, "-m", "avae", "reproduce", "--profile", profile]
    base += ["--out", str(out / f"protocol-{profile}"), "--device", str(device), "--no-progress"]
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
    return {"profile": profile, "seconds": total, "returncode": failed, "phases": phases}


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
        results["protocol"] = protocol_seconds(Path(out), device, protocol, log)
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
        help="also time a whole `avae reproduce --profile PROFILE` (e.g. full; needs the data sets)",
    )
    args = parser.parse_args(argv)
    members = tuple(int(s) for s in args.members.split(","))
    run(args.out, args.device, args.quick, members, protocol=args.protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
