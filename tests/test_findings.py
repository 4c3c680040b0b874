"""The report's "What the runs show": per-seed paired differences on the AIS points, against a
hand-worked paired t interval, and the words of each answer."""

from __future__ import annotations

import pytest

from avae.repro.paper import rows_of
from avae.repro.report.claims import test_pair as claim_test
from avae.repro.report.findings import answer, findings_section
from avae.repro.results import RunResult
from avae.training.config import make_config
from avae.training.runs import MemberFigure, MetricEntry

T_975_DOF2 = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom


def entry_of(values: list[float], points: int, prefix_means: dict[str, list[float]] | None = None):
    """An eval.json entry with these per-seed values (seeds 0, 1, ...) on `points` test points."""
    members = tuple(MemberFigure(seed, value, 0.0) for seed, value in enumerate(values))
    mean = sum(values) / len(values)
    return MetricEntry(
        label="figure",
        estimator="test",
        settings={},
        is_log_likelihood=True,
        kind="lower bound",
        per_member=members,
        mean=mean,
        std=0.0,
        sem=0.0,
        members=len(values),
        sem_points=0.0,
        points=points,
        prefix_means=prefix_means or {},
        seconds=0.0,
    ).to_json()


def run_with(figures: dict[str, list[float]], tmp_path) -> RunResult:
    """A run of 3 seeds whose eval.json holds `figures` per seed on 50 test points."""
    metrics = {name: entry_of(values, 50) for name, values in figures.items()}
    cfg = make_config({"seeds": (0, 1, 2)})
    return RunResult(tmp_path, cfg, [], {"metrics": metrics}, {}, cfg.epochs)


def test_findings_are_paired_differences_on_the_ais_points(tmp_path):
    vae = run_with(
        {"neg_elbo": [120.0, 121.0, 122.0], "iwae_k1000": [116, 117, 118], "ais": [111, 113, 112]}, tmp_path
    )
    noise = run_with(
        {"neg_elbo": [119.0, 121.0, 120.0], "iwae_k1000": [115, 116, 117], "ais": [101, 103, 102]}, tmp_path
    )
    avae = run_with(
        {"neg_elbo": [125.0, 125.0, 125.0], "iwae_k1000": [110, 112, 111], "ais": [100, 101, 102]}, tmp_path
    )
    table = {
        rows_of("mnist", "vae", 10)[0]: vae,
        rows_of("mnist", "vae-noise", 10)[0]: noise,
        rows_of("mnist", "avae", 10)[0]: avae,  # the first registered reading
    }
    text = findings_section(table, ["mnist"], tmp_path, "iwae_k1000")
    # AVAE - VAE+eps on AIS: d = (-1, -2, 0): mean -1, sd 1, half-width t * 1 / sqrt(3)
    half = T_975_DOF2 / 3**0.5
    assert f"-1.00 [{-1 - half:+.2f}, {-1 + half:+.2f}]" in text
    # own figure - AIS of the VAE: d = (9, 8, 10): clearly above AIS
    assert f"+9.00 [{9 - half:+.2f}, {9 + half:+.2f}] | above AIS: a looser bound" in text
    # VAE+eps - VAE on AIS: d = (-10, -10, -10): no variation, so no interval and no verdict
    assert "| -10.00 | not tested (zero variance) |" in text
    rows = (tmp_path / "findings.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,latent_dim,question,model,reading") and len(rows) > 5


@pytest.mark.parametrize(
    ("low", "high", "word"),
    [(-3.0, -1.0, "better"), (1.0, 3.0, "worse"), (-1.0, 1.0, "no difference resolved")],
)
def test_an_answer_needs_the_interval_to_exclude_zero(low, high, word):
    assert answer({"diff": (low + high) / 2, "ci_low": low, "ci_high": high, "test": "paired t"}) == word


def with_more_points(run: RunResult, name: str, full: list[float], points: int = 500) -> RunResult:
    """`run`, but figure `name` computed on `points` test points with values `full`, its mean over
    the first 50 (the AIS points) kept as the prefix mean."""
    first = run.entry(name).values()
    run.eval["metrics"][name] = entry_of(full, points, {"50": first})
    return run


def test_every_column_of_the_pattern_and_every_claim_test_uses_common_test_points(tmp_path):
    """AVB's critic figure and IWAE on 500 points, VAE+eps's on 50: the gap uses both on the 50."""
    noise = run_with(
        {"neg_elbo": [110.0, 111.0, 112.0], "iwae_k1000": [105, 106, 107], "ais": [100] * 3}, tmp_path
    )
    avb = run_with(
        {"neg_critic": [100.0, 100.0, 101.0], "iwae_k1000": [104, 104, 104], "ais": [99] * 3}, tmp_path
    )
    with_more_points(avb, "neg_critic", [90.0, 90.0, 90.0])  # on all 500: a 20-nat gap, not 10.67
    with_more_points(avb, "iwae_k1000", [50.0, 50.0, 50.0])
    table = {rows_of("mnist", "vae-noise", 10)[0]: noise, rows_of("mnist", "avb", 10)[0]: avb}
    text = findings_section(table, ["mnist"], tmp_path, "iwae_k1000")
    row = next(line for line in text.splitlines() if line.startswith("| AVB |"))
    assert row.split(" | ")[2].startswith("+10.67 [") and row.split(" | ")[3].startswith("+2.00 [")
    test = claim_test(avb, noise, "iwae_k1000")  # claims: 104 - (105, 106, 107) on the 50 points
    assert test["diff"] == pytest.approx(-2.0) and test["test"] == "paired t"


def test_each_latent_with_ais_figures_gets_its_own_answers_against_the_papers_gap_there(tmp_path):
    """Runs at latents 10 and 15 with AIS, and at 20 without: two blocks, each comparing runs of its
    own latent (VAE+eps at 15 is 5 nats worse on every figure than at 10, AVAE the same at both), the
    pattern's paper column at that latent's Table 1 gap (MNIST VAE+eps - AVAE: 107.3 - 93.08 at 10,
    109.4 - 96.9 at 15)."""
    figures = {"neg_elbo": [110.0, 111.0, 112.0], "iwae_k1000": [105, 106, 107], "ais": [100, 101, 103]}
    worse = {name: [value + 5 for value in values] for name, values in figures.items()}
    critic = {**figures, "neg_critic": [100.0, 102.0, 101.0]}
    table = {}
    for latent, noise in ((10, figures), (15, worse)):
        table[rows_of("mnist", "vae-noise", latent)[0]] = run_with(noise, tmp_path)
        table[rows_of("mnist", "avae", latent)[0]] = run_with(critic, tmp_path)
    table[rows_of("mnist", "vae-noise", 20)[0]] = run_with({"neg_elbo": [110.0, 111.0, 112.0]}, tmp_path)
    text = findings_section(table, ["mnist"], tmp_path, "iwae_k1000")
    blocks = text.split("### ")[1:]
    assert [block.splitlines()[0] for block in blocks] == [
        "MNIST, latent 10: the first 50 test images",
        "MNIST, latent 15: the first 50 test images",
    ]
    # question 1, AVAE - VAE+eps on own, IWAE and AIS: 0 at latent 10, -5 at 15 (no spread: no interval)
    assert "| AVAE (joint) - VAE+eps | +0.00 | +0.00 | +0.00 | not tested (zero variance) |" in blocks[0]
    assert "| AVAE (joint) - VAE+eps | -5.00 | -5.00 | -5.00 | not tested (zero variance) |" in blocks[1]
    # question 2, VAE+eps own - AVAE critic: (10, 9, 11) at latent 10, (15, 14, 16) at 15
    assert "| AVAE (joint) | +14.22 | +10.00 [" in blocks[0]
    assert "| AVAE (joint) | +12.50 | +15.00 [" in blocks[1]
    rows = (tmp_path / "findings.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,latent_dim,question")
    assert {row.split(",")[1] for row in rows[1:]} == {"10", "15"}


def test_a_latent_without_one_side_of_question_one_names_the_missing_run(tmp_path):
    figures = {"neg_elbo": [110.0, 111.0, 112.0], "iwae_k1000": [105, 106, 107], "ais": [100, 101, 103]}
    table = {rows_of("mnist", "vae-noise", 20)[0]: run_with(figures, tmp_path)}
    text = findings_section(table, ["mnist"], tmp_path, "iwae_k1000")
    assert "Not answered: no AVAE run at latent 20." in text
