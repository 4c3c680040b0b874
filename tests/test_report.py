"""The report's statistics and sample-quality measures on inputs with known answers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from avae.evaluation.analysis import frechet_distance, gaussian_fit_kl, mmd_to_prior
from avae.evaluation.stats import mean_ci
from avae.repro import plan
from avae.repro.paper import Experiment
from avae.repro.report.figures import format_table
from avae.repro.report.report import write_report
from avae.repro.reproduce import reproduce
from avae.training.config import Runtime
from avae.training.images import image_grid


def test_mean_ci_uses_the_t_distribution():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t_{0.975, 2} * sd / sqrt(n)
    assert np.isnan(mean_ci([5.0])[1])


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = rng.standard_normal((4000, 3)) + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, abs=0.3)


def test_aggregate_posterior_measures_are_zero_for_the_prior():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3000, 5))
    assert gaussian_fit_kl(z) == pytest.approx(0.0, abs=0.02)
    assert abs(mmd_to_prior(z, rng)) < 0.01
    far = z * 3 + 1
    assert gaussian_fit_kl(far) > 5 and mmd_to_prior(far, rng) > 0.05


def test_grid_and_table_helpers_keep_their_shape():
    assert image_grid(np.zeros((64, 784))).shape == (8 * 30 + 2, 8 * 30 + 2)
    assert format_table(["a", "b"], [[1, 2]]).splitlines()[2] == "| 1 | 2 |"


def test_report_names_what_is_missing_and_gives_no_verdict_without_runs(tmp_path, monkeypatch):
    """With IWAE and AIS not planned, the report still renders: the honest section says the runs
    were not evaluated with AIS, absent runs read "missing run", and no claim can be decided."""
    monkeypatch.setitem(plan.EXPERIMENTS, "tiny", Experiment("test", ("vae-noise",), (10,)))
    profile = plan.Profile(
        "tiny", "test", epochs=1, seeds=(0, 1), train_subset=200, test_subset=50, datasets=("mnist",),
        latent_dims=(10,), experiments=("tiny",), honest_latents=(), analysis_samples=50,
        classifier_epochs=1, classifier_subset=500,
    )  # fmt: skip
    reproduce(profile, tmp_path, runtime=Runtime(progress=False))
    text = write_report(tmp_path).read_text()
    honest = text.split("## Honest figures")[1].split("## Fig. 6")[0]
    assert "Not evaluated with AIS" in honest and "avae evaluate" in honest  # "tiny" is no named profile
    assert "missing run" in text  # sections render even when their runs are absent
    verdicts = re.findall(r"\*\*Verdict[^*]*: ([a-z ]+)\*\*", text)
    assert verdicts == ["inconclusive"] * 7


def fake_run(tmp_path, curve: list[float], **settings):
    """A RunResult whose per-epoch test figure (both seeds) follows `curve`."""
    from avae.repro.results import RunResult
    from avae.training.config import make_config

    rows = [
        {"epoch": e, "member": m, "seed": m, "test_neg_elbo": value + 0.01 * m}
        for e, value in enumerate(curve, 1)
        for m in (0, 1)
    ]
    cfg = make_config({"seeds": (0, 1), "epochs": len(curve), **settings})
    return RunResult(tmp_path, cfg, rows, {}, {}, len(curve))


def test_the_tables_have_every_latent_size_with_runs_the_papers_first(tmp_path):
    from avae.repro.report.report import honest_latents
    from avae.repro.report.tables import latents_of, table1_section
    from avae.repro.results import index_runs

    runs = [fake_run(tmp_path, [150.0], latent_dim=z) for z in (32, 20, 4, 10)]
    table = index_runs(runs)
    assert latents_of(table, "mnist") == [10, 20, 4, 32] and latents_of(table, "fashion-mnist") == []
    header = next(line for line in table1_section(table, ["mnist"], tmp_path).splitlines() if "z=" in line)
    assert [part.strip() for part in header.split("|") if part.strip().endswith("own")] == [
        "z=10 own", "z=20 own", "z=4 own", "z=32 own"
    ]  # fmt: skip
    # the honest tables: every latent size with runs where no reproduce.json says which are evaluated
    assert honest_latents({}, table) == (4, 10, 20, 32)
    assert honest_latents({"settings": {"honest_latents": [10]}}, table) == (10,)


def test_the_report_warns_when_runs_are_short_of_convergence(tmp_path):
    from avae.repro.report.report import header_section
    from avae.repro.results import recent_gain, short_of_convergence

    improving = fake_run(tmp_path, [150.0, 140.0, 137.0, 134.0, 131.0, 128.0])  # 3 nats an epoch
    settled = fake_run(tmp_path, [150.0, 140.0, 140.0, 139.5, 139.0, 139.5, 139.0])  # last 5: 0.2
    noisy = fake_run(tmp_path, [150.0, 140.0, 138.0, 140.0, 138.0, 140.5, 138.0])  # 2.5 in the last epoch
    assert recent_gain(improving) == pytest.approx(3.0) and short_of_convergence(improving)
    assert recent_gain(settled) == pytest.approx(0.2) and not short_of_convergence(settled)
    assert recent_gain(noisy) == pytest.approx(-0.05) and not short_of_convergence(noisy)  # no trend
    assert recent_gain(fake_run(tmp_path, [150.0, 147.5])) == pytest.approx(2.5)  # two: the last fall
    assert short_of_convergence(fake_run(tmp_path, [150.0]))  # one epoch: no evidence either way
    warned = header_section([improving, settled, noisy], ["mnist"], "test")
    assert "1 of 3 runs were still improving by more than 1 nat per epoch over their last 5" in warned
    assert "up to 3.0 nats an epoch" in warned
    assert "each verdict below that tests one of them carries that caveat" in warned  # not every claim
    assert "Warning" not in header_section([settled, noisy], ["mnist"], "test")


def test_report_on_a_sweep_draws_and_lists_each_point_apart(tmp_path, synthetic_data, monkeypatch):
    """Two learning rates of one model: the sweep's report has a row and a curve of its own colour
    for each point, labelled by its setting (they were drawn as one model, one row of Table 1); a
    point that diverged in its first epoch (no run to read) says so."""
    from avae.io import read_json, write_json
    from avae.repro.report import sweep_report
    from avae.repro.sweep import SWEEP, sweep

    base = {"model": "vae", "epochs": 2, "seeds": (0,), "hidden": (32, 16), "latent_dim": 4, "batch_size": 50}
    sweep(base, ["lr=0.001,0.003"], tmp_path, runtime=Runtime(progress=False), jobs=1)
    record = read_json(tmp_path / SWEEP)
    diverged = {"epoch": 1, "step": 2, "seed": 0, "term": "loss_elbo"}
    record["points"].append(
        {"point": {"lr": 1e30}, "dir": "gone", "key": "-", "figures": {}, "diverged": diverged}
    )
    write_json(tmp_path / SWEEP, record)
    figures = []
    draw = sweep_report.plot_curves
    monkeypatch.setattr(sweep_report, "plot_curves", lambda *args: figures.append(draw(*args)) or figures[-1])
    text = write_report(tmp_path).read_text()
    assert text.startswith("# Sweep report") and "Table 1" not in text
    points = text.split("## Points")[1].split("##")[0]
    rows = [line for line in points.splitlines() if line.startswith("| 0.00")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0.001", "| 0.003"]
    assert len({row.split(" | ")[1] for row in rows}) == 2  # each point its own run directory
    assert "| 1e+30 | gone | diverged (epoch 1, seed 0) | - |" in points
    (figure,) = figures
    lines = [line for line in figure.axes[0].get_lines() if len(line.get_xdata())]
    assert [line.get_label() for line in lines] == ["lr=0.001", "lr=0.003"]
    assert lines[0].get_color() != lines[1].get_color()
    assert "lr=1e+30: diverged at epoch 1" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert (tmp_path / "report" / "sweep.png").exists()
    curves = (tmp_path / "report" / "sweep.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0] for row in curves} == {"lr=0.001", "lr=0.003"}
    from avae.repro.publish import publish

    published = publish(tmp_path, tmp_path.parent / f"{tmp_path.name}-published")
    assert read_json(published / SWEEP) == record  # a published sweep keeps its points
    assert (published / "report.md").read_text().startswith("# Sweep report")


def test_report_on_a_single_run_says_what_it_takes_and_what_to_run(tmp_path, synthetic_data):
    from avae.errors import ConfigError
    from avae.training.config import make_config
    from avae.training.train import train

    cfg = make_config({"model": "vae", "epochs": 1, "seeds": (0,), "hidden": (32, 16), "latent_dim": 4})
    train(cfg, tmp_path / "one", runtime=Runtime(progress=False))
    with pytest.raises(ConfigError) as error:
        write_report(tmp_path / "one")
    message = str(error.value)
    assert "is a single run" in message and "`avae reproduce` or `avae sweep`" in message
    assert f"`avae evaluate {tmp_path / 'one'}`" in message
    assert not (tmp_path / "one" / "report.md").exists()
