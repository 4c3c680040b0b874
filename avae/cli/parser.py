"""The `avae` command line's parser: every command, its options and what each means (the options
that are settings are avae.cli.options'). A usage error is one line, like every other error. The
commands themselves are in `avae.cli.commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from avae.cli.options import EVALUATE_OPTIONS, TRAIN_OPTIONS, comma_list
from avae.repro.paper import EXPERIMENTS
from avae.repro.plan import PROFILES
from avae.repro.ray_cluster import EXECUTORS
from avae.version import __version__


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error: `avae: error: ...`."""

    def error(self, message: str):
        self.exit(2, f"avae: error: {message}; see `{self.prog} --help`\n")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """How to run (never what the numbers are): --device, --data-dir, --threads."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--data-dir", help="data cache directory (default $AVAE_DATA_DIR or ~/.cache/avae)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads, 1 to this machine's cores (default: torch's choice)"
    )


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Where the configurations run: --jobs, --executor, --address."""
    parser.add_argument(
        "--jobs",
        type=int,
        help="configurations run at a time: parallel processes (local), or the size of the local Ray "
        "cluster and, on CUDA, runs sharing each GPU (ray); default 1 on a CPU, and on CUDA as many as "
        "CPU cores and free GPU memory (2 GiB each) allow, at most 16",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local (default): this machine; ray: each configuration, all its seeds as members, is one "
        "Ray task declaring --threads CPUs (at least 1) and 1/--jobs of a GPU on CUDA (needs "
        "pip install 'avae[ray]')",
    )
    parser.add_argument(
        "--address",
        help="with --executor ray: the running cluster to use (HEAD_IP:6379, auto or ray://HEAD_IP:10001); "
        "default: start a local Ray cluster. --out must then be a directory every node reaches at the "
        "same path (a shared file system with working file locks)",
    )


def add_pack_option(parser: argparse.ArgumentParser, also: str = "") -> None:
    """--pack, for `avae reproduce` and `avae sweep`."""
    parser.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train the runs that differ only in their seeds, data set and latent and noise dimensions "
        "(padded to the largest) as one model each (a pack), each still into its own directory, and "
        "evaluate those of equal sizes as one model each too (every run's eval.json as alone); local "
        f"executor only{also}. Off by default: about 5%% cheaper per member-step on a CPU (within the "
        "noise), not yet run on a GPU",
    )


def build_parser(handlers: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The whole command line; `handlers` maps each command to the function that runs it."""
    parser = OneLineParser(
        prog="avae",
        description="Adversarial variational autoencoders: train, evaluate, sample and compare VAE, "
        "VAE+eps, AVB, AVB-AC and AVAE on MNIST, Fashion-MNIST or your own data.",
    )
    parser.add_argument("--version", action="version", version=f"avae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train one configuration, one member per seed",
        description="Train all seeds of one configuration as one batched model. Settings come "
        "from the defaults, then --preset, then --config, then the options given here.",
    )
    train.add_argument("--preset", help="a named configuration, e.g. iwae-anchor (overridden by the rest)")
    train.add_argument("--config", help="TOML or JSON file of settings (underscored option names)")
    for flag, kwargs in TRAIN_OPTIONS:
        train.add_argument(flag, **kwargs)
    train.add_argument("--out", required=True, help="run directory (metrics, checkpoint, samples)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with the settings of its config.json; only --epochs, --lr, "
        "--disc-lr and --adv-lr may be given to change them",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--compile", action="store_true", help="torch.compile the networks (see BENCH.md)")
    add_runtime_options(train)
    train.set_defaults(func=handlers["train"])

    evaluate = commands.add_parser(
        "evaluate",
        help="test negative ELBO and log-likelihood bounds of a trained run",
        description="Evaluate every member of RUN_DIR at once and merge the figures into "
        "RUN_DIR/eval.json: the model's own objective (elbo), the discriminator-based figure of a model "
        "with a critic (critic), the reconstruction term E_q[-log p(x|z)] alone (recon), IWAE-k bounds "
        "(iwae), SIVI's bound for "
        "noise-injected encoders (sivi), AIS with HMC (ais) and, with --bdmc, a BDMC check of AIS on "
        "data simulated from the model. Every figure is a negative log p(x)-type value in nats.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    for flag, kwargs in EVALUATE_OPTIONS:
        evaluate.add_argument(flag, **kwargs)
    evaluate.add_argument("--bdmc", action="store_true", help="also run BDMC (forward and reverse AIS)")
    add_runtime_options(evaluate)
    evaluate.set_defaults(func=handlers["evaluate"])

    sample = commands.add_parser(
        "sample",
        help="an image grid of samples from the prior",
        description="Draw z ~ p(z) and save the decoder means as an image grid (as in Fig. 8).",
    )
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64, an 8x8 grid)")
    sample.add_argument("--out", help="PNG file to write (default RUN_DIR/samples.png)")
    sample.add_argument(
        "--member", type=int, default=0, help="which member (seed index) to sample (default 0)"
    )
    sample.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    sample.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    sample.set_defaults(func=handlers["sample"])

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
    fetch.set_defaults(func=handlers["data_fetch"])
    info = data_sub.add_parser("info", help="where each file came from and whether it verifies")
    info.add_argument("--data-dir", help="data cache directory (default $AVAE_DATA_DIR or ~/.cache/avae)")
    info.set_defaults(func=handlers["data_info"])

    reproduce = commands.add_parser(
        "reproduce",
        help="train and evaluate every experiment of the paper (see --profile)",
        description="Train, evaluate and analyse the runs behind Table 1 and Figs. 6-8 on MNIST and "
        "Fashion-MNIST. Only what is missing runs: finished runs in --out (keyed by a hash of their "
        "configuration) are reused and unfinished ones resume; a run that diverged is not retried (its "
        "diverged.json says where). Then write the report with `avae report`.",
    )
    reproduce.add_argument(
        "--profile",
        default="quick",
        help="; ".join(
            f"{p.name}: {p.description}" + (f" (measured: {p.measured})" if p.measured else "")
            for p in PROFILES.values()
        )
        + ". Default quick. `--dry-run` estimates the time of any profile on this machine.",
    )
    reproduce.add_argument(
        "--experiments",
        type=comma_list,
        default=(),
        metavar="NAMES",
        help=f"only the runs of these experiments, comma-separated ({', '.join(EXPERIMENTS)}; default "
        "every experiment of the profile); the runs keep their directories, so the whole profile on "
        "the same --out later reuses them",
    )
    reproduce.add_argument(
        "--runs",
        type=comma_list,
        default=(),
        metavar="NAMES",
        help="only these runs of the profile, in this order, comma-separated: their directory names "
        "as --dry-run lists them, or a start that names one run (avb-mnist-z15); for moving some "
        "runs to another machine (copy their folders back into --out: they are reused)",
    )
    reproduce.add_argument(
        "--train-only",
        action="store_true",
        help="train (with each epoch's test -ELBO) and evaluate nothing else: no IWAE, AIS, BDMC or "
        "analysis; the same command without it adds them",
    )
    reproduce.add_argument(
        "--out",
        default="runs/reproduce",
        help="output directory (default runs/reproduce); with --executor ray on several nodes, a "
        "directory every node reaches at the same path",
    )
    add_executor_options(reproduce)
    reproduce.add_argument(
        "--dry-run", action="store_true", help="list the runs with an estimated time each; train nothing"
    )
    reproduce.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard scalars and sample grids (needs the [tensorboard] extra)",
    )
    add_pack_option(reproduce, "; without --tensorboard")
    reproduce.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_runtime_options(reproduce)
    reproduce.set_defaults(func=handlers["reproduce"])

    sweep_cmd = commands.add_parser(
        "sweep",
        help="train and evaluate every point of a grid of settings",
        description="Train every point of the Cartesian product of --grid over the settings given as for "
        "`avae train` (one configuration, all its seeds as members, per task; local or Ray executor), "
        "evaluate each one's own figure (and --metrics), and write OUT/sweep.json with every point, its "
        "run directory and its final test figures. Runs are named and reused as by `avae reproduce`: "
        "a finished run is reused, an unfinished one resumes and a diverged one is not retried.",
    )
    sweep_cmd.add_argument("--preset", help="a named configuration (overridden by the rest)")
    sweep_cmd.add_argument("--config", help="TOML or JSON file of settings (underscored option names)")
    for flag, kwargs in TRAIN_OPTIONS:
        sweep_cmd.add_argument(flag, **kwargs)
    sweep_cmd.add_argument(
        "--grid",
        nargs="+",
        required=True,
        metavar="KEY=V1,V2",
        help="settings to vary, e.g. adv_weight=0.01,0.1,1 critic_input=xz,z (names of the options above, "
        "with underscores; a list setting separates its items by /, e.g. hidden=256/64/32,200/200)",
    )
    sweep_cmd.add_argument(
        "--metrics",
        default="elbo",
        help="comma-separated, as for `avae evaluate` at its default settings on the run's test points "
        "(default elbo: the model's own figure)",
    )
    sweep_cmd.add_argument(
        "--out",
        required=True,
        help="output directory (one run directory per configuration, sweep.json); with --executor ray on "
        "several nodes, a directory every node reaches at the same path",
    )
    add_executor_options(sweep_cmd)
    add_pack_option(sweep_cmd)
    sweep_cmd.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_options(sweep_cmd)
    sweep_cmd.set_defaults(func=handlers["sweep"])

    report = commands.add_parser(
        "report",
        help="write DIR/report.md, figures and CSVs from a reproduction or a sweep",
        description="Read the run directories of `avae reproduce --out DIR` and write DIR/report.md: "
        "Table 1 beside the paper, honest IWAE/AIS figures, Figs. 6-8, a verdict for each claim and "
        "analyses beyond the paper; PNG figures and CSV files go to DIR/report/. On the --out of "
        "`avae sweep`, a row and a curve per point. For a single run, `avae evaluate RUN_DIR` writes its "
        "figures and its model card lists them.",
    )
    report.add_argument("dir", metavar="DIR", help="the --out directory of `avae reproduce` or `avae sweep`")
    report.set_defaults(func=handlers["report"])

    publish = commands.add_parser(
        "publish",
        help="copy a reproduction's results, without checkpoints, into a folder for a repository",
        description="Copy every run's config.json, metrics.csv, eval.json, analysis.json, model card and "
        "first sample and reconstruction grids from OUT into the new folder DEST, with reproduce.json and "
        "index.json; write DEST/report.md from those files alone and DEST/INDEX.md (command, commits, "
        "machines, compute time).",
    )
    publish.add_argument("out", metavar="OUT", help="the --out directory of `avae reproduce`")
    publish.add_argument("dest", metavar="DEST", help="a new or empty folder, e.g. results/paper-z10")
    publish.set_defaults(func=handlers["publish"])

    analyse = commands.add_parser(
        "analyse",
        help="analyses beyond the paper for a trained run (written to RUN_DIR/analysis.json)",
        description="KL of a Gaussian fitted to q(z), MMD to the prior, active units, and a Frechet "
        "distance of samples to test images on the features of a classifier trained once per data set "
        "and cached (default: RUN_DIR/../classifiers, where `avae reproduce` keeps it).",
    )
    analyse.add_argument("run_dir", metavar="RUN_DIR")
    analyse.add_argument(
        "--samples", type=int, default=1000, help="samples and test images used (default 1000)"
    )
    analyse.add_argument(
        "--classifiers", help="folder of cached classifiers (default RUN_DIR/../classifiers)"
    )
    analyse.add_argument(
        "--classifier-epochs", type=int, default=3, help="epochs if it must be trained (default 3)"
    )
    add_runtime_options(analyse)
    analyse.set_defaults(func=handlers["analyse"])

    bench = commands.add_parser(
        "bench",
        help="measure training and evaluation speed (writes BENCH.md and bench.json)",
        description="Matmul peak, training throughput of every model at S = 1, 5, 15 in fp32 and "
        "bf16, a plain PyTorch loop, Pythae (with --pythae-python) and evaluation, side by side.",
    )
    bench.add_argument("--out", default="benchmarks", help="output directory (default benchmarks)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes and windows (seconds; for tests)")
    bench.add_argument(
        "--pythae-python",
        help="a Python interpreter with pythae==0.1.2 installed, for the external peer (default: skip it)",
    )
    bench.add_argument(
        "--threads", type=int, help="torch threads, 1 to this machine's cores (default: as configured)"
    )
    bench.set_defaults(func=handlers["bench"])
    return parser
