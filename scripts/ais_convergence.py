"""Is AIS at the published settings tight on real test images? (issue 22, item 2)

For each trained run, on its first N test images (the first of the points every published AIS
figure uses), forward AIS from the prior at several numbers of annealing steps, with C chains per
point; the estimate from the first c < C of those chains is the estimate a run with c chains would
have given (the chains are independent), so one run per step count gives every chain count.
IWAE-k with the model's own proposal on the same points is recorded beside them.

AIS is a stochastic lower bound on log p(x): more steps and chains can only raise its expectation
towards log p(x). If the 1,000-step figure is within a small fraction of a nat of the 10,000-step
one, AIS at 1,000 steps is tight enough for the comparisons the report makes; if it is far, the
published AIS figures are too pessimistic by at least that much.

    PYTHONPATH=. python scripts/ais_convergence.py RUN_DIR [RUN_DIR ...] --points 50 \
        --steps 1000,3000,10000 --chains 16 --subchains 4 --device cuda --out ais.json

`--seeds` scores only some members of each run (their figures are those they get beside the
others, to rounding), for a study too long for every member on a CPU. `--start encoder` starts AIS
from a Gaussian fitted to the encoder instead of the prior (`ais_from`; the comparison of
results/measurement, section 1d; the published figures start from the prior).

Results are written after every (run, steps) pair, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.distributions import Normal

from avae.core import objectives as obj
from avae.core.graphs import use_device
from avae.core.models import build_model
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.evaluation.stats import mean_ci
from avae.io import write_json
from avae.likelihood.estimators import ais, normal_draws, pilot_step_sizes
from avae.likelihood.scoring import EvalSettings, forward_ais, iwae_points, model_log_lik
from avae.training.runs import load_run


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def member_summary(neg_per_point: torch.Tensor) -> dict:
    """Per-member means over points of a negative log-likelihood-type value [S, N], and their
    mean with a 95% t-interval across members."""
    means = neg_per_point.double().mean(1).tolist()
    mean, half = mean_ci(means)
    return {"per_member": means, "mean": mean, "ci95_half_width": half}


def keep_seeds(cfg, model, seeds: list[int] | None):
    """The run's configuration and model restricted to the members of `seeds` (all when None):
    each member's weights and random streams are its own, so a member scored alone gives the
    figures it gives beside the others."""
    if seeds is None:
        return cfg, model
    missing = sorted(set(seeds) - set(cfg.seeds))
    if missing:
        raise SystemExit(f"--seeds {missing} are not seeds of this run (its seeds: {list(cfg.seeds)})")
    rows = torch.tensor([list(cfg.seeds).index(seed) for seed in seeds])
    cfg = replace(cfg, seeds=tuple(seeds))
    subset = build_model(cfg.model, cfg.seeds).to(next(model.parameters()).device)
    subset.load_state_dict({key: value[rows.to(value.device)] for key, value in model.state_dict().items()})
    return cfg, subset


def ais_from(start: Normal, log_lik, settings: EvalSettings, noise: MemberRandom):
    """Forward AIS along the geometric path from `start` r(z) (a diagonal Gaussian per member and
    point, [S, N, Z]) to p(z) p(x|z): f_beta = r^(1 - beta) (p(z) p(x|z))^beta. r is normalised and
    drawn from exactly, so exp(log-weight) is still an unbiased estimate of p(x). Returns the
    log-weights [C, S, N] and AIS's statistics, as `forward_ais`."""

    def log_r(z: torch.Tensor) -> torch.Tensor:
        return start.log_prob(z).sum(-1)

    def log_rest(z: torch.Tensor) -> torch.Tensor:  # log p(z) + log p(x|z) - log r(z)
        return obj.log_prior(z) + log_lik(z) - log_r(z)

    def draws(count: int) -> torch.Tensor:
        return start.loc + start.scale * normal_draws(noise, count, *start.loc.shape[1:])

    betas = obj.sigmoid_schedule(settings.ais_steps)
    schedule = pilot_step_sizes(log_r, log_rest, draws(settings.hmc.pilot_chains), betas, noise, settings.hmc)
    return ais(log_r, log_rest, draws(settings.ais_chains), betas, noise, settings.hmc, schedule)


def encoder_start_ais(model, x: torch.Tensor, settings: EvalSettings, noise: MemberRandom):
    """AIS from the model's IWAE proposal (its Gaussian q(z|x), or for an implicit encoder a
    diagonal Gaussian fitted to its draws, as AVB's reference code starts) to p(z) p(x|z)."""
    start = model.proposal(x, noise, samples=settings.avb_samples, inflate=settings.avb_inflate)
    return ais_from(start, model_log_lik(model, x), settings, noise)


def run_study(run_dir: Path, args: argparse.Namespace, record: dict, out: Path, started: float) -> None:
    use_device(args.device)
    cfg, model, meta = load_run(run_dir, args.device)
    members = len(cfg.seeds)  # IWAE chunks its draws by the run's whole member count, as alone
    cfg, model = keep_seeds(cfg, model, args.seeds)
    model.requires_grad_(False)
    x = data.load_pixels(cfg.dataset, "test", cfg.pixels, args.data_dir)[: args.points].to(args.device)
    batch = x.unsqueeze(0).expand(len(cfg.seeds), -1, -1)
    entry = record.setdefault(
        run_dir.name,
        {
            "model": cfg.model.name,
            "dataset": cfg.dataset,
            "latent_dim": cfg.model.latent_dim,
            "epoch": meta["epoch"],
            "seeds": list(cfg.seeds),
            "points": len(x),
            "ais": {},
        },
    )
    settings = EvalSettings(k=(args.iwae_k,), batch_size=len(x), seed=args.seed)
    tick = time.perf_counter()
    iwae = iwae_points(model, x, cfg.seeds, settings, budget_members=members)[args.iwae_k]
    entry[f"iwae_k{args.iwae_k}"] = {**member_summary(-iwae), "seconds": round(time.perf_counter() - tick, 2)}
    write_json(out, record)
    for steps in args.steps:
        if time.perf_counter() - started > args.deadline:
            print(f"deadline reached before {run_dir.name} at {steps} steps", flush=True)
            return
        settings = EvalSettings(ais_steps=steps, ais_chains=args.chains, batch_size=len(x), seed=args.seed)
        noise = MemberRandom(cfg.seeds, f"ais-convergence-{steps}-{args.seed}", x.device)
        tick = time.perf_counter()
        if args.start == "encoder":
            log_w, info = encoder_start_ais(model, batch, settings, noise)
        else:
            log_w, _, info = forward_ais(model, model_log_lik(model, batch), len(x), settings, noise)
        seconds = time.perf_counter() - tick
        by_chains = {}
        for chains in sorted({*args.subchains, args.chains}):
            log_z = torch.logsumexp(log_w[:chains].double(), 0) - math.log(chains)  # [S, N]
            by_chains[str(chains)] = member_summary(-log_z)
        hmc = {key: value for key, value in info.items() if isinstance(value, float)}  # not per member
        entry["ais"][str(steps)] = {"by_chains": by_chains, "seconds": round(seconds, 2), "hmc": hmc}
        write_json(out, record)
        shown = ", ".join(f"{c} chains {v['mean']:.2f}" for c, v in by_chains.items())
        print(f"{run_dir.name}: AIS {steps} steps: {shown} ({seconds:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories (with checkpoint)")
    parser.add_argument("--points", type=int, default=50, help="the first N test images (default 50)")
    parser.add_argument(
        "--steps", type=ints, default=[1000, 3000, 10000], help="annealing steps, comma-separated"
    )
    parser.add_argument("--chains", type=int, default=16, help="chains per point (default 16)")
    parser.add_argument("--subchains", type=ints, default=[4], help="also the estimate of the first c chains")
    parser.add_argument("--iwae-k", type=int, default=1000, help="IWAE-k on the same points (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", type=ints, default=None, help="only the members of these training seeds (default all)"
    )
    parser.add_argument(
        "--start",
        choices=("prior", "encoder"),
        default="prior",
        help="where AIS starts: the prior (every published figure) or a Gaussian fitted to the encoder",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--deadline", type=float, default=math.inf, help="seconds; start nothing after it")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    if any(c > args.chains or c < 1 for c in args.subchains):
        parser.error("--subchains must be between 1 and --chains")
    started = time.perf_counter()
    record: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    record["settings"]["runs"] = [str(r) for r in args.runs]
    record["torch"] = torch.__version__
    record["device_name"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    for run_dir in args.runs:
        run_study(run_dir, args, record, args.out, started)
    json.dump({k: v for k, v in record.items() if k != "settings"}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
