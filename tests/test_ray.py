"""The Ray executor (`--executor ray`) and `avae sweep`, on a local Ray cluster (`ray.init(num_cpus=2)`,
started once for the module) against the local executor, on real MNIST subsets.

- a cut-down smoke profile (VAE and AVAE in both readings at latent 10 on MNIST, with the smoke
  profile's training, evaluation and analysis settings) gives the same eval.json figures under both
  executors, member by member, to the bit (one torch thread each);
- a 2-point sweep gives the same sweep.json under both executors;
- a rerun after completion trains and evaluates nothing, and leaves the finished runs' files as they were;
- without Ray, `--executor ray` is refused in one sentence naming the install command (runs always).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from avae.cli.commands import main
from avae.io import read_json
from avae.repro import plan
from avae.repro.paper import Experiment
from avae.repro.plan import PROFILES, runs_for
from avae.repro.reproduce import reproduce
from avae.repro.sweep import SWEEP
from avae.training.config import Runtime, make_config
from avae.training.runs import run_dir_name

try:
    import ray
except ImportError:  # the optional extra avae[ray] is not installed
    ray = None

needs_ray = pytest.mark.skipif(
    ray is None, reason="Ray is not installed (pip install 'avae[ray]'), so the Ray executor is not tested"
)
pytestmark = pytest.mark.usefixtures("one_thread")

RUNTIME = Runtime(progress=False, threads=1)  # one torch thread under both executors: equal bits
SWEEP_SETTINGS = ["--model", "avae", "--epochs", "1", "--seeds", "0,1", "--train-subset", "300"]
SWEEP_SETTINGS += ["--test-subset", "100", "--grid", "lr=0.001,0.01", "--threads", "1", "--no-progress"]


def mini_smoke() -> plan.Profile:
    """The smoke profile cut to MNIST, latent 10 and one experiment of VAE and AVAE (3 runs)."""
    return replace(
        PROFILES["smoke"], name="mini-smoke", datasets=("mnist",), latent_dims=(10,), experiments=("mini",)
    )


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module; the executor uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def both(cluster, tmp_path_factory):
    """The mini smoke profile run by the local and by the Ray executor, each in its own directory."""
    out = tmp_path_factory.mktemp("executors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(plan.EXPERIMENTS, "mini", Experiment("test", ("vae", "avae"), (10,)))
        profile = mini_smoke()
        local = reproduce(profile, out / "local", runtime=RUNTIME)
        remote = reproduce(profile, out / "ray", runtime=RUNTIME, executor="ray")
        yield profile, runs_for(profile), out, local, remote


def figures(run_dir: Path) -> dict[str, list[float]]:
    """Every metric of a run's eval.json, member by member."""
    metrics = read_json(run_dir / "eval.json")["metrics"]
    return {key: [m["value"] for m in entry["per_member"]] for key, entry in metrics.items()}


@needs_ray
def test_ray_executor_gives_the_local_executors_figures(both):
    _, runs, out, local, remote = both
    assert len(runs) == 3
    assert (
        sorted(r["dir"] for r in remote)
        == sorted(r["dir"] for r in local)
        == sorted(r.dir_name for r in runs)
    )
    assert all(r["trained"] for r in remote)
    for run in runs:
        ours, theirs = figures(out / "ray" / run.dir_name), figures(out / "local" / run.dir_name)
        assert {"neg_elbo", "iwae_k1000", "ais", "bdmc_forward"} <= set(ours)
        assert ours == theirs, run.dir_name  # bitwise, every metric and member
        assert (out / "ray" / run.dir_name / "analysis.json").exists()
    index = read_json(out / "ray" / "index.json")["runs"]
    assert set(index) == {run.key for run in runs}


@needs_ray
def test_a_rerun_on_ray_trains_and_evaluates_nothing(both, capsys):
    profile, runs, out, _, _ = both

    def digest() -> dict[str, str]:
        files = ("checkpoint.safetensors", "eval.json", "analysis.json", "metrics.csv")
        return {
            f"{run.dir_name}/{f}": hashlib.sha256((out / "ray" / run.dir_name / f).read_bytes()).hexdigest()
            for run in runs
            for f in files
        }

    before = digest()
    again = reproduce(profile, out / "ray", runtime=RUNTIME, executor="ray")  # "mini" is still registered
    assert len(again) == 3 and not any(r["trained"] or r["evaluated"] for r in again)
    assert capsys.readouterr().out.count("finished earlier, reused") == 3
    assert digest() == before


@needs_ray
def test_a_sweep_on_ray_equals_the_local_sweep_and_reruns_as_a_no_op(cluster, tmp_path, capsys):
    assert main(["sweep", *SWEEP_SETTINGS, "--out", str(tmp_path / "local")]) == 0
    assert main(["sweep", *SWEEP_SETTINGS, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = read_json(tmp_path / "local" / SWEEP), read_json(tmp_path / "ray" / SWEEP)
    assert remote == local
    assert [p["point"] for p in remote["points"]] == [{"lr": 0.001}, {"lr": 0.01}]
    for point in remote["points"]:
        cfg = make_config({"model": "avae", "epochs": 1, "seeds": (0, 1), "train_subset": 300,
                           "test_subset": 100, **point["point"]})  # fmt: skip
        assert point["dir"] == run_dir_name(cfg)
        assert (tmp_path / "ray" / point["dir"] / "checkpoint.safetensors").exists()
    first, second = (p["figures"]["neg_elbo"]["per_member"] for p in remote["points"])
    assert first.keys() == {"0", "1"} and first != second
    capsys.readouterr()
    assert main(["sweep", *SWEEP_SETTINGS, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert capsys.readouterr().out.count("finished earlier, reused") == 2
    assert read_json(tmp_path / "ray" / SWEEP) == remote


def refused(capsys, argv: list[str]) -> str:
    """`avae ARGV` must exit 2 with one `avae: error:` line on stderr; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("avae: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("command", ["reproduce", "sweep"])
def test_without_ray_the_ray_executor_is_refused_with_the_install_command(
    command, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "out"
    argv = {
        "reproduce": ["reproduce", "--profile", "smoke", "--no-progress"],
        "sweep": ["sweep", *SWEEP_SETTINGS],
    }[command]
    err = refused(capsys, [*argv, "--out", str(out), "--executor", "ray"])
    assert "pip install 'avae[ray]'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "grid,fragment",
    [
        (["adv_weight"], "is not KEY=V1,V2"),
        (["adv_weight=0.1", "adv_weight=1"], "adv_weight is given twice"),
        (["epochs=1,2"], "epochs is given twice"),  # also given as --epochs
        (["seeds=0,1"], "cannot vary seeds"),
        (["latent_dims=5,10"], "unknown setting 'latent_dims'"),
        (["adv_weight=a"], "'a' is not a number"),
        (["hidden=32,a/b"], "is not integers separated by '/'"),
        (["critic_input=xz,xy"], "grid point critic_input=xy: model 'avae' takes critic_input xz or z"),
        (["adv_weight=-1,1"], "grid point adv_weight=-1.0: adv_weight must be >= 0"),
    ],
)
def test_bad_grids_are_refused_before_anything_is_written(grid, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["sweep", "--model", "avae", "--epochs", "1", "--grid", *grid, "--out", str(out)]
    assert fragment in refused(capsys, argv)
    assert not out.exists()


def test_an_address_without_the_ray_executor_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    err = refused(capsys, ["reproduce", "--profile", "smoke", "--out", str(out), "--address", "auto"])
    assert "--address names a Ray cluster; give it with --executor ray" in err
    assert not out.exists()


def test_a_sweep_point_that_diverges_is_recorded_and_not_retried(tmp_path, capsys):
    """An absurd learning rate diverges within the first epoch: the sweep finishes the other point,
    fails once naming it, marks it diverged in sweep.json and its table, and a rerun leaves it alone
    (the same settings diverge again) and succeeds."""
    settings = [a if a != "lr=0.001,0.01" else "lr=0.001,1000" for a in SWEEP_SETTINGS]
    out = str(tmp_path / "out")
    assert main(["sweep", *settings, "--out", out]) == 2
    assert "1 of 2 runs failed" in capsys.readouterr().err
    good, bad = read_json(tmp_path / "out" / SWEEP)["points"]
    assert "neg_elbo" in good["figures"] and "diverged" not in good
    assert bad["figures"] == {} and bad["diverged"]["epoch"] == 1 and bad["diverged"]["seed"] in (0, 1)
    assert main(["sweep", *settings, "--out", out]) == 0
    printed = capsys.readouterr()
    assert f"{bad['dir']} diverged earlier and is not retried" in printed.err
    assert f"diverged (epoch 1, seed {bad['diverged']['seed']})" in printed.out
    assert "finished earlier, reused" in printed.out


@needs_ray
def test_a_sweep_point_that_diverges_on_ray_fails_alone_and_keeps_its_record(cluster, tmp_path, capsys):
    """Under the Ray executor the divergence crosses a process boundary with its fields: the other
    point finishes, sweep.json is written, and the failure names the epoch."""
    settings = [a if a != "lr=0.001,0.01" else "lr=0.001,1000" for a in SWEEP_SETTINGS]
    out = tmp_path / "out"
    assert main(["sweep", *settings, "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "non-finite" in err and "at epoch 1" in err
    good, bad = read_json(out / SWEEP)["points"]
    assert "neg_elbo" in good["figures"] and bad["diverged"]["epoch"] == 1
    assert ray.is_initialized()  # the caller's cluster is left running


@needs_ray
def test_a_killed_driver_takes_the_ray_cluster_it_started_with_it(tmp_path):
    """`avae sweep --executor ray` without --address starts a local Ray cluster (GCS, raylet, agents
    that ignore SIGTERM, workers). SIGKILL the driver while a task trains: 10 s later none of the
    processes it started is left."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    out = tmp_path / "out"
    settings = list(SWEEP_SETTINGS)
    settings[settings.index("--epochs") + 1] = "40"  # still training when it is killed
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    command = [sys.executable, "-m", "avae", "sweep", *settings, "--executor", "ray", "--jobs", "2"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    driver = subprocess.Popen([*command, "--out", str(out)], env=env, start_new_session=True, **quiet)
    noted: set[psutil.Process] = set()
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline and not list(out.glob("*/checkpoint.*")):
        noted |= set(psutil.Process(driver.pid).children(recursive=True))
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before a task had trained an epoch"
    noted |= set(psutil.Process(driver.pid).children(recursive=True))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    _, left = psutil.wait_procs(list(noted), timeout=10)
    for process in left:
        process.kill()
    assert len(noted) > 3 and not left, [p.pid for p in left]
