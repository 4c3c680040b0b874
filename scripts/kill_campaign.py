"""Kill campaign: SIGKILL `avae train` at random moments and prove that nothing is lost.

1. Train a small real-MNIST configuration once, uninterrupted: the reference.
2. Launch `avae train ... --resume` into a second directory as a subprocess and SIGKILL it after a
   random delay (seeded), again and again. About a third of the kills are aimed at a checkpoint
   write: they fire the moment the checkpoint's temporary file appears.
3. After every kill: the checkpoint (if any) must load, its epoch must not go backwards, and
   metrics.csv and config.json must parse. A run that exits on its own must exit 0.
4. Once N kills are done, one last `--resume` runs to the end. Its checkpoint (weights, Adam
   moments, RNG states) must be bitwise equal to the reference's, and so must metrics.csv
   (except the wall-clock column) and the sample grids.

If a run finishes before all N kills are spent (it outran its random delay), the campaign starts a
new round in a fresh directory; every finished round is compared with the reference.

5. Then the driver: `avae sweep` of two learning rates with --jobs 2 (two worker processes) is
   SIGKILLed while its workers train. Within DRIVER_GRACE_S seconds no process it started may be
   left; the same command run again must finish, and each run's checkpoint and metrics.csv must be
   bitwise equal to those of the same sweep run uninterrupted.

    python scripts/kill_campaign.py --kills 20 --out runs/kill-campaign

Prints one summary line and exits 0 when every check held, 1 otherwise.

Deterministic settings: CPU only, and every launch runs with the same number of CPU threads
(--threads, default 1, through OMP_NUM_THREADS/MKL_NUM_THREADS), since CPU matrix products may
split their sums by thread; avae.train also pins a resumed run to the thread count recorded in its
checkpoint. Every launch runs a snapshot of the avae package copied into OUT/code at the start, so
that source edits made while the campaign runs (a shared checkout) cannot change the result.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

import avae
from avae.errors import AvaeError
from avae.training.checkpoint import load_checkpoint
from avae.training.runs import CHECKPOINT, CONFIG, METRICS

TRAIN_ARGS: tuple[str, ...] = (
    "--model", "avae",
    "--train-subset", "600",
    "--test-subset", "200",
    "--epochs", "6",
    "--batch-size", "50",
    "--seeds", "0,1",
)  # fmt: skip
# For the test suite: the same shape of run, smaller, so that a campaign takes well under a minute.
QUICK_ARGS: tuple[str, ...] = (
    "--model", "avae",
    "--hidden", "64,32",
    "--latent-dim", "4",
    "--noise-dim", "4",
    "--train-subset", "600",
    "--test-subset", "100",
    "--epochs", "4",
    "--batch-size", "50",
    "--seeds", "0,1",
)  # fmt: skip
WRITE_AIMED = 1 / 3  # share of kills aimed at the moment a checkpoint is being written
START_UP = 0.1  # share of kills aimed at a random moment of start-up
POLL_S = 0.002
DRIVER_GRACE_S = 10.0  # a killed driver's workers must be gone within this
SWEEP_GRID = ("--grid", "lr=0.001,0.002", "--jobs", "2", "--threads", "1", "--metrics", "elbo")


@dataclass
class Summary:
    kills: int = 0
    kills_during_write: int = 0
    launches: int = 0
    resumes: int = 0  # launches that continued from a checkpoint
    rounds: int = 0
    runs_lost: int = 0  # a launch that failed by itself, or progress that went backwards
    corrupted: int = 0  # a checkpoint, metrics.csv or config.json that did not load after a kill
    stale_temporaries: int = 0  # temporaries left by killed writers (removed by the next resume)
    bitwise_equal: bool = True
    compared_tensors: int = 0
    metrics_equal: bool = True
    samples_equal: bool = True
    driver_kills: int = 0
    processes_left: int = 0  # started by a killed driver and still running DRIVER_GRACE_S later
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.runs_lost == 0
            and self.corrupted == 0
            and self.bitwise_equal
            and self.metrics_equal
            and self.samples_equal
            and self.rounds >= 1
            and self.processes_left == 0
        )

    def line(self) -> str:
        yes = {True: "yes", False: "NO"}
        return (
            f"kill campaign: kills {self.kills} ({self.kills_during_write} during a checkpoint write), "
            f"launches {self.launches}, resumes {self.resumes}, rounds {self.rounds}, "
            f"runs lost {self.runs_lost}, corrupted checkpoints {self.corrupted}, "
            f"bitwise equal {yes[self.bitwise_equal]} ({self.compared_tensors} tensors), "
            f"metrics equal {yes[self.metrics_equal]}, samples equal {yes[self.samples_equal]}, "
            f"driver kills {self.driver_kills} (processes left after {DRIVER_GRACE_S:.0f} s: "
            f"{self.processes_left}), {self.seconds:.0f} s"
        )


def snapshot(out: Path, threads: int) -> tuple[Path, dict[str, str]]:
    """Copy the avae package into OUT/code; the environment that runs it with `threads` threads."""
    code = out / "code"
    shutil.copytree(Path(avae.__file__).parent, code / "avae", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return code, env


def command(train_args: tuple[str, ...], out: Path, resume: bool, data_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "avae", "train", *train_args, "--out", str(out)]  # progress on stderr
    cmd += ["--data-dir", data_dir] if data_dir else []
    return cmd + (["--resume"] if resume else [])


def sweep_command(train_args: tuple[str, ...], out: Path, data_dir: str | None) -> list[str]:
    """`avae sweep` over the campaign's configuration: two learning rates, two worker processes."""
    args = [a for a in train_args if a != "--model"]
    model = train_args[train_args.index("--model") + 1]
    args.remove(model)
    cmd = [sys.executable, "-m", "avae", "sweep", "--model", model, *args, *SWEEP_GRID, "--out", str(out)]
    return cmd + (["--data-dir", data_dir] if data_dir else [])


def kill_driver(
    train_args: tuple[str, ...], out: Path, data_dir: str | None, spawn: dict, summary: Summary, log
) -> None:
    """Step 5: SIGKILL a sweep's driver while its workers train, count what it leaves running,
    run the sweep again and compare its runs with an uninterrupted sweep's."""
    reference, killed = out / "sweep-reference", out / "sweep-killed"
    first = subprocess.run(sweep_command(train_args, reference, data_dir), capture_output=True, **spawn)
    if first.returncode:
        summary.problems.append(f"the uninterrupted sweep failed: {first.stderr.decode()[-500:]}")
        return
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    driver = subprocess.Popen(sweep_command(train_args, killed, data_dir), **quiet, **spawn)
    noted: set[psutil.Process] = set()
    while driver.poll() is None and not any(killed.glob(f"*/{CHECKPOINT}")):  # until a worker trains
        noted |= set(psutil.Process(driver.pid).children(recursive=True))
        time.sleep(0.05)
    noted |= set(psutil.Process(driver.pid).children(recursive=True)) if driver.poll() is None else set()
    if driver.poll() is not None:
        summary.problems.append("the sweep to be killed finished before a worker had trained an epoch")
        return
    driver.kill()
    driver.wait()
    summary.driver_kills += 1
    _, left = psutil.wait_procs(list(noted), timeout=DRIVER_GRACE_S)
    summary.processes_left += len(left)
    for process in left:  # do not leave them to the next test
        with contextlib.suppress(psutil.Error):
            process.kill()
    log(f"driver kill: {len(noted)} processes it started, {len(left)} left after {DRIVER_GRACE_S:.0f} s")
    rerun = subprocess.run(sweep_command(train_args, killed, data_dir), capture_output=True, **spawn)
    if rerun.returncode:
        summary.runs_lost += 1
        summary.problems.append(f"the sweep rerun after the driver kill exited {rerun.returncode}")
        return
    for run in sorted(p.parent for p in reference.glob(f"*/{CHECKPOINT}")):
        compare(run, killed / run.name, summary, log)


def checkpoint_epoch(run: Path) -> int:
    path = run / CHECKPOINT
    return int(load_checkpoint(path)[1]["epoch"]) if path.exists() else 0


def temporaries(run: Path) -> list[Path]:
    return sorted(run.glob(".*.tmp")) if run.is_dir() else []


def check_after_kill(run: Path, last_epoch: int, summary: Summary, log) -> int:
    """Everything in `run` must load; returns the checkpoint's epoch."""
    epoch = last_epoch
    try:
        epoch = checkpoint_epoch(run)
    except AvaeError as exc:
        summary.corrupted += 1
        summary.problems.append(f"checkpoint does not load after kill {summary.kills}: {exc}")
        log(f"  CORRUPTED: {exc}")
    if epoch < last_epoch:
        summary.runs_lost += 1
        summary.problems.append(f"checkpoint went back from epoch {last_epoch} to {epoch}")
    for name in (METRICS, CONFIG):
        path = run / name
        if not path.exists():
            continue
        try:
            text = path.read_text()
            rows = list(csv.DictReader(text.splitlines())) if name == METRICS else [json.loads(text)]
            if name == METRICS and rows and max(int(r["epoch"]) for r in rows) < epoch:
                raise ValueError(f"metrics end before the checkpoint's epoch {epoch}")
        except (OSError, ValueError, KeyError) as exc:
            summary.corrupted += 1
            summary.problems.append(f"{path} does not load after kill {summary.kills}: {exc}")
    summary.stale_temporaries += len(temporaries(run))
    return epoch


def metric_rows(run: Path) -> list[dict[str, str]]:
    with (run / METRICS).open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def compare(reference: Path, run: Path, summary: Summary, log) -> None:
    """Bitwise comparison of every checkpoint tensor, metrics.csv and the sample grids."""
    ref_tensors, ref_meta = load_checkpoint(reference / CHECKPOINT)
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    differing = sorted(set(ref_tensors) ^ set(tensors))
    differing += [
        k
        for k in sorted(set(ref_tensors) & set(tensors))
        if ref_tensors[k].dtype != tensors[k].dtype or not torch.equal(ref_tensors[k], tensors[k])
    ]
    if differing or meta["epoch"] != ref_meta["epoch"]:
        summary.bitwise_equal = False
        summary.problems.append(f"{run}: {len(differing)} tensors differ from the reference: {differing[:3]}")
    summary.compared_tensors += len(ref_tensors)
    if metric_rows(reference) != metric_rows(run):
        summary.metrics_equal = False
        summary.problems.append(f"{run / METRICS} differs from the reference's")
    for png in sorted(reference.glob("samples_seed*.png")):
        if not (run / png.name).exists() or (run / png.name).read_bytes() != png.read_bytes():
            summary.samples_equal = False
            summary.problems.append(f"{run / png.name} differs from the reference's")
    log(f"  {run.name}: {len(ref_tensors) - len(differing)}/{len(ref_tensors)} tensors bitwise equal")


class Launch:
    """`avae train` as a subprocess whose stderr is drained by a thread; `training` is set when
    the progress bar first appears, i.e. when start-up (imports, data, restoring) is over."""

    def __init__(self, cmd: list[str], spawn: dict):
        self.began = time.monotonic()
        self.startup_s: float | None = None
        self.seconds = 0.0
        self.training = threading.Event()
        self.output = b""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **spawn)
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            if not self.training.is_set() and b"step" in chunk:  # tqdm's unit
                self.startup_s = time.monotonic() - self.began
                self.training.set()
            self.output = (self.output + chunk)[-4000:]

    def wait(self, seconds: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=seconds)

    def finish(self) -> int:
        self.proc.wait()
        self.reader.join()
        self.seconds = time.monotonic() - self.began
        return self.proc.returncode

    def tail(self) -> str:
        lines = self.output.decode(errors="replace").replace("\r", "\n").splitlines()
        return " / ".join(line for line in lines if "%|" not in line)[-500:]  # without progress bars


def wait_for_write(proc: subprocess.Popen, run: Path, limit_s: float) -> bool:
    """Poll until a checkpoint temporary exists (True) or the process ends / time is up."""
    deadline = time.monotonic() + limit_s
    pattern = f".{CHECKPOINT}.*.tmp"
    while time.monotonic() < deadline and proc.poll() is None:
        if run.is_dir() and any(run.glob(pattern)):
            return True
        time.sleep(POLL_S)
    return False


def run_campaign(
    kills: int,
    out: str | Path,
    *,
    seed: int = 0,
    train_args: tuple[str, ...] = TRAIN_ARGS,
    data_dir: str | None = None,
    threads: int = 1,
    log=print,
) -> Summary:
    """Run the campaign in `out` (emptied first) and return its summary."""
    started = time.monotonic()
    out = Path(out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    code, env = snapshot(out, threads)
    spawn = {"cwd": code, "env": env}
    data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    where = subprocess.run(
        [sys.executable, "-c", "import avae; print(avae.__file__)"], capture_output=True, text=True, **spawn
    ).stdout.strip()
    if not Path(where).is_relative_to(code):
        raise SystemExit(f"the launches would import avae from {where}, not from the snapshot in {code}")
    summary = Summary()
    rng = random.Random(seed)

    reference = out / "reference"
    launch = Launch(command(train_args, reference, False, data_dir), spawn)
    if launch.finish() != 0:
        raise SystemExit(f"the reference run failed (exit {launch.proc.returncode}):\n{launch.tail()}")
    with (reference / METRICS).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = max(int(r["epoch"]) for r in rows)
    epoch_s = sum(float(r["seconds"]) for r in rows if r["member"] == "0") / epochs
    startup_s = launch.startup_s or 1.0
    log(
        f"reference: {epochs} epochs in {launch.seconds:.1f} s "
        f"({startup_s:.1f} s start-up, {epoch_s:.2f} s/epoch)"
    )

    run, last_epoch = None, 0
    while True:
        if run is None:
            summary.rounds += 1
            run, last_epoch = out / f"round{summary.rounds}", 0
        kill = summary.kills < kills
        summary.launches += 1
        summary.resumes += (run / CHECKPOINT).exists()
        launch = Launch(command(train_args, run, (run / CONFIG).exists(), data_dir), spawn)
        # A kill is aimed at a checkpoint write, or at a random moment of start-up (imports, data
        # loading, restoring), or, mostly, at a random moment of the training that is left.
        training_s = (epochs - last_epoch) * epoch_s
        during_write, aim = False, rng.random()
        if kill and aim < WRITE_AIMED:
            during_write = wait_for_write(launch.proc, run, limit_s=3 * (startup_s + training_s))
        elif kill and aim < WRITE_AIMED + START_UP:
            launch.wait(rng.uniform(0, startup_s))
        elif kill and launch.training.wait(timeout=3 * startup_s + 10):
            launch.wait(rng.uniform(0, training_s))
        if kill and launch.proc.poll() is None:
            launch.proc.kill()  # SIGKILL
            launch.finish()
            summary.kills += 1
            summary.kills_during_write += during_write
            last_epoch = check_after_kill(run, last_epoch, summary, log)
            log(
                f"kill {summary.kills}: {'during a checkpoint write, ' if during_write else ''}"
                f"checkpoint at epoch {last_epoch}, {len(temporaries(run))} temporaries left"
            )
            continue
        if launch.finish() != 0:
            summary.runs_lost += 1
            summary.problems.append(f"a resumed run exited {launch.proc.returncode}: {launch.tail()}")
            log(f"  LOST: exit {launch.proc.returncode}: {launch.tail()}")
            break
        log(f"{run.name} finished after {summary.kills} kills in total")
        compare(reference, run, summary, log)
        if summary.kills >= kills:
            break
        run = None  # outran its kill: start a new round for the kills still to come
    kill_driver(train_args, out, data_dir, spawn, summary, log)
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="number of SIGKILLs (default 20)")
    parser.add_argument("--out", default="runs/kill-campaign", help="working directory (emptied first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--quick", action="store_true", help="a smaller configuration (as in the tests)")
    parser.add_argument("--data-dir", help="data cache directory (default as for avae)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every launch (default 1)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.threads < 1:
        parser.error("--kills must be >= 0 and --threads >= 1")
    summary = run_campaign(
        args.kills,
        args.out,
        seed=args.seed,
        train_args=QUICK_ARGS if args.quick else TRAIN_ARGS,
        data_dir=args.data_dir,
        threads=args.threads,
    )
    for problem in summary.problems:
        print(f"problem: {problem}")
    print(summary.line())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
