"""The options that are settings: `avae train`'s and `avae sweep`'s (`TRAIN_OPTIONS`, the fields of
TrainConfig and ModelConfig) and `avae evaluate`'s (`EVALUATE_OPTIONS`, the fields of EvalSettings),
each help's {default} filled from the dataclass that defines it (`with_defaults`), the types of their
values, and the TOML or JSON file settings may also come from (`read_config_file`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from avae.core.models import ADV_UPDATES, MODELS, ModelConfig, default_noise_dim
from avae.errors import ConfigError
from avae.likelihood.scoring import EvalSettings
from avae.training.config import MODEL_KEYS, TRAIN_KEYS, TrainConfig, flatten

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from None


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def read_config_file(path: str) -> dict[str, Any]:
    """Flat settings from a TOML or JSON file (keys as in `avae train --help`, with underscores)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file} ({exc.strerror}); check --config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {file} is not UTF-8 text; give a TOML or JSON file") from None
    try:
        loaded = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file} does not parse ({exc}); fix its syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a table of settings")
    settings = loaded.get("config", loaded) if isinstance(loaded.get("config"), dict) else loaded
    unknown = sorted(set(flatten(settings)) - MODEL_KEYS - TRAIN_KEYS - {"model"})
    if unknown:
        raise ConfigError(
            f"config file {file} has unknown setting(s) {', '.join(unknown)}; "
            "use the names of `avae train --help` with underscores"
        )
    return settings


TRAIN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--model", {"help": f"{' | '.join(MODELS)} (default {{default}})"}),
    (
        "--dataset",
        {
            "help": "mnist | fashion-mnist (default {default}), or your own data: a .npy/.npz file of "
            "values in [0, 1] or a folder of PNG/JPEG images (see the README)"
        },
    ),
    ("--test-data", {"help": "your own data: a file of test examples (default: its 'test' array)"}),
    (
        "--test-fraction",
        {
            "type": float,
            "help": "your own data without test examples: the last fraction held out (default {default})",
        },
    ),
    ("--pixels", {"help": "continuous (pixel/255, the paper's; default) | binarized (dynamic)"}),
    ("--likelihood", {"help": "decoder: bernoulli (the paper's; default) | continuous-bernoulli"}),
    ("--latent-dim", {"type": int, "help": "latent dimension (paper: 10, 15, 20; default {default})"}),
    (
        "--noise-dim",
        {
            "type": int,
            "help": "injected-noise dimension (paper: 5, 10, 15; default {default}; not for vae)",
        },
    ),
    (
        "--hidden",
        {
            "type": int_list,
            "help": "encoder widths, comma-separated (default {default}; decoder mirrors)",
        },
    ),
    ("--activation", {"help": "leaky-relu (slope 0.2; default) | relu | elu | softplus | tanh"}),
    ("--adv-loss", {"help": "AVAE encoder's adversarial loss: non-saturating (default) | minimax"}),
    (
        "--critic-input",
        {"help": "what AVAE's D sees: xz (default; D(x, z)) | z (D(z): the aggregate posterior)"},
    ),
    (
        "--adv-update",
        {
            "help": f"AVAE's encoder update against D: {' | '.join(ADV_UPDATES)}; joint (default) adds the "
            "weighted adversarial term to the ELBO step's loss, separate takes its own Adam step"
        },
    ),
    (
        "--adv-weight",
        {
            "type": float,
            "help": "weight of AVAE's adversarial term (joint) or of its step's learning rate "
            "(separate); default {default}",
        },
    ),
    (
        "--ac-samples",
        {"type": int, "help": "AVB-AC: encoder draws per point for q(z|x)'s moments (default {default})"},
    ),
    (
        "--ac-moments",
        {
            "choices": ("others", "all"),
            "help": "AVB-AC: standardise z by the moments of the other draws (others, the default) or of "
            "all draws, z included (all: how AVB-AC was trained before; it bounds the standardised z)",
        },
    ),
    ("--batch-size", {"type": int, "help": "minibatch size (default {default})"}),
    ("--epochs", {"type": int, "help": "number of epochs (default {default})"}),
    (
        "--lr",
        {"type": float, "help": "Adam learning rate of the ELBO step (default {default})"},
    ),
    ("--disc-lr", {"type": float, "help": "discriminator learning rate (default {default})"}),
    (
        "--adv-lr",
        {"type": float, "help": "AVAE adversarial encoder-step learning rate (default {default})"},
    ),
    ("--beta1", {"type": float, "help": "Adam beta1 (default {default}; avb {avb})"}),
    ("--beta2", {"type": float, "help": "Adam beta2 (default {default})"}),
    ("--disc-steps", {"type": int, "help": "discriminator steps per ELBO step (default {default})"}),
    (
        "--seeds",
        {
            "type": int_list,
            "help": "comma-separated seeds, one member each, trained together (default {default})",
        },
    ),
    ("--train-subset", {"type": int, "help": "train on the first N images only (default {default}: all)"}),
    (
        "--holdout",
        {
            "type": int,
            "help": "hold out the last N training images as a validation split for choosing settings; "
            "metrics.csv then reports valid_neg_elbo on them (default {default}: none)",
        },
    ),
    (
        "--precision",
        {"help": "fp32 (default) | bf16: matrix products under bf16 autocast (changes the numbers)"},
    ),
    (
        "--test-subset",
        {"type": int, "help": "evaluate on the first N test images (default {default}: all)"},
    ),
]


EVALUATE_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "--metrics",
        {
            "default": "elbo",
            "help": "comma-separated: elbo, critic, recon, iwae, sivi, ais, bdmc (default {default})",
        },
    ),
    ("--k", {"type": int_list, "help": "IWAE sample sizes (default {default})"}),
    ("--sivi-k", {"type": int, "help": "extra eps1 draws K of SIVI's L_K (default {default})"}),
    ("--sivi-samples", {"type": int, "help": "z draws per point for SIVI (default {default})"}),
    ("--ais-chains", {"type": int, "help": "independent AIS chains per point (default {default})"}),
    ("--ais-steps", {"type": int, "help": "AIS intermediate distributions (default {default})"}),
    ("--leapfrog", {"type": int, "help": "leapfrog steps per HMC transition (default {default})"}),
    ("--step-size", {"type": float, "help": "initial HMC step size (default {default}; adapted)"}),
    (
        "--target-accept",
        {"type": float, "help": "HMC acceptance the step size adapts to (default {default})"},
    ),
    ("--subset", {"type": int, "help": "evaluate on the first N test points (default {default}: all)"}),
    ("--bdmc-points", {"type": int, "help": "points simulated from the model for BDMC (default {default})"}),
    ("--batch-size", {"type": int, "help": "test points per batch (default {default})"}),
    ("--seed", {"type": int, "help": "seed of the evaluation's random draws (default {default})"}),
    (
        "--avb-samples",
        {"type": int, "help": "AVB: encoder draws per point for its proposal (default {default})"},
    ),
    ("--avb-inflate", {"type": float, "help": "AVB: proposal scale multiplier (default {default})"}),
]


def shown(value: Any) -> str:
    """A default as the help writes it: 1e-3, 0.9, 256,64,32."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value)
    if isinstance(value, float) and 0 < abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def with_defaults(options: list[tuple[str, dict[str, Any]]], *sources: object, **extra: object) -> None:
    """Fill each help's {default} with the option's default as the library states it: the option's
    own `default`, else the field of its name on the first of `sources` that has one (so each
    default is written once, where the setting is defined). `extra` fills other placeholders."""
    for flag, kwargs in options:
        if "{default}" not in kwargs.get("help", ""):
            continue
        key = flag[2:].replace("-", "_")
        if "default" in kwargs:
            value = kwargs["default"]
        else:
            value = next(getattr(s, key) for s in sources if hasattr(s, key))
        kwargs["help"] = kwargs["help"].format(
            default=shown(value), **{k: shown(v) for k, v in extra.items()}
        )


with_defaults(
    TRAIN_OPTIONS,
    # the model's name (TrainConfig.model is a ModelConfig) and the noise-injected models' noise
    SimpleNamespace(model=ModelConfig().name, noise_dim=default_noise_dim("vae-noise")),
    TrainConfig(),
    ModelConfig(),
    avb=MODELS["avb"].train_defaults["beta1"],
)
with_defaults(EVALUATE_OPTIONS, EvalSettings())
EVAL_SETTINGS = {f.name for f in fields(EvalSettings)}  # the options of `avae evaluate` that are settings
