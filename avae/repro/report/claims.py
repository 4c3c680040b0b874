"""The paper's five claims, each tested on the runs of a reproduction: paired t-tests where two
runs share their seeds (Welch's test otherwise), Holm-Bonferroni within each family of
comparisons, and the confidence interval of every difference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avae.core.models import row_label
from avae.evaluation import stats
from avae.io import write_csv
from avae.repro.paper import CLAIMS, PAPER_NOISE, PAPER_TABLE1, Claim, RowKey, claim_families, dataset_label
from avae.repro.report.figures import format_table
from avae.repro.results import CONVERGENCE_EPOCHS, RunResult, shared_points, short_of_convergence

METHOD = (
    "Each comparison tests the per-seed difference between the claimed-better and the claimed-worse "
    "configuration (lower is better for every figure): a paired t-test when both runs share their "
    "seeds (same initialisation streams and data order per seed), Welch's t-test otherwise, two-sided. "
    f"Within each family of comparisons (a claim, or a claim for one AVAE reading) the p-values are "
    f"corrected with Holm-Bonferroni at a family-wise alpha of {stats.ALPHA}, over the claim's whole "
    "family: a comparison whose runs are missing or still in progress counts as a p-value of 1, so "
    "that the runs still to "
    "come can only lower the others' corrected p-values (so does a comparison of Frechet distances "
    "measured with two feature classifiers, which gets no test until one run is analysed with the "
    "other's classifier; a diverged run's comparisons count so for "
    "good; one whose runs lack the figure by design, or whose difference has zero variance, is left "
    "out). A comparison *agrees* when the "
    "claimed direction holds with corrected p < alpha, *contradicts* when the opposite holds with "
    "corrected p < alpha, and is *unclear* otherwise; a comparison whose difference has zero variance "
    "(or fewer than two seeds) gets no test. Verdict: **supported** when every comparison agrees, "
    "**not supported** when at least one contradicts, **inconclusive** otherwise (including missing "
    "runs). Claims 1-4 are tested on the paper's figure (each model's own objective on every test "
    "image of the runs); the last column repeats the test on AIS, the honest estimate of log p(x) "
    "for every model, on the AIS test points (the same for every run), for information (it does not "
    "enter the verdict). Where a comparison is unclear, *the CI excludes* says how large a gain of the "
    "claimed-better configuration its 95% CI (uncorrected) rules out, beside the paper's own gain where "
    "Table 1 gives both figures: an unclear outcome is not evidence of no difference, only of none "
    "larger than that."
)


def key_label(key: RowKey) -> str:
    return f"{row_label(key.model, key.reading)} z{key.latent}" + (f" n{key.noise}" if key.noise else "")


def paper_gain(better: RowKey, worse: RowKey) -> float | None:
    """How much better the paper's Table 1 says `better` is than `worse` (None where it gives no
    figure for either: another noise size, AVB-AC, your own data)."""
    if better.noise not in (0, PAPER_NOISE) or worse.noise not in (0, PAPER_NOISE):
        return None
    column = PAPER_TABLE1.get(better.dataset, {})
    a = column.get(better.model, {}).get(better.latent)
    b = column.get(worse.model, {}).get(worse.latent)
    return None if a is None or b is None else round(b - a, 2)


def excluded_gain(test: dict[str, Any], paper: float | None = None) -> str:
    """The gains (the claimed-worse figure minus the claimed-better one) that the difference's 95%
    CI rules out, with the paper's gain beside them: 'a gain above 2.13 (paper: 14.22)'."""
    low = test["ci_low"]
    if low != low:  # no interval: zero variance or one seed
        return "-"
    excluded = "any gain" if low >= 0 else f"a gain above {-low:.2f}"
    return excluded + (f" (paper: {paper:.2f})" if paper is not None else "")


def test_pair(better: RunResult, worse: RunResult, metric: str) -> dict[str, Any] | None:
    """The per-seed test of `metric`, on the test points both runs have it on (None: no figure on
    common points)."""
    points = shared_points({better.key: better, worse.key: worse}, better.key.dataset, metric)
    a, b = better.values(metric, points), worse.values(metric, points)
    if not a or not b:
        return None
    paired = better.cfg.seeds == worse.cfg.seeds
    return stats.compare(a, b, paired=paired)


def same_feature_space(a: RunResult, b: RunResult) -> bool:
    """Whether two runs' Frechet distances were measured in one feature space
    (`RunResult.feature_space`); a run not analysed yet is left to `test_pair`, which finds no
    figure."""
    return len({a.feature_space, b.feature_space} - {None}) <= 1


UNTESTED_P = 1.0  # Holm p of a comparison lacking a run (`lacks_a_run`) or on two classifiers


def holm_over_family(tests: Sequence[dict[str, Any] | None], runs_lacking: Sequence[bool]) -> list[float]:
    """Holm-Bonferroni over a claim's whole family. A comparison with no test (`None`) counts as
    p = UNTESTED_P where a run of it is missing or diverged (`runs_lacking`), and is left out where
    both runs are there but lack the figure by design (a profile that runs AIS at some latents
    only); one with no p-value (zero variance, one seed) is left out too. A family part-way through
    its runs is thus corrected for every comparison it will hold: Holm's adjusted p-values never
    fall when a raw p-value rises, so the missing ones can only lower the rest's when they come,
    and an outcome published part-way is not overturned by the correction later. A diverged run's
    comparisons count as p = 1 for good."""
    pvalues = [
        (UNTESTED_P if lacking else math.nan) if test is None else test["p"]
        for test, lacking in zip(tests, runs_lacking, strict=True)
    ]
    return stats.holm(pvalues)


def lacks_a_run(a: RunResult | None, b: RunResult | None, metric: str) -> bool:
    """Whether a comparison lacks a run: one not (yet) run, one still in progress (not evaluated,
    or for the Frechet distance not analysed, at its last epoch), or one that diverged."""
    if a is None or b is None:
        return True
    in_progress = [not r.eval or (metric == "frechet_distance" and not r.analysis) for r in (a, b)]
    return bool(a.divergence or b.divergence) or any(in_progress)


def family_rows(
    comparisons: Sequence[tuple[RowKey, RowKey]], table: dict[RowKey, RunResult], metric: str, honest_key: str
) -> tuple[list[list[Any]], list[str], bool]:
    """Table rows of one family, the outcomes after Holm's correction, and whether any run in it
    is short of convergence."""
    pairs = [(table.get(better), table.get(worse)) for better, worse in comparisons]
    # Frechet distances from two feature classifiers: no test until one run is analysed again with
    # the other's, so counted as p = 1 like a missing run (a later test can only lower the others')
    apart = [
        metric == "frechet_distance" and a is not None and b is not None and not same_feature_space(a, b)
        for a, b in pairs
    ]
    tests = [
        test_pair(a, b, metric) if a and b and not split else None
        for (a, b), split in zip(pairs, apart, strict=True)
    ]
    # the caveat is about the verdict, so only about runs it tests: not a diverged one's epochs
    short = any(
        test is not None and any(map(short_of_convergence, pair))
        for test, pair in zip(tests, pairs, strict=True)
    )
    lacking = [lacks_a_run(a, b, metric) or split for (a, b), split in zip(pairs, apart, strict=True)]
    adjusted = holm_over_family(tests, lacking)
    honest = [
        test_pair(table[b], table[w], honest_key) if b in table and w in table else None
        for b, w in comparisons
    ]
    honest_adjusted = holm_over_family(honest, lacking)
    rows, outcomes = [], []
    for (better, worse), pair, split, test, p_adj, h, h_adj in zip(
        comparisons, pairs, apart, tests, adjusted, honest, honest_adjusted, strict=True
    ):
        label = [dataset_label(better.dataset), f"{key_label(better)} < {key_label(worse)}"]
        diverged = all(r is not None for r in pair) and any(r.divergence for r in pair)
        if split and not diverged:
            rows.append([*label, "different feature classifiers", *["-"] * 6, honest_cell(h, h_adj, None)])
            outcomes.append("no test")
            continue
        if test is None:
            rows.append([*label, "diverged run" if diverged else "missing run", *["-"] * 7])
            outcomes.append("missing")
            continue
        result = stats.outcome(test["diff"], p_adj)
        outcomes.append(result)
        interval = (
            "-" if test["ci_low"] != test["ci_low"] else f"[{test['ci_low']:+.2f}, {test['ci_high']:+.2f}]"
        )
        paper = paper_gain(better, worse) if metric == "neg_elbo" else None  # Table 1 is in nats of ELBO
        excludes = excluded_gain(test, paper) if result == "unclear" else "-"
        rows.append(
            [
                *label,
                f"{test['diff']:+.2f}",
                interval,
                test["test"],
                stats.fmt_p(test["p"]),
                stats.fmt_p(p_adj),
                result,
                excludes,
                honest_cell(h, h_adj, paper),
            ]
        )
    return rows, outcomes, short


def honest_cell(test: dict[str, Any] | None, p_adj: float, paper: float | None) -> str:
    """The last column: the same comparison on the honest estimate, with its corrected p."""
    if test is None:
        return "-"
    result = stats.outcome(test["diff"], p_adj)
    excludes = ""
    if result == "unclear" and test["ci_low"] == test["ci_low"]:
        excludes = f"; excludes {excluded_gain(test, paper)}"
    return f"{result} (diff {test['diff']:+.2f}, p {stats.fmt_p(p_adj)}{excludes})"


HEADER = [
    "data set",
    "claim (lower is better)",
    "difference",
    "95% CI",
    "test",
    "p",
    "p (Holm)",
    "outcome",
    "the CI excludes",
]


def claims_section(table: dict[RowKey, RunResult], datasets: list[str], figdir: Path, honest_key: str) -> str:
    """The claims section of report.md; writes claims.csv."""
    lines = ["## The paper's claims, tested", "", METHOD]
    csv_rows: list[list[Any]] = []
    for claim in CLAIMS:
        lines += ["", f"### Claim {claim.number}: {claim.text}"]
        for family, comparisons in claim_families(claim.number, datasets).items():
            rows, outcomes, short = family_rows(comparisons, table, claim.metric, honest_key)
            lines += [
                "",
                verdict_line(claim, family, outcomes, short),
                "",
                format_table([*HEADER, f"on {honest_key}"], rows),
            ]
            csv_rows += [[claim.number, family, *row] for row in rows]
            if claim.metric == "frechet_distance" and "unclear" in outcomes:
                lines += ["", precision_note(comparisons, table)]
    write_csv(figdir / "claims.csv", ["claim", "family", *HEADER, f"on {honest_key}"], csv_rows)
    return "\n".join(lines)


def precision_note(comparisons, table: dict[RowKey, RunResult]) -> str:
    """Whether the Frechet distances were measured precisely enough for the differences judged."""
    samples = sorted(
        {table[k].analysis.get("points") for pair in comparisons for k in pair if k in table} - {None}
    )
    return (
        f"Some of these differences are within their 95% CI of zero: with {', '.join(map(str, samples))} "
        "samples per seed the Frechet distance is not measured precisely enough to judge them; more "
        "samples per seed (the profile's analysis_samples) or more seeds would narrow the intervals."
    )


def verdict_line(claim: Claim, family: str, outcomes: list[str], short: bool) -> str:
    counts = {o: outcomes.count(o) for o in ("agrees", "contradicts", "unclear", "no test", "missing")}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    figure = (
        "Frechet distance"
        if claim.metric == "frechet_distance"
        else "test negative ELBO (the paper's figure)"
    )
    scope = f" for {family}" if family else ""
    caveat = (
        " *Caveat: some of these runs were still improving by more than 1 nat per epoch over their last "
        f"{CONVERGENCE_EPOCHS} epochs, so this verdict is about short training, not about trained models.*"
        if short
        else ""
    )
    return (
        f"**Verdict{scope}: {stats.verdict(outcomes)}** (per-seed {figure}; {len(outcomes)} comparisons: "
        f"{summary}).{caveat}"
    )
