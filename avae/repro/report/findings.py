"""What the runs of a reproduction show at each of the paper's latent sizes with AIS figures, as
answers to four questions a reader asks of the paper (the report's "What the runs show"):

1. Does AVAE beat VAE+eps on the honest figures (IWAE, AIS), not only on its own?
2. Does the paper's pattern (AVAE and AVB well ahead of VAE+eps) appear under the
   discriminator-based figures, and does it survive the honest ones?
3. How far is each model's own figure from its AIS estimate (a looser bound above it; below it,
   optimistic: not a bound)?
4. Is noise injection (VAE+eps against VAE) worth anything?

Every number is a per-seed difference (paired where the runs share their seeds), mean and 95% CI,
lower is better, with every figure of a row on the same test points (the AIS points). The intervals
are not corrected for multiple comparisons: the claims section holds the corrected tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avae.core.models import MODELS, row_label
from avae.evaluation import stats
from avae.io import write_csv
from avae.repro.paper import RowKey, dataset_label, rows_of
from avae.repro.report.claims import paper_gain
from avae.repro.report.figures import format_table
from avae.repro.report.tables import Table, latents_of
from avae.repro.results import RunResult, shared_points

Tests = dict[tuple[str, RowKey, RowKey, str], dict[str, Any] | None]  # (question, a, b, figure) -> test
Figures = tuple[tuple[str, str], ...]  # (eval.json key, column name)

METHOD = (
    "At each of the paper's latent sizes with AIS figures. Each figure is a per-seed difference, lower "
    "is better (negative: the first named is better), mean and 95% CI over seeds (paired where the runs "
    "share their seeds), with every figure of a table on the same test points: the AIS points. The "
    "intervals are not corrected for multiple comparisons (the claims section below holds the "
    "corrected tests). An answer says *better* or *worse* only where the 95% CI excludes zero."
)


def difference(
    a: RunResult, a_metric: str, b: RunResult, b_metric: str, points: int
) -> dict[str, Any] | None:
    """Figure a_metric of run a minus figure b_metric of run b, per seed, on the first `points`."""
    x, y = a.metric(a_metric, points), b.metric(b_metric, points)
    if not x or not y:
        return None
    return stats.compare(x, y, paired=a.cfg.seeds == b.cfg.seeds and len(x) == len(y))


def diff_cell(test: dict[str, Any] | None) -> str:
    if test is None:
        return "-"
    if test["ci_low"] != test["ci_low"]:  # nan: no interval
        return f"{test['diff']:+.2f}"
    return f"{test['diff']:+.2f} [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]"


def answer(test: dict[str, Any] | None, better: str = "better", worse: str = "worse") -> str:
    if test is None:
        return "not measured"
    if test["ci_low"] != test["ci_low"]:  # nan: one seed, or no variation to judge by
        return f"not tested ({test['test'].removeprefix('none ').strip('()')})"
    if test["ci_high"] < 0:
        return better
    if test["ci_low"] > 0:
        return worse
    return "no difference resolved"


def one(dataset: str, model: str, latent: int) -> RowKey:
    return rows_of(dataset, model, latent)[0]


def findings_section(table: Table, datasets: list[str], figdir: Path, iwae_key: str) -> str:
    """The section, and findings.csv: one row per difference shown."""
    iwae_name = iwae_key.replace("iwae_k", "IWAE-")
    figures = (("neg_elbo", "own figure"), (iwae_key, iwae_name), ("ais", "AIS"))
    lines, csv_rows = ["## What the runs show", "", METHOD], []
    for dataset, latent in ((d, z) for d in datasets for z in latents_of(table, d)):
        points = shared_points(table, dataset, "ais", latent)
        if points is None:
            continue
        lines += ["", f"### {dataset_label(dataset)}, latent {latent}: the first {points} test images"]
        pairs = [  # (question, first, second, figure of the first, figure of the second)
            *(
                ("1. AVAE against VAE+eps", avae, one(dataset, "vae-noise", latent), metric, metric)
                for avae in rows_of(dataset, "avae", latent)
                for metric, _ in figures
            ),
            *(
                ("3. own figure against AIS", key, key, "neg_elbo", "ais")
                for model in MODELS
                for key in rows_of(dataset, model, latent)
            ),
            *(
                (
                    "4. VAE+eps against VAE",
                    one(dataset, "vae-noise", latent),
                    one(dataset, "vae", latent),
                    metric,
                    metric,
                )
                for metric, _ in figures
            ),
        ]
        tests: Tests = {}
        for question, first, second, fa, fb in pairs:
            if first in table and second in table:
                test = difference(table[first], fa, table[second], fb, points)
                tests[(question, first, second, fa)] = test
                if test is not None:
                    csv_rows.append(
                        [
                            dataset,
                            latent,
                            question,
                            first.model,
                            first.reading,
                            second.model,
                            second.reading,
                            fa,
                            fb,
                            points,
                            *csv_numbers(test),
                        ]
                    )
        lines += question_one(dataset, latent, table, tests, figures)
        lines += pattern_lines(table, dataset, latent, iwae_key, points)
        lines += question_three(dataset, latent, table, tests)
        lines += question_four(dataset, latent, table, tests, figures)
    write_csv(
        figdir / "findings.csv",
        [
            "dataset",
            "latent_dim",
            "question",
            "model",
            "reading",
            "against_model",
            "against_reading",
            "figure",
            "against_figure",
            "points",
            "difference",
            "ci_low",
            "ci_high",
            "p",
        ],
        csv_rows,
    )
    return "\n".join([*lines, "", "CSV: [report/findings.csv](report/findings.csv)"])


def csv_numbers(test: dict[str, Any]) -> list[float]:
    return [test["diff"], test["ci_low"], test["ci_high"], test["p"]]


def question_one(dataset: str, latent: int, table: Table, tests: Tests, figures: Figures) -> list[str]:
    base = one(dataset, "vae-noise", latent)
    rows = []
    for avae in (k for k in rows_of(dataset, "avae", latent) if k in table and base in table):
        cells = [tests.get(("1. AVAE against VAE+eps", avae, base, metric)) for metric, _ in figures]
        verdict = answer(cells[-1], "yes, better", "no, worse")
        if table[avae].divergence:
            verdict = table[avae].missing_label
        rows.append([f"{row_label(avae.model, avae.reading)} - VAE+eps", *map(diff_cell, cells), verdict])
    if not rows:
        title = "**1. Does AVAE beat VAE+eps on the honest figures?**"
        avae_here = any(k in table for k in rows_of(dataset, "avae", latent))
        present = {"AVAE": avae_here, "VAE+eps": base in table}
        lacking = " and no ".join(name for name, here in present.items() if not here)
        return ["", f"{title} Not answered: no {lacking} run at latent {latent}."]
    header = ["difference", *(name for _, name in figures), "beats VAE+eps on AIS?"]
    return ["", "**1. Does AVAE beat VAE+eps on the honest figures?**", "", format_table(header, rows)]


def question_three(dataset: str, latent: int, table: Table, tests: Tests) -> list[str]:
    rows = []
    for model in MODELS:
        for key in (k for k in rows_of(dataset, model, latent) if k in table):
            test = tests.get(("3. own figure against AIS", key, key, "neg_elbo"))
            if test is not None:
                verdict = answer(test, "below AIS: optimistic, not a bound", "above AIS: a looser bound")
                rows.append([row_label(model, key.reading), diff_cell(test), verdict])
    if not rows:
        return []
    return [
        "",
        "**3. How far is each model's own figure from its AIS estimate?** (own figure - AIS)",
        "",
        format_table(["model", "own - AIS", "reading"], rows),
    ]


def question_four(dataset: str, latent: int, table: Table, tests: Tests, figures: Figures) -> list[str]:
    first, second = one(dataset, "vae-noise", latent), one(dataset, "vae", latent)
    if first not in table or second not in table:
        return []
    cells = [tests.get(("4. VAE+eps against VAE", first, second, metric)) for metric, _ in figures]
    verdict = answer(cells[-1], "yes, better", "no, worse")
    header = ["difference", *(name for _, name in figures), "noise helps on AIS?"]
    rows = [["VAE+eps - VAE", *map(diff_cell, cells), verdict]]
    return ["", "**4. Is noise injection worth anything?**", "", format_table(header, rows)]


def pattern_lines(table: Table, dataset: str, latent: int, iwae_key: str, points: int) -> list[str]:
    """2. Does the paper's Table 1 pattern (AVAE and AVB well ahead of VAE+eps) appear under the
    discriminator-based figures and disappear under the honest ones? Per-seed gaps with 95% CIs,
    every figure on the first `points` test images (the AIS points)."""
    base_key = one(dataset, "vae-noise", latent)
    base = table.get(base_key)
    if paper_gain(one(dataset, "avb", latent), base_key) is None:
        return []  # the user's own data, or a latent size the paper has no figure at
    if base is None:
        return ["", "**2. Does the paper's pattern appear?** Not answered: no VAE+eps run."]
    rows = []
    for model in ("avae", "avb"):
        for key in (k for k in rows_of(dataset, model, latent) if k in table):
            paper_gap = paper_gain(key, base_key)  # Table 1: VAE+eps's figure minus the model's
            run, cells = table[key], []
            for figure, base_figure in (("neg_critic", "neg_elbo"), (iwae_key, iwae_key), ("ais", "ais")):
                test = difference(base, base_figure, run, figure, points)  # VAE+eps - model: the gap
                if test is not None:
                    seen = "appears" if test["diff"] >= paper_gap / 2 else "absent"
                gap = "diverged" if run.divergence else "-"
                cells.append(gap if test is None else f"{diff_cell(test)} ({seen})")
            rows.append([row_label(model, key.reading), f"{paper_gap:+.2f}", *cells])
    if not rows:
        return ["", "**2. Does the paper's pattern appear?** Not answered: no AVAE or AVB run."]
    header = ["model", "paper", "critic figure vs VAE+eps own", iwae_key.replace("iwae_k", "IWAE-"), "AIS"]
    note = (
        "Gap to VAE+eps (VAE+eps's figure minus the model's, per seed; positive: better than VAE+eps), "
        "mean and 95% CI. *appears*: at least half the paper's gap; every figure on the AIS points, as "
        "in the other tables of this section."
    )
    title = "**2. Does the paper's pattern appear under the discriminator-based figures, and survive AIS?**"
    return ["", title, "", format_table(header, rows), "", note]
