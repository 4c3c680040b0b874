"""Bad input through the command line: each is refused before any work starts, with exit status 2
and exactly one line on stderr, `avae: error: ...`, and no run directory is created or changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avae.cli import main
from avae.runs import CHECKPOINT

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
