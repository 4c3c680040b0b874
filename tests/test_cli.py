"""Bad input through the command line: each is refused before any work starts, with exit status 2
and exactly one line on stderr, `avae: error: ...`, and no run directory is created or changed."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path

import pytest
import torch

import avae
from avae import io as avae_io
from avae.cli import commands as cli
from avae.cli.commands import check_threads, main
from avae.cli.options import EVAL_SETTINGS, EVALUATE_OPTIONS, TRAIN_OPTIONS, shown
from avae.errors import ConfigError
from avae.repro import costs
from avae.training.runs import CHECKPOINT

SMALL = ["--hidden", "32,16", "--latent-dim", "4", "--batch-size", "50"]


pytestmark = pytest.mark.usefixtures("one_thread")


def refused(capsys, argv: list[str]) -> str:
    """Run `avae ARGV`; it must exit 2 with one `avae: error:` line on stderr. Returns the line."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors exit
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2, (status, err)
    assert err.startswith("avae: error: ") and err.count("\n") == 1, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--model", "vea"], "unknown model 'vea'; choose one of vae, vae-noise, avb, avb-ac, avae"),
        (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
        (["--pixels", "grey"], "unknown pixel mode 'grey'"),
        (["--latent-dim", "0"], "latent_dim must be a positive integer, got 0"),
        (["--latent-dim", "-3"], "latent_dim must be a positive integer, got -3"),
        (["--model", "avae", "--noise-dim", "0"], "needs a positive noise dimension"),
        (["--model", "vae-noise", "--noise-dim", "-5"], "needs a positive noise dimension"),
        (["--hidden", "256,0,32"], "hidden widths must be positive"),
        (["--hidden", "-1"], "hidden widths must be positive"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--epochs", "-1"], "epochs must be a positive integer"),
        (["--lr", "0"], "lr must be positive"),
        (["--seeds", "1,1"], "distinct"),
        (["--model", "vae", "--noise-dim", "5"], "model 'vae' has no injected noise; drop --noise-dim"),
        (["--model", "avb", "--adv-weight", "-1"], "adv_weight must be >= 0"),
        (["--latent-dim", "ten"], "argument --latent-dim: invalid int value: 'ten'"),
        (["--hidden", "a,b"], "expected comma-separated integers"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--batch-size", "500", "--train-subset", "100"], "batch_size 500 exceeds the 100 training images"),
    ],
)
def test_bad_train_options(tmp_path, capsys, synthetic_data, args, fragment):
    out = tmp_path / "run"
    err = refused(capsys, ["train", *args, "--out", str(out), "--no-progress"])
    assert fragment in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "evaluate", "sample"])
def test_cuda_without_cuda(tmp_path, capsys, synthetic_data, command):
    out = tmp_path / "run"
    argv = {
        "train": ["train", "--out", str(out)],
        "evaluate": ["evaluate", str(out)],
        "sample": ["sample", str(out), "--out", str(tmp_path / "s.png")],
    }[command]
    err = refused(capsys, [*argv, "--device", "cuda"])
    assert "--device cuda was asked for but no CUDA device is available; use --device cpu" in err
    assert not out.exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    "name,text,fragment",
    [
        ("bad.toml", 'model = "avae"\nlatent_dim = \n', "does not parse"),
        ("bad.toml", "[config\nepochs = 1\n", "does not parse"),
        ("bad.json", '{"model": "avae", "epochs": 2,}', "does not parse"),
        ("bad.json", "[1, 2]", "must hold a table of settings"),
        ("typo.toml", "latent_dims = 3\n", "has unknown setting(s) latent_dims"),
        ("binary.toml", b"\xff\xfe\x00junk", "is not UTF-8 text"),
        ("missing.toml", None, "cannot read config file"),
    ],
)
def test_bad_config_files(tmp_path, capsys, name, text, fragment):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    out = tmp_path / "run"
    err = refused(capsys, ["train", "--config", str(path), "--out", str(out)])
    assert fragment in err and str(path) in err
    assert not out.exists()


def test_bad_value_in_config_file(tmp_path, capsys):
    path = tmp_path / "types.json"
    path.write_text('{"epochs": "ten"}')
    err = refused(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert "epochs must be an integer, got 'ten'" in err and not (tmp_path / "run").exists()


def test_good_config_file_is_used(tmp_path, capsys, synthetic_data):
    config = tmp_path / "c.toml"
    config.write_text('model = "vae"\nlatent_dim = 4\nhidden = [32, 16]\nbatch_size = 50\nepochs = 1\n')
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / CHECKPOINT).exists()


def test_resume_of_another_configuration_is_refused_and_changes_nothing(tmp_path, capsys, synthetic_data):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    (out / f".{CHECKPOINT}.killed.tmp").write_bytes(b"left by a killed writer")
    before = snapshot(out)
    capsys.readouterr()
    err = refused(
        capsys, ["train", *SMALL, "--latent-dim", "6", "--epochs", "2", "--out", str(out), "--resume"]
    )
    assert "--resume continues" in err and "latent_dim 4 -> 6" in err and "only epochs" in err
    err = refused(
        capsys, ["train", "--model", "avae", *SMALL, "--epochs", "2", "--out", str(out), "--resume"]
    )
    assert "model 'vae' -> 'avae'" in err
    err = refused(capsys, ["train", *SMALL, "--epochs", "2", "--out", str(out)])  # no --resume
    assert "already holds a run" in err
    assert snapshot(out) == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys, synthetic_data):
    out = tmp_path / "file"
    out.write_text("not a run")
    err = refused(capsys, ["train", *SMALL, "--out", str(out)])
    assert "is a file, not a directory" in err and out.read_text() == "not a run"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "{missing}"],
        ["sample", "{missing}", "--out", "{png}"],
        ["evaluate", "{empty}"],
        ["sample", "{empty}", "--out", "{png}"],
    ],
)
def test_evaluate_and_sample_need_a_run_directory(tmp_path, capsys, argv):
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "png": tmp_path / "s.png"}
    err = refused(capsys, [a.format(**names) for a in argv])
    assert "is not a run directory" in err or "no checkpoint at" in err
    assert not names["missing"].exists() and list(names["empty"].iterdir()) == []
    assert not names["png"].exists()


def test_sample_rejects_bad_counts(tmp_path, capsys, synthetic_data):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--seeds", "0,1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert "--n must be positive" in refused(
        capsys, ["sample", str(out), "--n", "0", "--out", str(tmp_path / "a.png")]
    )
    err = refused(capsys, ["sample", str(out), "--member", "2", "--out", str(tmp_path / "a.png")])
    assert "--member must be in 0..1" in err and not (tmp_path / "a.png").exists()


def test_usage_errors_are_one_line(capsys):
    assert "required: COMMAND" in refused(capsys, [])
    assert "invalid choice: 'trian'" in refused(capsys, ["trian"])
    assert "required: --out" in refused(capsys, ["train"])


def test_resume_takes_the_configuration_from_config_json(tmp_path, capsys, synthetic_data):
    """`--resume` with only --out (and a resumable change) continues the run as configured, and
    config.json records the resume and what it changed."""
    out = tmp_path / "run"
    assert (
        main(["train", "--model", "avae", *SMALL, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    )
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["model"]["name"] == "avae" and record["config"]["epochs"] == 2
    assert record["resumes"][0]["from_epoch"] == 1 and record["resumes"][0]["changes"] == {"epochs": [1, 2]}
    straight = tmp_path / "straight"
    assert (
        main(["train", "--model", "avae", *SMALL, "--epochs", "2", "--out", str(straight), "--no-progress"])
        == 0
    )
    assert snapshot(out)[CHECKPOINT] == snapshot(straight)[CHECKPOINT]


def test_resume_of_a_missing_or_empty_folder_is_an_error(tmp_path, capsys, synthetic_data):
    for out in (tmp_path / "missing", tmp_path):
        err = refused(capsys, ["train", *SMALL, "--out", str(out), "--resume"])
        assert "holds no run" in err and "drop --resume" in err
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("seeds", ["0,,1", ",", "0,a", ""])
def test_malformed_seed_lists_are_refused(capsys, tmp_path, seeds):
    err = refused(capsys, ["train", "--seeds", seeds, "--out", str(tmp_path / "r")])
    assert "comma-separated integers" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"avae {avae.__version__}"


@pytest.mark.parametrize(
    "threads,fragment",
    [
        ("999999", "--threads 999999 is more than this machine's"),
        ("0", "--threads must be a positive integer, got 0"),
        ("-2", "--threads must be a positive integer, got -2"),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate", "reproduce"])
def test_threads_outside_1_to_the_cores_are_refused(tmp_path, capsys, command, threads, fragment):
    out = tmp_path / "run"
    argv = {
        "train": ["train", "--out", str(out)],
        "evaluate": ["evaluate", str(out)],
        "reproduce": ["reproduce", "--profile", "smoke", "--out", str(out)],
    }[command]
    assert fragment in refused(capsys, [*argv, "--threads", threads])
    assert not out.exists()


def test_threads_beyond_this_machine_are_left_to_a_ray_cluster_at_an_address():
    """The tasks of `--executor ray --address` run on the cluster's nodes, not here."""
    check_threads(argparse.Namespace(threads=10**6, address="10.0.0.1:6379"))
    with pytest.raises(ConfigError, match="more than this machine's"):
        check_threads(argparse.Namespace(threads=10**6, address=None))


def deny_writes(monkeypatch, folder: Path) -> None:
    """As root, chmod takes no write permission away, so a folder without it is simulated where
    the check asks the system (os.access)."""
    real = os.access
    monkeypatch.setattr(avae_io.os, "access", lambda p, mode: Path(p) != folder and real(p, mode))


@pytest.mark.parametrize(
    "argv,work",
    [
        (["train", *SMALL, "--epochs", "1", "--no-progress"], "train"),
        (["sweep", "--grid", "lr=0.001"], "sweep"),
        (["reproduce", "--profile", "smoke"], "reproduce"),
        (["bench", "--quick"], "cmd_bench"),
    ],
)
def test_an_unwritable_out_is_refused_before_anything_runs(
    tmp_path, capsys, monkeypatch, synthetic_data, argv, work
):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "out"
    deny_writes(monkeypatch, locked)
    ran = []  # the work is stood in for: only the check before it is tested
    monkeypatch.setattr(cli, work, lambda *a, **k: ran.append(out.mkdir()))
    err = refused(capsys, [*argv, "--out", str(out)])
    assert f"--out {out} cannot be written: {locked} is not writable" in err
    assert not out.exists() and not ran


def test_an_unwritable_run_directory_is_refused_before_evaluating(
    tmp_path, capsys, monkeypatch, synthetic_data
):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    before = snapshot(run)
    capsys.readouterr()
    deny_writes(monkeypatch, run)
    err = refused(capsys, ["evaluate", str(run), "--metrics", "elbo"])
    assert f"RUN_DIR {run} cannot be written" in err and "copy the run to a writable folder" in err
    assert snapshot(run) == before


def test_reproduce_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a folder")
    err = refused(capsys, ["reproduce", "--profile", "smoke", "--out", str(out), "--no-progress"])
    assert f"--out {out} is a file, not a directory; choose another --out" in err
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize(
    "error,fragment",
    [
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied; check its permissions"),
        (FileExistsError(errno.EEXIST, "File exists"), "File exists; a file is in the way"),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), "a folder stands where a file is needed"),
        (OSError(errno.ENOSPC, "No space left on device"), "free disk space, then run the same command"),
    ],
)
def test_an_os_error_no_check_foresaw_is_one_sentence_naming_the_path(
    tmp_path, capsys, monkeypatch, error, fragment
):
    error.filename = str(tmp_path / "somewhere")

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "reproduce", fails)
    err = refused(capsys, ["reproduce", "--profile", "smoke", "--out", str(tmp_path / "out")])
    assert err.startswith(f"avae: error: {tmp_path / 'somewhere'}: ") and fragment in err


def test_an_unreadable_image_folder_is_one_sentence(tmp_path, capsys, monkeypatch):
    """As root, chmod 000 does not stop reads, so listing the folder is made to fail as it would."""
    folder = tmp_path / "images"
    folder.mkdir()
    real = Path.iterdir

    def iterdir(path):
        if path == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    err = refused(capsys, ["train", "--dataset", str(folder), "--out", str(tmp_path / "run")])
    assert f"{folder}: Permission denied; check its permissions" in err
    assert not (tmp_path / "run").exists()


def test_analyse_says_that_it_trains_the_classifier_and_for_how_long(
    tmp_path, capsys, monkeypatch, synthetic_data
):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(cli, "ensure_classifier", lambda path, *a, **k: path)  # not trained here
    monkeypatch.setattr(cli, "analyse_run", lambda *a, **k: {})
    assert main(["analyse", str(run), "--classifier-epochs", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    minutes = costs.classifier_seconds(2, 60000, "cpu") / 60
    assert first.startswith("avae analyse: training the feature classifier for mnist once (2 epochs on 60000")
    assert f"about {minutes:.1f} min on cpu" in first and str(tmp_path / "classifiers") in first


def test_threads_apply_to_the_whole_command_and_are_restored_after_it(
    tmp_path, capsys, monkeypatch, synthetic_data
):
    """`avae analyse --threads 1` trains its classifier with one thread (it used torch's default)."""
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    seen = []
    monkeypatch.setattr(cli, "ensure_classifier", lambda path, *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(cli, "analyse_run", lambda *a, **k: {})
    torch.set_num_threads(2)
    assert main(["analyse", str(run), "--threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == 2


def test_the_help_states_each_default_as_the_library_defines_it():
    """Every "(default ...)" in train's and evaluate's options is filled from the dataclass field of
    the option's name (TrainConfig, ModelConfig, EvalSettings), so a default is written once."""
    helps = {flag: kwargs.get("help", "") for flag, kwargs in TRAIN_OPTIONS + EVALUATE_OPTIONS}
    assert not [flag for flag, text in helps.items() if "{" in text]
    assert "(default 1e-3)" in helps["--lr"] and "(default 0.9; avb 0.5)" in helps["--beta1"]
    assert "(default 256,64,32;" in helps["--hidden"] and "(default 1,100,1000)" in helps["--k"]
    assert [shown(v) for v in (1e-3, 1e-4, 0.05, 1.0, (0,), 10)] == ["1e-3", "1e-4", "0.05", "1", "0", "10"]
    assert "metrics" not in EVAL_SETTINGS and {"k", "ais_steps", "avb_inflate"} <= EVAL_SETTINGS
