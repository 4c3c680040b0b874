"""Your own data: arrays and image folders train, evaluate and report end to end; bad data is
refused in one sentence naming the file and the fix, before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from avae.cli.commands import main
from avae.data import datasets as data
from avae.data import userdata
from avae.errors import ConfigError, DataError
from avae.evaluation.evaluate import evaluate_run
from avae.repro.report.report import write_report
from avae.training.checkpoint import load_checkpoint
from avae.training.config import Runtime, make_config
from avae.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = Runtime(progress=False)
SMALL = {"model": "vae-noise", "latent_dim": 3, "hidden": (16, 8), "batch_size": 20, "seeds": (0, 1)}


def vectors(tmp_path, n=200, width=50, seed=0, name="vectors.npy"):
    path = tmp_path / name
    np.save(path, np.random.default_rng(seed).random((n, width)).astype(np.float32))
    return path


def test_an_array_of_width_50_trains_evaluates_and_reports(tmp_path):
    path = vectors(tmp_path)
    cfg = make_config({**SMALL, "dataset": str(path), "epochs": 2})
    assert cfg.model.data_dim == 50  # the networks take their width from the data
    out = tmp_path / "runs" / "mine"
    train(cfg, out, runtime=QUIET)
    record = evaluate_run(out, metrics=("elbo", "iwae"), settings={"k": (1, 10)}, runtime=QUIET)
    assert record["metrics"]["neg_elbo"]["points"] == 20  # the last 10% held out as the test set
    assert np.isfinite(record["metrics"]["iwae_k10"]["mean"])
    text = write_report(tmp_path / "runs").read_text()
    assert "vectors" in text and "VAE+eps" in text
    assert (out / "samples_seed0.png").exists()  # 50 values drawn as 5 x 10 images


def test_a_folder_of_images_trains_with_its_own_test_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(60):
        Image.fromarray((rng.random((40, 30, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    test = vectors(tmp_path, n=10, width=784, name="test.npy")
    cfg = make_config({**SMALL, "dataset": str(folder), "test_data": str(test), "epochs": 1})
    assert cfg.model.data_dim == 28 * 28
    train(cfg, tmp_path / "runs" / "images", runtime=QUIET)
    assert len(data.load_pixels(str(folder), "train", "continuous", test_data=str(test))) == 60
    assert main(["evaluate", str(tmp_path / "runs" / "images"), "--metrics", "elbo"]) == 0
    text = write_report(tmp_path / "runs").read_text()
    assert "### images" in text and "VAE+eps" in text


@pytest.mark.parametrize(
    "values,fragment",
    [
        (np.array([[0.5, np.nan]] * 30, dtype=np.float32), "NaN or infinite values; replace them"),
        (np.full((30, 4), 255.0), "outside [0, 1]; rescale them (images: divide by 255)"),
        (np.zeros((0, 4)), "holds no examples"),
        (np.zeros((30,)), "has shape (30,); save [N, D] vectors or [N, H, W] images"),
        (np.array(["a", "b"]), "holds <U1 values; save numbers in [0, 1]"),
    ],
)
def test_bad_arrays_are_refused_naming_the_file_and_the_fix(tmp_path, values, fragment):
    path = tmp_path / "bad.npy"
    np.save(path, values)
    with pytest.raises(DataError, match="bad.npy") as error:
        userdata.read(str(path))
    assert fragment in str(error.value)


def test_ragged_data_and_a_test_set_of_another_width_are_refused(tmp_path):
    ragged = tmp_path / "ragged.npy"
    np.save(ragged, np.array([np.zeros(3), np.zeros(4)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="ragged.npy holds objects or arrays of different shapes"):
        userdata.read(str(ragged))
    train_file, other = vectors(tmp_path, width=50), vectors(tmp_path, width=40, name="other.npy")
    with pytest.raises(DataError, match="other.npy: test examples have 40 values, training ones 50"):
        userdata.splits(str(train_file), str(other))


def test_bad_data_writes_nothing_and_too_few_examples_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((30, 4), 2.0))
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(bad), "--out", str(out), "--no-progress"]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err and not out.exists()
    few = vectors(tmp_path, n=30, width=6, name="few.npy")
    with pytest.raises(ConfigError, match="batch_size 100 exceeds the 27 training images"):
        train(make_config({"dataset": str(few)}), out, runtime=QUIET)
    assert not out.exists()
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        make_config({"dataset": "svhn"})


def test_binarisation_works_on_any_data_in_0_1(tmp_path):
    path = vectors(tmp_path, width=12)
    cfg = make_config({**SMALL, "dataset": str(path), "pixels": "binarized", "epochs": 1})
    train(cfg, tmp_path / "run", runtime=QUIET)
    test = data.load_pixels(str(path), "test", "binarized")
    assert set(torch.unique(test).tolist()) <= {0.0, 1.0}


def test_every_finished_run_has_a_model_card_and_exported_weights(tmp_path):
    from safetensors.torch import load_file

    path = vectors(tmp_path)
    out = tmp_path / "run"
    train(make_config({**SMALL, "dataset": str(path), "epochs": 1}), out, runtime=QUIET)
    card = (out / "README.md").read_text()
    assert card.startswith("# VAE+eps on") and "vectors.npy`: MD5" in card and "Not evaluated yet" in card
    weights = load_file(out / "model.safetensors")
    assert set(weights) == {
        k[len("model.") :]
        for k in load_checkpoint(out / "checkpoint.safetensors")[0]
        if k.startswith("model.")
    }
    evaluate_run(out, metrics="elbo", runtime=QUIET)
    assert "| `neg_elbo` |" in (out / "README.md").read_text()


def test_the_command_line_takes_a_file_and_analyses_it_without_a_classifier(tmp_path, capsys):
    path = vectors(tmp_path, n=100, width=16)
    out = tmp_path / "run"
    args = ["train", "--dataset", str(path), "--test-fraction", "0.2", "--latent-dim", "2", "--hidden", "8"]
    assert main([*args, "--batch-size", "20", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert main(["analyse", str(out), "--samples", "20"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["points"] == 20 and "frechet_distance" not in analysis["per_member"][0]
    assert "reference_frechet_distance" not in analysis


def test_16_bit_greyscale_pngs_are_read_at_their_bit_depth(tmp_path):
    """A 16-bit PNG scales by 65535 (Pillow opens it as mode I;16, which convert("L") clips to 255),
    an 8-bit one by 255: the same picture saved both ways reads the same within 8-bit rounding."""
    rng = np.random.default_rng(2)
    deep, shallow = tmp_path / "deep", tmp_path / "shallow"
    deep.mkdir()
    shallow.mkdir()
    for i in range(3):
        picture = rng.random((28, 28))
        Image.fromarray((picture * 65535).round().astype(np.uint16)).save(deep / f"{i}.png")
        Image.fromarray((picture * 255).round().astype(np.uint8)).save(shallow / f"{i}.png")
        assert Image.open(deep / f"{i}.png").mode in userdata.SIXTEEN_BIT_MODES
    sixteen, eight = userdata.read(str(deep))["train"], userdata.read(str(shallow))["train"]
    assert sixteen.shape == eight.shape == (3, 784)
    assert np.abs(sixteen - eight).max() <= 0.5 / 255 + 1e-6
    assert float((sixteen == 1.0).mean()) < 0.01


@pytest.mark.parametrize(
    "content,fragment",
    [
        (
            bytes(np.random.default_rng(3).integers(0, 256, 1000, dtype=np.uint8)),
            "not a valid .npy/.npz file",
        ),
        (b"", "is empty"),
    ],
)
def test_a_file_that_is_no_array_is_diagnosed_as_such(tmp_path, content, fragment):
    path = tmp_path / "noise.npy"
    path.write_bytes(content)
    with pytest.raises(DataError, match="noise.npy is not a valid .npy/.npz file") as error:
        userdata.read(str(path))
    assert fragment in str(error.value) and "objects" not in str(error.value)


def test_an_npz_of_objects_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, train=np.array([np.zeros(3), np.zeros(4)], dtype=object))
    with pytest.raises(DataError, match="objects.npz holds objects or arrays of different shapes"):
        userdata.read(str(path))


def test_the_cost_model_counts_the_users_own_splits_for_a_sweeps_estimate(tmp_path):
    """A sweep on your own data is estimated on its own split sizes, not MNIST's 60,000 and 10,000."""
    from avae.evaluation.cost_model import metric_seconds, test_points, train_points
    from avae.likelihood.scoring import EvalSettings
    from avae.repro.sweep import metric_steps, plan_sweep, sweep_eval_parts

    path = vectors(tmp_path)  # 200 rows: 180 to train on, the last 20 held out
    cfg = make_config({**SMALL, "dataset": str(path)})
    assert (train_points(cfg), test_points(cfg)) == (180, 20)
    cut = make_config({**SMALL, "dataset": str(path), "train_subset": 50, "test_subset": 5})
    assert (train_points(cut), test_points(cut)) == (50, 5)
    ((_, run),) = plan_sweep({**SMALL, "dataset": str(path)}, {"epochs": [1]})
    steps = metric_steps(("elbo",), "vae-noise")
    parts = sweep_eval_parts(run, steps, tmp_path / "sweep", "cpu")
    modelled = metric_seconds("elbo", EvalSettings(**steps[0].settings), 20, 2, "cpu", "vae-noise")
    assert parts == {"neg_elbo": modelled}


def test_the_training_estimate_counts_the_test_pass_over_the_users_own_test_images(tmp_path):
    """Each epoch's test pass runs over the run's own test points: 20 here, not MNIST's 10,000."""
    from avae.repro import costs
    from avae.repro.sweep import estimate_seconds, plan_sweep

    missing = tmp_path / "none.json"  # the built-in step cost, known exactly
    a_ms, b_ms = costs.builtin_step_ms("vae-noise")
    steps, step_s = 180 // costs.BATCH, (a_ms + b_ms * 2) / 1e3
    per_test_image = costs.TEST_PASS_SHARE * steps * step_s / 180
    whole = costs.estimate_train_seconds("vae-noise", 2, 3, 180, "cpu", missing, test_images=20)
    assert whole == pytest.approx(3 * (steps * step_s + 20 * per_test_image) + costs.TRAIN_CALL_SECONDS)
    mnist = costs.estimate_train_seconds("vae-noise", 2, 3, 180, "cpu", missing)
    assert mnist - whole == pytest.approx(3 * (10_000 - 20) * per_test_image)
    ((_, run),) = plan_sweep({**SMALL, "dataset": str(vectors(tmp_path))}, {"epochs": [3]})
    train, _ = estimate_seconds(run, [], tmp_path / "sweep", "cpu")
    own = costs.estimate_train_seconds("vae-noise", 2, 3, 180, "cpu", test_images=20)
    assert train == pytest.approx(own)
