"""The README's Python example runs as it is written, and the API's outputs have the shapes and
meaning it promises."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import avae

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def readme_example() -> str:
    section = README.read_text().split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs(capsys):
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([2, 8, 4]) torch.Size([2, 8, 50]) torch.Size([2, 16, 50])" in printed


def test_the_api_scores_agree_with_evaluate(tmp_path, synthetic_data):
    cfg = avae.make_config({"model": "vae", "hidden": (16,), "latent_dim": 2, "epochs": 1, "seeds": (0, 1)})
    run_dir = avae.fit(cfg, tmp_path / "run", runtime=avae.Runtime(progress=False))
    model = avae.load(run_dir)
    x = synthetic_data["test"]
    elbo = model.score(x, "elbo")
    assert elbo.shape == (2, 100)
    record = avae.evaluate_run(run_dir, metrics="elbo", runtime=avae.Runtime(progress=False))
    # eval.json's figure of the same members and points, from other draws ("eval" vs "api-0" stream)
    own = torch.tensor([row["value"] for row in record["metrics"]["neg_elbo"]["per_member"]])
    torch.testing.assert_close(elbo.double().mean(1), own.double(), atol=1.0, rtol=0)
    iwae = model.score(x, "iwae", k=20)  # the tighter bound: lower negative figures, on average
    assert iwae.shape == (2, 100) and bool((iwae.mean(1) < elbo.mean(1)).all())
    with pytest.raises(avae.errors.ConfigError, match="x must be \\[N, 784\\]"):
        model.encode(torch.rand(3, 10))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run on 20-wide vectors and its loaded members."""
    folder = tmp_path_factory.mktemp("api")
    np.save(folder / "v.npy", np.random.default_rng(0).random((120, 20)).astype("float32"))
    settings = {"model": "vae", "dataset": str(folder / "v.npy"), "latent_dim": 2, "hidden": (8,)}
    cfg = avae.make_config({**settings, "batch_size": 50, "epochs": 1, "seeds": (0, 1)})
    run_dir = avae.fit(cfg, folder / "run", runtime=avae.Runtime(progress=False))
    return run_dir, avae.load(run_dir)


MISUSES = {
    "encode(numpy)": (
        lambda m, r: m.encode(np.zeros((3, 20))),
        "x must be a torch.Tensor, got numpy.ndarray",
    ),
    "encode(width 10)": (lambda m, r: m.encode(torch.rand(3, 10)), "x must be [N, 20], got [3, 10]"),
    "score(x * 255)": (lambda m, r: m.score(torch.rand(3, 20) * 255), "give values in [0, 1]"),
    "score(NaN)": (lambda m, r: m.score(torch.full((3, 20), float("nan"))), "x holds 60 NaN or infinite"),
    "score(k=0)": (
        lambda m, r: m.score(torch.rand(3, 20), "iwae", k=0),
        "k must be a positive integer, got 0",
    ),
    "score(ais_steps)": (lambda m, r: m.score(torch.rand(3, 20), "ais", ais_steps=-2), "ais_steps must be"),
    "decode([3, 5])": (
        lambda m, r: m.decode(torch.zeros(3, 5)),
        "z must be [2, N, 2] (members, points, latent)",
    ),
    "decode(list)": (lambda m, r: m.decode([[0.0, 0.0]]), "z must be a torch.Tensor, got list"),
    "sample(-1)": (lambda m, r: m.sample(-1), "n must be a positive integer, got -1"),
    "sample(2.5)": (lambda m, r: m.sample(2.5), "n must be a positive integer, got 2.5"),
    "load(device=gpu)": (lambda m, r: avae.load(r, device="gpu"), "device 'gpu' is not one avae runs on"),
    "load(device=cuda:N)": (
        lambda m, r: avae.load(r, device="cuda:99"),
        "device 'cuda:99': this machine has",
    ),
    "load(seed=-1)": (lambda m, r: avae.load(r, seed=-1), "seed must be a non-negative integer"),
    "evaluate_run(kk)": (
        lambda m, r: avae.evaluate_run(r, settings={"kk": 3}),
        "unknown evaluation setting(s) kk; choose from k,",
    ),
    "evaluate_run(k=0)": (
        lambda m, r: avae.evaluate_run(r, settings={"k": (0,)}),
        "k must be positive integers",
    ),
    "evaluate_run(list)": (
        lambda m, r: avae.evaluate_run(r, settings=[1]),
        "settings must be an EvalSettings or",
    ),
    "fit(dict)": (
        lambda m, r: avae.fit({"model": "vae"}, r.parent / "other"),
        "cfg must be a TrainConfig, got dict",
    ),
    "make_config(list)": (lambda m, r: avae.make_config([("model", "vae")]), "settings must be a dict"),
}


@pytest.mark.parametrize("name", MISUSES)
def test_api_misuse_is_one_sentence_in_api_terms(trained, name):
    run_dir, model = trained
    call, fragment = MISUSES[name]
    with pytest.raises(avae.errors.ConfigError) as error:
        call(model, run_dir)
    assert fragment in str(error.value) and "--" not in str(error.value)  # no command-line names


def test_load_on_a_machine_without_cuda_says_so(trained):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(avae.errors.ConfigError, match="no CUDA device available; use device='cpu'"):
        avae.load(trained[0], device="cuda")
