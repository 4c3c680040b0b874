"""The Markdown of the benchmarks: `avae bench` (BENCH.md: its tables, the targets and the Table 1
estimate) and the GPU benchmark (GPU_BENCH.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BENCH_JSON = "bench.json"
BENCH_MD = "BENCH.md"
NOTES = Path(__file__).resolve().parents[2] / "benchmarks" / "NOTES.md"


def _find(results: dict[str, Any], model: str, members: int, precision: str) -> dict[str, Any] | None:
    for e in results["training"]:
        if (e["model"], e["members"], e["precision"]) == (model, members, precision):
            return e
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was met."""
    big = max(e["members"] for e in results["training"])
    fp32, bf16 = _find(results, "vae", big, "fp32"), _find(results, "vae", big, "bf16")
    rows = [
        {
            "target": f"fp32 VAE S={big}: >= 60% of fp32 matmul peak",
            "value": fp32["fraction_of_peak"],
            "goal": 0.6,
        },
        {
            "target": f"fp32 VAE S={big}: >= 3x plain loop (images/s of all members)",
            "value": fp32["vs_plain_total"],
            "goal": 3,
        },
        {
            "target": f"fp32 VAE S={big}: >= 3x plain loop (literally per member)",
            "value": fp32["vs_plain_per_member"],
            "goal": 3,
        },
        {
            "target": f"bf16 VAE S={big}: >= 8x plain loop (images/s of all members)",
            "value": bf16["vs_plain_total"],
            "goal": 8,
        },
        {
            "target": f"bf16 VAE S={big}: >= 8x plain loop (literally per member)",
            "value": bf16["vs_plain_per_member"],
            "goal": 8,
        },
    ]
    acc = results.get("bf16_accuracy", {})
    if "max_abs_diff" in acc:
        for key, what in (("mean_abs_diff", "mean over seeds"), ("max_abs_diff", "worst single seed")):
            rows.append(
                {
                    "target": f"bf16 final test -ELBO within 0.5 nat of fp32 ({what}; short run)",
                    "value": acc[key],
                    "goal": 0.5,
                    "lower_is_better": True,
                }
            )
    peer = results.get("pythae", {})
    if "images_per_s_per_member" in peer:
        rows.append(
            {
                "target": f">= 4x Pythae (fp32 VAE S={big}, images/s of all members)",
                "value": fp32["images_per_s_total"] / peer["images_per_s_per_member"],
                "goal": 4,
            }
        )
        best = max(
            (e for e in results["training"] if e["model"] == "vae"),
            key=lambda e: e["images_per_s_per_member"],
        )
        rows.append(
            {
                "target": f">= 4x Pythae (literally per member; best VAE cell: S={best['members']} "
                f"{best['precision']})",
                "value": best["images_per_s_per_member"] / peer["images_per_s_per_member"],
                "goal": 4,
            }
        )
    if "table1" in results:
        rows.append(
            {
                "target": "Table 1 (24 configs x 5 seeds x 100 epochs) <= 1.5 h on 2 cores",
                "value": results["table1"]["wall_seconds"] / 3600,
                "goal": 1.5,
                "lower_is_better": True,
            }
        )
    for row in rows:
        lower = row.get("lower_is_better", False)
        row["met"] = bool(row["value"] <= row["goal"] if lower else row["value"] >= row["goal"])
    return rows


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# avae benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s); "
        f"AMX: {'yes' if m['amx'] else 'no'}; AVX-512 BF16: {'yes' if m['avx512_bf16'] else 'no'}; "
        f"CUDA: {'yes' if m['cuda_available'] else 'no'}. Load average at the start: {m['load_average']} "
        "(the machine is shared: every figure is noisy; compare ratios within this run).",
        f"Data: {r['data']}; batch {r['batch_size']}; timed windows after warm-up.",
        "",
        "## Matmul peak (one large square product)",
        "",
        "| precision | n | GFLOP/s |",
        "|---|---|---|",
    ]
    lines += [f"| {p} | {v['n']} | {v['gflops']:.1f} |" for p, v in r["peak"].items()]
    plain = r["plain_loop"]
    lines += [
        "",
        "## Training throughput",
        "",
        "FLOPs counted analytically (2·in·out per example and layer forward, x3 forward+backward, every "
        "network pass of every phase). Fraction of peak is against the same precision's matmul peak.",
        "",
        f"Plain one-model PyTorch loop (nn.Linear VAE, Adam, batch 100): "
        f"**{plain['images_per_s_per_member']:.0f} images/s**, {plain['ms_per_step']:.2f} ms/step, "
        f"{plain['gflops']:.1f} GFLOP/s.",
        "",
        "| model | S | precision | ms/step | images/s per member | images/s total | GFLOP/s | % of peak "
        "| x plain (per member) | x plain (total) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["training"]:
        lines.append(
            f"| {e['model']} | {e['members']} | {e['precision']} | {e['ms_per_step']:.1f} | "
            f"{e['images_per_s_per_member']:.0f} | {e['images_per_s_total']:.0f} | {e['gflops']:.1f} | "
            f"{100 * e['fraction_of_peak']:.0f}% | {e['vs_plain_per_member']:.2f} | "
            f"{e['vs_plain_total']:.2f} |"
        )
    comp = r["compile"]
    lines += ["", "## torch.compile (`--compile`)", ""]
    if "skipped" in comp:
        lines.append(f"Skipped: {comp['skipped']}")
    else:
        lines.append(
            f"VAE S={comp['members']} fp32 compiled: "
            f"{comp['images_per_s_per_member']:.0f} images/s per member "
            f"vs eager {comp['eager_images_per_s_per_member']:.0f} measured just before it "
            f"(compile + warm-up took "
            f"{comp['wall_with_warmup_s']:.0f} s)."
        )
    peer = r["pythae"]
    lines += ["", "## External peer: Pythae", ""]
    if "skipped" in peer:
        lines.append(f"Skipped: {peer['skipped']}")
    else:
        lines.append(
            f"Pythae {peer['version']} BaseTrainer, VAE with the same MLPs, batch 100, same data: "
            f"{peer['images_per_s_per_member']:.0f} images/s ({peer['ms_per_step']:.2f} ms/step, "
            f"{peer['gflops']:.1f} GFLOP/s)."
        )
    ev = r["evaluation"]
    lines += [
        "",
        "## Evaluation throughput (avae.evaluation.evaluate estimators, VAE)",
        "",
        f"IWAE-1000: {ev['iwae1000_points_per_s_per_member']:.1f} test points/s per member; AIS "
        f"({ev['ais_chains']} chains, {ev['leapfrog']} leapfrog steps per transition): "
        f"{ev['ais_hmc_transitions_per_s_per_member']:.0f} HMC transitions/s per member, i.e. "
        f"{ev['ais_points_per_s_at_500_steps']:.2f} test points/s at 500 steps.",
    ]
    acc = r["bf16_accuracy"]
    lines += ["", "## bf16 autocast accuracy", ""]
    if "skipped" in acc:
        lines.append(f"Skipped: {acc['skipped']}")
    else:
        lines.append(
            f"VAE, seeds {acc['seeds']}, {acc['epochs']} epochs on {acc['train_images']} MNIST images, test "
            f"-ELBO on {acc['test_images']}: fp32 {acc['fp32_test_neg_elbo']}, "
            f"bf16 {acc['bf16_test_neg_elbo']}; "
            f"means {acc['mean_fp32']:.3f} vs {acc['mean_bf16']:.3f} (difference "
            f"{acc['mean_abs_diff']:.3f} nat); largest per-seed difference {acc['max_abs_diff']:.3f} nat. "
            "Two fp32 runs with different seeds differ by as much, so per seed this measures "
            "chaotic divergence of the trajectories as much as bf16 rounding."
        )
    t1 = r.get("table1")
    if t1:
        lines += [
            "",
            "## Estimated cost of Table 1",
            "",
            f"24 configurations x 5 seeds x 100 epochs, test -ELBO every epoch: "
            f"**{t1['wall_seconds'] / 3600:.2f} h** wall ({t1['serial_seconds'] / 3600:.2f} h of one core; "
            f"{t1['assumption']}). Per configuration (5 members, 100 epochs): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in t1["per_config_seconds"].items())
            + ". `avae.repro.costs.estimate_train_seconds` gives this figure for any run.",
            "",
            f"Lower bound at 100% of the measured fp32 matmul peak on every core: "
            f"{t1['flops'] / 1e15:.2f} PFLOP of training / ({t1['processes']} x "
            f"{r['peak']['fp32']['gflops']:.0f} GFLOP/s) = **{t1['hours_at_peak']:.1f} h** "
            f"(bf16 peak: {t1['hours_at_bf16_peak']:.1f} h).",
        ]
    ceiling = {p: r["peak"][p]["gflops"] / plain["gflops"] for p in ("fp32", "bf16")}
    lines += [
        "",
        "## Targets",
        "",
        f"Ceiling: the plain loop already runs at {plain['gflops']:.1f} GFLOP/s, so even at 100% of the "
        f"matmul peak a process can do at most {ceiling['fp32']:.2f}x its images/s in fp32 and "
        f"{ceiling['bf16']:.2f}x in bf16 (all members together; per member divide by S).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in r.get("targets", []):
        lines.append(f"| {t['target']} | {t['value']:.2f} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines) + "\n" + (NOTES.read_text() if NOTES.exists() else "")


def gpu_markdown(r: dict[str, Any]) -> str:
    """GPU_BENCH.md from the results of `avae.bench.gpu.run`."""
    c = r["checks"]
    ceiling = {e["members"]: e["ms"] for e in r["ceiling"]}
    lines = [
        "# avae GPU benchmark",
        "",
        f"Device: {r['device']}; torch {r['torch']} (CUDA {r['cuda']}); batch {r['batch_size']}"
        + ("; --quick" if r["quick"] else "")
        + ". Graphed: one CUDA graph replay per training iteration (on CPU: the same static-buffer "
        "iteration, eager).",
        "",
        "## Checks",
        "",
        f"- graphed vs eager iteration (AVAE, 2 members, 1 epoch): bitwise {c['graph_vs_eager_bitwise']}, "
        f"max |loss diff| {c['graph_vs_eager_loss_max_abs_diff']:.3g}, "
        f"max |weight diff| {c['graph_vs_eager_weight_max_abs_diff']:.3g}",
        f"- resume (VAE+eps, 1 + 2 epochs vs 3): bitwise {c['resume_bitwise']} ({c['resume_tensors_equal']} "
        "weight tensors equal)",
        f"- estimators graphed vs eager (that VAE+eps, 6 points): max |AIS diff| "
        f"{c['ais_graph_vs_eager_max_abs_diff']:.3g}, max |IWAE-50 diff| "
        f"{c['iwae_graph_vs_eager_max_abs_diff']:.3g} nats",
        "",
        "## Training step",
        "",
        "| model | S | eager ms/step | graphed ms/step | speed-up | graphed / hand-written ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for e in r["training"]:
        ratio = e["graphed_ms"] / ceiling[e["members"]] if e["model"] == "vae" else float("nan")
        lines.append(
            f"| {e['model']} | {e['members']} | {e['eager_ms']:.3f} | {e['graphed_ms']:.3f} | "
            f"{e['speedup']:.1f}x | {'-' if ratio != ratio else f'{ratio:.2f}'} |"
        )
    lines += ["", "Hand-written captured VAE step (the ceiling): "]
    lines[-1] += ", ".join(f"S={s}: {ms:.3f} ms" for s, ms in ceiling.items()) + "."
    lines += ["", "## Training step under bf16 autocast (graphed)", ""]
    fp32 = {(e["model"], e["members"]): e["graphed_ms"] for e in r["training"]}
    for e in r["bf16"]:
        ratio = e["graphed_ms"] / fp32[(e["model"], e["members"])]
        lines.append(
            f"- {e['model']} S={e['members']}: {e['graphed_ms']:.3f} ms/step ({ratio:.2f}x fp32's time)"
        )
    acc = r.get("bf16_accuracy")
    if acc and "skipped" in acc:
        lines.append(f"- accuracy check skipped: {acc['skipped']}")
    elif acc:
        lines.append(
            f"- accuracy: VAE, {acc['epochs']} epochs on {acc['train_images']} MNIST images, seeds "
            f"{acc['seeds']}: test -ELBO fp32 {acc['mean_fp32']:.2f}, bf16 {acc['mean_bf16']:.2f} "
            f"(largest per-seed difference {acc['max_abs_diff']:.2f} nats)"
        )
    lines += [
        "",
        "## Evaluation",
        "",
        "| estimators | IWAE-1000 points/s | AIS points/s at 1,000 steps |",
        "|---|---|---|",
    ]
    for ev in r["evaluation"]:
        lines.append(
            f"| {'graphed' if ev['graphed'] else 'eager'} | {ev['iwae1000_points_per_s']:.1f} | "
            f"{ev['ais_points_per_s_at_1000_steps']:.2f} |"
        )
    ev = r["evaluation"][0]
    lines += [
        "",
        f"VAE, {ev['members']} members, {ev['points']} points; AIS with {ev['ais_chains']} chains, "
        f"{ev['ais_steps_timed']} steps timed and scaled to 1,000.",
        "",
        "## Several configurations on one device (training steps/s, all together)",
        "",
        "| model | S | configurations | processes | streams |",
        "|---|---|---|---|---|",
    ]
    for c in r["concurrency"]:
        cells = [
            f"{c[kind + '_steps_per_s']:.0f}"
            if kind + "_steps_per_s" in c
            else f"failed ({c[kind + '_error']})"
            for kind in ("processes", "streams")
        ]
        lines.append(f"| {c['model']} | {c['members']} | {c['configurations']} | {cells[0]} | {cells[1]} |")
    if "packs" in r:
        lines += ["", *pack_lines(r["packs"])]
    if "protocol" in r:
        lines += ["", *protocol_lines(r["protocol"])]
    return "\n".join(lines) + "\n"


def pack_lines(packs: list[dict[str, Any]]) -> list[str]:
    """The packed per-member cost (`avae.bench.gpu_packs.pack_costs`)."""
    lines = [
        "## Packs of Table 1 (graphed training step)",
        "",
        "| model | configurations | S | latent dims | noise dims | packed ms/step | µs per member-step | "
        "unpadded, same S, ms/step | µs per member-step at the reference S |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in packs:
        lines.append(
            f"| {p['model']} | {p['configurations']} | {p['members']} | "
            f"{', '.join(map(str, p['latent_dims']))} | {', '.join(map(str, p['noise_dims']))} | "
            f"{p['packed_ms']:.3f} | {p['packed_us_per_member']:.1f} | {p['plain_ms']:.3f} | "
            f"{p['reference_us_per_member']:.1f} (S={p['reference_members']}) |"
        )
    return lines


def protocol_lines(p: dict[str, Any]) -> list[str]:
    """The timed phases of a whole reproduction (`avae.bench.gpu.protocol_seconds`)."""
    packed = "with --pack" if p.get("pack") else "without --pack"
    lines = [
        f"Protocol `{p['profile']}` ({packed}): {p['seconds']:.0f} s in all (exit {p['returncode']}):",
        "",
    ]
    return lines + [
        f"- {name.replace('_', ' ')}: {phase['seconds']:.0f} s (exit {phase['returncode']}), "
        f"`{phase['command']}`"
        for name, phase in p["phases"].items()
    ]
