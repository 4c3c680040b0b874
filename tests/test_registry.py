"""The registry (`avae.core.models.MODELS`, filled by `@register`) is the one home of every fact about a
model: a fifth model registered from outside the package trains, evaluates, is planned by a
reproduction (Table 1 uses every registered model) and appears under its own label in the report,
without any other module naming it.

The toy model is a VAE with its own name, label, colour and optimiser default; a fixture registers
it and restores the registry afterwards, so that other tests see the four models of the paper.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from avae.core import models
from avae.core.models import MODELS, GaussianEncoderModel, register
from avae.evaluation.evaluate import evaluate_run
from avae.repro.plan import PROFILES, runs_for
from avae.repro.report.report import write_report
from avae.repro.reproduce import reproduce
from avae.training.config import Runtime, config_hash, make_config
from avae.training.train import train

TOY = "toy-vae"
TOY_LABEL = "Toy VAE"
PAPER_MODELS = tuple(MODELS)  # the registry as the package fills it, before any test


class ToyVAE(GaussianEncoderModel):
    """A VAE (KL weight 1) under another name: only its registry facts differ."""

    label = TOY_LABEL
    colour = "tab:purple"
    train_defaults = {"beta1": 0.8}  # an optimiser default of its own, picked up by make_config


@pytest.fixture
def toy_model():
    """Register the toy model for one test; restore the registry (content and order) after it."""
    saved = dict(MODELS)
    try:
        register(TOY)(ToyVAE)
        yield ToyVAE
    finally:
        MODELS.clear()
        MODELS.update(saved)


def test_registered_model_is_known_by_name(toy_model):
    assert MODELS[TOY] is ToyVAE and ToyVAE.name == TOY
    assert list(MODELS)[-1] == TOY  # registry order is table order: the newcomer comes last
    cfg = make_config({"model": TOY, "latent_dim": 4})
    assert cfg.model.name == TOY and cfg.model.noise_dim == 0  # its default noise dimension
    assert cfg.beta1 == 0.8  # its own optimiser default
    assert models.row_label(TOY) == TOY_LABEL
    assert models.reading_of(cfg.model) == ""


def test_toy_model_trains_and_evaluates(toy_model, synthetic_data, tmp_path):
    cfg = make_config(
        {"model": TOY, "latent_dim": 4, "epochs": 1, "seeds": (0, 1), "train_subset": 200, "test_subset": 50}
    )
    out = train(cfg, tmp_path / "run", runtime=Runtime(progress=False))
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["model"]["name"] == TOY and config["config_hash"] == config_hash(cfg)
    result = evaluate_run(
        out, metrics=("elbo", "iwae"), settings={"k": (1, 4), "subset": 10}, runtime=Runtime(progress=False)
    )
    metrics = result["metrics"]
    assert result["model"] == TOY
    assert {"neg_elbo", "iwae_k1", "iwae_k4"} <= set(metrics)
    assert metrics["neg_elbo"]["label"] == ToyVAE.metric_label
    assert len(metrics["neg_elbo"]["per_member"]) == 2
    for key in ("neg_elbo", "iwae_k1", "iwae_k4"):
        assert all(row["value"] == row["value"] for row in metrics[key]["per_member"]), key  # no nan
    # IWAE-k tightens with k (both bounds from the same draws, averaged over groups)
    assert metrics["iwae_k4"]["mean"] <= metrics["iwae_k1"]["mean"] + 1e-6


def test_toy_model_runs_through_reproduce_and_report(toy_model, tmp_path):
    # the smoke profile on MNIST's Table 1 at latent 10, with cheaper honest figures (no BDMC, short
    # AIS, IWAE-50): every report section still renders, in about half a minute on 2 CPU cores
    profile = replace(
        PROFILES["smoke"],
        datasets=("mnist",),
        latent_dims=(10,),
        experiments=("table1",),
        iwae_k=50,
        ais_steps=5,
        ais_chains=1,
        bdmc_points=0,
        analysis_samples=100,
        classifier_subset=1000,
    )
    planned = runs_for(profile)
    toy_runs = [run for run in planned if run.cfg.model.name == TOY]
    assert len(toy_runs) == 1 and toy_runs[0].honest and toy_runs[0].cfg.beta1 == 0.8
    assert {run.cfg.model.name for run in planned} == set(MODELS)  # Table 1: every registered model

    out = tmp_path / "reproduction"
    results = reproduce(profile, out, runtime=Runtime(progress=False), jobs=1)
    assert {r["dir"] for r in results} == {run.dir_name for run in planned}
    record = json.loads((out / toy_runs[0].dir_name / "eval.json").read_text())
    assert {"neg_elbo", f"iwae_k{profile.iwae_k}", "ais"} <= set(record["metrics"])
    assert "neg_critic" not in record["metrics"]  # has_critic is False: no critic figure planned

    text = write_report(out).read_text()
    table1 = text.split("## Table 1")[1].split("## Honest figures")[0]
    honest = text.split("## Honest figures")[1].split("## Fig. 6")[0]
    toy_rows = [line for line in table1.splitlines() if line.startswith(f"| {TOY_LABEL} ")]
    assert len(toy_rows) == 1 and "not run" not in toy_rows[0], table1
    assert any(line.startswith(f"| {TOY_LABEL} ") for line in honest.splitlines()), honest
    csv = (out / "report" / "table1.csv").read_text()
    assert f"mnist,{TOY}," in csv
    # the reconstructions grid shows every registered model, under its label
    assert (out / "report" / f"recon_mnist_{TOY}.png").exists() and TOY_LABEL in text.split(
        "### Reconstructions"
    )[1]


def test_a_model_class_that_breaks_the_rules_is_refused_when_defined():
    with pytest.raises(TypeError, match="has_critic must be True exactly for a WithCritic model"):

        class Claims(GaussianEncoderModel):  # says it has a critic without being a WithCritic
            has_critic = True

    with pytest.raises(TypeError, match="reading 'odd' sets"):

        class OddReading(GaussianEncoderModel):
            readings = {"odd": {"likelihood": "bernoulli"}}  # not a reading key

    with pytest.raises(TypeError, match="critic_inputs"):

        class OddCritic(models.WithCritic, models.LatentModel):
            critic_inputs = ("x",)

    with pytest.raises(TypeError, match="cpu_step_ms"):

        class OddCost(GaussianEncoderModel):
            cpu_step_ms = (1.0,)


def test_a_model_that_lacks_what_every_model_defines_is_not_registered():
    class Unfinished(models.WithCritic, models.LatentModel):
        label = "unfinished"

    with pytest.raises(TypeError, match=r"must define phases\(\), encode\(\), neg_elbo\(\), proposal\(\)"):
        register("unfinished")(Unfinished)

    class Nameless(GaussianEncoderModel):
        pass

    with pytest.raises(TypeError, match="must define label"):
        register("nameless")(Nameless)
    assert "unfinished" not in MODELS and "nameless" not in MODELS


def test_every_model_has_a_step_cost_and_the_critic_models_are_critics():
    for name, cls in MODELS.items():
        assert cls.cpu_step_ms is not None, name
        assert cls.has_critic == issubclass(cls, models.WithCritic), name


def test_registry_is_restored_after_the_toy_tests():
    # last in this file: the fixture removed the toy model and kept the registry's order
    assert TOY not in MODELS
    assert tuple(MODELS) == PAPER_MODELS
