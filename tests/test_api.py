"""The README's Python example runs as it is written, and the API's outputs have the shapes and
meaning it promises."""

from __future__ import annotations

import re
from pathlib import Path

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
