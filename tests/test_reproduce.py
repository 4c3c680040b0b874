"""`avae reproduce` and `avae report` end to end on real MNIST and Fashion-MNIST subsets.

The smoke profile (every experiment's configurations at latent 10 and 15, 2 seeds, 1 epoch, 500
training images) runs once per module; the report must render every section for both data sets.
Reuse, resume and parallel jobs are checked on one- and two-run profiles.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from avae.cli.commands import main
from avae.errors import AvaeError, ConfigError, DivergenceError
from avae.evaluation import cost_model
from avae.evaluation.cost_model import metric_seconds
from avae.io import read_json, write_csv, write_json
from avae.repro import costs, execute, plan, probe, runner
from avae.repro.paper import Experiment
from avae.repro.plan import PROFILES, Profile, eval_steps, runs_for
from avae.repro.publish import finished_runs, publish
from avae.repro.report.report import write_report
from avae.repro.reproduce import reproduce
from avae.repro.results import collect_runs
from avae.training.config import Runtime, make_config
from avae.training.runs import CONFIG, DIVERGED, EVAL, read_metrics
from avae.training.train import train

SECTIONS = (
    "## Table 1",
    "## Honest figures",
    "## Fig. 6",
    "## Fig. 7",
    "## Fig. 8",
    "## The paper's claims, tested",
    "## Beyond the paper",
    "### Reconstructions",
    "### Aggregate posterior",
    "## Runs",
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    results = reproduce("smoke", out, runtime=Runtime(progress=False))
    assert main(["report", str(out)]) == 0
    return out, results


def test_smoke_profile_trains_every_planned_run(smoke):
    out, results = smoke
    planned = runs_for("smoke")
    # per data set: 6 Table 1 rows (4 models + AVB-AC, AVAE in 2 readings) x latent 10, 15, Fig. 6's 2
    assert len(results) == len(planned) == 28
    assert {r["dir"] for r in results} == {run.dir_name for run in planned}
    index = read_json(out / "index.json")["runs"]
    assert set(index) == {run.key for run in planned}
    for run in planned:
        record = read_json(out / run.dir_name / "eval.json")
        assert record["epoch"] == 1 and "neg_elbo" in record["metrics"]
        assert read_json(out / run.dir_name / "analysis.json")["epoch"] == 1
        if run.honest:
            assert {"iwae_k1000", "ais", "bdmc_forward", "bdmc_reverse"} <= set(record["metrics"])
            assert record["metrics"]["iwae_k1000"]["prefix_means"].keys() == {"10"}  # the AIS points
        if run.cfg.model.name in ("avb", "avb-ac", "avae"):
            assert "neg_critic" in record["metrics"]
        assert [row["seed"] for row in read_metrics(out / run.dir_name / "metrics.csv")] == [0, 1]


def test_report_renders_every_section_for_both_data_sets(smoke):
    out, _ = smoke
    text = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    assert "### MNIST" in text and "### Fashion-MNIST" in text
    for figure in ("fig6.png", "fig7.png") + tuple(
        f"fig8_{d}_{m}.png" for d in ("mnist", "fashion-mnist") for m in ("vae-noise", "avae_joint", "avb")
    ):
        assert (out / "report" / figure).stat().st_size > 1000, figure
        assert f"report/{figure}" in text
    for table in ("table1", "honest", "fig6", "fig7", "claims", "analysis"):
        assert (out / "report" / f"{table}.csv").read_text().count("\n") > 1, table
    # every claim has a verdict with numbers under it
    verdicts = re.findall(r"\*\*Verdict[^*]*: (supported|not supported|inconclusive)\*\*", text)
    assert len(verdicts) == 7  # claims 3 and 5 have one verdict per AVAE reading
    for block in text.split("### Claim ")[1:]:
        assert re.search(r"\| [+-]\d+\.\d\d \| \[", block), block[:200]  # a difference and its CI
    honest = text.split("## Honest figures")[1].split("## What the runs show")[0]
    assert "the first 10 test images (AIS points)" in honest and "the first 20 test images" in honest
    assert "AVAE (joint)" in honest and "AVAE (separate)" in honest and "AVB-AC" in honest
    findings = text.split("## What the runs show")[1].split("## Fig. 6")[0]
    for question in ("**1. Does AVAE", "**2. Does the paper's pattern", "**3. How far", "**4. Is noise"):
        assert findings.count(question) == 2, question  # once per data set
    assert "Gap to VAE+eps" in findings and "AVB-AC" in findings
    assert "paper" in text and "109.8" in text and "221.1" in text
    assert "FD between training and test images" in text
    assert "still improving by more than 1 nat per epoch" in text  # 1 epoch: no evidence of convergence


def test_second_call_trains_and_evaluates_nothing(smoke, monkeypatch):
    out, _ = smoke

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr(execute, "train", refuse)
    monkeypatch.setattr(execute, "evaluate_run", refuse)
    monkeypatch.setattr(execute, "analyse_run", refuse)
    results = reproduce("smoke", out, runtime=Runtime(progress=False))
    assert not any(r["trained"] or r["evaluated"] for r in results)


def test_report_works_from_the_run_directories_alone(smoke, tmp_path):
    out, _ = smoke
    (out / "index.json").rename(tmp_path / "index.json")
    try:
        assert write_report(out).exists()
        assert len(collect_runs(out)) == 28  # every run, from its directory alone
    finally:
        (tmp_path / "index.json").replace(out / "index.json")


def test_dry_run_lists_runs_with_estimates_and_trains_nothing(tmp_path, capsys):
    assert main(["reproduce", "--profile", "quick", "--out", str(tmp_path / "q"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert len(re.findall(r"^\| \w[\w-]*-z\d+-n\d+-[0-9a-f]{16} \|", printed, re.M)) == 40
    assert re.search(r"about [\d:]+ of compute in all", printed)
    assert not (tmp_path / "q").exists()


def test_runs_named_on_the_command_line_are_the_only_ones_and_keep_their_order(tmp_path, capsys):
    runs = runs_for("quick")
    avb, vae = (next(r for r in runs if r.dir_name.startswith(p)) for p in ("avb-mnist-z15", "vae-mnist-z10"))
    assert plan.pick_runs(runs, [avb.dir_name[:13], vae.dir_name, avb.dir_name]) == [avb, vae]
    with pytest.raises(ConfigError, match=r"'avae-mnist-z10' names 2 runs \(avae-mnist-z10-n10-"):
        plan.pick_runs(runs, ["avae-mnist-z10"])
    with pytest.raises(ConfigError, match="no run of this profile is named 'gan'; `--dry-run` lists"):
        plan.pick_runs(runs, ["gan"])
    args = [
        "reproduce",
        "--profile",
        "quick",
        "--out",
        str(tmp_path),
        "--dry-run",
        "--runs",
        "avb-mnist-z15,vae-mnist-z10",
    ]
    assert main(args) == 0
    listed = re.findall(r"^\| (\w[\w-]*-[0-9a-f]{16}) \|", capsys.readouterr().out, re.M)
    assert listed == [avb.dir_name, vae.dir_name]


def test_a_dry_run_for_cuda_on_a_machine_without_one_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    args = ["reproduce", "--profile", "smoke", "--out", str(tmp_path / "s"), "--dry-run", "--device", "cuda"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "on cuda: about" in printed.out
    assert "note: this machine has no CUDA device; the estimate is for cuda on another machine" in printed.err


def test_the_paper_profile_reuses_published_runs_and_orders_the_rest(tmp_path, capsys, monkeypatch):
    """Profile 'paper': paper-z10's published run folders (no checkpoints) are left as they are
    (they lack the reconstruction term, which needs their weights), the separate reading's
    divergence stays recorded, AVB-AC is trained anew (its moments no longer include z), and the
    runs left start with Fig. 6's noise sizes, then the paper's four models; AVB-AC and the separate
    reading come last."""
    monkeypatch.setattr(probe, "time_steps", lambda cfg, watch: 0.1)  # not timed here: tests/test_probe.py
    monkeypatch.setattr(probe, "iwae_rate", lambda watch: 3.6e4)  # does that
    monkeypatch.setattr(probe, "time_annealing", annealing_as_modelled)
    monkeypatch.setattr(probe, "time_iwae", iwae_as_modelled)
    out = tmp_path / "paper"
    for run_dir in (ROOT / "results" / "paper-z10").glob("*/config.json"):
        shutil.copytree(run_dir.parent, out / run_dir.parent.name)
    assert main(["reproduce", "--profile", "paper", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr()
    labels = ("VAE+eps", "VAE", "AVB", "AVAE (joint)", "AVB-AC", "AVAE (separate)")
    models = ", ".join(f"{label} (1.00x)" for label in labels)
    iwae = f"IWAE-1000 on 5 x 10 points of {models}"
    assert f"IWAE's rate (evaluation 1.00x the cost model's time) and {iwae} and a step of AIS" in printed.out
    rows = [line.split(" | ") for line in printed.out.splitlines() if "-z" in line]
    status = {row[0].strip("| "): row[4] for row in rows}
    assert sum(s.startswith("published, without weights") for s in status.values()) == 9
    assert len(status) == 40 and "9 runs were published without weights and lack neg_recon" in printed.err
    assert sum(s.startswith("diverged") for s in status.values()) == 1
    left = [name for name, s in status.items() if s == "new"]
    assert len(left) == 30 and all("-n5-" in n or "-n15-" in n for n in left[:4])
    by_name = {run.dir_name: run for run in runs_for(PROFILES["paper"])}
    ranks = [plan.run_order(by_name[name]) for name in left]
    assert ranks == sorted(ranks) and ranks.count(2) == 10
    last = [by_name[name].cfg for name in left[-10:]]
    assert all(c.model.name == "avb-ac" or c.model.adv_update == "separate" for c in last)


def annealing_as_modelled(family, settings, members, stopwatch, model) -> float:
    """A probe's AIS or BDMC that takes what the cost model says (a factor of 1)."""
    return metric_seconds(family, settings, settings.batch_size, members, "cpu", "vae")


def iwae_as_modelled(model, settings, members, stopwatch) -> float:
    """A probe's IWAE that takes what the cost model says (a factor of 1)."""
    return metric_seconds("iwae", settings, settings.batch_size, members, "cpu", model.name)


ROOT = Path(__file__).resolve().parents[1]


def tiny_profile(monkeypatch, models=("vae",), epochs: int = 2, datasets=("mnist",)) -> Profile:
    """Latent 10, 2 seeds, real subsets of 300 training and 100 test images of each data set."""
    monkeypatch.setitem(plan.EXPERIMENTS, "tiny", Experiment("test", models, (10,)))
    return Profile(
        "tiny",
        "test",
        epochs=epochs,
        seeds=(0, 1),
        train_subset=300,
        test_subset=100,
        datasets=datasets,
        latent_dims=(10,),
        experiments=("tiny",),
        honest_latents=(),
        analysis_samples=100,
        classifier_epochs=1,
        classifier_subset=1000,
    )


def test_an_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    profile = tiny_profile(monkeypatch)
    (run,) = runs_for(profile)
    runtime = Runtime(progress=False)
    # interrupted after epoch 1 of 2: a checkpoint at epoch 1, no eval.json
    train(replace(run.cfg, epochs=1), tmp_path / "out" / run.dir_name, runtime=runtime)
    (result,) = reproduce(profile, tmp_path / "out", runtime=runtime)
    assert result["trained"]
    resumed = read_metrics(tmp_path / "out" / run.dir_name / "metrics.csv")
    assert [r["epoch"] for r in resumed] == [1, 1, 2, 2]
    train(run.cfg, tmp_path / "straight", runtime=runtime)
    straight = read_metrics(tmp_path / "straight" / "metrics.csv")
    assert [r["test_neg_elbo"] for r in resumed] == [r["test_neg_elbo"] for r in straight]


def test_train_only_then_the_whole_profile_reuses_the_training(tmp_path, monkeypatch):
    profile = replace(tiny_profile(monkeypatch), epochs=1)
    monkeypatch.setitem(plan.EXPERIMENTS, "other", Experiment("test", ("vae-noise",), (10,)))
    profile = replace(profile, experiments=("tiny", "other"))
    (run,) = runs_for(plan.select(profile, ["tiny"]))
    assert run.cfg.model.name == "vae" and len(runs_for(profile)) == 2
    runtime = Runtime(progress=False)
    (first,) = reproduce(profile, tmp_path, runtime=runtime, experiments=["tiny"], train_only=True)
    assert first["trained"] and first["evaluated"] == []
    assert not (tmp_path / run.dir_name / EVAL).exists() and not (tmp_path / "classifiers").exists()
    assert plan.status_of(run, plan.select(profile, train_only=True), tmp_path) == ("finished", 1)
    assert plan.status_of(run, profile, tmp_path) == ("evaluate", 1)
    (published,), unplanned = finished_runs(tmp_path)  # the manifest says: trained only, "tiny" only
    assert published.dir.name == run.dir_name and unplanned == []
    text = write_report(tmp_path).read_text()
    assert "**Training only**" in text and "| VAE | not evaluated |" in text
    results = {r["dir"]: r for r in reproduce(profile, tmp_path, runtime=runtime)}
    assert not results[run.dir_name]["trained"]  # reused, then evaluated and analysed
    assert results[run.dir_name]["evaluated"] == ["neg_elbo", "analysis"]
    assert [r["trained"] for d, r in results.items() if d != run.dir_name] == [True]
    with pytest.raises(ConfigError, match="'fig9' unknown, or not in profile 'tiny'; choose from tiny, oth"):
        plan.select(profile, ["fig9"])
    with pytest.raises(ConfigError, match="'fig6' is not in profile 'tiny'"):
        plan.select(profile, ["fig6"])


def test_a_run_trained_elsewhere_and_copied_back_with_its_weights_alone_is_evaluated(tmp_path, monkeypatch):
    """A run trained on another machine (`--runs ... --train-only`) comes back without its
    checkpoint but with model.safetensors: the whole profile evaluates it, and trains nothing."""
    profile = replace(tiny_profile(monkeypatch), epochs=1)
    runtime = Runtime(progress=False)
    (run,) = runs_for(profile)
    reproduce(profile, tmp_path, runtime=runtime, train_only=True)
    (tmp_path / run.dir_name / "checkpoint.safetensors").unlink()
    assert plan.status_of(run, profile, tmp_path) == ("evaluate", 1)
    (result,) = reproduce(profile, tmp_path, runtime=runtime)
    assert not result["trained"] and result["evaluated"] == ["neg_elbo", "analysis"]
    (tmp_path / run.dir_name / "model.safetensors").unlink()
    (tmp_path / run.dir_name / "analysis.json").unlink()
    assert plan.status_of(run, profile, tmp_path) == ("published", 1)


def test_runs_chosen_by_name_run_alone_and_the_manifest_keeps_the_whole_plan(tmp_path, monkeypatch):
    """`--runs` chooses what runs now: the others stay planned, so publish and report see them."""
    profile = replace(tiny_profile(monkeypatch, models=("vae", "vae-noise")), epochs=1)
    first, second = runs_for(profile)
    (result,) = reproduce(
        profile, tmp_path, runtime=Runtime(progress=False), train_only=True, run_names=[second.dir_name]
    )
    assert result["dir"] == second.dir_name and not (tmp_path / first.dir_name).exists()
    manifest = read_json(tmp_path / "reproduce.json")
    assert [r["dir"] for r in manifest["runs"]] == [first.dir_name, second.dir_name]


def test_a_diverged_run_is_recorded_left_alone_reported_and_published(tmp_path, monkeypatch, capsys):
    """A planned run whose loss went non-finite keeps its record (diverged.json); the next reproduce
    does not retry it (the same settings diverge again) and finishes the others, the report shows it
    as diverged with its epoch and seed, and publish carries the record."""
    profile = replace(tiny_profile(monkeypatch), epochs=2)
    monkeypatch.setitem(plan.EXPERIMENTS, "other", Experiment("test", ("vae-noise",), (10,)))
    profile = replace(profile, experiments=("tiny", "other"))
    vae = next(r for r in runs_for(profile) if r.cfg.model.name == "vae")
    runtime = Runtime(progress=False)
    run_dir = tmp_path / "out" / vae.dir_name
    train(replace(vae.cfg, epochs=1), run_dir, runtime=runtime)
    with pytest.raises(DivergenceError):  # an absurd rate: non-finite within epoch 2
        train(replace(vae.cfg, lr=1e3), run_dir, runtime=runtime, resume=True)
    record = read_json(run_dir / DIVERGED)
    assert record["epoch"] == 2 and record["seed"] in (0, 1) and record["settings"]["lr"] == 1e3
    assert plan.status_of(vae, profile, tmp_path / "out") == ("diverged", 1)
    assert costs.estimate_run_seconds(vae, profile, tmp_path / "out", "cpu") == (0.0, 0.0)
    reproduce(profile, tmp_path / "out", runtime=runtime, dry_run=True)
    assert f"| diverged (epoch 2, seed {record['seed']}) |" in capsys.readouterr().out
    results = {r["dir"]: r for r in reproduce(profile, tmp_path / "out", runtime=runtime)}
    assert vae.dir_name not in results and [r["trained"] for r in results.values()] == [True]
    assert f"{vae.dir_name} diverged earlier" in capsys.readouterr().err
    assert plan.status_of(vae, profile, tmp_path / "out") == ("diverged", 1)  # still, untouched
    text = write_report(tmp_path / "out").read_text()
    assert f"| VAE | diverged (epoch 2, seed {record['seed']}) |" in text
    assert "**Diverged: VAE z10 on MNIST diverged: its loss_elbo went non-finite at epoch 2" in text
    assert "| MNIST | VAE+eps z10 n10 < VAE z10 | diverged run |" in text  # claim 1 cannot be tested
    assert "### MNIST (2 seeds, 2 epochs, 300 training images, 100 test images)" in text
    dest = publish(tmp_path / "out", tmp_path / "published")  # no checkpoints: metrics.csv tells
    assert read_json(dest / vae.dir_name / DIVERGED) == record
    assert f"| VAE | diverged (epoch 2, seed {record['seed']}) |" in (dest / "report.md").read_text()
    assert f"Diverged: 1 run(s), published with their {DIVERGED}" in (dest / "INDEX.md").read_text()


def test_a_resumed_runs_estimate_comes_from_its_own_latest_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(costs, "RECENT_EPOCHS", 3)
    profile = replace(tiny_profile(monkeypatch), epochs=6)
    (run,) = runs_for(profile)
    train(replace(run.cfg, epochs=4), tmp_path / run.dir_name, runtime=Runtime(progress=False))
    path = tmp_path / run.dir_name / "metrics.csv"
    rows = read_metrics(path)
    for row in rows:  # epoch 1 slow (outside the latest 3), then 7, 5 and 600 s (paused, say)
        row["seconds"] = {1: 100.0, 2: 7.0, 3: 5.0, 4: 600.0}[row["epoch"]]
    write_csv(path, list(rows[0]), [list(row.values()) for row in rows])
    train_s, _ = costs.estimate_run_seconds(run, profile, tmp_path, "cpu")
    assert train_s == 2 * 6.0  # 2 epochs left at the lower quartile of epochs 2-4 (their median: 7)
    model_s, _ = costs.estimate_run_seconds(run, profile, tmp_path, "cuda")  # timed on another device
    assert model_s == costs.estimate_train_seconds("vae", 2, 2, 300, "cuda")


def test_a_run_resumed_after_two_epochs_is_timed_by_the_faster_one(tmp_path, monkeypatch):
    profile = replace(tiny_profile(monkeypatch), epochs=6)
    (run,) = runs_for(profile)
    train(replace(run.cfg, epochs=2), tmp_path / run.dir_name, runtime=Runtime(progress=False))
    path = tmp_path / run.dir_name / "metrics.csv"
    rows = read_metrics(path)
    for row in rows:  # epoch 2 paused for most of its 600 s
        row["seconds"] = {1: 7.0, 2: 600.0}[row["epoch"]]
    write_csv(path, list(rows[0]), [list(row.values()) for row in rows])
    train_s, _ = costs.estimate_run_seconds(run, profile, tmp_path, "cpu")
    assert train_s == 4 * 7.0  # not 4 x 155.25, the quartile a quarter of the way from 7 to 600


def test_a_new_run_is_timed_by_a_finished_run_that_costs_the_same(tmp_path, monkeypatch):
    profile = replace(tiny_profile(monkeypatch), latent_dims=(10, 15), epochs=1)
    monkeypatch.setitem(plan.EXPERIMENTS, "tiny", Experiment("test", ("vae",), (10, 15)))
    done, new = runs_for(profile)  # latent 10 and 15: the same model, members and images
    reproduce(profile, tmp_path, runtime=Runtime(progress=False), experiments=["tiny"])
    shutil.rmtree(tmp_path / new.dir_name)
    path = tmp_path / done.dir_name / "metrics.csv"
    rows = [{**row, "seconds": 4.0} for row in read_metrics(path)]
    write_csv(path, list(rows[0]), [list(row.values()) for row in rows])
    index = read_json(tmp_path / "index.json")
    index["runs"][done.key]["seconds"].update(neg_elbo=30.0, analysis=20.0)
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert costs.estimate_run_seconds(new, profile, tmp_path, "cpu") == (1 * 4.0, 30.0 + 20.0)
    by_model = costs.estimate_run_seconds(new, profile, tmp_path, "cpu", measured=False)
    test_images = cost_model.test_points(new.cfg)
    modelled = costs.estimate_train_seconds("vae", 2, 1, 300, "cpu", test_images=test_images)
    assert by_model[0] == modelled
    assert by_model[1] == costs.estimate_eval_seconds(new, profile, "cpu", plan.eval_steps(new, profile))
    on_gpu = costs.estimate_run_seconds(new, profile, tmp_path, "cuda")  # the CPU run's times do not apply
    assert on_gpu == costs.estimate_run_seconds(new, profile, tmp_path, "cuda", measured=False)


def test_parallel_jobs_share_one_index(tmp_path, monkeypatch):
    profile = tiny_profile(monkeypatch, models=("vae", "vae-noise"))
    profile = replace(profile, epochs=1)
    results = reproduce(profile, tmp_path, runtime=Runtime(progress=False), jobs=2)
    assert sorted(r["dir"] for r in results) == sorted(run.dir_name for run in runs_for(profile))
    index = json.loads((tmp_path / "index.json").read_text())["runs"]
    assert set(index) == {run.key for run in runs_for(profile)}
    assert all(entry["trained_epochs"] == 1 for entry in index.values())
    # the seconds of each part, and what the reproduction ran on
    assert all({"train", "neg_elbo", "analysis"} <= set(entry["seconds"]) for entry in index.values())
    (session,) = json.loads((tmp_path / "reproduce.json").read_text())["sessions"]
    assert session["jobs"] == 2 and session["commit"] and "CPUs" in session["machine"]
    runs = write_report(tmp_path).read_text().split("## Runs")[1]
    assert "Sessions of `avae reproduce`" in runs
    assert re.search(r"\| analysis \d+, (classifier \d+, )?neg_elbo \d+, train \d+ \|", runs)


class Stopped(Exception):
    """The session's end, in the middle of a run."""


def test_a_run_stopped_part_way_keeps_the_seconds_it_spent_in_the_index(tmp_path, monkeypatch):
    """index.json is charged as each part ends (training: each epoch), so a session stopped in the
    middle of training, or of the evaluation, keeps what it spent; the next session adds to it."""
    profile = tiny_profile(monkeypatch, epochs=3)
    monkeypatch.setattr(execute, "TRAIN_CHARGE_SECONDS", 0.0)  # at each epoch's end
    (run,) = runs_for(profile)
    task = execute.Task(run, profile, tmp_path, Runtime(progress=False, threads=1))
    real_train = execute.train

    def train_stopped_after_epoch_2(*args, on_epoch, **kwargs):
        def then_stop(epoch, rows, model):
            on_epoch(epoch, rows, model)
            if epoch == 2:
                raise Stopped

        real_train(*args, on_epoch=then_stop, **kwargs)

    monkeypatch.setattr(execute, "train", train_stopped_after_epoch_2)
    with pytest.raises(Stopped):
        execute.execute_run(task)
    (entry,) = read_json(tmp_path / "index.json")["runs"].values()
    epochs = {row["epoch"]: row["seconds"] for row in read_metrics(tmp_path / run.dir_name / "metrics.csv")}
    assert entry["trained_epochs"] == 2 and list(entry["seconds"]) == ["train"]
    assert entry["seconds"]["train"] >= sum(epochs.values()) - 0.1  # both epochs, and their setup
    monkeypatch.setattr(execute, "train", real_train)

    def stop(*args, **kwargs):
        raise Stopped

    monkeypatch.setattr(execute, "analyse_run", stop)
    with pytest.raises(Stopped):  # the next session: epoch 3, the metric and classifier, stopped
        execute.execute_run(task)
    (after,) = read_json(tmp_path / "index.json")["runs"].values()
    assert after["trained_epochs"] == 3 and set(after["seconds"]) == {"train", "neg_elbo", "classifier"}
    assert after["seconds"]["train"] > entry["seconds"]["train"]  # added to the first session's


def test_the_training_callback_charges_at_most_every_interval_then_calls_the_next(monkeypatch):
    """`PartClock.on_epoch` charges "train" only once TRAIN_CHARGE_SECONDS have passed, and always
    calls the callback it wraps (TensorBoard's) with the epoch's arguments."""
    booked, called = [], []
    clock = execute.PartClock(lambda part, seconds: booked.append((part, seconds)))
    callback = clock.on_epoch(lambda epoch, rows, model: called.append((epoch, rows, model)))
    monkeypatch.setattr(execute, "TRAIN_CHARGE_SECONDS", 3600.0)
    callback(1, [{"a": 1}], "model")
    assert booked == [] and called == [(1, [{"a": 1}], "model")]
    monkeypatch.setattr(execute, "TRAIN_CHARGE_SECONDS", 0.0)
    callback(2, [], None)
    assert [part for part, _ in booked] == ["train"] and len(called) == 2
    monkeypatch.setattr(execute, "TRAIN_CHARGE_SECONDS", 3600.0)  # the charge marked the clock anew
    callback(3, [], None)
    assert len(booked) == 1 and len(called) == 3


def test_a_checkpoint_whose_header_length_starts_with_0x80_loads(tmp_path):
    """Regression: the smoke profile's AVAE run wrote a 13696-byte safetensors header (first byte 0x80),
    which the pickle check mistook for a pickle."""
    import torch

    from avae.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "c.safetensors"
    for pad in range(300):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 1, "config": {}, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_checkpoint(path)[1]["epoch"] == 1


def test_sigkill_halfway_loses_and_recomputes_no_finished_run(tmp_path):
    """Kill `avae reproduce` with SIGKILL once a run has finished, then run it again: the finished
    run is reused as it was (same bytes), and everything else completes."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "repro"
    command = [
        sys.executable,
        "-m",
        "avae",
        "reproduce",
        "--profile",
        "smoke",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    finished = None
    for line in process.stdout:
        match = re.match(r"\[1/\d+\] (\S+): trained", line)
        if match:
            finished = match.group(1)
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert finished is not None, "the first run never finished"

    def digest(run: str) -> dict[str, str]:
        files = ("checkpoint.safetensors", "eval.json", "metrics.csv")
        return {f: hashlib.sha256((out / run / f).read_bytes()).hexdigest() for f in files}

    before = digest(finished)
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(rf"\] {re.escape(finished)}: finished earlier, reused", rerun.stdout)
    assert digest(finished) == before
    planned = len(runs_for(plan.PROFILES["smoke"]))
    assert len(re.findall(r"^\[\d+/\d+\] ", rerun.stdout, flags=re.M)) == planned


def test_reproduce_in_a_terminal_shows_a_bar_with_time_left_within_seconds(tmp_path):
    """In a pseudo-terminal, the overall bar with an estimate of the time left appears before the
    first run ends (and within 60 s: a fixed few seconds failed on a loaded 2-core machine, where
    importing torch alone can take that long)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: avae reproduce with a terminal on stdout and stderr
        os.environ["OMP_NUM_THREADS"] = "1"
        os.execv(
            sys.executable,
            [sys.executable, "-m", "avae", "reproduce", "--profile", "smoke", "--out", str(tmp_path)],
        )
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    started, seen = time.monotonic(), b""
    try:
        while time.monotonic() - started < 60 and b"left (estimate)" not in seen:
            if select.select([fd], [], [], 0.1)[0]:
                seen += os.read(fd, 4096)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    text = seen.decode(errors="replace")
    assert "avae reproduce: profile 'smoke', 28 runs" in text
    bar = re.search(r"reproduce +\d+%\|.*\| [\d:]+ elapsed, ~[\d:]+ left \(estimate\)", text)
    assert bar, text[-500:]
    assert "[1/" not in text[: bar.start()], "the bar appeared only after a run had ended"


def test_a_plan_without_a_terminal_logs_where_it_stands_every_so_often(capsys):
    """In a log (stderr not a terminal, as for a run in the background), each finished run is a
    line, and every `log_every` seconds a line gives the runs done, the time elapsed and the time
    left at the pace so far; with progress off, only the finished runs' lines."""
    import time

    from avae.repro.progress import PlanProgress

    bar = PlanProgress({"a": 30.0, "b": 10.0}, 1, enabled=True, log_every=0.05)
    bar.started("training b")
    bar.finished("a", "[1/2] a: trained, 5 s")  # before the ticker starts, so its line comes first
    with bar:
        time.sleep(0.4)
        before, left, after = bar.elapsed(), bar.left(), bar.elapsed()
        assert before / 3 <= left <= after / 3  # 10 of 40 estimated seconds left at the pace so far
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/2] a: trained, 5 s" and len(lines) >= 3
    assert all(
        re.fullmatch(
            r"[\d:]{8} 1 of 2 runs ended, 0:0\d elapsed, ~0:0\d left \(estimate\), "
            r"now: training b",
            line,
        )
        for line in lines[1:]
    ), lines
    with PlanProgress({"a": 30.0}, 1, enabled=False, log_every=0.05) as quiet:
        time.sleep(0.2)
        quiet.finished("a", "[1/1] a: trained, 5 s")
    assert capsys.readouterr().out == "[1/1] a: trained, 5 s\n"
    overdue = PlanProgress({"a": 0.1, "b": 0.1}, 2, enabled=True)  # 0.1 s planned for both
    nothing_left = PlanProgress({"a": 0.0}, 1, enabled=True)  # a finished run, reused
    time.sleep(0.2)
    assert overdue.left_text() == "past the estimate of 0:00" and overdue.left() == 0.0
    assert nothing_left.left_text() == "~0:00 left (estimate)"
    overdue.bar.close()
    nothing_left.bar.close()


def test_the_time_left_runs_the_longest_run_at_one_runs_pace(monkeypatch):
    """Two runs side by side on two workers, each doing one estimated second a second; the short
    one ends at 10 s. The long one's 80 estimated seconds left take 80 s alone, not the 40 s of the
    plan's pace while both ran; 40 s later, its 40 left take 40 s (the whole plan's average pace
    said 33 s, and two runs' share of it 67 s). A plan of one run on two workers goes at one run's
    pace too."""
    from avae.repro import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    done = {"long": 0.0}
    plan = progress.PlanProgress({"short": 10.0, "long": 90.0}, 2, enabled=False, watch=lambda: dict(done))
    assert plan.planned == 90.0  # the estimate before any pace: the long run, not 100 / 2
    now[0], done["long"] = 10.0, 10.0
    plan.finished("short", "[1/2] short: trained")
    assert plan.work_done() == 20.0 and plan.longest_left() == 80.0
    assert plan.left() == pytest.approx(80.0)
    now[0], done["long"] = 50.0, 50.0
    assert plan.left() == pytest.approx(40.0)
    plan.bar.close()
    alone = progress.PlanProgress({"only": 100.0}, 2, enabled=False, watch=lambda: dict(only=20.0))
    now[0] = 70.0  # 20 estimated seconds in 20 s
    assert alone.left() == pytest.approx(80.0)
    alone.bar.close()


def test_the_time_left_counts_the_epochs_that_unfinished_runs_have_trained(tmp_path, monkeypatch):
    """`WorkWatch` credits each run with its share of its training estimate by the epochs it
    has trained since the plan began (read from its run directory, at most every `every` seconds);
    the plan counts that work until the run ends, then the run's whole estimate, once."""
    from avae.repro.progress import PlanProgress, Training, WorkWatch

    run_dir = tmp_path / "a"
    run_dir.mkdir()

    def trained_to(epoch: int) -> None:
        rows = [[e, m, 1.0] for e in range(1, epoch + 1) for m in (0, 1)]
        write_csv(run_dir / "metrics.csv", ["epoch", "member", "seconds"], rows)

    trained_to(2)  # resumed at epoch 2 of 10; its 8 epochs left estimated at 80 s
    watch = WorkWatch({"a": Training(run_dir, 2, 10, 80.0)}, every=0.0)
    assert watch() == {"a": 0.0}
    trained_to(5)
    assert watch() == {"a": 30.0}
    (run_dir / "metrics.csv").write_text("epoch,member\nnot a number,0\n")  # being written
    assert watch() == {"a": 30.0}  # what was seen before
    trained_to(12)  # past its epochs: never more than its estimate
    assert watch() == {"a": 80.0}
    trained_to(5)
    watch = WorkWatch({"a": Training(run_dir, 2, 10, 80.0)}, every=0.0)
    plan = PlanProgress({"a": 100.0, "b": 100.0}, 1, enabled=False, watch=watch)
    assert plan.work_done() == 30.0
    before, left, after = plan.elapsed(), plan.left(), plan.elapsed()
    assert before * 170 / 30 <= left <= after * 170 / 30
    plan.finished("a", "[1/2] a: trained")
    assert plan.work_done() == 100.0  # the run's whole estimate, not also its epochs
    plan.bar.close()
    cached = WorkWatch({"a": Training(run_dir, 2, 10, 80.0)}, every=3600.0)
    assert cached() == {"a": 30.0}
    trained_to(6)
    assert cached() == {"a": 30.0}  # read again only after `every` seconds

    profile = tiny_profile(monkeypatch, epochs=3, datasets=("mnist", "fashion-mnist"))
    first, second = runs_for(profile)
    tasks = [execute.Task(run, profile, tmp_path, Runtime(progress=False)) for run in (first, second)]
    built = WorkWatch.of_tasks(tasks, {first.key: (12.0, 5.0), second.key: (0.0, 5.0)})  # 2nd: none
    assert built.runs == {first.key: Training(tmp_path / first.dir_name, 0, 3, 12.0)}
    with pytest.raises(ValueError, match="no training left"):
        WorkWatch({"a": Training(run_dir, 10, 10, 80.0)})


def test_the_time_left_counts_the_evaluation_parts_that_unfinished_runs_have_done(tmp_path, monkeypatch):
    """`WorkWatch` credits a run with the estimate of each evaluation part that its eval.json (of
    the run's trained epoch) has gained since the plan began, keeps what it saw while eval.json
    cannot be read, and leaves the analysis to the run's end."""
    from avae.repro.plan import EvalStep
    from avae.repro.progress import Evaluation, PlanProgress, Training, WorkWatch

    run_dir = tmp_path / "a"
    run_dir.mkdir()
    cfg = make_config({"epochs": 3})
    steps = (EvalStep("neg_elbo", "elbo"), EvalStep("ais", "ais"), EvalStep("bdmc_forward", "bdmc"))
    figure = {"mean": 1.0}

    def evaluated(*keys: str, epoch: int = 3) -> None:
        write_json(run_dir / "eval.json", {"epoch": epoch, "metrics": dict.fromkeys(keys, figure)})

    evaluated("neg_elbo")  # the own figure done before the plan began: AIS and BDMC left
    left = Evaluation(run_dir, cfg, steps, {"ais": 100.0, "bdmc_forward": 30.0})
    watch = WorkWatch({}, {"a": left}, every=0.0)
    assert watch() == {"a": 0.0}
    evaluated("neg_elbo", "ais")
    assert watch() == {"a": 100.0}
    (run_dir / "eval.json").write_text('{"epoch": 3, "metr')  # being written
    assert watch() == {"a": 100.0}
    evaluated("neg_elbo", "ais", epoch=2)  # another epoch's figures: not this run's
    assert watch() == {"a": 0.0}
    evaluated("neg_elbo", "ais", "bdmc_forward")
    plan = PlanProgress({"a": 200.0}, 1, enabled=False, watch=watch)
    assert plan.work_done() == 130.0
    plan.bar.close()

    profile = tiny_profile(monkeypatch, epochs=3, datasets=("mnist", "fashion-mnist"))
    first, second = runs_for(profile)
    tasks = [execute.Task(run, profile, tmp_path, Runtime(progress=False)) for run in (first, second)]
    eval_parts = {first.key: {"neg_elbo": 5.0, "analysis": 1.0}, second.key: {"analysis": 1.0}}
    built = WorkWatch.of_tasks(tasks, {first.key: (12.0, 6.0), second.key: (0.0, 1.0)}, eval_parts)
    assert built.runs == {first.key: Training(tmp_path / first.dir_name, 0, 3, 12.0)}
    assert list(built.evaluations) == [first.key]  # the second has only its analysis left
    assert built.evaluations[first.key].seconds == {"neg_elbo": 5.0}
    assert built.evaluations[first.key].steps == tuple(eval_steps(first, profile))


def test_default_jobs_are_one_on_a_cpu_and_fill_a_gpu(monkeypatch):
    from avae.repro.runner import default_jobs

    assert default_jobs("cpu") == 1
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runner.torch.cuda, "mem_get_info", lambda device: (7 << 30, 80 << 30))
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 16)
    assert default_jobs("cuda") == 3  # 7 GiB free, 2 GiB a process
    monkeypatch.setattr(runner.torch.cuda, "mem_get_info", lambda device: (130 << 30, 140 << 30))
    assert default_jobs("cuda:0") == 16  # as many as CPU cores, at most 16


def test_publish_copies_results_without_checkpoints_and_the_report_regenerates(smoke, tmp_path):
    from avae.repro.publish import publish

    out, _ = smoke
    dest = publish(out, tmp_path / "published")
    assert not list(dest.rglob("*.safetensors"))  # no checkpoints, no classifiers
    assert len(list(dest.glob("*/config.json"))) == 28 and (dest / "report.md").exists()
    index = (dest / "INDEX.md").read_text()
    assert "avae reproduce --profile smoke" in index and "Sessions:" in index and "train " in index
    before = (dest / "report.md").read_bytes()
    write_report(dest)
    assert (dest / "report.md").read_bytes() == before
    with pytest.raises(AvaeError, match="not empty"):
        publish(out, dest)


def test_publish_leaves_out_unfinished_runs_and_says_so(smoke, tmp_path):
    from avae.repro.publish import publish

    out = tmp_path / "out"
    shutil.copytree(smoke[0], out)
    planned = runs_for("smoke")
    unevaluated, untrained, unstarted = (out / planned[i].dir_name for i in (0, 1, 2))
    (unevaluated / EVAL).unlink()
    record = read_json(untrained / CONFIG)
    record["config"]["epochs"] = 2  # as if it had been planned for 2 epochs and had trained 1
    (untrained / CONFIG).write_text(json.dumps(record))
    shutil.rmtree(unstarted)
    dest = publish(out, tmp_path / "published")
    assert len(list(dest.glob("*/config.json"))) == 25
    assert not any((dest / run.name).exists() for run in (unevaluated, untrained, unstarted))
    index = (dest / "INDEX.md").read_text()
    assert "Not in this folder: 3 planned run(s)" in index
    assert f"{unevaluated.name}: trained, evaluation unfinished" in index
    assert f"{untrained.name}: trained 1 of 2 epochs" in index
    assert f"{unstarted.name}: no finished epoch yet" in index


def test_publishing_the_paper_profile_keeps_published_runs_and_leaves_out_unplanned_ones(tmp_path):
    """paper-z10's runs copied into a 'paper' reproduction are published as they are (they lack only
    the reconstruction term, which needs their weights); its AVB-AC runs, trained before ac_moments,
    are no run of the profile now and are left out, each with one line."""
    out = tmp_path / "paper"
    names = []
    for config in (ROOT / "results" / "paper-z10").glob("*/config.json"):
        shutil.copytree(config.parent, out / config.parent.name)
        names.append(config.parent.name)
    manifest = {"profile": "paper", "settings": {}, "runs": [{"dir": name} for name in names]}
    (out / "reproduce.json").write_text(json.dumps(manifest))
    done, pending = finished_runs(out)
    assert sorted(run.dir.name for run in done) == sorted(n for n in names if not n.startswith("avb-ac"))
    left_out = sorted(line.split(":")[0] for line in pending if "planned by an earlier version" in line)
    assert left_out == sorted(n for n in names if n.startswith("avb-ac"))
