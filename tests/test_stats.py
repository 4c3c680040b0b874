"""`avae.evaluation.stats`: the t-tests against scipy, confidence intervals against hand computations, Holm's
correction against a worked example, and the rules that turn p-values into outcomes and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from avae.evaluation import stats

# Fixed per-seed figures (nats): a claimed-better and a claimed-worse configuration, 5 seeds.
BETTER = [93.1, 94.0, 92.7, 95.2, 93.9]
WORSE = [95.0, 95.1, 94.6, 96.8, 94.2]
# Unequal sizes and variances for Welch's test.
WELCH_A = [101.2, 99.8, 103.5, 100.9]
WELCH_B = [104.0, 104.3, 103.9, 104.6, 104.1, 103.7]


def t_quantile(dof: float) -> float:
    return float(sps.t.ppf(0.975, dof))


# --- compare: paired t ------------------------------------------------------------------------------


def test_paired_t_matches_scipy():
    result = stats.compare(BETTER, WORSE, paired=True)
    reference = sps.ttest_rel(BETTER, WORSE)
    assert result["test"] == "paired t"
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert result["p"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert result["diff"] == pytest.approx(np.mean(BETTER) - np.mean(WORSE), abs=1e-12)
    assert result["diff"] < 0 and result["p"] < 0.05  # the fixed data: better is better


def test_paired_ci_by_hand():
    d = np.subtract(BETTER, WORSE)
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    result = stats.compare(BETTER, WORSE, paired=True)
    assert result["ci_low"] == pytest.approx(mean - half, abs=1e-10)
    assert result["ci_high"] == pytest.approx(mean + half, abs=1e-10)
    # and scipy's own interval for the paired test
    low, high = sps.ttest_rel(BETTER, WORSE).confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high), abs=1e-10)


def test_paired_order_matters_and_sign_flips():
    forward = stats.compare(BETTER, WORSE, paired=True)
    backward = stats.compare(WORSE, BETTER, paired=True)
    assert backward["t"] == pytest.approx(-forward["t"])
    assert backward["p"] == pytest.approx(forward["p"])
    assert backward["ci_low"] == pytest.approx(-forward["ci_high"])
    # pairing by seed: shuffling one side changes the test (not so for Welch)
    shuffled = stats.compare(BETTER, WORSE[::-1], paired=True)
    assert shuffled["p"] != pytest.approx(forward["p"])


def test_paired_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal group sizes"):
        stats.compare([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)


# --- compare: Welch ---------------------------------------------------------------------------------


def test_welch_matches_scipy():
    result = stats.compare(WELCH_A, WELCH_B, paired=False)
    reference = sps.ttest_ind(WELCH_A, WELCH_B, equal_var=False)
    assert result["test"] == "Welch t"
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-12)
    assert result["p"] == pytest.approx(reference.pvalue, rel=1e-10)
    low, high = reference.confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high), abs=1e-10)


def test_welch_ci_by_hand():
    a, b = np.asarray(WELCH_A), np.asarray(WELCH_B)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    diff = a.mean() - b.mean()
    result = stats.compare(WELCH_A, WELCH_B, paired=False)
    assert result["diff"] == pytest.approx(diff)
    assert result["t"] == pytest.approx(diff / se)
    assert result["ci_low"] == pytest.approx(diff - t_quantile(dof) * se)
    assert result["ci_high"] == pytest.approx(diff + t_quantile(dof) * se)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # scipy, on the constant group
def test_welch_with_one_constant_group_matches_scipy():
    constant = [104.0, 104.0, 104.0]
    result = stats.compare(WELCH_A, constant, paired=False)
    reference = sps.ttest_ind(WELCH_A, constant, equal_var=False)
    assert result["t"] == pytest.approx(reference.statistic)
    assert result["p"] == pytest.approx(reference.pvalue)


def test_welch_on_the_paired_data_matches_scipy():
    result = stats.compare(BETTER, WORSE, paired=False)
    reference = sps.ttest_ind(BETTER, WORSE, equal_var=False)
    assert result["p"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert result["p"] > stats.compare(BETTER, WORSE, paired=True)["p"]  # pairing removes seed noise


# --- compare: no test -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "better, worse, paired",
    [
        ([90.0, 90.0, 90.0], [95.0, 95.0, 95.0], False),  # both groups constant
        ([90.0, 90.0, 90.0], [95.0, 95.0, 95.0], True),
        ([90.0, 91.0, 92.0], [95.0, 96.0, 97.0], True),  # constant per-seed difference
        ([90.0, 91.0, 92.0], [90.0, 91.0, 92.0], True),  # identical runs
    ],
)
def test_zero_variance_gives_no_test(better, worse, paired):
    result = stats.compare(better, worse, paired=paired)
    assert result["test"] == "none (zero variance)"
    assert math.isnan(result["p"]) and math.isnan(result["t"])
    assert math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])
    assert result["diff"] == pytest.approx(np.mean(better) - np.mean(worse))
    # no p, no verdict either way
    adjusted = stats.holm([result["p"]])
    assert math.isnan(adjusted[0])
    assert stats.outcome(result["diff"], adjusted[0]) == "no test"
    assert stats.verdict([stats.outcome(result["diff"], adjusted[0])]) == "inconclusive"


@pytest.mark.parametrize("paired", [True, False])
def test_fewer_than_two_seeds_gives_no_test(paired):
    result = stats.compare([90.0], [95.0], paired=paired)
    assert result["test"] == "none (fewer than 2 seeds)"
    assert math.isnan(result["p"]) and result["diff"] == -5.0


# --- mean_ci and formatting -------------------------------------------------------------------------


def test_mean_ci_by_hand():
    values = [93.1, 94.0, 92.7, 95.2, 93.9]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    got_mean, half = stats.mean_ci(values)
    assert got_mean == pytest.approx(mean)
    assert half == pytest.approx(t_quantile(n - 1) * sd / math.sqrt(n))
    assert math.isnan(stats.mean_ci([1.0])[1])


def test_formatting():
    assert stats.fmt_ci(None) == "-" and stats.fmt_ci([]) == "-"
    assert stats.fmt_ci([2.0]) == "2.00 (1 seed)"
    assert stats.fmt_ci([1.0, 3.0]) == f"2.00 ± {t_quantile(1) * 1.0:.2f}"
    assert stats.fmt_p(float("nan")) == "-"
    assert stats.fmt_p(0.0312) == "0.031"
    assert stats.fmt_p(1e-5) == "<1e-4"


# --- Holm -------------------------------------------------------------------------------------------


def test_holm_worked_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # rejections at alpha 0.05: the two smallest only
    assert [p < stats.ALPHA for p in adjusted] == [True, False, False, True]


def test_holm_caps_at_one_and_keeps_order():
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.3]) == pytest.approx([0.3])
    assert stats.holm([]) == []
    adjusted = stats.holm([0.02, 0.001, 0.5, 0.02])
    # sorted 0.001 x4, 0.02 x3, 0.02 x2 (-> 0.06 kept), 0.5 x1
    assert adjusted == pytest.approx([0.06, 0.004, 0.5, 0.06])


def test_holm_leaves_nan_out_of_the_family():
    adjusted = stats.holm([float("nan"), 0.01, float("nan"), 0.04])
    assert math.isnan(adjusted[0]) and math.isnan(adjusted[2])
    assert adjusted[1] == pytest.approx(0.02) and adjusted[3] == pytest.approx(0.04)  # family of 2
    assert all(math.isnan(p) for p in stats.holm([float("nan"), float("nan")]))


def test_holm_is_never_below_the_raw_p():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 0.2, size=12).tolist()
    adjusted = stats.holm(raw)
    assert all(a >= p for a, p in zip(adjusted, raw, strict=True))
    order = np.argsort(raw)
    assert all(np.diff(np.asarray(adjusted)[order]) >= 0)  # monotone in the raw p


# --- outcome and verdict ----------------------------------------------------------------------------


def test_outcome_rules():
    assert stats.outcome(-1.5, 0.01) == "agrees"
    assert stats.outcome(+1.5, 0.01) == "contradicts"
    assert stats.outcome(-1.5, 0.2) == "unclear"
    assert stats.outcome(+1.5, 0.2) == "unclear"
    assert stats.outcome(-1.5, stats.ALPHA) == "unclear"  # significant means strictly below alpha
    assert stats.outcome(-1.5, float("nan")) == "no test"
    assert stats.outcome(-1.5, 0.04, alpha=0.01) == "unclear"


def test_verdict_rules():
    assert stats.verdict(["agrees", "agrees"]) == "supported"
    assert stats.verdict(["agrees", "contradicts"]) == "not supported"
    assert stats.verdict(["unclear", "contradicts", "no test"]) == "not supported"
    assert stats.verdict(["agrees", "unclear"]) == "inconclusive"
    assert stats.verdict(["agrees", "no test"]) == "inconclusive"
    assert stats.verdict(["agrees", "missing"]) == "inconclusive"
    assert stats.verdict([]) == "inconclusive"  # nothing tested supports nothing


def test_end_to_end_family():
    # one family: a clear agreement, a clear contradiction, and a zero-variance comparison
    tests = [
        stats.compare(BETTER, WORSE, paired=True),
        stats.compare(WORSE, BETTER, paired=True),
        stats.compare([1.0, 1.0], [2.0, 2.0], paired=True),
    ]
    adjusted = stats.holm([t["p"] for t in tests])
    outcomes = [stats.outcome(t["diff"], p) for t, p in zip(tests, adjusted, strict=True)]
    assert outcomes[2] == "no test"
    assert adjusted[0] == pytest.approx(2 * tests[0]["p"])  # a family of two: the nan is left out
    assert outcomes[:2] == (["agrees", "contradicts"] if adjusted[0] < stats.ALPHA else ["unclear"] * 2)
    assert stats.verdict(outcomes) in ("not supported", "inconclusive")
