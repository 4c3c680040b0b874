"""The claims section's words for an unclear comparison: which gains its 95% CI rules out, beside the
paper's own gain, against a hand-worked paired t interval."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st
from test_findings import entry_of  # tests/ is on sys.path (rootdir-relative imports)

from avae.evaluation import stats
from avae.repro.paper import CLAIMS, claim_families, rows_of
from avae.repro.report.claims import (
    UNTESTED_P,
    excluded_gain,
    family_rows,
    holm_over_family,
    paper_gain,
    verdict_line,
)
from avae.repro.report.tables import analysis_section
from avae.repro.results import RunResult
from avae.training.config import make_config

T_975_DOF2 = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom


def run_with(neg_elbo: list[float], ais: list[float], tmp_path) -> RunResult:
    metrics = {"neg_elbo": entry_of(neg_elbo, 50), "ais": entry_of(ais, 50)}
    cfg = make_config({"seeds": (0, 1, 2)})
    return RunResult(tmp_path, cfg, [], {"metrics": metrics}, {}, cfg.epochs)


def test_an_unclear_comparison_says_which_gains_its_interval_excludes_beside_the_papers(tmp_path):
    vae, noise = rows_of("mnist", "vae", 10)[0], rows_of("mnist", "vae-noise", 10)[0]
    # per-seed differences (VAE+eps - VAE): -1, 0, +2 on the own figure; -20, -21, -22 on AIS
    table = {
        vae: run_with([100.0, 100.0, 100.0], [120.0, 121.0, 122.0], tmp_path),
        noise: run_with([99.0, 100.0, 102.0], [100.0, 100.0, 100.0], tmp_path),
    }
    rows, outcomes, _ = family_rows([(noise, vae)], table, "neg_elbo", "ais")
    diffs = [-1.0, 0.0, 2.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    low = mean - T_975_DOF2 * sd / math.sqrt(3)  # -3.46
    assert outcomes == ["unclear"]
    assert rows[0][8] == f"a gain above {-low:.2f} (paper: 2.50)"  # Table 1: 109.8 - 107.3
    assert rows[0][9].startswith("agrees (diff -21.00")  # a resolved AIS test says nothing excluded
    assert "excludes" not in rows[0][9]


def test_a_resolved_comparison_and_one_without_an_interval_exclude_nothing():
    assert excluded_gain({"ci_low": float("nan")}) == "-"
    assert excluded_gain({"ci_low": 0.4}) == "any gain"
    assert excluded_gain({"ci_low": -1.234}, 14.22) == "a gain above 1.23 (paper: 14.22)"


def test_the_papers_gain_exists_only_where_table_1_gives_both_figures():
    avae, noise = rows_of("fashion-mnist", "avae", 10)[0], rows_of("fashion-mnist", "vae-noise", 10)[0]
    assert paper_gain(avae, noise) == 4.0  # 220.1 - 216.1
    assert paper_gain(noise, noise._replace(noise=5)) is None  # Table 1 has noise 10 only
    assert paper_gain(rows_of("mnist", "avb-ac", 10)[0], noise._replace(dataset="mnist")) is None


def test_claim_3_holds_avae_to_vae_noise_at_every_latent_and_to_avb_at_10_and_15_only():
    """The paper (section 3.2): AVAE beats VAE+eps "at any latent size", and AVB "at latent 10 and
    15"; at 20 its own Table 1 has AVB ahead (97.81 against 97.90), so that pair is not claimed."""
    family = claim_families(3, ["mnist"])["AVAE joint"]
    pairs = {(better.latent, worse.model) for better, worse in family}
    assert pairs == {(10, "vae-noise"), (15, "vae-noise"), (20, "vae-noise"), (10, "avb"), (15, "avb")}
    assert all(better.model == "avae" and better.latent == worse.latent for better, worse in family)


def test_a_claim_on_another_figure_than_table_1s_sets_no_paper_gain_beside_its_interval(tmp_path):
    """Claim 5 is tested on the Frechet distance: the paper's ELBO gap (14.22 nats between AVAE and
    VAE+eps on MNIST) is not a gain in Frechet distance, so no '(paper: ...)' stands beside it."""
    avae, noise = rows_of("mnist", "avae", 10)[0], rows_of("mnist", "vae-noise", 10)[0]
    table = {}
    for key, distances in ((avae, [10.0, 30.0, 20.0]), (noise, [15.0, 20.0, 25.0])):
        run = run_with([100.0, 100.0, 100.0], [99.0, 99.0, 99.0], tmp_path)
        run.analysis["per_member"] = [{"frechet_distance": d} for d in distances]
        table[key] = run
    rows, outcomes, _ = family_rows([(avae, noise)], table, "frechet_distance", "ais")
    assert outcomes == ["unclear"] and rows[0][2] == "+0.00"
    assert rows[0][8].startswith("a gain above ") and "paper" not in rows[0][8]


def with_distances(run: RunResult, distances: list[float], accuracy: float, floor: float) -> RunResult:
    """`run` with per-seed Frechet distances measured by a classifier of this test accuracy that put
    training against test images at `floor`."""
    run.analysis.update(
        per_member=[{"frechet_distance": d} for d in distances],
        classifier={"test_accuracy": accuracy, "epochs": 10, "train_images": 60000},
        reference_frechet_distance=floor,
    )
    return run


def test_frechet_distances_from_different_classifiers_are_not_compared_and_count_as_untested(tmp_path):
    """Claim 5 on MNIST: AVB was analysed with another feature classifier than VAE+eps (another
    output folder), so its comparison gets no test and counts as p = 1 in Holm's family, like a
    missing run, until AVB is analysed again with VAE+eps's; AVAE shares VAE+eps's classifier and is
    tested. The AIS column, which no classifier enters, is filled for both. A diverged AVB says so."""
    avae, avb, noise = (rows_of("mnist", m, 10)[0] for m in ("avae", "avb", "vae-noise"))
    elbo, ais = [100.0] * 3, [99.0] * 3
    table = {
        noise: with_distances(run_with(elbo, ais, tmp_path), [15.0, 20.0, 25.0], 0.99, 5.0671),
        avae: with_distances(run_with(elbo, ais, tmp_path), [10.0, 14.0, 21.0], 0.99, 5.0671),
        avb: with_distances(run_with(elbo, [97.0, 97.1, 96.9], tmp_path), [1.0, 2.0, 3.0], 0.991, 5.3518),
    }
    rows, outcomes, _ = family_rows([(avae, noise), (avb, noise)], table, "frechet_distance", "ais")
    p = stats.compare([10.0, 14.0, 21.0], [15.0, 20.0, 25.0], paired=True)["p"]
    assert outcomes == ["agrees", "no test"]
    assert rows[0][5] == stats.fmt_p(p) and rows[0][6] == stats.fmt_p(2 * p)  # Holm over [p, 1]
    assert rows[1][2:9] == ["different feature classifiers", *["-"] * 6]
    ais_p = stats.compare([97.0, 97.1, 96.9], ais, paired=True)["p"]  # AVAE's AIS difference is 0: no p
    assert rows[1][9] == f"agrees (diff -2.00, p {stats.fmt_p(ais_p)})"
    table[avb].divergence = {"epoch": 3, "seed": 0}  # its analysis.json from before the divergence
    assert family_rows([(avb, noise)], table, "frechet_distance", "ais")[0][0][2] == "diverged run"


def test_the_analysis_section_lists_which_runs_share_each_classifier_and_one_line_where_all_do(tmp_path):
    avae, avb, noise = (rows_of("mnist", m, 10)[0] for m in ("avae", "avb", "vae-noise"))
    elbo, ais = [100.0] * 3, [99.0] * 3
    shared = {
        noise: with_distances(run_with(elbo, ais, tmp_path), [15.0, 20.0, 25.0], 0.99, 5.0671),
        avae: with_distances(run_with(elbo, ais, tmp_path), [10.0, 14.0, 21.0], 0.99, 5.0671),
    }
    one = analysis_section(shared, ["mnist"], tmp_path, "")
    assert "\nMNIST: FD between training and test images 5.067 (the floor" in one
    assert "feature classifiers" not in one
    mixed = {**shared, avb: with_distances(run_with(elbo, ais, tmp_path), [1.0, 2.0, 3.0], 0.991, 5.3518)}
    text = analysis_section(mixed, ["mnist"], tmp_path, "")
    assert "MNIST: these FDs were measured with 2 feature classifiers" in text
    pair = r"Runs: VAE\+eps z10 n10, AVAE \(joint\) z10 n10\.$"
    assert re.search(r"^- FD .* 5\.067 .* accuracy 0\.99, .* " + pair, text, re.M)
    assert re.search(r"^- FD .* 5\.352 .* accuracy 0\.991, .* Runs: AVB z10 n10\.$", text, re.M)


def test_only_the_runs_a_verdict_tests_can_make_it_short_of_convergence(tmp_path):
    """Claim 1 on MNIST at latents 10 and 15: the latent-10 pair trained flat, and the latent-15
    VAE+eps run diverged while still falling 10 nats an epoch. Its comparison has no test, so the
    family is not flagged as short training; the same falling run undiverged flags it."""
    vae, noise = rows_of("mnist", "vae", 10)[0], rows_of("mnist", "vae-noise", 10)[0]

    def with_curve(run: RunResult, curve: list[float]) -> RunResult:
        run.rows = [{"epoch": e, "test_neg_elbo": v} for e, v in enumerate(curve, 1) for _ in (0, 1, 2)]
        return run

    flat, falling = [100.0] * 5, [140.0, 130.0, 120.0, 110.0, 100.0]
    table = {
        vae: with_curve(run_with([100.0, 100.0, 100.0], [99.0] * 3, tmp_path), flat),
        noise: with_curve(run_with([99.0, 100.0, 102.0], [99.0] * 3, tmp_path), flat),
        vae._replace(latent=15): with_curve(run_with([100.0] * 3, [99.0] * 3, tmp_path), flat),
    }
    diverged = with_curve(run_with([100.0] * 3, [99.0] * 3, tmp_path), falling)
    evaluated = diverged.eval
    diverged.eval, diverged.divergence = {}, {"epoch": 6, "seed": 1}  # a diverged run is not evaluated
    table[noise._replace(latent=15)] = diverged
    family = [(noise, vae), (noise._replace(latent=15), vae._replace(latent=15))]
    _, outcomes, short = family_rows(family, table, "neg_elbo", "ais")
    assert outcomes[1] == "missing" and not short
    diverged.eval, diverged.divergence = evaluated, None
    assert family_rows(family, table, "neg_elbo", "ais")[2]
    caveat = verdict_line(CLAIMS[0], "", ["unclear", "unclear"], short=True)
    assert "still improving by more than 1 nat per epoch over their last 5 epochs" in caveat  # as the header
    assert "Caveat" not in verdict_line(CLAIMS[0], "", ["unclear", "unclear"], short=False)


def test_a_family_part_way_is_corrected_for_the_comparisons_whose_runs_are_missing(tmp_path):
    """Claim 1's family at latent 10 and 15 with the latent-15 runs missing: the latent-10 test is
    corrected for two comparisons (Holm: twice its p), on the paper's figure and on AIS."""
    vae, noise = rows_of("mnist", "vae", 10)[0], rows_of("mnist", "vae-noise", 10)[0]
    table = {
        vae: run_with([100.0, 100.0, 100.0], [120.0, 121.0, 122.5], tmp_path),
        noise: run_with([99.0, 100.0, 102.0], [100.0, 100.0, 100.0], tmp_path),
    }
    missing = (noise._replace(latent=15), vae._replace(latent=15))
    alone, _, _ = family_rows([(noise, vae)], table, "neg_elbo", "ais")
    rows, outcomes, _ = family_rows([(noise, vae), missing], table, "neg_elbo", "ais")
    own_p = stats.compare([99.0, 100.0, 102.0], [100.0, 100.0, 100.0], paired=True)["p"]
    ais_p = stats.compare([100.0] * 3, [120.0, 121.0, 122.5], paired=True)["p"]
    assert alone[0][6] == stats.fmt_p(own_p) and rows[0][6] == stats.fmt_p(min(1.0, 2 * own_p))
    assert f"p {stats.fmt_p(ais_p)}" in alone[0][9] and f"p {stats.fmt_p(2 * ais_p)}" in rows[0][9]
    assert outcomes[1] == "missing" and rows[1][2] == "missing run"


def test_a_run_in_progress_counts_as_missing_in_the_family_until_it_is_evaluated(tmp_path):
    """A live output folder: the latent-15 VAE+eps run has trained some epochs but has no eval.json
    at its last one, so the latent-10 test is corrected for two comparisons (twice its p), as when
    the run is not there at all, and not over one that the run's figures would later enlarge."""
    vae, noise = rows_of("mnist", "vae", 10)[0], rows_of("mnist", "vae-noise", 10)[0]
    table = {
        vae: run_with([100.0, 100.0, 100.0], [99.0] * 3, tmp_path),
        noise: run_with([99.0, 100.0, 102.0], [99.0] * 3, tmp_path),
        vae._replace(latent=15): run_with([100.0] * 3, [99.0] * 3, tmp_path),
        noise._replace(latent=15): run_with([100.0] * 3, [99.0] * 3, tmp_path),
    }
    table[noise._replace(latent=15)].eval = {}  # in progress: nothing evaluated at its last epoch
    family = [(noise, vae), (noise._replace(latent=15), vae._replace(latent=15))]
    rows, outcomes, _ = family_rows(family, table, "neg_elbo", "ais")
    own_p = stats.compare([99.0, 100.0, 102.0], [100.0] * 3, paired=True)["p"]
    assert rows[0][6] == stats.fmt_p(min(1.0, 2 * own_p)) and outcomes[1] == "missing"


@given(st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=8), st.data())
def test_adding_a_missing_comparison_never_raises_the_others_corrected_p(pvalues, data):
    """Whatever p-value a missing comparison turns out to have, the others' corrected p-values are at
    most what they were with it counted as UNTESTED_P."""
    missing = data.draw(st.integers(0, len(pvalues) - 1))
    tests: list = [{"p": p} for p in pvalues]
    lacking = [i == missing for i in range(len(pvalues))]
    before = holm_over_family([None if i == missing else t for i, t in enumerate(tests)], lacking)
    after = holm_over_family(tests, [False] * len(pvalues))
    assert before == stats.holm([UNTESTED_P if i == missing else p for i, p in enumerate(pvalues)])
    assert all(a <= b + 1e-12 for i, (a, b) in enumerate(zip(after, before, strict=True)) if i != missing)


def test_a_figure_absent_by_design_leaves_the_family_and_a_missing_run_does_not():
    """Both runs there but no test (a profile without AIS at that latent): out of the family, as a
    zero-variance difference (p nan) is; a run missing: in it, at p = 1."""
    tests = [{"p": 0.01}, {"p": 0.02}, None, {"p": math.nan}]
    by_design = holm_over_family(tests, [False, False, False, False])
    assert by_design[:2] == stats.holm([0.01, 0.02]) and all(map(math.isnan, by_design[2:]))
    missing = holm_over_family(tests, [False, False, True, False])
    assert missing[:3] == stats.holm([0.01, 0.02, 1.0]) and math.isnan(missing[3])
