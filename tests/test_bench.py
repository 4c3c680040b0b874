"""`avae bench` code paths at tiny sizes: the output structure, never the timings."""

from __future__ import annotations

import json

import pytest
import torch

from avae.bench import cpu as bench
from avae.bench.measure import step_flops
from avae.core.models import MODELS
from avae.repro import costs


def test_quick_bench_writes_markdown_and_json(tmp_path, synthetic_data):
    results = bench.run_bench(tmp_path, quick=True, pythae_python=None, log=lambda *_: None)
    saved = json.loads((tmp_path / bench.BENCH_JSON).read_text())
    assert set(saved) >= {
        "machine",
        "peak",
        "plain_loop",
        "training",
        "pythae",
        "evaluation",
        "table1",
        "targets",
    }
    assert {(e["model"], e["members"], e["precision"]) for e in saved["training"]} == {
        (m, s, p) for m in ("vae", "avae") for s in (1, 2) for p in ("fp32", "bf16")
    }
    for entry in saved["training"]:
        assert entry["images_per_s_per_member"] > 0 and entry["gflops"] > 0
    assert "skipped" in saved["pythae"] and saved["evaluation"]["iwae1000_points_per_s_per_member"] > 0
    assert all(isinstance(t["met"], bool) for t in results["targets"])
    text = (tmp_path / bench.BENCH_MD).read_text()
    assert "## Targets" in text and "Estimated cost of Table 1" in text
    # the estimate reads the fresh bench.json and grows with members and epochs
    one = costs.estimate_train_seconds("avae", 1, 1, 60000, bench=tmp_path / bench.BENCH_JSON)
    assert 0 < one < costs.estimate_train_seconds("avae", 2, 2, 60000, bench=tmp_path / bench.BENCH_JSON)


def test_the_benchmarked_test_pass_is_scaled_to_the_runs_own_test_images(tmp_path):
    """bench.json's test pass is per 10,000 test images and member: 2 s for 5 members here."""
    path = tmp_path / "bench.json"
    entry = {
        "model": "vae",
        "precision": "fp32",
        "members": 5,
        "ms_per_step": 100.0,
        "test_pass_s_per_10k": 2.0,
    }
    path.write_text(json.dumps({"training": [entry]}))
    steps = 600 * 0.1 + costs.TRAIN_CALL_SECONDS  # one epoch of 60,000 images at 100 ms a step
    assert costs.estimate_train_seconds("vae", 5, 1, 60000, bench=path) == pytest.approx(steps + 2.0)
    assert costs.estimate_train_seconds("vae", 5, 1, 60000, bench=path, test_images=500) == pytest.approx(
        steps + 2.0 * 500 / 10_000
    )


def test_estimate_without_bench_json_uses_builtin_figures(tmp_path):
    missing = tmp_path / "none.json"
    for name in MODELS:
        assert costs.estimate_train_seconds(name, 5, 100, bench=missing) > costs.estimate_train_seconds(
            name, 5, 1, bench=missing
        )


def test_flop_count_of_the_paper_vae():
    # 784-256-64-32-20 and 10-32-64-256-784: 439,232 multiply-adds per example forward; the backward
    # pass costs twice the forward, less the input gradient of the encoder's first layer (x needs none)
    assert step_flops("vae", batch=100) == 3 * 2 * 439232 * 100 - 2 * 784 * 256 * 100


def test_pooled_noise_depends_only_on_the_members_own_seed():
    from avae.core.nets import MemberRandom

    together, alone = MemberRandom([3, 5], "noise", pool=64), MemberRandom([5], "noise", pool=64)
    for shape in ((4, 3), (10, 5), (2, 2)):  # the second draw crosses a refill
        torch.testing.assert_close(together.normal(*shape)[1], alone.normal(*shape)[0], rtol=0, atol=0)


def test_bf16_training_runs_and_resumes_only_in_bf16(tmp_path, synthetic_data):
    import pytest

    from avae.errors import ConfigError
    from avae.training.config import Runtime, make_config
    from avae.training.train import train

    settings = {"model": "avae", "hidden": (32, 16), "latent_dim": 4, "batch_size": 50, "seeds": (0, 1)}
    runtime = Runtime(progress=False)
    train(make_config({**settings, "epochs": 1, "precision": "bf16"}), tmp_path / "run", runtime=runtime)
    with pytest.raises(ConfigError, match="precision: 'bf16' there vs 'fp32' here"):
        train(make_config({**settings, "epochs": 2}), tmp_path / "run", runtime=runtime, resume=True)
    bf16 = make_config({**settings, "epochs": 2, "precision": "bf16"})
    train(bf16, tmp_path / "run", runtime=runtime, resume=True)


def test_gpu_step_cost_is_fitted_through_the_gpu_benchmarks_graphed_steps(tmp_path):
    bench_file = tmp_path / "gpu_bench.json"
    rows = [{"model": "vae", "members": s, "eager_ms": 4.0, "graphed_ms": 0.3 + 0.02 * s} for s in (1, 5, 40)]
    bench_file.write_text(json.dumps({"training": rows}))
    assert costs.gpu_step_seconds("vae", 10, bench_file) == pytest.approx(1.05 * (0.3 + 0.2) / 1e3)
    # no figures for that model (or no file): the pessimistic eager figure
    assert costs.gpu_step_seconds("avae", 10, bench_file) == costs.GPU_STEP_MS / 1e3 * 10 / 8
    assert costs.gpu_step_seconds("vae", 4, tmp_path / "none.json") == costs.GPU_STEP_MS / 1e3
    # the committed H200 figures are what a --device cuda dry run uses
    measured = costs.gpu_step_seconds("vae", 5)
    assert 0.3e-3 < measured < 0.6e-3, measured
