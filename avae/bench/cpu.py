"""`avae bench`: how fast training and evaluation run on this machine, side by side in one run.

Measured, each in a short timed window after a warm-up:

- the machine's matmul peak (one large square product, fp32 and bf16), GFLOP/s;
- training throughput of every model at S = 1, 5, 15 members in fp32 and under bf16 autocast:
  images/s per member and effective GFLOP/s, FLOPs counted analytically from the layer sizes
  (2 * in * out per example and layer for a forward pass, x3 for forward + backward, every network
  pass of every phase counted), also as a fraction of the measured peak of that precision;
- a plain one-model PyTorch loop (nn.Linear MLPs, the standard VAE, Adam, batch 100) as the baseline;
- Pythae 0.1.2's VAE trainer with the same architecture and data (from its own virtual environment,
  /tmp/pythae-venv by default; skipped with a message when it is missing);
- evaluation: IWAE-1000 test points/s and AIS HMC transitions/s (avae.evaluation.evaluate's estimators);
- bf16 accuracy: final test negative ELBO of bf16 vs fp32 training with the same seeds (short run).

Results go to BENCH.md and bench.json in --out (`avae.bench.report` writes the Markdown);
`avae.repro.costs` reads bench.json for `avae reproduce --dry-run`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from avae.bench.measure import matmul_peak, step_flops, timed
from avae.bench.peers import plain_loop, pythae_peer
from avae.bench.report import BENCH_JSON, BENCH_MD, markdown, targets
from avae.core.models import MODELS, build_model
from avae.data import datasets as data
from avae.errors import AvaeError
from avae.io import atomic_write_text, write_json
from avae.likelihood import scoring
from avae.repro.costs import BATCH, estimate_train_seconds
from avae.training.config import PRECISIONS, Runtime, make_config
from avae.training.runs import METRICS, read_metrics
from avae.training.steps import new_state, run_epoch
from avae.training.train import train

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
MEMBER_COUNTS = (1, 5, 15)


# --- measurements ----------------------------------------------------------------------------------


def load_train_images(images: int) -> tuple[torch.Tensor, str]:
    """The first `images` MNIST training images (continuous pixels) if cached, else uniform noise
    (throughput does not depend on the pixel values)."""
    try:
        with open(os.devnull, "w") as sink:
            stderr, sys.stderr = sys.stderr, sink
            try:
                x = data.load_pixels("mnist", "train", "continuous", None)
            finally:
                sys.stderr = stderr
        return x[:images].contiguous(), "MNIST (first images of the training set)"
    except (AvaeError, OSError):
        return torch.rand(images, 784, generator=torch.Generator().manual_seed(0)), "uniform noise"


def train_throughput(
    model: str,
    members: int,
    precision: str,
    seconds: float,
    images: torch.Tensor,
    compile: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Steps of avae's own training loop (`run_epoch`) on `images`, timed after a warm-up epoch."""
    settings = {"model": model, "seeds": tuple(range(members)), "batch_size": BATCH, "precision": precision}
    cfg = make_config(settings)
    dev = torch.device(device)
    state = new_state(cfg, dev, compile)
    runtime = Runtime(device=device, progress=False, compile=compile)
    x = images.to(dev)
    steps = len(x) // BATCH

    def epoch() -> int:
        run_epoch(state, cfg, x, runtime)
        return steps

    done, elapsed = timed(epoch, seconds, warmup=2 if compile else 1)
    test = x[: min(len(x), 1000)]
    start = time.perf_counter()
    scoring.neg_elbo_per_member(state.model, test, cfg.seeds)
    eval_s = (time.perf_counter() - start) * 10000 / len(test)  # per 10,000 test points, all members
    flops = step_flops(model, BATCH) * members
    step_s = elapsed / done
    return {
        "model": model,
        "members": members,
        "precision": precision,
        "compile": compile,
        "steps": done,
        "ms_per_step": 1e3 * step_s,
        "images_per_s_per_member": BATCH / step_s,
        "images_per_s_total": BATCH * members / step_s,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / step_s / 1e9,
        "test_pass_s_per_10k": eval_s,
    }


def eval_throughput(points: int, ais_steps: int, members: int = 1) -> dict[str, Any]:
    """IWAE-1000 and AIS with avae.evaluation.evaluate's estimators on an (untrained) VAE without weight
    gradients, as `avae evaluate` runs them: the cost does not depend on the weights."""
    seeds = tuple(range(members))
    model = build_model(make_config({"model": "vae"}).model, seeds).requires_grad_(False)
    x = torch.rand(points, 784, generator=torch.Generator().manual_seed(1))
    out: dict[str, Any] = {"members": members, "points": points}
    settings = scoring.EvalSettings(k=(1000,), batch_size=min(points, 100))
    start = time.perf_counter()
    scoring.iwae_points(model, x, seeds, settings)
    elapsed = time.perf_counter() - start
    out["iwae1000_points_per_s_per_member"] = points / elapsed
    settings = scoring.EvalSettings(ais_chains=4, ais_steps=ais_steps, batch_size=min(points, 100))
    start = time.perf_counter()
    scoring.ais_points(model, x, seeds, settings, "bench-ais")
    elapsed = time.perf_counter() - start
    transitions = settings.ais_chains * points * ais_steps
    out.update(
        ais_chains=settings.ais_chains,
        ais_steps=ais_steps,
        leapfrog=settings.leapfrog,
        ais_hmc_transitions_per_s_per_member=transitions / elapsed,
        ais_points_per_s_at_500_steps=points / elapsed * ais_steps / 500,
    )
    return out


def bf16_accuracy(
    epochs: int, train_images: int, seeds: Sequence[int], device: str = "cpu"
) -> dict[str, Any]:
    """Train the VAE with the same seeds in fp32 and bf16 on real MNIST; compare final test -ELBO."""
    settings = {"model": "vae", "seeds": tuple(seeds), "epochs": epochs, "train_subset": train_images}
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in PRECISIONS:
            cfg = make_config({**settings, "precision": precision})
            try:
                run = train(cfg, Path(tmp) / precision, runtime=Runtime(device=device, progress=False))
            except AvaeError as exc:
                return {"skipped": f"no MNIST for the accuracy check ({exc})"}
            rows = [r for r in read_metrics(run / METRICS) if r["epoch"] == epochs]
            finals[precision] = [r["test_neg_elbo"] for r in rows]
    diffs = [abs(a - b) for a, b in zip(finals["fp32"], finals["bf16"], strict=True)]
    mean = {p: sum(v) / len(v) for p, v in finals.items()}
    return {
        "model": "vae",
        "device": device,
        "seeds": list(seeds),
        "epochs": epochs,
        "train_images": train_images,
        "test_images": 10000,
        "fp32_test_neg_elbo": finals["fp32"],
        "bf16_test_neg_elbo": finals["bf16"],
        "max_abs_diff": max(diffs),
        "mean_fp32": mean["fp32"],
        "mean_bf16": mean["bf16"],
        "mean_abs_diff": abs(mean["fp32"] - mean["bf16"]),
    }


# Table 1: every model x 2 data sets x 3 latent dimensions, 5 seeds each, 100 epochs.
TABLE1 = {"configs_per_model": 6, "seeds": 5, "epochs": 100, "train_images": 60000, "test_images": 10000}


def table1_estimate(results_json: str | Path, processes: int = 2) -> dict[str, Any]:
    """Table 1 (24 configurations x 5 seeds x 100 epochs): one process per configuration with its
    5 seeds as members, `processes` single-threaded processes side by side on the machine's cores."""
    per_model = {
        name: estimate_train_seconds(
            name, TABLE1["seeds"], TABLE1["epochs"], TABLE1["train_images"], bench=Path(results_json)
        )
        for name in MODELS
    }
    serial = sum(TABLE1["configs_per_model"] * s for s in per_model.values())
    runs = TABLE1["configs_per_model"] * TABLE1["seeds"] * TABLE1["epochs"] * TABLE1["train_images"] / BATCH
    flops = runs * sum(step_flops(n) for n in MODELS)
    peaks: dict[str, float] = {}
    path = Path(results_json)
    if path.exists():
        peaks = {k: v["gflops"] for k, v in json.loads(path.read_text()).get("peak", {}).items()}

    def hours_at(gflops: float | None) -> float:
        return flops / (processes * gflops * 1e9) / 3600 if gflops else float("nan")

    return {
        "per_config_seconds": per_model,
        "serial_seconds": serial,
        "processes": processes,
        "wall_seconds": serial / processes,
        "flops": flops,
        "hours_at_peak": hours_at(peaks.get("fp32")),
        "hours_at_bf16_peak": hours_at(peaks.get("bf16")),
        "assumption": f"{processes} one-thread processes in parallel on {processes} cores, each a "
        "5-member configuration; fp32; measured per-step cost fitted as a + b*S",
    }


# --- the command ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model_name = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "amx": any(f.startswith("amx") for f in flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "load_average": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda_available": torch.cuda.is_available(),
    }


def run_bench(
    out: str | Path = DEFAULT_DIR, quick: bool = False, pythae_python: str | None = None, log=print
) -> dict[str, Any]:
    """Measure everything, write BENCH.md and bench.json to `out`, return the results."""
    out = Path(out)
    window = 0.2 if quick else 2.5
    models = ("vae", "avae") if quick else tuple(MODELS)
    counts = (1, 2) if quick else MEMBER_COUNTS
    images, source = load_train_images(400 if quick else 1000)
    results: dict[str, Any] = {"machine": machine(), "data": source, "batch_size": BATCH, "quick": quick}
    log(f"machine: {results['machine']['cpu']}, {results['machine']['torch_threads']} torch threads")
    n = 256 if quick else 2048
    results["peak"] = {
        p: matmul_peak(d, n, window) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    log("matmul peak: " + ", ".join(f"{p} {v['gflops']:.1f} GFLOP/s" for p, v in results["peak"].items()))
    results["plain_loop"] = plain_loop(window, images)
    log(f"plain loop: {results['plain_loop']['images_per_s_per_member']:.0f} images/s")
    training = []
    for model in models:
        for members in counts:
            for precision in PRECISIONS:
                entry = train_throughput(model, members, precision, window, images)
                entry["fraction_of_peak"] = entry["gflops"] / results["peak"][precision]["gflops"]
                plain = results["plain_loop"]["images_per_s_per_member"]
                entry["vs_plain_per_member"] = entry["images_per_s_per_member"] / plain
                entry["vs_plain_total"] = entry["images_per_s_total"] / plain
                training.append(entry)
                log(
                    f"{model:9s} S={members:2d} {precision}: "
                    f"{entry['images_per_s_per_member']:8.0f} img/s/member "
                    f"{entry['gflops']:6.1f} GFLOP/s ({100 * entry['fraction_of_peak']:.0f}% of peak)"
                )
    results["training"] = training
    results["compile"] = compile_check(window, images, quick, log)
    results["pythae"] = pythae_peer(window * 2, images, pythae_python)
    log(f"pythae: {results['pythae']}")
    results["evaluation"] = eval_throughput(4 if quick else 20, 3 if quick else 10)
    log(f"evaluation: {results['evaluation']}")
    results["bf16_accuracy"] = (
        {"skipped": "not in --quick"}
        if quick
        else bf16_accuracy(epochs=5, train_images=20000, seeds=(0, 1, 2))
    )
    log(f"bf16 accuracy: {results['bf16_accuracy']}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / BENCH_JSON, results)
    results["table1"] = table1_estimate(out / BENCH_JSON)
    results["targets"] = targets(results)
    write_json(out / BENCH_JSON, results)
    atomic_write_text(out / BENCH_MD, markdown(results))
    return results


def compile_check(window: float, images: torch.Tensor, quick: bool, log) -> dict[str, Any]:
    """torch.compile (inductor) of every network, VAE at the largest S, fp32, vs eager."""
    if quick:
        return {"skipped": "not in --quick"}
    members = MEMBER_COUNTS[-1]
    try:
        eager = train_throughput("vae", members, "fp32", window, images)  # right before: same load
        start = time.perf_counter()
        entry = train_throughput("vae", members, "fp32", window, images, compile=True)
        entry["wall_with_warmup_s"] = time.perf_counter() - start
        entry["eager_images_per_s_per_member"] = eager["images_per_s_per_member"]
    except Exception as exc:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
        return {"skipped": f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    log(f"compiled vae S={members}: {entry['images_per_s_per_member']:.0f} img/s/member")
    return entry


def cmd_bench(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_bench(args.out, quick=args.quick, pythae_python=args.pythae_python)
    print(f"written to {Path(args.out) / BENCH_MD} and {Path(args.out) / BENCH_JSON}")
    for t in results["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:.2f}")
    return 0
