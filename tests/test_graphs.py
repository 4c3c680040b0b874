"""Replayable units (avae.core.graphs): the static-buffer training iteration gives bitwise the numbers of
the plain eager loop it replaced, the static noise holds exactly the pooled draws, and the GPU
benchmark's code path runs on the CPU. (Members equal single runs and resume is exact:
tests/test_train.py, unchanged, runs on the static-buffer iteration.)"""

from __future__ import annotations

import json
from subprocess import CompletedProcess

import pytest
import torch

from avae.bench import gpu as bench_gpu
from avae.bench.report import protocol_lines
from avae.cli.commands import HANDLERS
from avae.cli.parser import build_parser
from avae.core.graphs import GraphedCall, StaticNoise, count_draws, graphs_wanted, use_device
from avae.core.nets import MemberRandom
from avae.likelihood import scoring
from avae.repro import plan
from avae.training.config import Runtime, make_config
from avae.training.steps import autocast, new_state, run_epoch, take_step

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"hidden": (32, 16), "latent_dim": 4, "batch_size": 50}


def eager_epoch(state, cfg, train_x):
    """The loop as it was before the static buffers: gather, then every phase with the pooled noise."""
    steps = len(train_x) // cfg.batch_size
    order = state.data_rng.permutations(len(train_x))
    state.noise_rng.clear_pool()
    totals = None
    for step in range(steps):
        x = train_x[order[:, step * cfg.batch_size : (step + 1) * cfg.batch_size]]
        terms = {}
        for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
            for _ in range(phase.repeats):
                with autocast(cfg, x.device):
                    terms.update(take_step(phase, optimizer, x, state.noise_rng))
        stacked = torch.stack(list(terms.values())).float()
        totals = stacked if totals is None else totals + stacked
    return {name: total / steps for name, total in zip(terms, totals, strict=True)}


@pytest.mark.parametrize(
    "settings",
    [
        {"model": "vae"},
        {"model": "vae-noise"},
        {"model": "avb-ac", "ac_samples": 3},
        {"model": "avae", "adv_update": "separate", "disc_steps": 2},
    ],
)
def test_static_buffer_iteration_equals_the_eager_loop_bitwise(settings):
    cfg = make_config({**SMALL, **settings, "seeds": (0, 3)})
    x = torch.rand(300, 784, generator=torch.Generator().manual_seed(5))
    static, eager = new_state(cfg, torch.device("cpu")), new_state(cfg, torch.device("cpu"))
    assert not static.graphs and not static.iteration.enabled  # CPU: eager, no capture
    for epoch in (1, 2):
        static.epoch = epoch
        got = run_epoch(static, cfg, x, Runtime(progress=False))
        want = eager_epoch(eager, cfg, x)
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    a, b = static.model.state_dict(), eager.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for o1, o2 in zip(static.optimizers, eager.optimizers, strict=True):
        for s1, s2 in zip(o1.state.values(), o2.state.values(), strict=True):
            assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_fill_hands_out_the_pooled_draws_across_refills():
    counts = [7, 3, 12]  # 22 per pass: the third pass crosses the refill of a 50-value pool
    pooled, filled = MemberRandom([1, 2], "noise", pool=50), MemberRandom([1, 2], "noise", pool=50)
    noise = StaticNoise(2, counts, "cpu")
    for _ in range(6):
        want = [pooled.normal(c) for c in counts]
        filled.fill(noise.buffer, counts)
        noise.rewind()
        for w, c in zip(want, counts, strict=True):
            assert torch.equal(noise.normal(c), w)
    assert torch.equal(pooled.get_state()[0], filled.get_state()[0]) and pooled.used == filled.used


def test_static_noise_refuses_a_draw_it_did_not_record():
    noise = StaticNoise(1, [4, 6], "cpu")
    assert noise.normal(2, 2).shape == (1, 2, 2)
    with pytest.raises(RuntimeError, match="asks for 5 values"):
        noise.normal(5)


def test_count_draws_and_disabled_graph_run_eagerly():
    assert count_draws(lambda noise: (noise.normal(3, 2), noise.normal(4)), 2, torch.device("cpu")) == [6, 4]
    calls = []
    unit = GraphedCall(lambda: calls.append(1) or len(calls), enabled=False)
    assert [unit(), unit(), unit()] == [1, 2, 3]
    with unit:  # leaving the block releases the (here absent) graph and starts the count again
        assert unit() == 4 and unit.calls == 4
    assert unit.calls == 0 and unit.graph is None


def test_graphs_only_on_the_current_cuda_device(monkeypatch):
    assert not graphs_wanted(torch.device("cpu"))
    assert use_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert graphs_wanted(torch.device("cuda")) and graphs_wanted(torch.device("cuda:0"))
    assert not graphs_wanted(torch.device("cuda:1"))  # its work would stay out of a capture
    assert not graphs_wanted(torch.device("cuda"), compile=True)
    monkeypatch.setenv("AVAE_CUDA_GRAPHS", "0")
    assert not graphs_wanted(torch.device("cuda"))


def test_epoch_figure_on_cpu_is_the_plain_test_pass():
    cfg = make_config({**SMALL, "model": "avae", "seeds": (0, 1)})
    state = new_state(cfg, torch.device("cpu"))
    x = torch.rand(120, 784, generator=torch.Generator().manual_seed(2))
    figure = scoring.EpochFigure(state.model, x, cfg.seeds, batch_size=50)
    assert torch.equal(figure(), scoring.neg_elbo_per_member(state.model, x, cfg.seeds, 50))


def test_gpu_benchmark_runs_on_cpu_quick(tmp_path):
    results = bench_gpu.run(tmp_path, "cpu", quick=True, log=lambda *_: None)
    saved = json.loads((tmp_path / bench_gpu.GPU_JSON).read_text())
    assert saved["checks"]["graph_vs_eager_bitwise"] and saved["checks"]["resume_bitwise"]
    # on the CPU both estimator paths are the same eager code: any difference is a bug in the check
    assert saved["checks"]["ais_graph_vs_eager_max_abs_diff"] == 0
    assert saved["checks"]["iwae_graph_vs_eager_max_abs_diff"] == 0
    assert {(e["model"], e["members"]) for e in saved["training"]} == {
        (m, s) for m in ("vae", "avae") for s in (1, 2)
    }
    assert all(e["eager_ms"] > 0 and e["graphed_ms"] > 0 for e in results["training"])
    assert all(c["ms"] > 0 for c in saved["ceiling"])
    assert [e["graphed"] for e in saved["evaluation"]] == [False, True]
    assert all(e["iwae1000_points_per_s"] > 0 for e in saved["evaluation"])
    assert [e["model"] for e in saved["bf16"]] == ["vae", "avae"] and all(
        e["graphed_ms"] > 0 for e in saved["bf16"]
    )
    concurrency = saved["concurrency"]
    assert {(c["model"], c["configurations"]) for c in concurrency} == {
        (m, n) for m in ("vae", "avae") for n in (1, 2)
    }
    assert all(c["processes_steps_per_s"] > 0 and c["streams_steps_per_s"] > 0 for c in concurrency), (
        concurrency
    )
    text = (tmp_path / bench_gpu.GPU_MD).read_text()
    assert "## Training step" in text and "## Several configurations on one device" in text
    assert "failed" not in text


def test_protocol_timing_runs_table1_training_then_the_rest_on_one_folder(tmp_path, monkeypatch):
    """The two timed phases are real `avae reproduce` command lines (parsed by the CLI's own parser)
    on the same --out: Table 1's training alone, then the whole profile."""
    ran = []

    def fake_run(command, check):
        ran.append(command)
        return CompletedProcess(command, 0)

    monkeypatch.setattr(bench_gpu.subprocess, "run", fake_run)
    result = bench_gpu.protocol_seconds(tmp_path, torch.device("cpu"), "full", log=lambda *_: None)
    parsed = [build_parser(HANDLERS).parse_args(command[3:]) for command in ran]
    assert [(a.profile, a.experiments, a.train_only) for a in parsed] == [
        ("full", ("table1",), True),
        ("full", (), False),
    ]
    assert parsed[0].out == parsed[1].out == str(tmp_path / "protocol-full")
    assert all(a.pack for a in parsed)  # the protocol times packs unless --no-pack
    assert list(result["phases"]) == ["table1_training", "rest"] and result["returncode"] == 0
    assert result["seconds"] == pytest.approx(sum(p["seconds"] for p in result["phases"].values()))
    text = "\n".join(protocol_lines(result))
    assert "- table1 training: 0 s (exit 0)" in text and "--train-only" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_benchmark_without_cuda_says_so():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_gpu.run("unused", "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_iteration_equals_eager_on_cuda():
    cfg = make_config({**SMALL, "model": "avae", "seeds": (0, 1)})
    x = torch.rand(300, 784, generator=torch.Generator().manual_seed(5)).cuda()
    runs = []
    for graphs in (False, True):
        state = new_state(cfg, torch.device("cuda"), graphs=graphs)
        state.epoch = 1
        means = run_epoch(state, cfg, x, Runtime(device="cuda", progress=False))
        runs.append((means, state.model.state_dict()))
    (m0, w0), (m1, w1) = runs
    assert all(torch.equal(m0[k], m1[k]) for k in m0) and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_the_benchmark_times_each_pack_of_a_profiles_table1(tmp_path):
    """`pack_costs` builds the packs `reproduce --pack` would (one per model and reading, its data
    sets and latent dimensions padded together) and times each beside an unpadded model of as
    many members and the reference S; GPU_BENCH.md shows them."""
    from avae.bench.gpu_packs import pack_costs
    from avae.bench.gpu_timing import images_for
    from avae.bench.report import pack_lines

    device = torch.device("cpu")
    rows = pack_costs("smoke", device, images_for(200, device), 0.0, reference=3, log=lambda *_: None)
    smoke = plan.runs_for(plan.select("smoke", ("table1",), train_only=True))
    assert sum(row["configurations"] for row in rows) == len(smoke)
    assert sum(row["members"] for row in rows) == sum(len(run.cfg.seeds) for run in smoke)
    assert {row["model"] for row in rows} == {run.cfg.model.name for run in smoke}
    assert all(row["latent_dims"] == sorted({r.cfg.model.latent_dim for r in smoke}) for row in rows)
    assert all(row["packed_ms"] > 0 and row["plain_ms"] > 0 and row["reference_members"] == 3 for row in rows)
    assert all(
        row["packed_us_per_member"] == pytest.approx(1e3 * row["packed_ms"] / row["members"]) for row in rows
    )
    text = "\n".join(pack_lines(rows))
    assert "## Packs of Table 1" in text and text.count("\n| ") == len(rows) + 1
