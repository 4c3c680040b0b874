"""The training loop: members are independent, resume is exact, divergence is caught, nothing
already written is lost."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from avae.checkpoint import load_checkpoint, save_checkpoint
from avae.config import Runtime, make_config
from avae.errors import CheckpointError, ConfigError, DivergenceError
from avae.runs import CHECKPOINT, METRICS, load_run, read_metrics
from avae.train import train

QUIET = Runtime(progress=False)
SMALL = {"hidden": (32, 16), "latent_dim": 4, "batch_size": 50}


def weights(tmp_path, name, out, seeds, epochs=2, resume=False):
    cfg = make_config({"model": name, **SMALL, "seeds": seeds, "epochs": epochs})
    train(cfg, tmp_path / out, runtime=QUIET, resume=resume)
    return load_run(tmp_path / out)[1].state_dict()


@pytest.mark.parametrize("name", ["vae", "avae", "avb"])
def test_three_members_equal_three_single_runs(tmp_path, synthetic_data, name):
    together = weights(tmp_path, name, "together", (0, 1, 2))
    for member, seed in enumerate((0, 1, 2)):
        alone = weights(tmp_path, name, f"alone{seed}", (seed,))
        for key, value in alone.items():
            torch.testing.assert_close(together[key][member], value[0], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["vae-noise", "avae", "avb"])
def test_resume_ends_with_the_same_weights(tmp_path, synthetic_data, name):
    straight = weights(tmp_path, name, "straight", (0, 1), epochs=3)
    weights(tmp_path, name, "split", (0, 1), epochs=1)
    resumed = weights(tmp_path, name, "split", (0, 1), epochs=3, resume=True)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    with open(tmp_path / "split" / METRICS) as handle:
        epochs = [int(r["epoch"]) for r in csv.DictReader(handle)]
    assert epochs == [1, 1, 2, 2, 3, 3]


def test_run_directory_contents(tmp_path, synthetic_data):
    cfg = make_config({"model": "avae", **SMALL, "seeds": (4, 7), "epochs": 2})
    out = train(cfg, tmp_path / "run", runtime=QUIET)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", METRICS, CHECKPOINT, "samples_seed4.png", "samples_seed7.png"} <= names
    with open(out / METRICS) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["seed"]) for r in rows] == [
        ("1", "4"),
        ("1", "7"),
        ("2", "4"),
        ("2", "7"),
    ]
    for row in rows:
        assert math.isfinite(float(row["test_neg_elbo"])) and 0 <= float(row["train_disc_acc"]) <= 1
    _, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["epoch"] == 2 and meta["config"]["seeds"] == [4, 7]
    assert set(meta["versions"]) >= {"torch", "avae", "numpy"} and meta["data_md5"]


def test_existing_run_is_not_overwritten(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0,), epochs=1)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        weights(tmp_path, "vae", "run", (0,), epochs=1)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before


def test_resume_with_another_configuration_is_refused(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0,), epochs=1)
    cfg = make_config({"model": "vae", **SMALL, "latent_dim": 5, "epochs": 2})
    with pytest.raises(ConfigError, match="latent_dim"):
        train(cfg, tmp_path / "run", runtime=QUIET, resume=True)


def test_resume_may_lower_the_learning_rate(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0,), epochs=1)
    cfg = make_config({"model": "vae", **SMALL, "epochs": 2, "lr": 1e-4})
    train(cfg, tmp_path / "run", runtime=QUIET, resume=True)
    _, meta = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert meta["epoch"] == 2 and meta["optimizer_groups"]["elbo"][0]["lr"] == 1e-4


def test_nan_in_a_weight_stops_with_step_member_and_term(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0, 1), epochs=1)
    path = tmp_path / "run" / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    tensors["model.decoder.0.weight"][1, 0, 0] = float("nan")  # member 1 only
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    good = path.read_bytes()
    cfg = make_config({"model": "vae", **SMALL, "seeds": (0, 1), "epochs": 2})
    with pytest.raises(DivergenceError, match=r"loss_elbo at epoch 2, step 1, member 1 \(seed 1\)"):
        train(cfg, tmp_path / "run", runtime=QUIET, resume=True)
    assert path.read_bytes() == good  # the last good checkpoint survives


def test_nan_in_the_data_is_caught(tmp_path, synthetic_data):
    synthetic_data["train"][123, 5] = float("nan")
    cfg = make_config({"model": "avae", **SMALL, "epochs": 1})
    with pytest.raises(DivergenceError, match="non-finite"):
        train(cfg, tmp_path / "run", runtime=QUIET)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_binarized_training_runs(tmp_path, synthetic_data):
    cfg = make_config({"model": "vae", **SMALL, "pixels": "binarized", "epochs": 1})
    train(cfg, tmp_path / "run", runtime=QUIET)
    assert (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"model": "vae", "epochs": 0}, "epochs must be a positive"),
        ({"model": "vae", "lr": -1.0}, "lr must be positive"),
        ({"model": "vae", "seeds": (1, 1)}, "distinct"),
        ({"model": "vae", "dataset": "cifar"}, "unknown dataset"),
        ({"model": "vae", "pixels": "grey"}, "unknown pixel mode"),
        ({"model": "vae", "latent_dims": 3}, "unknown setting"),
        ({"model": "vae", "epochs": "ten"}, "epochs must be an integer"),
        ({"model": "vae", "noise_dim": 5}, "has no injected noise"),
    ],
)
def test_bad_train_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config(settings)


def test_model_defaults():
    assert make_config({"model": "avb"}).beta1 == 0.5 and make_config({"model": "avae"}).beta1 == 0.9
    assert make_config({"model": "avae"}).model.noise_dim == 10
    assert make_config({"model": "vae"}).model.noise_dim == 0


def test_checkpoint_refuses_pickle_and_truncation(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0,), epochs=1)
    path = tmp_path / "run" / CHECKPOINT
    raw = path.read_bytes()
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "evil.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_checkpoint_with_mismatched_shapes_is_refused(tmp_path, synthetic_data):
    weights(tmp_path, "vae", "run", (0,), epochs=1)
    path = tmp_path / "run" / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    meta["config"]["model"]["latent_dim"] = 6
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(CheckpointError, match="do not match"):
        load_run(tmp_path / "run")


def test_holdout_trains_without_the_last_images_and_reports_on_them(synthetic_data, tmp_path):
    from avae.train import split_data

    cfg = make_config({"model": "vae", "hidden": (16,), "latent_dim": 2, "holdout": 100, "epochs": 1})
    train_x, held = split_data(cfg, Runtime(progress=False))
    torch.testing.assert_close(train_x, synthetic_data["train"][:300])
    torch.testing.assert_close(held, synthetic_data["train"][300:])
    train(cfg, tmp_path / "run", runtime=Runtime(progress=False))
    row = read_metrics(tmp_path / "run" / METRICS)[0]
    assert "valid_neg_elbo" in row and "test_neg_elbo" not in row
    with pytest.raises(ConfigError, match="leaves none of the 400 training images"):
        split_data(make_config({"holdout": 400}), Runtime(progress=False))
