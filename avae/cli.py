"""The `avae` command line. Every command has --help; bad input is refused in one sentence
before any work starts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tomllib

from avae.errors import AvaeError, ConfigError


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def read_config_file(path: str) -> dict[str, Any]:
    """Flat settings from a TOML or JSON file (keys as in `avae train --help`, with underscores)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        loaded = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file} does not parse ({exc}); fix its syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a table of settings")
    return loaded.get("config", loaded) if isinstance(loaded.get("config"), dict) else loaded


TRAIN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--model", {"help": "vae | vae-noise | avb | avae (default vae)"}),
    ("--dataset", {"help": "mnist | fashion-mnist (default mnist)"}),
    ("--pixels", {"help": "continuous (pixel/255, the paper's; default) | binarized (dynamic)"}),
    ("--likelihood", {"help": "decoder: bernoulli (the paper's; default) | continuous-bernoulli"}),
    ("--latent-dim", {"type": int, "help": "latent dimension (paper: 10, 15, 20; default 10)"}),
    (
        "--noise-dim",
        {
            "type": int,
            "help": "injected-noise dimension (paper: 5, 10, 15; default 10; not for vae)",
        },
    ),
    (
        "--hidden",
        {
            "type": int_list,
            "help": "encoder widths, comma-separated (default 256,64,32; decoder mirrors)",
        },
    ),
    ("--activation", {"help": "relu (default) | tanh | softplus | elu | leaky-relu"}),
    ("--adv-loss", {"help": "AVAE encoder's adversarial loss: non-saturating (default) | minimax"}),
    (
        "--adv-weight",
        {"type": float, "help": "weight of the AVAE adversarial encoder step (default 1)"},
    ),
    ("--batch-size", {"type": int, "help": "minibatch size (default 100)"}),
    ("--epochs", {"type": int, "help": "number of epochs (default 10)"}),
    (
        "--lr",
        {"type": float, "help": "Adam learning rate of the ELBO step (default 1e-3; avb 5e-5)"},
    ),
    ("--disc-lr", {"type": float, "help": "discriminator learning rate (default 1e-3; avb 1e-4)"}),
    (
        "--adv-lr",
        {"type": float, "help": "AVAE adversarial encoder-step learning rate (default 1e-3)"},
    ),
    ("--beta1", {"type": float, "help": "Adam beta1 (default 0.9; avb 0.5)"}),
    ("--beta2", {"type": float, "help": "Adam beta2 (default 0.999)"}),
    ("--disc-steps", {"type": int, "help": "discriminator steps per ELBO step (default 1)"}),
    (
        "--seeds",
        {
            "type": int_list,
            "help": "comma-separated seeds, one member each, trained together (default 0)",
        },
    ),
    ("--train-subset", {"type": int, "help": "train on the first N images only (default 0: all)"}),
    (
        "--test-subset",
        {"type": int, "help": "evaluate on the first N test images (default 0: all)"},
    ),
]


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--data-dir", help="data cache directory (default $AVAE_DATA_DIR or ~/.cache/avae)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avae",
        description="Adversarial variational autoencoders: train, evaluate and sample VAE, "
        "VAE+eps, AVB and AVAE on MNIST and Fashion-MNIST.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train one configuration, one member per seed",
        description="Train all seeds of one configuration as one batched model. Settings come "
        "from the defaults, then --config, then the options given here.",
    )
    train.add_argument("--config", help="TOML or JSON file of settings (underscored option names)")
    for flag, kwargs in TRAIN_OPTIONS:
        train.add_argument(flag, **kwargs)
    train.add_argument("--out", required=True, help="run directory (metrics, checkpoint, samples)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="test negative ELBO of a trained run",
        description="Compute the test negative ELBO of every member of RUN_DIR (each model's own "
        "objective; AVB's is a discriminator-based estimate) and write RUN_DIR/eval.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    add_runtime_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    sample = commands.add_parser(
        "sample",
        help="an image grid of samples from the prior",
        description="Draw z ~ p(z) and save the decoder means as an image grid (as in Fig. 8).",
    )
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64, an 8x8 grid)")
    sample.add_argument("--out", default="samples.png", help="PNG file to write (default samples.png)")
    sample.add_argument(
        "--member", type=int, default=0, help="which member (seed index) to sample (default 0)"
    )
    sample.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    sample.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    sample.set_defaults(func=cmd_sample)

    data_cmd = commands.add_parser(
        "data",
        help="fetch and inspect the data sets",
        description="Fetch MNIST / Fashion-MNIST into the cache and check them.",
    )
    data_sub = data_cmd.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_sub.add_parser(
        "fetch",
        help="download and verify a data set",
        description="Try each source in turn; verify every file by MD5.",
    )
    fetch.add_argument("--dataset", default="all", help="mnist | fashion-mnist | all (default all)")
    fetch.add_argument("--data-dir", help="data cache directory (default $AVAE_DATA_DIR or ~/.cache/avae)")
    fetch.set_defaults(func=cmd_data_fetch)
    info = data_sub.add_parser("info", help="where each file came from and whether it verifies")
    info.add_argument("--data-dir", help="data cache directory (default $AVAE_DATA_DIR or ~/.cache/avae)")
    info.set_defaults(func=cmd_data_info)

    reproduce = commands.add_parser(
        "reproduce",
        help="train and evaluate the paper's models (see --profile)",
        description="Train VAE, VAE+eps, AVB and AVAE on a short budget and print the test "
        "negative ELBO table. Finished runs in --out are reused.",
    )
    reproduce.add_argument("--profile", default="quick", help="quick (default) | smoke")
    reproduce.add_argument(
        "--out", default="runs/reproduce", help="output directory (default runs/reproduce)"
    )
    reproduce.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_runtime_options(reproduce)
    reproduce.set_defaults(func=cmd_reproduce)
    return parser


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    settings = read_config_file(args.config) if args.config else {}
    for flag, _ in TRAIN_OPTIONS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    from avae.train import Runtime, make_config, train

    cfg = make_config(train_overrides(args))
    runtime = Runtime(resolve_device(args.device), args.data_dir, progress=not args.no_progress)
    out = train(cfg, args.out, resume=args.resume, runtime=runtime)
    print(f"run written to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from avae.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, device=resolve_device(args.device), data_dir=args.data_dir)
    metric = result["metrics"]["neg_elbo"]
    print(f"{result['model']} on {result['dataset']}, epoch {result['epoch']}: test {metric['label']}")
    for row in metric["per_member"]:
        print(f"  seed {row['seed']}: {row['value']:.3f}")
    print(f"  mean {metric['mean']:.3f} ± {metric['std']:.3f} (std over {metric['members']} members)")
    print(f"written to {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from avae.nets import MemberRandom
    from avae.report import save_image_grid
    from avae.train import load_run

    if args.n <= 0:
        raise ConfigError(f"--n must be positive, got {args.n}")
    cfg, model, _ = load_run(args.run_dir, resolve_device(args.device))
    if not 0 <= args.member < len(cfg.seeds):
        raise ConfigError(f"--member must be in 0..{len(cfg.seeds) - 1} for this run, got {args.member}")
    device = next(model.parameters()).device
    images = model.sample(args.n, MemberRandom([args.seed] * len(cfg.seeds), "samples", device))
    path = save_image_grid(
        images[args.member].float().cpu().numpy(), args.out, rows=max(1, round(args.n**0.5))
    )
    print(f"{args.n} samples of member {args.member} (seed {cfg.seeds[args.member]}) written to {path}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from avae import data

    names = data.DATASETS if args.dataset == "all" else (args.dataset,)
    for name in names:
        if name not in data.DATASETS:
            raise ConfigError(f"unknown dataset {name!r}; choose mnist, fashion-mnist or all")
    for name in names:
        data.fetch(name, args.data_dir)
        print(f"{name}: verified in {data.resolve_data_dir(args.data_dir) / name}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from avae import data
    from avae.report import format_table

    rows = data.describe(args.data_dir)
    print(f"data directory: {data.resolve_data_dir(args.data_dir)}")
    print(
        format_table(
            ["dataset", "file", "present", "verified", "source"],
            [[r["dataset"], r["file"], r["present"], r["verified"], r.get("source") or "-"] for r in rows],
        )
    )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from avae.experiments import reproduce

    reproduce(
        args.profile,
        args.out,
        device=resolve_device(args.device),
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvaeError as exc:
        print(f"avae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "avae: interrupted; finished epochs are checkpointed, continue with --resume",
            file=sys.stderr,
        )
        return 130
