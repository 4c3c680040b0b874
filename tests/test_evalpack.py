"""Evaluation packs (`avae.evaluation.packs.evaluate_pack`): several runs of one model that differ
only in their seeds and data set, evaluated as one member-batched model, each member on its own
run's test points; every run's eval.json is what `evaluate_run` on that run alone writes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from test_packs import SMALL, configs, two_datasets  # noqa: F401 (a fixture)  tests/ is on sys.path

from avae.errors import ConfigError
from avae.evaluation import evaluate as ev
from avae.evaluation import packs as evpacks
from avae.likelihood import scoring
from avae.training.config import Runtime, make_config
from avae.training.runs import CHECKPOINT, EVAL, WEIGHTS
from avae.training.train import train

QUIET = Runtime(progress=False)
SETTINGS = {
    "k": (1, 10, 40),
    "ais_chains": 3,
    "ais_steps": 20,
    "leapfrog": 3,
    "subset": 30,
    "batch_size": 20,  # a last batch of 10: uneven batches too
    "bdmc_points": 6,
    "sivi_k": 8,
    "sivi_samples": 2,
    "prefixes": (10,),
}
# The largest difference between a run's eval.json written by its evaluation pack and by
# `evaluate_run` on it alone, over every number of every entry (values, sems, prefix means, chain
# statistics, BDMC gap; not the seconds), two runs (MNIST seeds 0, 1 and Fashion-MNIST seeds 0, 2,
# one epoch) at SETTINGS, measured on this CPU (torch 2.13, one thread) with
#   pytest tests/test_evalpack.py -k equals -s   (it prints them):
#   IWAE: VAE 1.8e-5, VAE+eps 8.1e-6, AVB 1.2e-5, AVAE 8.1e-6 nats (a last-bit difference of the
#         decoder's log-likelihood summed over 784 pixels, figures of ~100-500 nats)
#   AIS:  0.0 for every model (and ELBO, critic, reconstruction, BDMC 0.0; SIVI 2.0e-6 for AVAE).
# Every stream is keyed by its member's seed and each member computes on its own rows only. Were
# IWAE's draws chunked for the pack's 4 members rather than each run's 2, IWAE would move 0.11.
TOLERANCE = 1e-4
METRICS = ("elbo", "critic", "recon", "iwae", "sivi", "ais", "bdmc")

pytestmark = pytest.mark.usefixtures("one_thread")


def largest_difference(packed, alone, where: str = "") -> float:
    """The largest absolute difference between two eval.json records; everything but their numbers
    (and the seconds and run paths, which differ) must be equal."""
    if isinstance(packed, dict):
        assert isinstance(alone, dict) and packed.keys() == alone.keys(), where
        keys = [k for k in packed if k not in ("seconds", "run")]
        return max([largest_difference(packed[k], alone[k], f"{where}/{k}") for k in keys], default=0.0)
    if isinstance(packed, list):
        assert isinstance(alone, list) and len(packed) == len(alone), where
        pairs = zip(packed, alone, strict=True)
        return max([largest_difference(a, b, f"{where}[]") for a, b in pairs], default=0.0)
    if isinstance(packed, float) or isinstance(alone, float):
        return abs(packed - alone)
    assert packed == alone, where
    return 0.0


def trained_pairs(tmp_path, model: str) -> list[tuple]:
    """Each configuration of `configs(model, 1)` trained once, copied: (to pack, to evaluate alone)."""
    pairs = []
    for index, cfg in enumerate(configs(model, epochs=1)):
        packed = train(cfg, tmp_path / f"packed{index}", runtime=QUIET)
        alone = tmp_path / f"alone{index}"
        shutil.copytree(packed, alone)
        pairs.append((packed, alone))
    return pairs


@pytest.mark.parametrize("model", ["vae", "vae-noise", "avb", "avae"])
def test_packed_evaluation_equals_each_runs_own(tmp_path, two_datasets, monkeypatch, model):  # noqa: F811
    # IWAE draws in chunks of 7 (14 in the last batch of 10) for a run of two members alone, as
    # a larger evaluation would: the pack must chunk each member's draws as its run would
    monkeypatch.setattr(scoring, "ELEMENT_BUDGET", 2 * 20 * 784 * 7)
    pairs = trained_pairs(tmp_path, model)
    calls = []
    original = evpacks.compute_entries
    evpacks.compute_entries = lambda *a, **kw: calls.append(kw) or original(*a, **kw)
    try:
        results = evpacks.evaluate_pack(
            [p for p, _ in pairs], metrics=METRICS, settings=SETTINGS, runtime=QUIET
        )
    finally:
        evpacks.compute_entries = original
    assert len(calls) == 1  # one model, one call per metric for both runs
    worst: dict[str, float] = {}
    for (packed, alone), result in zip(pairs, results, strict=True):
        own = ev.evaluate_run(alone, metrics=METRICS, settings=SETTINGS, runtime=QUIET)
        assert result["evaluated"] == own["evaluated"] and result["notes"] == own["notes"]
        a, b = (json.loads((run / EVAL).read_text()) for run in (packed, alone))
        assert a.keys() == b.keys() and a["metrics"].keys() == b["metrics"].keys()
        for key in a["metrics"]:
            family = key.split("_k")[0]
            difference = largest_difference(a["metrics"][key], b["metrics"][key], key)
            worst[family] = max(worst.get(family, 0.0), difference)
    print(f"{model}: largest packed - alone difference per metric {worst}")
    assert max(worst.values()) <= TOLERANCE
    assert {"iwae", "ais", "neg_elbo", "bdmc_forward"} <= set(worst)
    # the two runs really are scored on their own data sets: their figures are far apart
    figures = [json.loads((p / EVAL).read_text())["metrics"]["ais"]["mean"] for p, _ in pairs]
    assert abs(figures[0] - figures[1]) > 1.0


def test_bad_packs_are_refused_before_any_work(tmp_path, two_datasets):  # noqa: F811
    mnist, fashion = configs("vae", epochs=1)
    runs = [train(cfg, tmp_path / name, runtime=QUIET) for cfg, name in ((mnist, "a"), (fashion, "b"))]
    base = {"model": "vae", **SMALL, "epochs": 1, "seeds": (3,)}
    wider = train(make_config({**base, "latent_dim": 4}), tmp_path / "wider", runtime=QUIET)
    other = train(make_config({**base, "model": "avae"}), tmp_path / "avae", runtime=QUIET)
    cases = [
        ([runs[0], wider], "may differ only in seeds and dataset.* latent_dim 3 vs 4"),
        ([runs[0], other], "model 'vae' vs 'avae'"),
        ([runs[0], runs[0]], "given twice"),
        ([runs[0], tmp_path / "nowhere"], "not a run directory"),
        ([], "at least one run directory"),
    ]
    for name in (CHECKPOINT, WEIGHTS):  # trained and never published, a run keeps both
        (runs[1] / name).unlink()
    cases.append((runs, f"{runs[1]} has no {CHECKPOINT}"))
    for pack, message in cases:
        with pytest.raises(ConfigError, match=message):
            evpacks.evaluate_pack(pack, metrics=("elbo", "ais"), settings=SETTINGS, runtime=QUIET)
    assert not any((run / EVAL).exists() for run in (*runs, wider, other))  # nothing evaluated
    with pytest.raises(ConfigError, match="unknown metric"):
        evpacks.evaluate_pack([runs[0]], metrics="nll")


def test_reproduce_with_pack_evaluates_each_pack_as_one_model(tmp_path, monkeypatch):
    """`reproduce --pack`: the runs of a pack are evaluated by one evaluation pack per planned
    figure, none alone; a second call (every eval.json complete) evaluates nothing, and runs trained
    but not evaluated (an interrupted reproduction) are evaluated as a pack too."""
    from test_reproduce import tiny_profile  # tests/ is on sys.path

    from avae.repro import execute, runner
    from avae.repro.plan import eval_steps, runs_for
    from avae.repro.reproduce import reproduce

    profile = tiny_profile(monkeypatch, epochs=1, datasets=("mnist", "fashion-mnist"))
    small = {"iwae_k": 10, "iwae_points": 10, "ais_points": 10, "ais_steps": 10, "ais_chains": 2}
    profile = replace(profile, honest_latents=(10,), **small)
    runs = runs_for(profile)
    packs, alone = [], []

    def spy_pack(dirs, **kw):
        packs.append(([d.name for d in dirs], kw["metrics"]))
        return evpacks.evaluate_pack(dirs, **kw)

    monkeypatch.setattr(runner, "evaluate_pack", spy_pack)
    monkeypatch.setattr(execute, "evaluate_run", lambda run_dir, **kw: alone.append(kw) or {})
    monkeypatch.setattr(execute, "analyse_run", lambda *a, **kw: None)  # not what is tested here
    out = tmp_path / "out"
    reproduce(profile, out, runtime=QUIET, pack=True, train_only=True)
    assert packs == []  # training only: nothing to evaluate
    reproduce(profile, out, runtime=QUIET, pack=True)
    steps = eval_steps(runs[0], profile)
    assert [step.family for step in steps] == ["elbo", "iwae", "ais"]
    assert packs == [([run.dir_name for run in runs], (step.family,)) for step in steps]
    assert alone == []
    index = json.loads((out / "index.json").read_text())["runs"]
    for run in runs:
        record = json.loads((out / run.dir_name / EVAL).read_text())
        assert {step.key for step in steps} <= set(record["metrics"])
        assert {step.key for step in steps} <= set(index[run.key]["seconds"])
    packs.clear()
    reproduce(profile, out, runtime=QUIET, pack=True)
    assert packs == [] and alone == []
    # a figure one run alone lacks is left to that run's own evaluation
    path = out / runs[0].dir_name / EVAL
    record = json.loads(path.read_text())
    del record["metrics"]["ais"]
    path.write_text(json.dumps(record))
    reproduce(profile, out, runtime=QUIET, pack=True)
    assert packs == [] and [kw["metrics"] for kw in alone] == [("ais",)]


def test_runs_that_cannot_share_batches_are_evaluated_in_groups(tmp_path, two_datasets, monkeypatch):  # noqa: F811
    """Runs of other numbers of seeds share one model but for IWAE (whose draws are chunked by a
    run's number of members), and runs of other numbers of test points never do; each group's
    figures still equal each run's own."""
    monkeypatch.setattr(scoring, "ELEMENT_BUDGET", 2 * 20 * 784 * 7)
    mnist, fashion = configs("vae", epochs=1)
    fashion = replace(fashion, seeds=(2,))
    pairs = []
    for index, cfg in enumerate((mnist, fashion)):
        packed = train(cfg, tmp_path / f"packed{index}", runtime=QUIET)
        shutil.copytree(packed, tmp_path / f"alone{index}")
        pairs.append((packed, tmp_path / f"alone{index}"))
    calls = []
    original = evpacks.compute_entries
    monkeypatch.setattr(evpacks, "compute_entries", lambda *a, **kw: calls.append(a[2]) or original(*a, **kw))
    cases = [
        (("ais",), SETTINGS, [(0, 1, 2)]),  # one model: seeds 0, 1 of MNIST and 2 of Fashion-MNIST
        (("iwae",), SETTINGS, [(0, 1), (2,)]),
        (("elbo",), {**SETTINGS, "subset": 0}, [(0, 1), (2,)]),  # 100 and 60 test points
    ]
    two_datasets[("fashion-mnist", "test")] = two_datasets[("fashion-mnist", "test")][:60]
    for metrics, settings, groups in cases:
        calls.clear()
        evpacks.evaluate_pack([p for p, _ in pairs], metrics=metrics, settings=settings, runtime=QUIET)
        assert [tuple(seeds) for seeds in calls] == groups
        for _, alone in pairs:
            ev.evaluate_run(alone, metrics=metrics, settings=settings, runtime=QUIET)
    for packed, alone in pairs:
        a, b = (json.loads((run / EVAL).read_text()) for run in (packed, alone))
        assert largest_difference(a, b) <= TOLERANCE
    assert json.loads((pairs[1][0] / EVAL).read_text())["metrics"]["neg_elbo"]["points"] == 60
