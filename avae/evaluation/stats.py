"""Statistics for comparing runs across seeds: confidence intervals, paired and Welch t-tests with
the confidence interval of the difference, and Holm's correction for multiple comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # family-wise error rate within one claim (Holm-Bonferroni)
LEVEL = 0.95  # confidence level of every interval


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and the half-width of its confidence interval (t distribution, n - 1 degrees of
    freedom); nan half-width for a single value."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    sem = float(values.std(ddof=1) / np.sqrt(len(values)))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def fmt_ci(values: Sequence[float] | None, digits: int = 2) -> str:
    """'mean ± half-width', '-' for no values."""
    if not values:
        return "-"
    mean, half = mean_ci(values)
    if np.isnan(half):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def compare(better: Sequence[float], worse: Sequence[float], *, paired: bool) -> dict[str, Any]:
    """Test the difference mean(better) - mean(worse) (negative when the claim holds, lower being
    better) with a paired t-test (runs that share seeds, values in seed order) or Welch's test.

    Returns the difference, its confidence interval, t, the two-sided p and the test's name. p is
    nan, and no test is made, with fewer than two values a side or when the standard error of the
    difference is zero (no variation to judge it by)."""
    a, b = np.asarray(better, float), np.asarray(worse, float)
    if paired and len(a) != len(b):
        raise ValueError(f"a paired test needs equal group sizes, got {len(a)} and {len(b)}")
    diff = float(a.mean() - b.mean())
    result = {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "p": math.nan}
    result["test"] = "paired t" if paired else "Welch t"
    if min(len(a), len(b)) < 2:
        return {**result, "test": "none (fewer than 2 seeds)"}
    if paired:
        d = a - b
        se, dof = float(d.std(ddof=1) / np.sqrt(len(d))), len(d) - 1
    else:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = float(np.sqrt(va + vb))
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else math.nan
    if not se > 1e-9 * max(1.0, abs(float(a.mean())), abs(float(b.mean()))):  # rounding noise is no variance
        return {**result, "test": "none (zero variance)"}
    t = diff / se
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * se
    p = float(2 * stats.t.sf(abs(t), dof))
    return {**result, "ci_low": diff - half, "ci_high": diff + half, "t": t, "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down; nan entries are left out of the family and
    stay nan). Rejecting where the adjusted p < alpha controls the family-wise error rate."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    family = len(indexed)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (family - rank) * p))
        adjusted[i] = running
    return adjusted


def outcome(diff: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """'agrees' (claimed direction, significant), 'contradicts' (opposite, significant),
    'unclear' (not significant) or 'no test'."""
    if math.isnan(p_adjusted):
        return "no test"
    if p_adjusted >= alpha:
        return "unclear"
    return "agrees" if diff < 0 else "contradicts"


def verdict(outcomes: Sequence[str]) -> str:
    """supported (every comparison agrees), not supported (one contradicts), else inconclusive."""
    if outcomes and all(o == "agrees" for o in outcomes):
        return "supported"
    if any(o == "contradicts" for o in outcomes):
        return "not supported"
    return "inconclusive"


def fmt_p(p: float) -> str:
    return "-" if math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")
