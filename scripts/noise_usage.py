"""Does a noise-injected encoder use its noise? `avae.evaluation.analysis.noise_usage` on trained runs.

For each run (a directory with its checkpoint), on the first N test images of its data set, K draws
of eps per image and member: the spread of q's mean across eps, Var_eps[mu(x, eps)], the Gaussian's
own variance E_eps[sigma^2(x, eps)], and the noise's share of Var[z|x] (law of total variance),
with the mean and a 95% confidence interval across members (t distribution, `avae.evaluation.stats.mean_ci`).
Models without noise (VAE) or without a Gaussian head (AVB, AVB-AC) are recorded as not applicable.

With --sivi-k, also SIVI's L_K (Yin & Zhou 2018; `avae.likelihood.estimators.sivi`, as `avae evaluate
--metrics sivi` computes it) on the first --sivi-points images for each K given, 0 included (L_0 is
the model's own objective, eq. 9): an encoder that ignores its noise gains nothing from K > 0.

Reads the runs only; writes only --out.

    PYTHONPATH=. python scripts/noise_usage.py RUN_DIR [RUN_DIR ...] --points 1000 --draws 64 \\
        --device cpu --out /tmp/noise_usage.json [--threads 1] [--sivi-k 0,10,100,1000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributions import Normal

from avae.core.graphs import use_device
from avae.core.models import LatentModel
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.evaluation.analysis import NOISE_USAGE_DEFINITIONS, noise_usage, noise_usage_not_applicable
from avae.evaluation.stats import LEVEL, mean_ci
from avae.io import write_json
from avae.likelihood.estimators import log_joint_of, sivi
from avae.likelihood.scoring import model_log_lik
from avae.repro.report.figures import format_table
from avae.training.runs import load_run

SUMMARISED = ("noise_share", "active_share", "active_units", "mean_spread", "within_variance", "image_spread")


def summary(values: list[float]) -> dict[str, float]:
    """Mean across members and its 95% confidence interval (t distribution); nan values (a member
    without an active unit has no active_share) are left out, and `members` counts the rest."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"mean": math.nan, "ci_half": math.nan, "ci_low": math.nan, "ci_high": math.nan, "members": 0}
    mean, half = mean_ci(values)
    return {
        "mean": mean,
        "ci_half": half,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "members": len(values),
    }


def test_images(cfg, points: int, data_dir: str | None) -> torch.Tensor:
    """The first `points` test images of the run's data set, as `avae evaluate` loads them."""
    x = data.load_pixels(
        cfg.dataset, "test", cfg.pixels, data_dir, test_data=cfg.test_data, test_fraction=cfg.test_fraction
    )
    if cfg.test_subset:
        x = x[: cfg.test_subset]
    return x[:points]


@torch.no_grad()
def sivi_bounds(
    model: LatentModel, x: torch.Tensor, seeds, ks: list[int], samples: int, batch_size: int, seed: int
) -> dict[int, torch.Tensor]:
    """SIVI's L_K per member (mean over the points of x), {K: [S]}: per batch, `samples` own
    components and max(ks) extra ones, the first K of which serve L_K (K = 0: the plain objective),
    and the same z draws (`avae.likelihood.estimators.sivi` draws them; the stream is rewound for each K)."""
    noise = MemberRandom(seeds, f"noise-usage-sivi-{seed}", x.device)
    sums = {k: torch.zeros(len(seeds), dtype=torch.float64, device=x.device) for k in ks}
    for chunk in x.split(batch_size):
        batch = chunk.unsqueeze(0).expand(len(seeds), -1, -1)
        own = model.posteriors(batch, noise, samples)
        extra = model.posteriors(batch, noise, max(max(ks), 1))
        log_joint = log_joint_of(model_log_lik(model, batch))
        state = noise.get_state()
        for k in ks:
            noise.set_state(state)  # the same z draws for every K: the gains are paired differences
            first = Normal(extra.loc[:k], extra.scale[:k], validate_args=False)
            sums[k] += sivi(log_joint, own, first, noise).double().sum(1)
    return {k: (v / len(x)).cpu() for k, v in sums.items()}


def measure_run(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    cfg, model, meta = load_run(run_dir, args.device)
    model.requires_grad_(False).eval()
    record: dict[str, Any] = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "pixels": cfg.pixels,
        "latent_dim": cfg.model.latent_dim,
        "noise_dim": cfg.model.noise_dim,
        "epoch": int(meta["epoch"]),
        "seeds": list(cfg.seeds),
    }
    reason = noise_usage_not_applicable(model)
    if reason:
        return {**record, "applicable": False, "reason": reason}
    x = test_images(cfg, args.points, args.data_dir).to(args.device)
    usage = noise_usage(model, x, cfg.seeds, draws=args.draws, batch_size=args.batch_size, seed=args.seed)
    result = usage.as_dict()
    members = result.pop("members")
    record.update(applicable=True, **result, per_member=members)
    record["summary"] = {key: summary([m[key] for m in members]) for key in SUMMARISED}
    record["summary"]["coordinate_share"] = [
        summary([m["coordinate_share"][u] for m in members]) for u in range(cfg.model.latent_dim)
    ]
    if args.sivi_k:
        sivi_started = time.perf_counter()
        bounds = sivi_bounds(
            model,
            x[: args.sivi_points],
            cfg.seeds,
            args.sivi_k,
            args.sivi_samples,
            args.sivi_batch,
            args.seed,
        )
        record["sivi"] = {
            "points": min(args.sivi_points, len(x)),
            "z_draws_per_point": args.sivi_samples,
            "stream": f"noise-usage-sivi-{args.seed}",
            "neg_bound": {
                str(k): summary((-v).tolist()) | {"per_member": (-v).tolist()} for k, v in bounds.items()
            },
            "gain_over_smallest_k": {
                str(k): summary((v - bounds[min(bounds)]).tolist())
                for k, v in bounds.items()
                if k != min(bounds)
            },
            "seconds": round(time.perf_counter() - sivi_started, 1),
        }
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def fmt(entry: dict[str, float], digits: int = 3) -> str:
    """'mean [low, high]' to `digits` significant digits."""
    return f"{entry['mean']:.{digits}g} [{entry['ci_low']:.{digits}g}, {entry['ci_high']:.{digits}g}]"


def print_table(records: list[dict[str, Any]]) -> None:
    rows = []
    for r in records:
        name = f"{r['model']} {r['dataset']} z{r['latent_dim']} n{r['noise_dim']}"
        if not r["applicable"]:
            rows.append([name, r["epoch"], "not applicable", "-", "-", "-", "-", "-"])
            continue
        s = r["summary"]
        rows.append(
            [
                name,
                r["epoch"],
                fmt(s["noise_share"]),
                fmt(s["active_share"]),
                f"{s['active_units']['mean']:.3g}",
                fmt(s["mean_spread"]),
                fmt(s["within_variance"]),
                fmt(s["image_spread"]),
            ]
        )
    header = [
        "run",
        "epoch",
        f"noise share, mean [{LEVEL:.0%} CI]",
        "share over active units",
        "active units",
        "Var_eps[mu]",
        "E_eps[sigma^2]",
        "Var_x[E_eps mu]",
    ]
    print(format_table(header, rows))
    for r in records:
        if r.get("sivi"):
            bounds = ", ".join(f"K={k}: {fmt(v, 5)}" for k, v in r["sivi"]["neg_bound"].items())
            gains = ", ".join(f"K={k}: {fmt(v, 3)}" for k, v in r["sivi"]["gain_over_smallest_k"].items())
            print(f"{r['model']} n{r['noise_dim']}: -L_K on {r['sivi']['points']} points: {bounds}")
            print(f"{r['model']} n{r['noise_dim']}: L_K - L_{min(map(int, r['sivi']['neg_bound']))}: {gains}")
        if not r["applicable"]:
            print(f"{r['run']}: {r['reason']}")


def parse_ks(text: str) -> list[int]:
    ks = sorted({int(k) for k in text.split(",") if k.strip()})
    if any(k < 0 for k in ks):
        raise argparse.ArgumentTypeError(f"K must be >= 0, got {text}")
    return ks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--points", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--draws", type=int, default=64, help="eps draws per image (default 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--batch-size", type=int, default=100, help="test images per batch")
    parser.add_argument("--seed", type=int, default=0, help="names the members' random streams")
    parser.add_argument("--data-dir", default=None, help="the data cache (default: avae's)")
    parser.add_argument(
        "--sivi-k", type=parse_ks, default=[], help="also SIVI's L_K for these K, e.g. 0,10,100"
    )
    parser.add_argument("--sivi-points", type=int, default=50, help="first N images for SIVI (default 50)")
    parser.add_argument("--sivi-samples", type=int, default=10, help="SIVI's z draws per image (default 10)")
    parser.add_argument("--sivi-batch", type=int, default=10, help="images per SIVI batch (default 10)")
    args = parser.parse_args(argv)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    use_device(args.device)
    records = [measure_run(run, args) for run in args.runs]
    write_json(
        args.out,
        {
            "command": sys.argv,
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("runs", "out")
            },
            "definitions": NOISE_USAGE_DEFINITIONS,
            "runs": records,
        },
    )
    print_table(records)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
