"""Timing a plan's work on this machine (avae.repro.probe) and where the cost model and the sweep's
estimate use it: a long CPU run is timed by its own steps, a short one by the cost model, and a run
timed elsewhere counts only where it is slower than this machine."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest
import torch

from avae.core.models import AVB
from avae.evaluation.cost_model import (
    ENCODER_DRAW_SHARE,
    SEQUENTIAL_RUNS,
    batch_points,
    decoder_rate,
    metric_seconds,
)
from avae.likelihood.scoring import EvalSettings
from avae.repro import costs, probe
from avae.repro.plan import RunStatus, eval_steps, get_profile, runs_for
from avae.repro.sweep import estimate_seconds, metric_steps, plan_sweep, sweep_eval_parts
from avae.training.config import make_config

STEP, FACTOR, ANNEAL = 0.05, 2.0, 3.0  # the fixed probe's seconds per step, IWAE's and AIS's factors


class FixedProbe(probe.Probe):
    """A probe whose times are known exactly; `calls` counts what it was asked, `annealed` the
    shapes of AIS and BDMC it was asked about (family, members, points a batch)."""

    def __init__(self, step: float = STEP, factor: float = FACTOR) -> None:
        super().__init__(threads=1)
        self.step, self.fixed, self.calls, self.annealed = step, factor, 0, set()

    def step_seconds(self, cfg, members):
        self.calls += 1
        return self.step * members / 5  # STEP for five members, in proportion to them

    def eval_factor(self):
        self.calls += 1
        return self.fixed

    def part_factor(self, family, settings, members, points, model):
        if family not in SEQUENTIAL_RUNS:
            return self.eval_factor()
        self.calls += 1
        self.annealed.add((family, members, batch_points(family, settings, points)))
        return ANNEAL


def scaled(parts: dict[str, float], steps) -> float:
    """The fixed probe's figure for the cost model's `parts`: AIS and BDMC at ANNEAL, the rest at FACTOR."""
    families = {step.key: step.family for step in steps}
    return sum(s * (ANNEAL if families.get(key) in SEQUENTIAL_RUNS else FACTOR) for key, s in parts.items())


def paper_run(name: str):
    paper = get_profile("paper")
    (run,) = [run for run in runs_for(paper) if run.dir_name.startswith(name)]
    return paper, run


def test_a_probe_times_a_models_steps_once_with_the_workers_threads(monkeypatch):
    seen = []

    def fake_time_steps(cfg, stopwatch):
        seen.append((torch.get_num_threads(), cfg.seeds, cfg.model.latent_dim))
        return 0.25

    monkeypatch.setattr(probe, "time_steps", fake_time_steps)
    monkeypatch.setattr(probe, "iwae_rate", lambda stopwatch: seen.append(torch.get_num_threads()) or 1.8e4)
    before = torch.get_num_threads()
    timer = probe.Probe(threads=1)
    cfg = make_config({"model": "avb", "seeds": (7, 8)})
    other_latent = make_config({"model": "avb", "latent_dim": 20, "dataset": "fashion-mnist"})
    assert timer.step_seconds(cfg, 3) == timer.step_seconds(other_latent, 3) == 0.25
    assert timer.step_seconds(make_config({"model": "avb", "disc_steps": 2}), 3) == 0.25
    # timed once per step shape, on the worker's thread count, with 3 members
    assert seen == [(1, (0, 1, 2), 10), (1, (0, 1, 2), 10)]
    assert timer.eval_factor() == timer.eval_factor() == pytest.approx(3.6e4 / 1.8e4)
    assert seen[2:] == [1] and torch.get_num_threads() == before
    assert "the training steps of 2 configuration(s) and IWAE's rate (evaluation 2.00x" in timer.said()
    assert probe.Probe().said() == ""


def test_a_real_probe_times_steps_and_iwae_within_sense():
    cfg = make_config({"model": "avb", "seeds": (0,), "batch_size": 10, "hidden": [8]})
    stopwatch = probe.Stopwatch()
    step = probe.time_steps(cfg, stopwatch)
    assert 0 < step < 1.0  # a step of a tiny AVB on 10 images: milliseconds, not seconds
    assert 1e3 < probe.iwae_rate(stopwatch) < 1e8  # decoder passes a second on one thread
    assert stopwatch.wall > 0 and stopwatch.cpu > 0


def test_ais_and_bdmc_are_timed_once_per_shape_at_the_runs_own_shape(monkeypatch):
    timed = []

    def fake_time_annealing(family, settings, members, stopwatch, model):
        decoders.append((model.name, model.hidden, model.latent_dim))
        timed.append((family, members, settings.batch_size, settings.ais_steps, torch.get_num_threads()))
        return 0.5

    decoders = []

    monkeypatch.setattr(probe, "time_annealing", fake_time_annealing)
    monkeypatch.setattr(probe, "iwae_rate", lambda stopwatch: 1.8e4)
    timer = probe.Probe(threads=1)
    run = EvalSettings(ais_steps=1000, subset=200, batch_size=100, bdmc_points=20, ais_chains=4)
    shape = EvalSettings(ais_steps=1, batch_size=100, bdmc_points=100, ais_chains=4)
    avb = make_config({"model": "avb"}).model
    ais = timer.part_factor("ais", run, 5, 10000, avb)
    assert ais == pytest.approx(0.5 / metric_seconds("ais", shape, 100, 5, "cpu", "vae"))
    assert timer.part_factor("ais", replace(run, ais_steps=10), 5, 10000, avb) == ais  # the same shape
    bdmc = EvalSettings(ais_steps=1, batch_size=20, bdmc_points=20, ais_chains=4)
    assert timer.part_factor("bdmc", run, 5, 10000, avb) == pytest.approx(
        0.5 / metric_seconds("bdmc", bdmc, 20, 5, "cpu", "vae")
    )
    assert timer.part_factor("ais", run, 5, 50, avb) != ais  # 50 test points: batches of 50
    assert timer.part_factor("ais", replace(run, subset=10), 5, 10000, avb) != ais  # the first 10 points
    # one timing per shape, on the worker's threads, of one step
    assert timed == [("ais", 5, 100, 1, 1), ("bdmc", 5, 20, 1, 1), ("ais", 5, 50, 1, 1), ("ais", 5, 10, 1, 1)]
    assert timer.part_factor("elbo", run, 5, 10000, avb) == timer.eval_factor() == pytest.approx(2.0)
    assert "a step of AIS on 5 x 100 points (" in timer.said() and "a step of BDMC on 5 x 20" in timer.said()
    assert timer.part_factor("ais", run, 5, 10000, make_config({"model": "avae"}).model) == ais  # one decoder
    assert "of a decoder" not in timer.said()
    wide = make_config({"model": "avb", "hidden": [512], "latent_dim": 20}).model  # another decoder
    timer.part_factor("ais", run, 5, 10000, wide)
    assert decoders == [("vae", (256, 64, 32), 10)] * 4 + [("vae", (512,), 20)]  # the run's, on a VAE
    assert "points of a decoder (512,) (" in timer.said()


def test_iwae_is_timed_once_per_model_and_shape_with_the_runs_own_model(monkeypatch):
    timed = []

    def fake_time_iwae(model, settings, members, stopwatch):
        timed.append(
            (model.name, model.hidden[0], model.latent_dim, members, settings.k, torch.get_num_threads())
        )
        return 0.5

    monkeypatch.setattr(probe, "time_iwae", fake_time_iwae)
    timer = probe.Probe(threads=1)
    run = EvalSettings(k=(1, 1000), subset=200, batch_size=100, avb_samples=500)
    avb, avae = (make_config({"model": name, "latent_dim": 20}).model for name in ("avb", "avae"))
    shape = EvalSettings(k=(1000,), batch_size=probe.PROBE_IWAE_POINTS, avb_samples=500)
    points = probe.PROBE_IWAE_POINTS
    factor = timer.part_factor("iwae", run, 5, 10000, avb)
    assert factor == pytest.approx(0.5 / metric_seconds("iwae", shape, points, 5, "cpu", "avb"))
    assert timer.part_factor("iwae", replace(run, subset=50), 5, 10000, avb) == factor  # the same shape
    assert timer.part_factor("iwae", run, 5, 10000, avae) == pytest.approx(
        0.5 / metric_seconds("iwae", shape, points, 5, "cpu", "avae")
    )
    assert timer.part_factor("iwae", run, 3, 10000, avb) != factor  # 3 members
    narrow = make_config({"model": "avb", "latent_dim": 15, "hidden": [128, 32]}).model
    timer.part_factor("iwae", run, 5, 10000, narrow)  # other networks: timed on their own
    timer.part_factor("iwae", run, 5, 10000, replace(avb, latent_dim=15))  # another latent size: not
    # one timing per model and shape, of the run's own model at its K, on the worker's threads
    assert timed == [
        ("avb", 256, 20, 5, (1000,), 1),
        ("avae", 256, 20, 5, (1000,), 1),
        ("avb", 256, 20, 3, (1000,), 1),
        ("avb", 128, 15, 5, (1000,), 1),
    ]
    said = timer.said()
    assert f"IWAE-1000 on 5 x {points} points of AVB (" in said and "), AVAE (joint) (" in said
    assert f"IWAE-1000 on 3 x {points} points of AVB (" in said


def test_the_cost_model_counts_the_encoder_draws_an_implicit_encoders_proposal_is_fitted_to():
    settings = EvalSettings(k=(1, 1000), avb_samples=500)
    gaussian = metric_seconds("iwae", settings, 2000, 5, "cpu", "avae")
    assert gaussian == pytest.approx(2000 * 5 * 1000 / decoder_rate("cpu"))  # its own Gaussian: no draws
    draws = 2000 * 5 * 500 * ENCODER_DRAW_SHARE / decoder_rate("cpu")
    for fitted in ("avb", "avb-ac"):
        assert metric_seconds("iwae", settings, 2000, 5, "cpu", fitted) == pytest.approx(gaussian + draws)


def test_a_real_iwae_probe_of_an_implicit_encoder_is_timed_within_sense(monkeypatch):
    fits = []
    fit = AVB.proposal
    monkeypatch.setattr(
        AVB, "proposal", lambda self, x, noise, **opts: fits.append(opts) or fit(self, x, noise, **opts)
    )
    model = make_config({"model": "avb", "hidden": [8]}).model
    settings = EvalSettings(k=(20,), batch_size=4, avb_samples=10)
    seconds = probe.time_iwae(model, settings, 2, probe.Stopwatch())
    assert 0 < seconds < 5.0  # IWAE-20 on 4 points of a tiny AVB: milliseconds
    assert 1e-3 < seconds / metric_seconds("iwae", settings, 4, 2, "cpu", "avb") < 1e3
    # the timed calls fit the run's own proposal, to its avb_samples draws a point
    assert len(fits) == 1 + probe.PROBE_IWAE_WINDOWS and {f["samples"] for f in fits} == {10}


def test_a_step_is_timed_without_the_calls_fixed_cost(monkeypatch):
    """Calls of n annealing steps take 0.2 + 0.1 n seconds, and other work slows the first window
    of each by 0.05 s: a step counts 0.1 s, each call's fixed 0.2 s left out."""
    steps: list[int] = []
    monkeypatch.setattr(probe, "ais_points", lambda model, x, seeds, run, stream: steps.append(run.ais_steps))
    windows = iter(range(100))

    class StepClock(probe.Stopwatch):
        def seconds_of(self, work):
            work()
            slowed = 0.05 if next(windows) % probe.PROBE_AIS_WINDOWS == 0 else 0.0
            return 0.2 + 0.1 * steps[-1] + slowed

    settings = EvalSettings(ais_steps=1000, batch_size=4, ais_chains=2, leapfrog=2)
    vae = make_config({"model": "vae"}).model
    assert probe.time_annealing("ais", settings, 2, StepClock(), vae) == pytest.approx(0.1)
    assert steps[0] == 1 and sorted(set(steps[1:])) == list(probe.PROBE_AIS_STEPS)  # after a warm-up


def test_a_real_annealing_probe_is_timed_within_sense():
    settings = EvalSettings(ais_steps=1, batch_size=4, bdmc_points=4, ais_chains=2, leapfrog=2)
    stopwatch = probe.Stopwatch()
    model = make_config({"model": "avb", "hidden": [8], "data_dim": 20}).model  # a small own-data decoder
    for family in ("ais", "bdmc"):
        seconds = probe.time_annealing(family, settings, 2, stopwatch, probe.decoder_vae(model))
        assert 0 < seconds < 5.0  # one step of 2 leapfrogs on 4 points: milliseconds
        assert 1e-3 < seconds / metric_seconds(family, settings, 4, 2, "cpu", "vae") < 1e3


@pytest.mark.parametrize("threads", [1, 2])
def test_one_thread_is_timed_by_cpu_time_and_more_by_the_wall_clock(threads):
    stopwatch = probe.Stopwatch()
    with probe.torch_threads(threads):
        seconds = stopwatch.seconds_of(lambda: time.sleep(0.3))  # waits, as for a busy core: no CPU
    assert stopwatch.wall >= 0.3 and stopwatch.cpu < 0.1
    assert seconds == (stopwatch.cpu if threads == 1 else stopwatch.wall)


def test_the_other_processes_load_is_counted_and_said(monkeypatch):
    busy = iter([100.0, 103.0])  # the kernel's busy CPU seconds before and after: 3 s, none of them ours
    monkeypatch.setattr(probe, "busy_cpu_seconds", lambda: next(busy))
    stopwatch = probe.Stopwatch()
    stopwatch.seconds_of(lambda: time.sleep(0.2))
    assert stopwatch.others == pytest.approx(3.0 - stopwatch.cpu)
    assert stopwatch.other_cores() == pytest.approx(stopwatch.others / stopwatch.wall)
    timed = probe.Probe(threads=1, factor=1.5, stopwatch=probe.Stopwatch(wall=10.0, cpu=6.0, others=15.0))
    assert f"other work kept 1.5 of the {probe.usable_cores()} cores here" in timed.said()
    assert "timed by CPU time" in timed.said()
    on_two = probe.Probe(threads=2, factor=1.5, stopwatch=timed.stopwatch)
    assert "the figures are long unless the machine stays that busy" in on_two.said()
    monkeypatch.setattr(probe, "busy_cpu_seconds", lambda: math.nan)  # the kernel does not say
    blind = probe.Stopwatch()
    assert blind.seconds_of(lambda: None) >= 0 and blind.others == 0.0
    idle = probe.Probe(threads=1, factor=1.5, stopwatch=probe.Stopwatch(wall=10.0, cpu=10.0, others=2.0))
    assert idle.said().endswith("timed here on 1 thread(s)")  # 0.2 cores of others: about idle


def test_a_long_cpu_run_is_timed_by_its_steps_here_and_its_evaluation_scaled():
    paper, run = paper_run("vae-mnist-z15")
    timer = FixedProbe()
    train_s, eval_s = costs.estimate_run_seconds(run, paper, costs.Path("/nonexistent"), "cpu", probe=timer)
    # 100 epochs of 600 steps, each epoch's test pass 0.3 x 10,000 / 60,000 of it, and the call
    assert train_s == pytest.approx(100 * 600 * STEP * (1 + 0.3 * 10000 / 60000) + costs.TRAIN_CALL_SECONDS)
    modelled = costs.eval_part_seconds(run, paper, "cpu", eval_steps(run, paper))
    assert sum(modelled.values()) > probe.PROBE_ABOVE_SECONDS
    assert eval_s == pytest.approx(scaled(modelled, eval_steps(run, paper)))
    assert timer.annealed == {("ais", 5, 100), ("bdmc", 5, 20)}  # AIS: 200 points in 2 batches; BDMC: 20
    assert FACTOR * sum(modelled.values()) < eval_s < ANNEAL * sum(modelled.values())
    calls = timer.calls
    on_gpu = costs.estimate_run_seconds(run, paper, costs.Path("/nonexistent"), "cuda", probe=timer)
    assert timer.calls == calls and on_gpu == costs.estimate_run_seconds(run, paper, costs.Path("/x"), "cuda")


def test_a_packed_run_is_timed_by_its_packs_steps_and_takes_its_share():
    paper, run = paper_run("vae-mnist-z15")
    timer, out = FixedProbe(), costs.Path("/nonexistent")
    train_s, _ = costs.estimate_run_seconds(run, paper, out, "cpu", pack=20, probe=timer)
    pack_s = costs.probed_train_seconds(timer, run.cfg, 20, 100, 60000)  # the pack's 20 members' steps
    assert train_s == pytest.approx(pack_s * 5 / 20)
    assert pack_s > 3.9 * costs.probed_train_seconds(timer, run.cfg, 5, 100, 60000)


def test_a_short_run_keeps_the_cost_models_figures_and_is_not_probed(tmp_path):
    smoke = get_profile("smoke")
    timer = FixedProbe()
    for run in runs_for(smoke):
        assert costs.estimate_run_seconds(run, smoke, tmp_path, "cpu", probe=timer) == (
            costs.estimate_run_seconds(run, smoke, tmp_path, "cpu")
        )
    assert timer.calls == 0


@pytest.mark.parametrize("step,slower", [(STEP, "here"), (1e-4, "elsewhere")])
def test_a_run_timed_elsewhere_counts_only_where_it_is_slower_than_this_machine(monkeypatch, step, slower):
    paper, run = paper_run("vae-mnist-z15")
    steps = eval_steps(run, paper)
    took = {s.key: 10.0 for s in steps} | {steps[0].key: 1e5, "analysis": 5000.0}  # two parts slower
    measured = costs.Measured(epoch_seconds=20.0, part_seconds=took)
    monkeypatch.setattr(costs.Measured, "alike", classmethod(lambda cls, *args: measured))
    timer = FixedProbe(step=step)
    train_s, eval_s = costs.estimate_run_seconds(run, paper, costs.Path("/nonexistent"), "cpu", probe=timer)
    probed = costs.probed_train_seconds(timer, run.cfg, 5, 100, 60000)
    assert (probed > 100 * 20.0) == (slower == "here")
    assert train_s == max(probed, 100 * 20.0)
    modelled = costs.eval_part_seconds(run, paper, "cpu", steps)
    expected = sum(max(took[key], scaled({key: m}, steps)) for key, m in modelled.items())
    assert eval_s == pytest.approx(expected)
    assert 1e5 + 5000.0 < expected  # the first part and the analysis are the alike run's


@pytest.mark.parametrize("step", [STEP, 1e-4])
def test_a_resumed_runs_own_epochs_count_only_where_slower_than_this_machine(monkeypatch, step):
    paper, run = paper_run("vae-mnist-z15")
    monkeypatch.setattr(costs, "status_of", lambda *args: (RunStatus.RESUME, 40))
    monkeypatch.setattr(costs, "measured_epoch_seconds", lambda *args: 20.0)  # its own latest epochs
    timer = FixedProbe(step=step)
    train_s, _ = costs.estimate_run_seconds(run, paper, costs.Path("/nonexistent"), "cpu", probe=timer)
    assert train_s == max(60 * 20.0, costs.probed_train_seconds(timer, run.cfg, 5, 60, 60000))
    assert costs.estimate_run_seconds(run, paper, costs.Path("/nonexistent"), "cpu")[0] == 60 * 20.0


def sweep_run(**settings):
    ((_, run),) = plan_sweep({"model": "avb", "seeds": (0, 1, 2, 3, 4), **settings}, {"epochs": [100]})
    return run, metric_steps(("elbo", "iwae", "ais"), "avb")


def test_a_long_sweep_run_on_a_cpu_is_timed_by_its_steps_here_and_its_evaluation_scaled():
    run, steps = sweep_run()
    timer, out = FixedProbe(), costs.Path("/nonexistent")
    train_s, eval_s = estimate_seconds(run, steps, out, "cpu", probe=timer)
    assert train_s == pytest.approx(100 * 600 * STEP * (1 + 0.3 * 10000 / 60000) + costs.TRAIN_CALL_SECONDS)
    modelled = estimate_seconds(run, steps, out, "cpu")
    assert modelled[1] > probe.PROBE_ABOVE_SECONDS
    assert eval_s == pytest.approx(scaled(sweep_eval_parts(run, steps, out, "cpu"), steps))
    assert modelled[0] != pytest.approx(train_s)  # without the probe, the cost model's own figure
    calls = timer.calls
    assert estimate_seconds(run, steps, out, "cuda", probe=timer) == estimate_seconds(run, steps, out, "cuda")
    assert timer.calls == calls  # nothing is timed for a GPU


def test_a_short_sweep_run_keeps_the_cost_models_figures_and_is_not_probed():
    run, steps = sweep_run(epochs=1, train_subset=1000, test_subset=100)
    timer, out = FixedProbe(), costs.Path("/nonexistent")
    assert estimate_seconds(run, steps, out, "cpu", probe=timer) == estimate_seconds(run, steps, out, "cpu")
    assert timer.calls == 0


def test_the_evaluation_parts_the_watch_credits_sum_to_the_runs_evaluation_estimate(tmp_path):
    """`eval_parts_left` (what the plan's watch credits part by part) and `estimate_run_seconds`
    (the plan's estimate) give the same evaluation seconds, analysis included, for a new run; the
    sweep's parts are its metrics'."""
    paper, run = paper_run("avb-fashion-mnist-z20")
    timer = FixedProbe()
    parts = costs.eval_parts_left(run, paper, tmp_path, "cpu", timer)
    assert set(parts) == {step.key for step in eval_steps(run, paper)} | {"analysis"}
    _, eval_s = costs.estimate_run_seconds(run, paper, tmp_path, "cpu", probe=timer)
    assert sum(parts.values()) == pytest.approx(eval_s)
    sweep_parts = sweep_eval_parts(run, eval_steps(run, paper), tmp_path, "cpu", timer)
    assert set(sweep_parts) == {step.key for step in eval_steps(run, paper)}
