"""Runs that survive each other: whatever one run raises, under every executor, is recorded and the
others go on; an error keeps its fields across a process boundary; a worker process that dies
fails only its own run; a driver that dies takes its workers with it (`avae.watchdog`).

The Ray executor's share of this is in test_ray.py; the kill campaign (test_faults.py) kills a
sweep's driver and checks that a rerun is bitwise equal."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from test_reproduce import tiny_profile

from avae.cli.commands import main
from avae.errors import ConfigError, DivergenceError
from avae.io import read_json
from avae.repro import runner
from avae.repro.execute import Task
from avae.repro.plan import EvalStep, PlannedRun, runs_for
from avae.repro.progress import FAILURES, Outcomes, PlanProgress
from avae.repro.runner import run_in_pool, run_tasks
from avae.repro.sweep import SWEEP
from avae.training.config import Runtime
from avae.training.runs import DIVERGED

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = Runtime(progress=False, threads=1)
TINY = {"model": "vae", "dataset": "mnist", "latent_dim": 4, "hidden": (16,), "epochs": 1, "seeds": (0,)}
TINY |= {"train_subset": 200, "test_subset": 50, "batch_size": 50}


def test_a_divergence_error_keeps_its_fields_across_a_process_boundary():
    error = DivergenceError("loss went non-finite", epoch=3, step=7, member=1, seed=4, term="loss_elbo")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DivergenceError and str(copy) == "loss went non-finite"
    assert (copy.epoch, copy.step, copy.member, copy.seed, copy.term) == (3, 7, 1, 4, "loss_elbo")
    assert repr(pickle.loads(pickle.dumps(ConfigError("bad value")))) == "ConfigError('bad value')"


def tasks_of(tmp_path: Path, learning_rates: list[float]) -> list[Task]:
    steps = [EvalStep("neg_elbo", "elbo")]
    runs = [PlannedRun({**TINY, "lr": lr}, ["test"], honest=False) for lr in learning_rates]
    return [Task(run, None, tmp_path, QUIET, steps=steps) for run in runs]


def progress(tasks: list[Task]) -> PlanProgress:
    return PlanProgress({t.run.key: 1.0 for t in tasks}, 1, enabled=False)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_that_diverges_fails_alone_and_keeps_its_record(tmp_path, jobs):
    """The reproduce/sweep runner, in this process and in worker processes: an absurd learning
    rate diverges in its first epoch; the other runs finish, the failure is one sentence with the
    divergence's fields, and the run directory holds diverged.json."""
    tasks = tasks_of(tmp_path, [1e-3, 1e30, 2e-3])
    with progress(tasks) as bar:
        results, failures = run_tasks(tasks, jobs, bar)
    assert sorted(r["dir"] for r in results) == sorted(t.run.dir_name for t in tasks if t.run.cfg.lr < 1)
    (failure,) = failures
    assert failure.startswith(f"{tasks[1].run.dir_name}: non-finite loss_elbo at epoch 1")
    assert read_json(tmp_path / tasks[1].run.dir_name / DIVERGED)["epoch"] == 1


def raise_for_the_second(task: Task) -> dict:
    """A worker's function (module level, so that a spawned worker can import it)."""
    if task.run.cfg.lr == 2e-3:
        raise TypeError("a fault avae did not foresee")
    return {"dir": task.run.dir_name, "trained": False, "evaluated": [], "seconds": 0.0}


def die_for_the_second(task: Task) -> dict:
    if task.run.cfg.lr == 2e-3:
        os._exit(1)  # a worker killed from outside, or out of memory
    return raise_for_the_second(replace(task, run=PlannedRun({**TINY, "lr": 1e-3}, [], False)))


def test_an_unforeseen_exception_in_a_worker_is_recorded_with_its_traceback(tmp_path):
    tasks = tasks_of(tmp_path, [1e-3, 2e-3, 3e-3])
    outcomes = Outcomes(len(tasks), progress(tasks))
    run_in_pool(tasks, 2, outcomes.progress, outcomes, function=raise_for_the_second)
    assert len(outcomes.results) == 2
    (failure,) = outcomes.failures
    assert failure.startswith(f"{tasks[1].run.dir_name}: TypeError: a fault avae did not foresee")
    assert str(tmp_path / FAILURES) in failure
    log = (tmp_path / FAILURES).read_text()
    assert tasks[1].run.dir_name in log and "raise_for_the_second" in log  # the worker's traceback


def test_a_worker_process_that_dies_fails_only_its_own_run(tmp_path):
    """A worker that dies breaks its pool: the runs left go to a fresh pool, then each to a process
    of its own, so that only the run whose process dies is recorded as failed."""
    tasks = tasks_of(tmp_path, [1e-3, 2e-3, 3e-3, 4e-3])
    outcomes = Outcomes(len(tasks), progress(tasks))
    run_in_pool(tasks, 2, outcomes.progress, outcomes, function=die_for_the_second)
    assert len(outcomes.results) == 3
    (failure,) = outcomes.failures
    assert failure.startswith(f"{tasks[1].run.dir_name}: its worker process died, also when it ran alone")


def test_in_this_process_an_unforeseen_exception_does_not_stop_the_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "execute_run", raise_for_the_second)
    tasks = tasks_of(tmp_path, [2e-3, 1e-3])
    with progress(tasks) as bar:
        results, failures = run_tasks(tasks, 1, bar)
    assert [r["dir"] for r in results] == [tasks[1].run.dir_name] and len(failures) == 1


def test_a_sweep_with_jobs_finishes_the_other_points_and_writes_its_summary(tmp_path, capsys):
    """The command of the issue: a diverging point among four, two worker processes."""
    out = tmp_path / "sweep"
    args = ["sweep", "--model", "vae", "--latent-dim", "4", "--hidden", "16", "--epochs", "1"]
    args += ["--train-subset", "200", "--test-subset", "50", "--batch-size", "50", "--seeds", "0"]
    args += ["--grid", "lr=0.001,1e30,0.002,0.003", "--jobs", "2", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "avae: error: 1 of 4 runs failed" in err and "non-finite loss_elbo at epoch 1" in err
    points = read_json(out / SWEEP)["points"]
    assert [("diverged" in p, bool(p["figures"])) for p in points] == [
        (False, True),
        (True, False),
        (False, True),
        (False, True),
    ]


def test_reproduce_with_jobs_finishes_the_other_runs_when_one_diverges(tmp_path, monkeypatch, capsys):
    """`avae reproduce --jobs 2` with one planned run that diverges in its worker: the others are
    trained, evaluated and indexed, and the command ends with one sentence naming the failed run."""
    profile = replace(tiny_profile(monkeypatch, models=("vae", "vae-noise")), epochs=1)
    planned = runs_for(profile)
    absurd = PlannedRun({**planned[0].settings, "lr": 1e30}, planned[0].experiments, planned[0].honest)
    monkeypatch.setattr("avae.repro.reproduce.runs_for", lambda _: [absurd, *planned[1:]])
    from avae.errors import AvaeError
    from avae.repro.reproduce import reproduce

    with pytest.raises(AvaeError, match=f"1 of 2 runs failed \\({absurd.dir_name}: non-finite"):
        reproduce(profile, tmp_path, runtime=Runtime(progress=False), jobs=2)
    index = read_json(tmp_path / "index.json")["runs"]
    assert index[planned[1].key]["trained_epochs"] == 1 and "neg_elbo" in index[planned[1].key]["metrics"]
    assert read_json(tmp_path / absurd.dir_name / DIVERGED)["epoch"] == 1


DRIVER = """
import subprocess, sys, time
from avae.watchdog import reap_on_death
with reap_on_death():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
"""


def test_a_driver_killed_with_sigkill_takes_its_workers_with_it():
    """Even a worker that ignores SIGTERM (as Ray's agents do) is gone within 10 s."""
    code = textwrap.dedent(DRIVER)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    worker = psutil.Process(int(driver.stdout.readline()))
    time.sleep(1.0)  # the watchdog notes the worker
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    gone, alive = psutil.wait_procs([worker], timeout=10)
    for process in alive:
        process.kill()
    assert gone and not alive


def test_a_block_that_ends_normally_stops_its_watchdog_at_once():
    """The driver tells the watchdog it is done: the block returns without waiting and the process
    exits 0."""
    code = "from avae.watchdog import reap_on_death\nwith reap_on_death():\n    pass\nprint('ok')\n"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "ok\n" and done.returncode == 0
    assert time.monotonic() - started < 30  # not the watchdog's 5 s wait per block, nor a hang
