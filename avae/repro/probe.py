"""Timing a plan's work on this machine before it starts, for the cost model (avae.repro.costs) on
a CPU: a few of a run's own training steps (`Probe.step_seconds`), IWAE's decoder passes per second
against the rate the evaluation cost model was measured at (`Probe.eval_factor`), and IWAE with the
run's own model and a step of AIS and of BDMC, each at a run's own shape, against the cost model's
time for it (`Probe.part_factor`), all with the torch threads each run's worker process will have.

Why: the cost model's CPU figures were measured on one machine, and machines of one name differ.
On 2026-12-05 a 2-core "AMD EPYC" of this project ran the paper profile's AVB at 96-106 s an epoch
(one thread per process, --jobs 2), where the same profile had run at 36-40 s an epoch on an earlier
machine of the same name, and the benchmark-fitted cost model (benchmarks/bench.json, 2 threads)
said 22 s. A probe of AVB's own steps there said 94 s (`avae reproduce --dry-run`).

A machine busy with other work slows what is timed on it. Work on one thread is therefore timed by
its CPU time, which waiting for a core does not add to: on 2026-12-05, with two paper runs holding
both cores, one-thread steps of AVB-AC took 0.49-0.51 s of wall time and 0.32 s of CPU time. Work on
several threads is timed by the wall clock (their CPU time counts threads spinning while they wait
for each other): two-thread steps beside those runs took 0.62 s, and IWAE ran 2.2 times slower than
on one thread. `Probe.said` reports how many cores other work kept busy while it timed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import psutil
import torch

from avae.core.models import ModelConfig, build_model, reading_of, row_label
from avae.evaluation.cost_model import SEQUENTIAL_RUNS, batch_points, decoder_rate, metric_seconds
from avae.likelihood.scoring import EvalSettings, ais_points, bdmc_points, iwae_points
from avae.training.config import Runtime, TrainConfig, make_config
from avae.training.steps import new_state, run_epoch

# Training steps timed per window, and windows; the fastest window counts, as other work on the
# machine while it is timed only slows a window down (see avae.repro.costs.measured_epoch_seconds).
PROBE_STEPS, PROBE_WINDOWS = 3, 3
PROBE_POINTS, PROBE_K = 50, 100  # IWAE-100 on 50 points of an untrained VAE (fastest window)
# IWAE at a run's own K, members and model (untrained) on this many points, fastest of the windows.
PROBE_IWAE_POINTS, PROBE_IWAE_WINDOWS = 10, 2
# Annealing steps of the two timed calls of AIS or BDMC, and windows of each: their difference is the
# cost of the steps alone, without each call's fixed part (`time_annealing`).
PROBE_AIS_STEPS, PROBE_AIS_WINDOWS = (1, 3), 2
# A probe costs a few seconds, so only work the cost model puts above this is probed: a plan of
# short runs (the tests', the smoke and quick profiles) keeps the cost model's own figures.
PROBE_ABOVE_SECONDS = 600.0
# Other processes' load, in cores, that `Probe.said` reports: below it the machine counts as idle.
BUSY_CORES = 0.25


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to `threads` inside the block (0: leave them), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def busy_cpu_seconds() -> float:
    """CPU seconds this machine's CPUs have been busy, as the kernel counts them: every process's,
    and time other virtual machines took from them (steal); nan where the kernel does not say."""
    try:
        times = psutil.cpu_times()
    except (OSError, psutil.Error):  # /proc unreadable in a sandbox, say
        return math.nan
    parts = ("user", "nice", "system", "irq", "softirq", "steal")  # guest time is in user and nice
    return sum(getattr(times, part, 0.0) for part in parts)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system says), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class Stopwatch:
    """What timed work took: wall and this process's CPU seconds, and the CPU seconds that other
    processes used meanwhile, summed over every `seconds_of` call."""

    wall: float = 0.0
    cpu: float = 0.0
    others: float = 0.0

    def seconds_of(self, work: Callable[[], object]) -> float:
        """Seconds of `work`: its CPU time when torch runs on one thread here, else its wall time
        (see the module's docstring)."""
        wall, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
        work()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.wall, self.cpu = self.wall + wall, self.cpu + cpu
        others = busy_cpu_seconds() - busy - cpu  # may dip below 0 by a tick: summed, then clamped
        if not math.isnan(others):
            self.others += others
        return cpu if torch.get_num_threads() == 1 else wall

    def other_cores(self) -> float:
        """How many cores other work kept busy, on average, while work was timed."""
        return max(0.0, self.others / self.wall) if self.wall else 0.0


@dataclass
class Probe:
    """Times of this machine, measured once each and kept: `threads` is what each run's process
    will use (`avae.repro.runner.worker_runtime`; 0: torch's setting here)."""

    threads: int = 0
    steps: dict[tuple, float] = field(default_factory=dict)
    factor: float | None = None
    sequential: dict[tuple, float] = field(default_factory=dict)
    iwae: dict[tuple, float] = field(default_factory=dict)
    stopwatch: Stopwatch = field(default_factory=Stopwatch)

    def step_seconds(self, cfg: TrainConfig, members: int) -> float:
        """Seconds of one training step of `members` seeds of the run's model (its networks, batch
        and precision): the fastest of PROBE_WINDOWS windows of PROBE_STEPS steps on random images,
        after a warm-up. The first run of a model times it for all its latent and noise sizes: timed
        at latent 10 and 20 in turn here (5 members, one thread, two runs beside it), VAE took 81-129
        and 81-95 ms a step, AVB 163-206 and 185-189 ms: the size changed less than the noise did."""
        key = (step_shape(cfg), members)
        if key not in self.steps:
            probe_cfg = replace(cfg, seeds=tuple(range(members)))
            with torch_threads(self.threads):
                self.steps[key] = time_steps(probe_cfg, self.stopwatch)
        return self.steps[key]

    def said(self) -> str:
        """What was timed here, for an estimate's message ("" when nothing was)."""
        timed = [f"the training steps of {len(self.steps)} configuration(s)"] if self.steps else []
        if self.factor is not None:
            timed.append(f"IWAE's rate (evaluation {self.factor:.2f}x the cost model's time)")
        shapes: dict[tuple[int, int], list[str]] = {}
        for (model, _, members, k, _), factor in self.iwae.items():
            shapes.setdefault((k, members), []).append(f"{model} ({factor:.2f}x)")
        for (k, members), models in shapes.items():
            timed.append(f"IWAE-{k} on {members} x {PROBE_IWAE_POINTS} points of {', '.join(models)}")
        decoders = {key[-1] for key in self.sequential}
        for (family, members, batch, *_, decoder), factor in self.sequential.items():
            widths = f" of a decoder {dict(decoder)['hidden']}" if len(decoders) > 1 else ""
            timed.append(f"a step of {family.upper()} on {members} x {batch} points{widths} ({factor:.2f}x)")
        if not timed:
            return ""
        threads = self.threads or torch.get_num_threads()
        return f", with {' and '.join(timed)} timed here on {threads} thread(s){self.busy_note(threads)}"

    def busy_note(self, threads: int) -> str:
        """What other processes' load means for the figures ("" on a machine about idle)."""
        others = self.stopwatch.other_cores()
        if others < BUSY_CORES:
            return ""
        said = f"; other work kept {others:.1f} of the {usable_cores()} cores here busy meanwhile"
        if threads == 1:
            return f"{said}: timed by CPU time, the figures are of runs that have their cores to themselves"
        return f"{said}, which slowed the timing: the figures are long unless the machine stays that busy"

    def eval_factor(self) -> float:
        """How many times longer evaluation takes here than the cost model's CPU rates say: their
        measured IWAE rate (`avae.evaluation.cost_model`: IWAE-1000, 500 points, 3 members) over
        the rate of IWAE-PROBE_K on PROBE_POINTS points of an untrained VAE, one member, here. The
        smaller probe runs at the larger one's rate: on this project's CPU on 2026-12-05 it gave
        2.6e4 passes a second, and IWAE-1000 on 100 points 2.7e4 (one member) and 2.3e4 (five)."""
        if self.factor is None:
            with torch_threads(self.threads):
                self.factor = decoder_rate("cpu") / iwae_rate(self.stopwatch)
        return self.factor

    def part_factor(
        self, family: str, settings: EvalSettings, members: int, points: int, model: ModelConfig
    ) -> float:
        """How many times longer a metric family takes here than the cost model says, for a run of
        `model` with `members` seeds on `points` test points: for IWAE, `iwae_factor`; for AIS and
        BDMC, a step of their own on the run's decoder (`decoder_vae`), timed at the run's shape
        (`time_annealing`) over the cost model's time for it; for the rest, IWAE's `eval_factor`.
        AIS's transitions are sequential leapfrog steps with autograd, whose fixed cost and rate
        need not follow IWAE's: paper runs of 5 members on this project's 2-core CPU took
        2,892-3,025 s of AIS on 200 Fashion-MNIST points, beside other work; on 2026-12-06 IWAE's
        factor (1.12) put it at 1,785 s there, a step of AIS at the runs' shape (1.42) at 2,263 s."""
        if family == "iwae":
            return self.iwae_factor(settings, members, model)
        if family not in SEQUENTIAL_RUNS:
            return self.eval_factor()
        batch = batch_points(family, settings, points)
        decoder = decoder_vae(model)
        key = (family, members, batch, settings.ais_chains, settings.leapfrog, model_shape(decoder))
        if key not in self.sequential:
            step = replace(settings, ais_steps=1, batch_size=batch, bdmc_points=batch, subset=0)
            with torch_threads(self.threads):
                seconds = time_annealing(family, step, members, self.stopwatch, decoder)
            self.sequential[key] = seconds / metric_seconds(family, step, batch, members, "cpu", "vae")
        return self.sequential[key]

    def iwae_factor(self, settings: EvalSettings, members: int, model: ModelConfig) -> float:
        """IWAE with the run's own model (untrained), K and members on PROBE_IWAE_POINTS random
        points (`time_iwae`) over the cost model's time for it: the proposal is the model's own, so
        an implicit encoder's fit to `avb_samples` draws a point is timed too. On 2026-12-06 paper
        runs at Fashion-MNIST latent 20 (5 members, IWAE-1000 on 2,000 points) took AVAE 337.9 s and
        AVB 399.5 s, where `eval_factor` (a VAE, one member, IWAE-100 on 50 points; 1.13) put both at
        314 s."""
        label = row_label(model.name, reading_of(model))
        key = (label, model_shape(model), members, max(settings.k), settings.avb_samples)
        if key not in self.iwae:
            shape = replace(settings, k=(max(settings.k),), batch_size=PROBE_IWAE_POINTS, subset=0)
            with torch_threads(self.threads):
                seconds = time_iwae(model, shape, members, self.stopwatch)
            modelled = metric_seconds("iwae", shape, PROBE_IWAE_POINTS, members, "cpu", model.name)
            self.iwae[key] = seconds / modelled
        return self.iwae[key]


# What AIS and BDMC cost depends on: they anneal through the prior and the decoder alone, which
# every model builds alike from these settings (avae.core.models.LatentModel), whatever its encoder.
# The probe's key leaves out the latent size, which changes the cost little (`model_shape`).
DECODER_SETTINGS = ("latent_dim", "hidden", "activation", "likelihood", "data_dim")


def decoder_vae(model: ModelConfig) -> ModelConfig:
    """A VAE with `model`'s decoder, on which AIS and BDMC cost what they cost on `model`."""
    return make_config({"model": "vae", **{name: getattr(model, name) for name in DECODER_SETTINGS}}).model


STEP_SETTINGS = ("pixels", "batch_size", "disc_steps", "precision")  # the run's, beside its model's


def step_shape(cfg: TrainConfig) -> tuple:
    """What a training step's cost depends on: `model_shape` and the run's STEP_SETTINGS (not its
    data set, learning rates, epochs or seeds)."""
    return (*model_shape(cfg.model), *((name, getattr(cfg, name)) for name in STEP_SETTINGS))


def model_shape(model: ModelConfig) -> tuple:
    """The model's settings but its latent and noise sizes, which change its cost little."""
    settings = [(f.name, getattr(model, f.name)) for f in fields(model)]
    return tuple((name, value) for name, value in settings if name not in ("latent_dim", "noise_dim"))


def time_steps(cfg: TrainConfig, stopwatch: Stopwatch) -> float:
    """Seconds of one training step of `cfg`: the fastest of PROBE_WINDOWS windows, after a warm-up."""
    state = new_state(cfg, torch.device("cpu"))
    images = torch.rand(
        cfg.batch_size * PROBE_STEPS, cfg.model.data_dim, generator=torch.Generator().manual_seed(0)
    )
    runtime = Runtime(device="cpu", progress=False)
    run_epoch(state, cfg, images[: 2 * cfg.batch_size], runtime)  # warm-up
    windows = [
        stopwatch.seconds_of(lambda: run_epoch(state, cfg, images, runtime)) for _ in range(PROBE_WINDOWS)
    ]
    return min(windows) / PROBE_STEPS


def iwae_rate(stopwatch: Stopwatch) -> float:
    """Decoder passes per second and member of IWAE-PROBE_K on PROBE_POINTS points of an untrained
    VAE of one member here (`time_iwae`, the fastest of PROBE_WINDOWS)."""
    vae = make_config({"model": "vae"}).model
    settings = EvalSettings(k=(PROBE_K,), batch_size=PROBE_POINTS)
    return PROBE_POINTS * PROBE_K / time_iwae(vae, settings, 1, stopwatch, PROBE_WINDOWS)


def time_iwae(
    model_cfg: ModelConfig,
    settings: EvalSettings,
    members: int,
    stopwatch: Stopwatch,
    windows: int = PROBE_IWAE_WINDOWS,
) -> float:
    """Seconds of IWAE with `settings` on `settings.batch_size` random points of an untrained model
    of `model_cfg` with `members` members: the fastest of `windows`, after a warm-up."""
    seeds = tuple(range(members))
    model = build_model(model_cfg, seeds).requires_grad_(False)
    x = torch.rand(settings.batch_size, model_cfg.data_dim, generator=torch.Generator().manual_seed(3))
    iwae_points(model, x[:2], seeds, settings)  # warm-up
    return min(stopwatch.seconds_of(lambda: iwae_points(model, x, seeds, settings)) for _ in range(windows))


def time_annealing(
    family: str, settings: EvalSettings, members: int, stopwatch: Stopwatch, model_cfg: ModelConfig
) -> float:
    """Seconds of one annealing step of AIS ("ais", on `settings.batch_size` random points) or BDMC
    ("bdmc") with `settings` (but its ais_steps) on an untrained `model_cfg` of `members` members:
    calls of each of PROBE_AIS_STEPS steps are timed (the fastest of PROBE_AIS_WINDOWS windows, after a
    warm-up), and their difference over the steps between them counts. That leaves out each call's
    fixed cost (its first gradients, draws and schedule), which a run pays once per batch however
    many steps it anneals: for BDMC on 5 members and 20 points, one step alone took 1.72x the cost
    model's time here and each further step about 1.41x (2026-12-06, one thread, beside two runs)."""
    seeds = tuple(range(members))
    model = build_model(model_cfg, seeds).requires_grad_(False)
    x = torch.rand(settings.batch_size, model_cfg.data_dim, generator=torch.Generator().manual_seed(2))

    def anneal(steps: int) -> object:
        run = replace(settings, ais_steps=steps)
        if family == "ais":
            return ais_points(model, x, seeds, run, "probe")
        return bdmc_points(model, seeds, run, "cpu")

    anneal(1)  # warm-up
    few, many = (
        min(stopwatch.seconds_of(lambda steps=steps: anneal(steps)) for _ in range(PROBE_AIS_WINDOWS))
        for steps in PROBE_AIS_STEPS
    )
    between = PROBE_AIS_STEPS[1] - PROBE_AIS_STEPS[0]
    # other work slowing the shorter calls' windows more can leave no difference: then the longer ones
    return (many - few) / between if many > few else many / PROBE_AIS_STEPS[1]
