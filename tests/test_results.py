"""Published results re-render byte for byte: `avae report` on the committed run files (no
checkpoints) gives the committed report.md and CSV files, and the tables parse."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from avae.repro.report.report import write_report

RESULTS = Path(__file__).resolve().parent.parent / "results"
PUBLISHED = sorted(p.parent for p in RESULTS.glob("*/report.md"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_committed_report_regenerates_byte_for_byte(folder, tmp_path):
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("report"))
    write_report(copy)
    assert (copy / "report.md").read_bytes() == (folder / "report.md").read_bytes()
    for table in sorted((folder / "report").glob("*.csv")):
        assert (copy / "report" / table.name).read_bytes() == table.read_bytes(), table.name


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_committed_tables_match_the_report(folder):
    rows = list(csv.DictReader((folder / "report" / "table1.csv").open()))
    assert rows, "empty table1.csv"
    text = (folder / "report.md").read_text()
    for row in rows:
        if row["figure"] == "own" and row["mean"] != "nan":
            assert f"{float(row['mean']):.2f} ± {float(row['ci95']):.2f}" in text, row


def published_figure(folder: Path, which: str, path: Path):
    """Fig. 6 or 7 of a published folder as `avae report` draws it (the matplotlib Figure)."""
    from avae.repro.paper import DATASET_LABELS
    from avae.repro.report.curves import curve_panels, key_curves
    from avae.repro.report.figures import Panel, plot_curves
    from avae.repro.results import collect_runs, index_runs

    table = index_runs(collect_runs(folder))
    title, panels = curve_panels([d for d in DATASET_LABELS if any(k[0] == d for k in table)], which)
    return plot_curves([Panel(name, key_curves(table, keys)) for name, keys in panels], path, title)


def drawn_axes(figure) -> dict[str, object]:
    """First line of each visible axes' title -> the axes."""
    return {ax.get_title().split("\n")[0]: ax for ax in figure.axes if ax.get_visible()}


@pytest.mark.parametrize("which", ["fig6", "fig7"])
@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_no_two_curves_of_a_published_figure_look_alike(folder, which, tmp_path):
    """AVAE joint and separate (same model colour) and VAE+eps at noise 5, 10 and 15 each get their
    own line style and marker (they were drawn alike)."""
    figure = published_figure(folder, which, tmp_path / "f.png")
    for title, ax in drawn_axes(figure).items():
        looks = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
        looks = [look for look in looks if look[1] != "None"]  # legend-only entries ("not run")
        assert len(set(looks)) == len(looks), title


def test_paper_z10_fig7_shows_the_comparison_it_exists_for(tmp_path):
    """The separate reading (~150 nats on MNIST, diverged on Fashion-MNIST) no longer sets the axes:
    each panel is fitted to the close curves and names what lies beyond; the last third is enlarged,
    where VAE, VAE+eps and AVAE joint differ by about a nat; latent 15, never run, is not drawn as
    empty axes but named."""
    figure = published_figure(RESULTS / "paper-z10", "fig7", tmp_path / "f.png")
    axes = drawn_axes(figure)
    assert not any("latent 15" in title for title in axes)
    assert "not drawn, no runs in this folder: MNIST, latent 15; Fashion-MNIST, latent 15" in (
        figure.get_suptitle()
    )
    main, zoom = axes["MNIST, latent 10"], axes["MNIST, latent 10: epochs 67-100, enlarged"]
    assert "beyond this range: AVAE (separate) z10 n10 (mean 145 to 194)" in main.get_title()
    assert main.get_ylim()[1] < 194
    low, high = zoom.get_ylim()
    assert high - low < 10 and low < 107.5 < high  # the three converged curves end near 107.5 nats
    assert {line.get_label() for line in zoom.get_lines()} == {
        "VAE z10",
        "VAE+eps z10 n10",
        "AVAE (joint) z10 n10",
    }
    assert "not shown: AVAE (separate) z10 n10" in zoom.get_title()
    legend = [text.get_text() for text in axes["Fashion-MNIST, latent 10"].get_legend().get_texts()]
    assert "AVAE (separate) z10 n10 (diverged at epoch 12)" in legend


def test_paper_z10_names_what_it_did_not_run_or_what_diverged(tmp_path):
    """Fig. 6 names the noise dimensions not run; the grids and the analysis table say the diverged
    run diverged (they said "missing run", or left it out)."""
    figure = published_figure(RESULTS / "paper-z10", "fig6", tmp_path / "f.png")
    legend = [text.get_text() for text in drawn_axes(figure)["MNIST"].get_legend().get_texts()]
    assert {"VAE+eps z10 n5: not run", "VAE+eps z10 n15: not run"} <= set(legend)
    text = (RESULTS / "paper-z10" / "report.md").read_text()
    diverged = "diverged (epoch 12, seed 2)"
    fig8 = text.split("## Fig. 8")[1].split("##")[0]
    recon = text.split("### Reconstructions")[1].split("###")[0]
    analysis = text.split("### Aggregate posterior")[1].split("## Runs")[0]
    assert all(diverged in part and "missing run" not in part for part in (fig8, recon))
    assert f"| Fashion-MNIST | AVAE (separate) z10 n10 | {diverged} |" in analysis
    assert "Not analysed" not in analysis  # nothing a command could fill


def test_the_measurement_report_regenerates_byte_for_byte_from_its_files():
    """results/measurement/MEASUREMENT.md (issue 22) is computed from its JSON files and the
    published runs by scripts/measurement_report.py, not typed in."""
    import importlib.util

    script = RESULTS.parent / "scripts" / "measurement_report.py"
    spec = importlib.util.spec_from_file_location("measurement_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = RESULTS / "measurement"
    text = module.render(folder, RESULTS / "paper")
    assert text == (folder / "MEASUREMENT.md").read_text()
    assert "| AVB | `avb-mnist-z10-n10-" in text and "| mnist | 15 |" in text


def test_the_binary_entropy_floor_of_the_fashion_gap_screen_is_exact():
    """scripts/fashion_gap.py's floor: sum_i H(x_i), 0 for black-and-white pixels and log 2 for grey 0.5."""
    import importlib.util
    import math

    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "fashion_gap", RESULTS.parent / "scripts" / "fashion_gap.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.entropy_floor(np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])) == 0.0
    assert module.entropy_floor(np.full((2, 784), 0.5)) == pytest.approx(784 * math.log(2), rel=1e-12)
    p = 0.2
    assert module.entropy_floor(np.array([[p, 0.0]])) == pytest.approx(
        -(p * math.log(p) + (1 - p) * math.log(1 - p))
    )


def test_the_paper_report_gives_ais_at_every_latent_it_has_runs_at():
    """Each latent's runs, on each data set, get their own IWAE and AIS tables (the report had them at
    latent 10 only), and each AIS cell is the t interval of the run's per-seed figures in eval.json
    (scipy here)."""
    import json

    from scipy import stats as scipy_stats

    from avae.core.models import row_label
    from avae.repro.paper import dataset_label

    folder = RESULTS / "paper"
    text = (folder / "report.md").read_text()
    checked = 0
    for eval_path in sorted(folder.glob("*-z15-*/eval.json")) + sorted(folder.glob("*-z20-*/eval.json")):
        record = json.loads(eval_path.read_text())
        if eval_path.parent.name.startswith("avb-ac") or "ais" not in record["metrics"]:
            continue
        ais = record["metrics"]["ais"]
        values = [member["value"] for member in ais["per_member"]]
        half = scipy_stats.t.ppf(0.975, len(values) - 1) * scipy_stats.sem(values)
        config = json.loads((eval_path.parent / "config.json").read_text())["config"]
        model = config["model"]
        label = row_label(model["name"], model["adv_update"] if model["name"] == "avae" else "")
        where = f"{dataset_label(config['dataset'])}, latent {model['latent_dim']}"
        heading = f"### {where}: the first {ais['points']} test images (AIS points)"
        table = text.split(heading)[1].split("\n### ")[0]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        assert row.rstrip(" |").endswith(f"{sum(values) / len(values):.2f} ± {half:.2f}"), row
        checked += 1
    assert checked >= 10  # MNIST: VAE, VAE+eps, AVB, AVAE (joint) at 15 and 20; Fashion-MNIST: 2 at 15
