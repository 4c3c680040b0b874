"""`config_hash` names a run's directory: a run finished by the previous version must keep its hash,
so that a reproduction finds it again and reuses it instead of training it anew.

The pinned hashes were measured on the previous version of the code (before `adv_update`,
`ac_samples` and `precision` existed; its AVAE was the "separate" reading). Settings added since are
meant to be left out of the hash at the value that reproduces the earlier behaviour
(`avae.training.config.HASH_NEUTRAL`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from avae.core.models import reading_of
from avae.training.config import config_dict, config_hash, flatten, make_config
from avae.training.runs import read_config

ROOT = Path(__file__).resolve().parents[1]

VAE = ({"model": "vae"}, "d8258fc5d01b152e")
AVAE_SEPARATE = (
    {
        "model": "avae",
        "latent_dim": 15,
        "epochs": 10,
        "seeds": (0, 1, 2),
        "train_subset": 10000,
        "test_subset": 2000,
        "adv_update": "separate",
    },
    "cb3a36a9426f31d4",
)
AVB = (
    {"model": "avb", "dataset": "fashion-mnist", "epochs": 100, "seeds": (0, 1, 2, 3, 4)},
    "8e6e020c47d0afc6",
)
VAE_NOISE = (
    {"model": "vae-noise", "noise_dim": 5, "pixels": "binarized", "likelihood": "continuous-bernoulli"},
    "e2624f9ac4dbaa1c",
)
PINNED = {"vae": VAE, "avae-separate": AVAE_SEPARATE, "avb": AVB, "vae-noise": VAE_NOISE}

# config.json's "config" as the previous version wrote it for the pinned configurations.
_OLD_MODEL = {
    "latent_dim": 10,
    "noise_dim": 0,
    "hidden": [256, 64, 32],
    "activation": "leaky-relu",
    "likelihood": "bernoulli",
    "adv_loss": "non-saturating",
    "adv_weight": 1.0,
    "critic_input": "xz",
    "data_dim": 784,
}
_OLD_TRAIN = {
    "dataset": "mnist",
    "pixels": "continuous",
    "batch_size": 100,
    "epochs": 10,
    "lr": 0.001,
    "disc_lr": 0.001,
    "adv_lr": 0.001,
    "beta1": 0.9,
    "beta2": 0.999,
    "disc_steps": 1,
    "seeds": [0],
    "train_subset": 0,
    "test_subset": 0,
}


def _old(model: dict, **train) -> dict:
    return {"model": {**_OLD_MODEL, **model}, **_OLD_TRAIN, **train}


OLD_CONFIG_JSON = {
    "vae": _old({"name": "vae"}),
    "avae-separate": _old(
        {"name": "avae", "latent_dim": 15, "noise_dim": 10},
        seeds=[0, 1, 2],
        train_subset=10000,
        test_subset=2000,
    ),
    "avb": _old(
        {"name": "avb", "noise_dim": 10},
        dataset="fashion-mnist",
        epochs=100,
        beta1=0.5,
        seeds=[0, 1, 2, 3, 4],
    ),
    "vae-noise": _old(
        {"name": "vae-noise", "noise_dim": 5, "likelihood": "continuous-bernoulli"}, pixels="binarized"
    ),
}


def previous_hash(config: dict) -> str:
    """The previous version's config_hash: sha256 of the whole config.json dict, 16 hex digits."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", PINNED)
def test_old_config_json_matches_the_pinned_hash(name):
    # the fixture data is consistent: the previous version's rule on its own config.json gives the pin
    assert previous_hash(OLD_CONFIG_JSON[name]) == PINNED[name][1]


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_hashes_of_the_previous_version(name):
    settings, expected = PINNED[name]
    assert config_hash(make_config(settings)) == expected


def old_run_dir(tmp_path, name: str):
    """A run directory whose config.json the previous version wrote (only what reading needs)."""
    config = {"config": OLD_CONFIG_JSON[name], "config_hash": PINNED[name][1]}
    (tmp_path / "config.json").write_text(json.dumps(config, indent=2))
    return tmp_path


@pytest.mark.parametrize(
    "name",
    list(PINNED),
)
def test_old_run_keeps_its_hash_when_read_back(name, tmp_path):
    # what `avae report` and `avae reproduce` do with a finished run: read_config, then hash
    assert config_hash(read_config(old_run_dir(tmp_path, name))) == PINNED[name][1]


def test_old_avae_run_is_read_as_the_separate_reading(tmp_path):
    cfg = read_config(old_run_dir(tmp_path, "avae-separate"))
    assert cfg.model.adv_update == "separate"
    assert reading_of(cfg.model) == "separate"


def test_old_avae_run_does_not_hash_as_the_joint_reading(tmp_path):
    # the old separate run must not be mistaken for today's joint run of the same settings
    joint = config_hash(make_config({**AVAE_SEPARATE[0], "adv_update": "joint"}))
    assert config_hash(read_config(old_run_dir(tmp_path, "avae-separate"))) != joint


def test_joint_reading_has_another_hash_than_the_separate_one():
    settings = dict(AVAE_SEPARATE[0])
    separate = config_hash(make_config(settings))
    settings["adv_update"] = "joint"
    joint = config_hash(make_config(settings))
    del settings["adv_update"]
    default = config_hash(make_config(settings))
    assert joint != separate
    assert default == joint  # "joint" is today's default for AVAE


@pytest.mark.parametrize("name", PINNED)
def test_precision_bf16_changes_the_hash_and_fp32_does_not(name):
    settings = PINNED[name][0]
    base = config_hash(make_config(settings))
    assert config_hash(make_config({**settings, "precision": "fp32"})) == base
    assert config_hash(make_config({**settings, "precision": "bf16"})) != base


def test_hash_is_a_function_of_the_settings_only():
    settings = AVAE_SEPARATE[0]
    assert config_hash(make_config(settings)) == config_hash(make_config(dict(reversed(settings.items()))))
    assert config_hash(make_config({**settings, "seeds": [0, 1, 2]})) == config_hash(make_config(settings))
    assert config_hash(make_config({**settings, "epochs": 11})) != config_hash(make_config(settings))
    assert len(config_hash(make_config(settings))) == 16


def test_avb_ac_runs_published_before_ac_moments_keep_their_names(tmp_path):
    """ac_moments was added after AVB-AC runs were published (results/paper-z10): their config.json
    lacks it and reads as "all", how they were trained, under the name they have; a new AVB-AC run
    (moments of the other draws) gets a name of its own, and a model that does not read the setting
    keeps its name whatever it is."""
    published = ROOT / "results" / "paper-z10" / "avb-ac-mnist-z10-n10-6745a3fbe1ef49b8"
    cfg = read_config(published)
    assert cfg.model.ac_moments == "all" and config_hash(cfg) == "6745a3fbe1ef49b8"
    fresh = make_config({**flatten(config_dict(cfg)), "ac_moments": "others"})
    assert config_hash(fresh) != "6745a3fbe1ef49b8"
    assert make_config({"model": "avb-ac", "noise_dim": 10}).model.ac_moments == "others"
    vae = make_config(PINNED["vae"][0])
    assert vae.model.ac_moments == "others" and config_hash(vae) == PINNED["vae"][1]
