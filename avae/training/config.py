"""What a run is (`TrainConfig`, hashed into its identity) and how to run it (`Runtime`).

A `TrainConfig` holds every setting that changes the numbers: the model's architecture and
objective (`ModelConfig`), the data, the optimiser, the seeds, the precision. Its hash names the
run directory of a reproduction, so a finished run is found again and reused. A `Runtime` holds
what does not change the numbers: device, data directory, progress display, CPU threads.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_origin, get_type_hints

import numpy
import torch

from avae.core.models import MODELS, ModelConfig, default_noise_dim, reading_of
from avae.data import datasets as data
from avae.data import userdata
from avae.errors import ConfigError, check_choice
from avae.version import __version__

# Settings that may change when a run is resumed (e.g. a lower learning rate after divergence).
RESUMABLE_CHANGES = ("epochs", "lr", "disc_lr", "adv_lr")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Defaults follow the paper, or say why where it is silent:

    - batch_size 100 and Adam lr 1e-3 (beta 0.9, 0.999): Adam's published defaults; the paper
      names Adam but no rate or batch size.
    - disc_lr = adv_lr = lr, disc_steps 1: one discriminator step per ELBO step, as Algorithm 1
      lists one of each; AVB overrides the optimiser with its reference code's settings.
    - pixels "continuous": the paper scales pixels to [0, 1] and does not binarise.
    - holdout 0: with N > 0 the last N training images are held out as a validation split: the
      run trains on the others and its per-epoch figure (metrics.csv's valid_neg_elbo) is computed
      on them. For choosing settings; the paper's runs train on all 60,000 images.
    - precision "fp32"; "bf16" runs the matrix products under bf16 autocast (weights, Adam and
      losses stay float32). It changes the numerics (benchmarks/BENCH.md), so it is part of the run.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "mnist"
    pixels: str = "continuous"
    batch_size: int = 100
    epochs: int = 10
    lr: float = 1e-3
    disc_lr: float = 1e-3
    adv_lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    disc_steps: int = 1
    seeds: tuple[int, ...] = (0,)
    train_subset: int = 0  # use only the first N training images (0: all); for tests and smoke runs
    test_subset: int = 0  # evaluate on the first N test images (0: all 10,000)
    test_data: str = ""  # the user's data: a file of test examples (else its own "test" array)
    test_fraction: float = 0.1  # the user's data without test examples: the last fraction held out
    holdout: int = 0  # last N training images held out for validation (0: none)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.dataset not in data.DATASETS and not userdata.is_user_data(self.dataset):
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.DATASETS)}, or give a "
                ".npy/.npz file or a folder of images"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        check_choice("pixel mode", self.pixels, data.PIXEL_MODES)
        check_choice("precision", self.precision, PRECISIONS)
        for key in ("batch_size", "epochs", "disc_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        for key in ("lr", "disc_lr", "adv_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.train_subset < 0 or self.test_subset < 0 or self.holdout < 0:
            raise ConfigError("train_subset, test_subset and holdout must be >= 0 (0 means all, or none)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds must be distinct non-negative integers, got {list(self.seeds)}")


MODEL_KEYS = {f.name for f in fields(ModelConfig)} - {"name"}
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"model"}

# Settings added after runs were already published, with the value that reproduces the earlier
# behaviour. At that value a setting is left out of the hash, so those runs keep their identity, and
# a config.json written before the setting existed is read with that value.
HASH_NEUTRAL: dict[str, Any] = {
    "precision": "fp32",
    "adv_update": "separate",
    "holdout": 0,
    "ac_samples": 8,
    "ac_moments": "all",
    "test_data": "",
    "test_fraction": 0.1,
}

# Named configurations (`avae train --preset NAME`): flat settings for `make_config`; options given
# on the command line or in --config override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The IWAE paper's anchor (Burda et al. 2016, one stochastic layer): 784-200-200-50 tanh MLPs,
    # dynamically binarised MNIST, the VAE objective, Adam (0.9, 0.999), batch 20, 3280 epochs
    # (test log p(x) about -86.76 after all of them). Not copied: its learning-rate schedule
    # (1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7) and Adam's eps 1e-4; this trains at a constant lr.
    "iwae-anchor": {
        "model": "vae",
        "dataset": "mnist",
        "pixels": "binarized",
        "likelihood": "bernoulli",
        "hidden": (200, 200),
        "latent_dim": 50,
        "activation": "tanh",
        "batch_size": 20,
        "lr": 1e-3,
        "beta1": 0.9,
        "beta2": 0.999,
        "epochs": 3280,
    },
}


def make_config(overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat settings, e.g. {"model": "avae", "latent_dim": 15, "epochs": 5}.

    Unset settings take the model's defaults (its noise dimension and optimiser settings) and then
    the general defaults. A setting the model does not read is refused at any value but its default
    (`refuse_unused`). A nested dict as written to config.json is accepted too, and read as the run
    was trained: a recorded run stays readable whatever later versions refuse.
    """
    if not isinstance(overrides, dict):
        raise ConfigError(f"settings must be a dict of names to values, got {type(overrides).__name__}")
    recorded = isinstance(overrides.get("model"), dict)
    flat = flatten(overrides)
    unknown = sorted(set(flat) - MODEL_KEYS - TRAIN_KEYS - {"model"})
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see `avae train --help`")
    name = flat.get("model", "vae")
    check_choice("model", name, MODELS)
    model_args = {"name": name, "noise_dim": default_noise_dim(name)}
    dataset = flat.get("dataset", "mnist")
    if isinstance(dataset, str) and userdata.is_user_data(dataset) and "data_dim" not in flat:
        model_args["data_dim"] = data.width(dataset)  # the networks take their width from the data
    model_args.update({k: v for k, v in flat.items() if k in MODEL_KEYS})
    train_args = {**MODELS[name].train_defaults}
    train_args.update({k: v for k, v in flat.items() if k in TRAIN_KEYS})
    try:
        model_cfg = ModelConfig(**coerce(ModelConfig, model_args))
        cfg = TrainConfig(model=model_cfg, **coerce(TrainConfig, train_args))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    if not recorded:
        refuse_unused(cfg)
    return cfg


DEFAULTS = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in fields(cls) if f.name != "model"}


def settings_used(name: str, reading: str | None = None) -> set[str]:
    """The settings of model `name` among those only some models read (registry facts): under
    `reading`, or under any of its readings when None."""
    model = MODELS[name]
    if reading is None:
        return {*model.own_settings, *(key for keys in model.reading_settings.values() for key in keys)}
    return {*model.own_settings, *model.reading_settings.get(reading, ())}


def refuse_unused(cfg: TrainConfig, keys: Iterable[str] | None = None) -> None:
    """Refuse a setting (of `keys`, default all) that changes nothing for the chosen model (e.g.
    adv_weight for a VAE) at a value other than its default: it would only give the run another name."""
    name, reading = cfg.model.name, reading_of(cfg.model)
    optional = {key for model in MODELS for key in settings_used(model)}
    optional &= set(optional if keys is None else keys)
    values = {**asdict(cfg), **asdict(cfg.model)}
    given = sorted(k for k in optional - settings_used(name, reading) if values[k] != DEFAULTS[k])
    if not given:
        return
    one = len(given) == 1
    which = (f"the {reading} reading of " if reading else "") + f"model {name!r}"
    raise ConfigError(
        f"{', '.join(f'{k} {values[k]!r}' for k in given)} {'does' if one else 'do'} nothing for {which} "
        f"({given[0]} is read only by {', '.join(readers(given[0]))}); drop {'it' if one else 'them'}"
    )


def readers(key: str) -> list[str]:
    """The models, or readings of a model, that read setting `key`."""
    found = []
    for name, model in MODELS.items():
        if key in model.own_settings:
            found.append(name)
        else:
            found += [f"{name} ({r} reading)" for r, keys in model.reading_settings.items() if key in keys]
    return found


def flatten(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat settings from flat or nested ones. The nested form is config.json's (the model's settings
    under "model"); a setting it lacks was added later and takes its `HASH_NEUTRAL` value, the one
    that reproduces how the run was trained."""
    flat = dict(settings)
    if isinstance(flat.get("model"), dict):
        nested = flat.pop("model")
        flat.update({k: v for k, v in nested.items() if k != "name"}, model=nested.get("name", "vae"))
        for key, value in HASH_NEUTRAL.items():
            flat.setdefault(key, value)
    return flat


def field_types(cls: type) -> dict[str, type]:
    """Each field of a config dataclass and its type as a class: int, float, str, tuple (of ints)
    or a dataclass; read from the annotations themselves, which are the one statement of it."""
    hints = get_type_hints(cls)
    return {f.name: get_origin(hints[f.name]) or hints[f.name] for f in fields(cls)}


def coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Turn lists into tuples and check scalar types, so a config file fails early and clearly."""
    types = field_types(cls)
    out = {}
    for key, value in values.items():
        kind = types[key]
        if kind is tuple:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
            value = tuple(value)
        elif kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number, got {value!r}")
            value = float(value)
        elif kind is str and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        out[key] = value
    return out


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON types, nested as in config.json."""
    return json.loads(json.dumps(asdict(cfg)))


def config_hash(cfg: TrainConfig) -> str:
    """16 hex digits naming the run. A later-added setting is left out at its `HASH_NEUTRAL` value,
    and for a model that does not read it (e.g. adv_update of a model with no such reading)."""
    settings = config_dict(cfg)
    name = cfg.model.name
    readings = {key for reading in MODELS[name].readings.values() for key in reading}
    optional = {key for model in MODELS for key in settings_used(model)}
    for part in (settings, settings["model"]):
        for key, neutral in HASH_NEUTRAL.items():
            unread = key in ModelConfig.reading_keys and key not in readings
            unread |= key in optional and key not in settings_used(name)  # e.g. ac_moments of a VAE
            if key in part and (part[key] == neutral or unread):
                part.pop(key)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    return {
        "avae": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


@dataclass
class Runtime:
    """How to run, as opposed to what to run: none of this changes the numbers a run produces.

    - device: "cpu", "cuda" or "cuda:N".
    - data_dir: the data cache (None: $AVAE_DATA_DIR or ~/.cache/avae).
    - progress: show progress bars.
    - threads: torch CPU threads (0: leave torch's setting). A resumed CPU run uses the count its
      checkpoint was written with, because CPU reductions may split by thread (see `train`).
    - check_every: steps between checks for non-finite losses (one host sync each).
    - compile: torch.compile each network (measured: see benchmarks/BENCH.md).
    """

    device: str = "cpu"
    data_dir: str | None = None
    progress: bool = True
    threads: int = 0
    check_every: int = 50
    compile: bool = False
