"""Likelihood estimators: exact on a linear-Gaussian model, ordered on a trained one, the same
code path for every model, and a CLI that refuses bad input in one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avae.cli.commands import main
from avae.core import objectives as obj
from avae.core.models import ModelConfig, build_model
from avae.core.nets import MemberRandom
from avae.evaluation import cost_model
from avae.evaluation import evaluate as ev
from avae.likelihood import scoring
from avae.training.config import Runtime, make_config
from avae.training.runs import load_run, read_config
from avae.training.train import train

QUIET = Runtime(progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bound_helpers():
    log_w = torch.tensor([[0.0], [2.0], [0.0], [2.0]])
    torch.testing.assert_close(obj.iwae_bound(log_w, 1), torch.tensor([1.0]))
    expected = torch.logsumexp(torch.tensor([0.0, 2.0]), 0) - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(obj.iwae_bound(log_w, 2), expected.reshape(1))
    betas = obj.sigmoid_schedule(10)
    assert betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())
    assert obj.is_normalised_likelihood("bernoulli", "binarized")
    assert not obj.is_normalised_likelihood("bernoulli", "continuous")


def small_run(tmp_path, model="vae-noise", epochs=3, **extra):
    settings = {"model": model, "hidden": (32, 16), "latent_dim": 4, "batch_size": 50, "epochs": epochs}
    cfg = make_config({**settings, "seeds": (0, 1), "pixels": "binarized", **extra})
    return train(cfg, tmp_path / model, runtime=QUIET)


def test_estimates_are_ordered_on_a_trained_model(tmp_path, synthetic_data):
    run = small_run(tmp_path)
    ev.evaluate_run(run, metrics="elbo")
    settings = {
        "k": (1, 10, 200),
        "sivi_k": 50,
        "ais_chains": 4,
        "ais_steps": 100,
        "leapfrog": 5,
        "subset": 40,
        "bdmc_points": 20,
        "batch_size": 20,
    }
    result = ev.evaluate_run(run, metrics=("iwae", "sivi", "ais", "bdmc"), settings=settings)
    m = json.loads((run / "eval.json").read_text())["metrics"]
    assert set(m) == {
        "neg_elbo",  # kept from the first call
        "iwae_k1",
        "iwae_k10",
        "iwae_k200",
        "sivi_k50",
        "ais",
        "bdmc_forward",
        "bdmc_reverse",
    }
    for entry in m.values():
        assert {
            "label",
            "estimator",
            "settings",
            "kind",
            "per_member",
            "mean",
            "sem",
            "points",
            "seconds",
        } <= set(entry)
        assert entry["is_log_likelihood"] is True  # binarized pixels, Bernoulli decoder
        assert entry["members"] == 2
    assert result["evaluated"][0] == "iwae_k1" and m["iwae_k1"]["points"] == 40
    # negative log-likelihood-type values: tighter lower bounds are smaller
    slack = 3 * m["iwae_k1"]["sem_points"] / 10 + 0.05  # paired draws: far smaller than the point sem
    assert m["iwae_k200"]["mean"] <= m["iwae_k10"]["mean"] + slack <= m["iwae_k1"]["mean"] + 2 * slack
    assert m["sivi_k50"]["mean"] <= m["iwae_k1"]["mean"] + slack
    assert m["ais"]["mean"] <= m["iwae_k1"]["mean"] + slack
    assert m["bdmc_reverse"]["mean"] <= m["bdmc_forward"]["mean"] + 0.05
    assert m["bdmc_forward"]["gap"] == pytest.approx(m["bdmc_forward"]["mean"] - m["bdmc_reverse"]["mean"])


def test_fitted_gaussian_proposal_matches_the_encoders_own_density(tmp_path, synthetic_data):
    """AVB's proposal code on an encoder whose density is known: a VAE's, used only through samples."""
    run = small_run(tmp_path, model="vae", epochs=2)
    cfg, vae, _ = load_run(run)
    avb = build_model(ModelConfig(name="avb", latent_dim=4, hidden=(32, 16), noise_dim=10), cfg.seeds)
    avb.decoder.load_state_dict(vae.decoder.state_dict())
    avb.encode = lambda x, noise: vae.reparameterise(vae.posterior(x, noise), noise)
    x = synthetic_data["test"][:30].bernoulli(generator=torch.Generator().manual_seed(0))
    batch = x.unsqueeze(0).expand(2, -1, -1)
    with torch.no_grad():
        fitted = avb.proposal(batch, MemberRandom([0, 1], "fit"), samples=4000)
        own = vae.proposal(batch, MemberRandom([0, 1], "own"))
    # sampling error of M = 4000 draws: 1/sqrt(M) of a scale for the mean, 1/sqrt(2M) relative for the scale
    assert float(((fitted.loc - own.loc) / own.scale).abs().max()) < 5 / 4000**0.5
    assert float((fitted.scale / own.scale - 1).abs().max()) < 5 / 8000**0.5
    settings = scoring.EvalSettings(k=(1, 100), avb_samples=4000, batch_size=30)
    with_fit = scoring.iwae_points(avb, x, cfg.seeds, settings)
    with_own = scoring.iwae_points(vae, x, cfg.seeds, settings)
    for k in (1, 100):
        assert abs(float((with_fit[k] - with_own[k]).mean())) < 0.3, k


def test_cli_refuses_an_unknown_metric_in_one_sentence(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--metrics", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avae: error: unknown metric 'bogus'") and err.count("\n") == 0


def test_cli_evaluate_prints_a_table(tmp_path, synthetic_data, capsys):
    run = small_run(tmp_path, model="avb", epochs=1)
    code = main(["evaluate", str(run), "--metrics", "elbo,iwae,sivi", "--k", "1,5", "--subset", "10"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| iwae_k5 | lower bound (log-likelihood)" in out
    assert "| neg_elbo | objective (log-likelihood)" in out  # AVB's is no bound
    assert "sivi: skipped" in out


def test_iwae_anchor_preset_trains(tmp_path, synthetic_data, capsys):
    out = tmp_path / "anchor"
    args = ["train", "--preset", "iwae-anchor", "--epochs", "1", "--train-subset", "100"]
    assert main([*args, "--test-subset", "20", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["model"]["hidden"] == [200, 200] and config["model"]["latent_dim"] == 50
    assert config["model"]["activation"] == "tanh" and config["pixels"] == "binarized"
    assert config["epochs"] == 1 and config["batch_size"] == 20
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["vae", "vae-noise", "avb", "avb-ac", "avae"])
def test_the_reconstruction_term_is_exact_when_the_decoder_ignores_z(name):
    """With the decoder's first layer zeroed, p(x|z) is the same for every z, so E_q[-log p(x|z)]
    is known exactly: the Bernoulli negative log-likelihood of x under the decoder's constant
    logits. Every encoder, implicit ones included, takes the same path."""
    cfg = ModelConfig(name, data_dim=12, hidden=(8,), latent_dim=3, noise_dim=0 if name == "vae" else 2)
    model = build_model(cfg, (0, 1))
    first = model.decoder[0]
    with torch.no_grad():
        first.weight.zero_()
    x = torch.rand(5, 12)
    entries, _ = ev.compute_metrics(model, x, (0, 1), ["recon"], scoring.EvalSettings(), False)
    logits = model.decoder(torch.zeros(2, 1, 3))  # [S, 1, D], whatever z
    exact = (
        torch.nn.functional.binary_cross_entropy_with_logits(
            logits.expand(2, 5, 12), x.expand(2, 5, 12), reduction="none"
        )
        .sum(-1)
        .double()
    )
    got = entries["neg_recon"].values()
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), exact.mean(1), rtol=1e-5, atol=1e-5)


def test_the_estimate_before_an_evaluation_counts_the_runs_own_test_points(tmp_path, capsys):
    """Own data with 200 examples holds out 20 test points: the estimate is for those 20, not for
    MNIST's 10,000."""
    path = tmp_path / "vectors.npy"
    np.save(path, np.random.default_rng(0).random((200, 30)).astype("float32"))
    run = small_run(tmp_path, model="vae", epochs=1, dataset=str(path), seeds=(0,), pixels="continuous")
    assert cost_model.test_points(read_config(run)) == 20
    assert main(["evaluate", str(run), "--metrics", "elbo,iwae", "--k", "1,5"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("avae evaluate: elbo, iwae on 20 test points x 1 members: about 0.0 min")


def test_test_points_of_a_registered_data_set_are_its_test_split_cut_to_the_subset():
    assert cost_model.test_points(make_config({"test_subset": 0})) == 10000
    assert cost_model.test_points(make_config({"test_subset": 300})) == 300
    assert cost_model.test_points(make_config({"test_subset": 50000})) == 10000  # no more than there are


def test_ais_costs_its_sequential_steps_even_on_a_few_points():
    """AIS on a few points is bound by its sequential HMC steps, not by its decoder passes: the
    smoke profile's AIS on 10 points (20 steps, 2 chains) took about 0.9-1.3 s of process time."""
    settings = scoring.EvalSettings(ais_steps=20, ais_chains=2, bdmc_points=5)
    ais = cost_model.metric_seconds("ais", settings, 10, 2, "cpu", "vae")
    assert 0.7 < ais < 1.6
    assert cost_model.metric_seconds("bdmc", settings, 10, 2, "cpu", "vae") > ais  # forward and reverse
    more = cost_model.metric_seconds(
        "ais", scoring.EvalSettings(ais_steps=20, ais_chains=2, batch_size=5), 10, 2, "cpu", "vae"
    )
    assert more > ais  # two batches: each runs its steps


def test_every_committed_eval_json_entry_reads_and_writes_back_unchanged():
    """MetricEntry is eval.json's entry format: reading a committed entry and writing it again gives
    the same JSON, so readers that go through it see every field and writers change no byte."""
    from pathlib import Path

    from avae.training.runs import MetricEntry

    root = Path(__file__).resolve().parent.parent / "results"
    entries = [
        entry
        for path in sorted(root.glob("**/eval.json"))
        for entry in json.loads(path.read_text()).get("metrics", {}).values()
    ]
    assert entries, f"no eval.json under {root}"
    for entry in entries:
        again = MetricEntry.from_json(entry).to_json()
        assert json.dumps(again, sort_keys=True) == json.dumps(entry, sort_keys=True)
