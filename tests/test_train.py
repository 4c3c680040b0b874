"""The training loop: members are independent, resume is exact, divergence is caught, nothing
already written is lost."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from avae.core.models import MODELS, ModelConfig, StepSettings, build_model
from avae.errors import AvaeError, CheckpointError, ConfigError, DivergenceError
from avae.repro.plan import PROFILES, runs_for
from avae.repro.sweep import plan_sweep
from avae.training.checkpoint import load_checkpoint, save_checkpoint
from avae.training.config import Runtime, TrainConfig, config_dict, config_hash, make_config, settings_used
from avae.training.runs import CHECKPOINT, METRICS, load_run, read_metrics, resume_config, write_metrics
from avae.training.train import train

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


def test_a_run_shared_without_its_checkpoint_loads_from_its_exported_weights(tmp_path, synthetic_data):
    from avae.training.card import export_weights

    trained = weights(tmp_path, "vae-noise", "run", (0, 1), epochs=1)
    export_weights(tmp_path / "run")
    (tmp_path / "run" / CHECKPOINT).unlink()
    cfg, model, meta = load_run(tmp_path / "run")
    assert meta["epoch"] == 1 and cfg.seeds == (0, 1)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not weights avae exported"):
        load_run(tmp_path / "run")


def test_holdout_trains_without_the_last_images_and_reports_on_them(synthetic_data, tmp_path):
    from avae.training.train import split_data

    cfg = make_config({"model": "vae", "hidden": (16,), "latent_dim": 2, "holdout": 100, "epochs": 1})
    train_x, held = split_data(cfg, Runtime(progress=False))
    torch.testing.assert_close(train_x, synthetic_data["train"][:300])
    torch.testing.assert_close(held, synthetic_data["train"][300:])
    train(cfg, tmp_path / "run", runtime=Runtime(progress=False))
    row = read_metrics(tmp_path / "run" / METRICS)[0]
    assert "valid_neg_elbo" in row and "test_neg_elbo" not in row
    with pytest.raises(ConfigError, match="leaves none of the 400 training images"):
        split_data(make_config({"holdout": 400}), Runtime(progress=False))


# ----------------------------------------------------------------------------- the model card


def test_the_card_shows_only_figures_of_the_weights_epoch(tmp_path, synthetic_data):
    from avae.evaluation.evaluate import evaluate_run

    weights(tmp_path, "vae", "run", (0,), epochs=1)
    evaluate_run(tmp_path / "run", metrics="elbo", runtime=QUIET)
    assert "Evaluated at epoch 1" in (tmp_path / "run" / "README.md").read_text()
    weights(tmp_path, "vae", "run", (0,), epochs=2, resume=True)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "for 2 epochs" in card and "| `neg_elbo` |" not in card  # eval.json is of epoch 1
    assert "`eval.json` holds figures of epoch 1, not of these weights (epoch 2)" in card
    evaluate_run(tmp_path / "run", metrics="elbo", runtime=QUIET)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Evaluated at epoch 2" in card and "| `neg_elbo` |" in card


@pytest.mark.parametrize(
    "settings,trained",
    [
        ({"train_subset": 1000}, 400),  # more than the 400 synthetic training images
        ({"holdout": 300, "train_subset": 200}, 100),  # the holdout leaves 100 to train on
        ({"train_subset": 150}, 150),
    ],
)
def test_the_card_states_the_examples_trained_on(tmp_path, synthetic_data, capsys, settings, trained):
    cfg = make_config({"model": "vae", **SMALL, "epochs": 1, **settings})
    train(cfg, tmp_path / "run", runtime=QUIET)
    assert f"on {trained} training examples" in (tmp_path / "run" / "README.md").read_text()
    warned = "is more than the" in capsys.readouterr().err
    assert warned == (settings["train_subset"] > trained)


# ----------------------------------------------------------------------------- settings


def test_a_bf16_run_loads_as_it_was_trained(tmp_path, synthetic_data):
    cfg = make_config({"model": "vae", **SMALL, "epochs": 1, "precision": "bf16"})
    train(cfg, tmp_path / "run", runtime=QUIET)
    loaded = load_run(tmp_path / "run")[0]
    assert loaded.precision == "bf16" and loaded == cfg and config_hash(loaded) == config_hash(cfg)


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"model": "vae", "adv_weight": 0.1}, "adv_weight 0.1 does nothing for model 'vae'"),
        ({"model": "vae-noise", "disc_steps": 2}, "disc_steps 2 does nothing for model 'vae-noise'"),
        ({"model": "avb", "ac_samples": 4}, "read only by avb-ac"),
        ({"model": "avb-ac", "adv_loss": "minimax"}, "adv_loss 'minimax' does nothing"),
        ({"model": "avae", "adv_lr": 1e-4}, "the joint reading of model 'avae'"),
        ({"model": "vae", "disc_lr": 1e-4, "adv_weight": 2.0}, "adv_weight 2.0, disc_lr 0.0001 do nothing"),
    ],
)
def test_settings_a_model_does_not_read_are_refused(settings, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        make_config(settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"model": "vae", "adv_weight": 1.0, "disc_lr": 1e-3, "disc_steps": 1, "ac_samples": 8},  # defaults
        {"model": "avae", "adv_update": "separate", "adv_lr": 1e-4, "adv_weight": 0.5},
        {"model": "avb-ac", "ac_samples": 4, "disc_steps": 2},
    ],
)
def test_settings_a_model_reads_and_defaults_are_accepted(settings):
    make_config(settings)


def test_the_registry_lists_every_setting_a_model_reads():
    """Each phase's learning rate and repeat count are among the settings its model declares: the
    phases are made of settings with a value each, and the values a phase holds name them."""
    steps = StepSettings(lr=10.0, disc_lr=20.0, adv_lr=30.0, disc_steps=4)  # one value per setting
    rate_of = {10.0: "lr", 20.0: "disc_lr", 30.0: "adv_lr"}  # (adv_weight is 1 by default)
    repeats_of = {4: "disc_steps", 1: None}
    for name, model in MODELS.items():
        for reading, values in model.readings.items():
            cfg = make_config({"model": name, **SMALL, **values})
            phases = build_model(cfg.model, (0,)).phases(steps)
            keys = {rate_of[p.lr] for p in phases} | {repeats_of[p.repeats] for p in phases}
            assert keys - {None, "lr"} <= settings_used(name, reading), (name, reading)


def test_no_profile_or_sweep_passes_a_setting_its_model_does_not_read():
    for profile in PROFILES:
        assert runs_for(profile)  # each planned run's configuration passed make_config's check
    with pytest.raises(ConfigError, match="grid point adv_weight=0.1: adv_weight 0.1 does nothing"):
        plan_sweep({"model": "vae"}, {"adv_weight": [0.1, 1.0]})


def test_a_recorded_run_is_read_whatever_later_versions_refuse(tmp_path, synthetic_data):
    """config.json's nested form is read as the run was trained, e.g. a VAE with adv_weight 0.5
    from before such settings were refused; resuming it may not change one the model ignores."""
    cfg = make_config({"model": "vae", **SMALL, "epochs": 1})
    recorded = config_dict(cfg)
    recorded["model"]["adv_weight"] = 0.5
    assert make_config(recorded).model.adv_weight == 0.5
    train(cfg, tmp_path / "run", runtime=QUIET)
    with pytest.raises(ConfigError, match="disc_lr 0.0001 does nothing for model 'vae'"):
        resume_config(tmp_path / "run", {"epochs": 2, "disc_lr": 1e-4})
    assert resume_config(tmp_path / "run", {"epochs": 2, "lr": 1e-4}).lr == 1e-4


def test_fit_takes_a_train_config_only(tmp_path):
    with pytest.raises(ConfigError, match="cfg must be a TrainConfig, got dict; build it with avae.make"):
        train({"model": "vae"}, tmp_path / "run")
    with pytest.raises(ConfigError, match="adv_weight 0.5 does nothing"):  # a TrainConfig built by hand
        train(TrainConfig(model=ModelConfig(name="vae", adv_weight=0.5)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- history


def two_epochs(tmp_path) -> tuple:
    """A finished 2-epoch run and the bytes of its files."""
    weights(tmp_path, "vae", "run", (0, 1), epochs=2)
    run = tmp_path / "run"
    return run, {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def resume(run, epochs=3):
    cfg = make_config({"model": "vae", **SMALL, "seeds": (0, 1), "epochs": epochs})
    return train(cfg, run, runtime=QUIET, resume=True)


def unchanged(run, before: dict) -> bool:
    return all((run / name).read_bytes() == raw for name, raw in before.items() if (run / name).exists())


def test_resume_without_the_checkpoint_is_refused(tmp_path, synthetic_data):
    run, before = two_epochs(tmp_path)
    (run / CHECKPOINT).unlink()
    with pytest.raises(CheckpointError, match="has 2 epochs in metrics.csv but no checkpoint.safetensors"):
        resume(run)
    assert unchanged(run, before)


def test_resume_of_a_run_published_without_weights_is_refused(tmp_path, synthetic_data):
    run, _ = two_epochs(tmp_path)
    published = tmp_path / "published"
    published.mkdir()
    for name in ("config.json", METRICS, "README.md"):  # what `avae publish` copies
        (published / name).write_bytes((run / name).read_bytes())
    with pytest.raises(CheckpointError, match="was published without weights"):
        resume(published)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, synthetic_data):
    """metrics.csv is written just before the checkpoint: a kill between them leaves epoch 1's rows
    alone, which training again rewrites as they were."""
    run, before = two_epochs(tmp_path)
    rows = [r for r in read_metrics(run / METRICS) if r["epoch"] == 1]
    for name in (CHECKPOINT, "model.safetensors", "README.md"):
        (run / name).unlink()
    write_metrics(run / METRICS, rows)
    resume(run, epochs=2)
    assert (run / "model.safetensors").read_bytes() == before["model.safetensors"]


@pytest.mark.parametrize("damage", ["deleted", "emptied", "epoch 1 dropped"])
def test_resume_without_the_earlier_epochs_history_is_refused(tmp_path, synthetic_data, damage):
    run, before = two_epochs(tmp_path)
    if damage == "deleted":
        (run / METRICS).unlink()
    elif damage == "emptied":
        (run / METRICS).write_text("")
    else:
        write_metrics(run / METRICS, [r for r in read_metrics(run / METRICS) if r["epoch"] == 2])
    fragment = "lacks epoch(s) 1 of the 2" if damage == "epoch 1 dropped" else "is missing or empty"
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        resume(run)
    before.pop(METRICS)
    assert unchanged(run, before)


def test_a_torn_metrics_file_is_refused_naming_it(tmp_path, synthetic_data):
    from avae.evaluation.evaluate import evaluate_run

    run, before = two_epochs(tmp_path)
    text = (run / METRICS).read_text()
    (run / METRICS).write_text(text[: len(text) - 7])  # cut within the last row
    for attempt in (lambda: resume(run), lambda: evaluate_run(run, metrics="elbo", runtime=QUIET)):
        with pytest.raises(AvaeError, match=re.escape(f"{run / METRICS} is damaged")):
            attempt()
    before.pop(METRICS)
    assert unchanged(run, before)


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, synthetic_data, capsys):
    run, before = two_epochs(tmp_path)
    with pytest.raises(ConfigError, match="already has 2 epochs, so epochs 1 would train nothing"):
        resume(run, epochs=1)
    resume(run, epochs=2)  # as many as done: nothing to train, and it says so
    assert "already has 2 epochs; nothing to train" in capsys.readouterr().err
    assert unchanged(run, before)
