"""Tables and figures: sample grids (Fig. 8), and `avae report DIR`, which turns the run directories
of `avae reproduce` into report.md with Table 1 beside the paper, honest likelihoods, Figs. 6-8, a
verdict for each of the paper's claims, and analyses beyond the paper (see `write_report`)."""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avae.models import LatentModel
from avae.nets import MemberRandom


def image_grid(images: np.ndarray, rows: int = 8, side: int = 28, pad: int = 2) -> np.ndarray:
    """Tile `images` [n, side*side] with values in [0, 1] into one array, `rows` per column."""
    n = len(images)
    cols = -(-n // rows)
    grid = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (side + pad), pad + c * (side + pad)
        grid[top : top + side, left : left + side] = image.reshape(side, side)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, rows: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avae.io import atomic_write_bytes

    path = Path(path)
    grid = image_grid(np.clip(images, 0, 1), rows=rows)
    buffer = io.BytesIO()
    plt.imsave(buffer, grid, cmap="gray", vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_sample_grids(model: LatentModel, seeds: Sequence[int], out: Path, n: int = 64) -> list[Path]:
    """One 8x8 grid of decoder means for z ~ p(z) per member: `samples_seed{seed}.png`."""
    device = next(model.parameters()).device
    samples = model.sample(n, MemberRandom(seeds, "samples", device)).float().cpu().numpy()
    return [save_image_grid(samples[m], out / f"samples_seed{seed}.png") for m, seed in enumerate(seeds)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ==================================================================================================
# `avae report DIR`: report.md, PNG figures and CSV files from the run directories of a reproduction
# ==================================================================================================

MODEL_LABELS = {"vae": "VAE", "vae-noise": "VAE+eps", "avb": "AVB", "avae": "AVAE"}
DATASET_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
ALPHA = 0.05  # per comparison, two-sided Welch t-test; no correction for multiple comparisons


# --- a small classifier whose features measure sample quality (Frechet distance) -----------------


def classifier_net():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def classifier_path(out: str | Path, dataset: str) -> Path:
    return Path(out) / "classifiers" / f"{dataset}.safetensors"


def ensure_classifier(
    path: str | Path,
    dataset: str,
    *,
    epochs: int = 3,
    subset: int = 0,
    device: str = "cpu",
    data_dir: str | None = None,
) -> Path:
    """Train the feature classifier of `dataset` once (784-256-128-10 ReLU MLP, Adam 1e-3, batch 128,
    seed 0) and cache it as safetensors at `path`; an existing file is reused. A file lock keeps
    parallel workers from training it twice."""
    import fcntl

    import torch

    from avae import data
    from avae.io import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                return path
            started = time.perf_counter()
            images, labels = data.load_split(dataset, "train", data_dir)
            if subset:
                images, labels = images[:subset], labels[:subset]
            x = torch.from_numpy(images).float().div_(255).to(device)
            y = torch.from_numpy(labels.astype("int64")).to(device)
            generator = torch.Generator().manual_seed(0)
            torch.manual_seed(0)
            net = classifier_net().to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=generator).to(device)
                for start in range(0, len(x), 128):
                    batch = order[start : start + 128]
                    loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            test_images, test_labels = data.load_split(dataset, "test", data_dir)
            with torch.no_grad():
                logits = net(torch.from_numpy(test_images).float().div_(255).to(device))
                accuracy = float(
                    (logits.argmax(1).cpu() == torch.from_numpy(test_labels.astype("int64"))).float().mean()
                )
            meta = {
                "dataset": dataset,
                "architecture": "784-256-128-10 ReLU MLP; features: the 128 penultimate units",
                "epochs": epochs,
                "train_images": len(x),
                "test_accuracy": round(accuracy, 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
            from safetensors.torch import save

            tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            atomic_write_bytes(path, save(tensors, metadata={"avae_classifier": json.dumps(meta)}))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def load_classifier(path: str | Path, device: str = "cpu"):
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as handle:  # safetensors: no pickle
        meta = json.loads((handle.metadata() or {}).get("avae_classifier", "{}"))
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    net = classifier_net()
    net.load_state_dict(tensors)
    return net.to(device).eval(), meta


def classifier_features(net, x):
    """The penultimate (128-unit) activations of images x [N, 784], float64 numpy."""
    import torch

    with torch.no_grad():
        return net[:4](x).double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets [N, F]."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # near-singular covariances of few samples: handled below
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))


# --- aggregate posterior, active units, reconstructions -------------------------------------------


def gaussian_fit_kl(z: np.ndarray) -> float:
    """KL( N(mean, cov) fitted to samples z [N, Z] || N(0, I) ), in nats."""
    mean, cov = z.mean(0), np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1])
    _, logdet = np.linalg.slogdet(cov)
    return float(0.5 * (np.trace(cov) + mean @ mean - z.shape[1] - logdet))


def mmd_to_prior(z: np.ndarray, rng: np.random.Generator, limit: int = 2000) -> float:
    """Unbiased MMD^2 between samples z [N, Z] of q(z) and as many draws from N(0, I), with the
    inverse multiquadratic kernel C / (C + |a - b|^2), C = 2 Z (as in Wasserstein autoencoders)."""
    z = z[:limit]
    p = rng.standard_normal(z.shape)
    c = 2.0 * z.shape[1]

    def kernel(a, b):
        d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return c / (c + np.maximum(d, 0))

    n = len(z)
    kzz, kpp, kzp = kernel(z, z), kernel(p, p), kernel(z, p)
    off = 1 - np.eye(n)
    return float((kzz * off).sum() / (n * (n - 1)) + (kpp * off).sum() / (n * (n - 1)) - 2 * kzp.mean())


def encoder_draws(model, x, rng, draws: int = 1):
    """z ~ q(z|x) [S, N, Z] (one draw) and the posterior mean E_q[z|x] over `draws` draws of
    everything random in the encoder (eps1 for the noise-injected ones, AVB's noise)."""
    if hasattr(model, "posterior"):
        locs = [model.posterior(x, rng).loc for _ in range(draws)]
        return model.reparameterise(model.posterior(x, rng), rng), sum(locs) / draws
    zs = [model.encode(x, rng) for _ in range(draws)]
    return zs[0], sum(zs) / draws


def compute_extras(
    run_dir: str | Path,
    *,
    classifier: str | Path,
    samples: int = 1000,
    device: str = "cpu",
    data_dir: str | None = None,
) -> dict:
    """Beyond the paper, per member: KL of a Gaussian fitted to q(z) to p(z), MMD(q(z), p(z)), active
    units, and the Frechet distance of samples to test images on the classifier's features. Writes
    RUN_DIR/extras.json and a reconstruction grid RUN_DIR/recon_seed{seed}.png (first member)."""
    import torch

    from avae import data
    from avae.io import write_json
    from avae.train import load_run

    run_dir = Path(run_dir)
    cfg, model, meta = load_run(run_dir, device)
    model.requires_grad_(False).eval()
    net, net_meta = load_classifier(classifier, device)
    test_x = data.load_pixels(cfg.dataset, "test", cfg.pixels, data_dir)[:samples].to(device)
    train_x = data.load_pixels(cfg.dataset, "train", cfg.pixels, data_dir)[-len(test_x) :].to(device)
    n, members = len(test_x), len(cfg.seeds)
    rng = MemberRandom(cfg.seeds, "extras", device)
    with torch.no_grad():
        x = test_x.unsqueeze(0).expand(members, -1, -1)
        z, z_mean = encoder_draws(model, x, rng, draws=10)
        recon = obj_mean(model, z[:, :32])
        generated = model.sample(n, MemberRandom(cfg.seeds, "extras-samples", device)).float()
        test_features = classifier_features(net, test_x)
        reference = frechet_distance(classifier_features(net, train_x), test_features)
        per_member = []
        np_rng = np.random.default_rng(0)
        for m, seed in enumerate(cfg.seeds):
            zm = z[m].double().cpu().numpy()
            activity = z_mean[m].double().var(0).cpu().numpy()
            per_member.append(
                {
                    "seed": seed,
                    "kl_fitted_gaussian": gaussian_fit_kl(zm),
                    "mmd": mmd_to_prior(zm, np_rng),
                    "active_units": int((activity > 0.01).sum()),
                    "frechet_distance": frechet_distance(
                        classifier_features(net, generated[m]), test_features
                    ),
                }
            )
    pairs = torch.stack([test_x[:32], recon[0]], 1).reshape(64, -1)  # original, reconstruction, ...
    save_image_grid(pairs.cpu().numpy(), run_dir / f"recon_seed{cfg.seeds[0]}.png")
    record = {
        "epoch": meta["epoch"],
        "points": n,
        "latent_dim": cfg.model.latent_dim,
        "classifier": {
            k: net_meta.get(k) for k in ("architecture", "epochs", "train_images", "test_accuracy")
        },
        "reference_frechet_distance": reference,
        "per_member": per_member,
        "definitions": {
            "kl_fitted_gaussian": "KL(N(mean, cov) fitted to one z ~ q(z|x) per test image || N(0, I))",
            "mmd": "unbiased MMD^2 to N(0, I), inverse multiquadratic kernel, C = 2 * latent_dim",
            "active_units": "units u with Cov_x(E_q[z_u|x]) > 0.01 (Burda et al. 2016); E_q over 10 draws",
            "frechet_distance": "Frechet distance, decoder-mean samples vs test images, classifier features",
            "reference_frechet_distance": "the same distance between training and test images",
        },
    }
    write_json(run_dir / "extras.json", record)
    return record


def obj_mean(model, z):
    from avae import objectives as obj

    return obj.decoder_distribution(model.cfg.likelihood, model.decoder(z)).mean.float()


# --- collecting the runs of a reproduction -------------------------------------------------------


@dataclass
class RunResult:
    """One run directory as the report sees it."""

    dir: Path
    cfg: Any
    rows: list[dict]
    eval: dict
    extras: dict
    trained_epochs: int

    @property
    def key(self) -> tuple[str, str, int, int]:
        m = self.cfg.model
        return (self.cfg.dataset, m.name, m.latent_dim, m.noise_dim)

    @property
    def finished(self) -> bool:
        return self.trained_epochs >= self.cfg.epochs

    def metric(self, key: str) -> list[float] | None:
        entry = (
            self.eval.get("metrics", {}).get(key) if self.eval.get("epoch") == self.trained_epochs else None
        )
        return [row["value"] for row in entry["per_member"]] if entry else None

    def extra(self, key: str) -> list[float] | None:
        if self.extras.get("epoch") != self.trained_epochs:
            return None
        return [row[key] for row in self.extras.get("per_member", [])] or None


def collect_runs(out: str | Path) -> list[RunResult]:
    """Every run directory under `out` (a config.json and a checkpoint); when `out/reproduce.json`
    lists the planned runs, only those. Nothing but the run directories is needed."""
    from avae.checkpoint import load_checkpoint
    from avae.io import read_json
    from avae.train import CHECKPOINT, config_hash, make_config, read_metrics

    out = Path(out)
    manifest = out / "reproduce.json"
    wanted = {r["key"] for r in read_json(manifest)["runs"]} if manifest.exists() else None
    runs = []
    for config in sorted(out.glob("*/config.json")):
        run_dir = config.parent
        cfg = make_config(read_json(config)["config"])
        if wanted is not None and config_hash(cfg) not in wanted:
            continue
        if not (run_dir / CHECKPOINT).exists():
            continue
        epoch = int(load_checkpoint(run_dir / CHECKPOINT)[1]["epoch"])
        runs.append(
            RunResult(
                run_dir,
                cfg,
                read_metrics(run_dir / "metrics.csv"),
                read_json(run_dir / "eval.json") if (run_dir / "eval.json").exists() else {},
                read_json(run_dir / "extras.json") if (run_dir / "extras.json").exists() else {},
                epoch,
            )
        )
    return runs


def index_runs(runs: list[RunResult]) -> dict[tuple[str, str, int, int], RunResult]:
    """(dataset, model, latent, noise) -> the run trained furthest (then with most seeds)."""
    best: dict[tuple[str, str, int, int], RunResult] = {}
    for run in runs:
        old = best.get(run.key)
        if old is None or (run.trained_epochs, len(run.cfg.seeds)) > (old.trained_epochs, len(old.cfg.seeds)):
            best[run.key] = run
    return best


# --- statistics ----------------------------------------------------------------------------------


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (t distribution, n - 1 dof); nan
    half-width for a single value."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    sem = float(values.std(ddof=1) / np.sqrt(len(values)))
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * sem)


def fmt_ci(values: Sequence[float] | None, digits: int = 2) -> str:
    if not values:
        return "-"
    mean, half = mean_ci(values)
    if np.isnan(half):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def welch(better: Sequence[float], worse: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of 'better' < 'worse' (lower is better): difference, t, two-sided p and the
    outcome: agrees (claimed direction, p < ALPHA), contradicts (opposite, p < ALPHA) or unclear."""
    from scipy import stats

    a, b = np.asarray(better, float), np.asarray(worse, float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "t": float("nan"), "p": float("nan"), "outcome": "unclear (fewer than 2 seeds)"}
    if a.std() == 0 and b.std() == 0:
        t, p = (float("inf") * np.sign(diff) if diff else 0.0), (0.0 if diff else 1.0)
    else:
        t, p = stats.ttest_ind(a, b, equal_var=False)
    outcome = "unclear"
    if p < ALPHA:
        outcome = "agrees" if diff < 0 else "contradicts"
    return {"diff": diff, "t": float(t), "p": float(p), "outcome": outcome}


# --- figures ---------------------------------------------------------------------------------------


def curve_stats(run: RunResult, column: str = "test_neg_elbo") -> list[dict[str, float]]:
    """Per epoch: mean and 95% CI band over the run's seeds of `column` in metrics.csv."""
    by_epoch: dict[int, list[float]] = {}
    for row in run.rows:
        if row["epoch"] <= run.trained_epochs:
            by_epoch.setdefault(int(row["epoch"]), []).append(float(row[column]))
    points = []
    for epoch, values in sorted(by_epoch.items()):
        mean, half = mean_ci(values)
        half = 0.0 if np.isnan(half) else half
        points.append(
            {"epoch": epoch, "seeds": len(values), "mean": mean, "lo": mean - half, "hi": mean + half}
        )
    return points


def plot_curves(panels: list[dict[str, Any]], path: Path, title: str) -> None:
    """One subplot per panel; each panel {"title", "curves": [(label, points)]}; seed bands shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from avae.io import atomic_write_bytes

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, points in panel["curves"]:
            if not points:
                continue
            epochs = [p["epoch"] for p in points]
            line = ax.plot(epochs, [p["mean"] for p in points], marker="o", markersize=3, label=label)[0]
            ax.fill_between(
                epochs,
                [p["lo"] for p in points],
                [p["hi"] for p in points],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test negative ELBO (nats)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    import csv

    from avae.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def copy_file(source: Path, target: Path) -> bool:
    from avae.io import atomic_write_bytes

    if not source.exists():
        return False
    atomic_write_bytes(target, source.read_bytes())
    return True


# --- the report ------------------------------------------------------------------------------------

CLAIMS = [
    (1, "Injecting noise into the encoder improves the bound (VAE+eps better than VAE).", "neg_elbo"),
    (2, "Noise dimension 10 is best (VAE+eps, latent 10: 10 better than 5 and than 15).", "neg_elbo"),
    (
        3,
        "AVAE beats VAE+eps and AVB on the bound (latent 10 and 15; at 20 the paper has AVB close or ahead).",
        "neg_elbo",
    ),
    (4, "Latent dimension 10 is best for every model (10 better than 15 and than 20).", "neg_elbo"),
    (
        5,
        "AVAE and AVB give sharper samples than VAE+eps (tested as a lower Frechet distance to test "
        "images on the project's classifier features, latent 10).",
        "frechet_distance",
    ),
]


def noise_of(model: str, noise: int = 10) -> int:
    from avae.models import MODELS

    return 0 if MODELS[model].noise_free else noise


def claim_pairs(claim: int, dataset: str) -> list[tuple[tuple, tuple]]:
    """(claimed better, claimed worse) run keys of one claim on one data set."""
    k = lambda model, latent, noise=10: (dataset, model, latent, noise_of(model, noise))  # noqa: E731
    if claim == 1:
        return [(k("vae-noise", z), k("vae", z)) for z in (10, 15, 20)]
    if claim == 2:
        return [(k("vae-noise", 10, 10), k("vae-noise", 10, other)) for other in (5, 15)]
    if claim == 3:
        return [(k("avae", z), k(rival, z)) for z in (10, 15) for rival in ("vae-noise", "avb")]
    if claim == 4:
        return [(k(m, 10), k(m, z)) for m in ("vae", "vae-noise", "avb", "avae") for z in (15, 20)]
    return [(k(m, 10), k("vae-noise", 10)) for m in ("avae", "avb")]


def key_label(key: tuple) -> str:
    _, model, latent, noise = key
    return f"{MODEL_LABELS[model]} z{latent}" + (f" n{noise}" if noise else "")


def run_values(run: RunResult | None, metric: str) -> list[float] | None:
    if run is None:
        return None
    return run.extra(metric) if metric == "frechet_distance" else run.metric(metric)


def fmt_p(p: float) -> str:
    return "-" if np.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def claims_section(table: dict, datasets: list[str], figdir: Path, iwae_key: str) -> str:
    lines = [
        "## The paper's claims, tested",
        "",
        f"Each comparison is a two-sided Welch t-test across seeds (unequal variances, alpha = {ALPHA}, "
        "no correction for multiple comparisons) of the claimed-better configuration against the "
        "claimed-worse one; lower is better for every figure. A comparison *agrees* when the claimed "
        "direction holds with p < alpha, *contradicts* when the opposite holds with p < alpha, and is "
        "*unclear* otherwise. Verdict: **supported** when every comparison agrees, **not supported** "
        "when at least one contradicts, **inconclusive** otherwise (including missing runs). Claims "
        "1-4 are tested on the paper's own figure (each model's objective on test data); the last "
        f"column repeats the test on the honest {iwae_key.replace('_k', '-').upper()} bound where it "
        "was evaluated, for information only (it does not enter the verdict).",
    ]
    csv_rows = []
    for claim, text, metric in CLAIMS:
        rows, outcomes = [], []
        for dataset in datasets:
            for better, worse in claim_pairs(claim, dataset):
                a, b = run_values(table.get(better), metric), run_values(table.get(worse), metric)
                if not a or not b:
                    rows.append(
                        [
                            DATASET_LABELS[dataset],
                            f"{key_label(better)} < {key_label(worse)}",
                            fmt_ci(a),
                            fmt_ci(b),
                            "-",
                            "-",
                            "-",
                            "missing run",
                            "-",
                        ]
                    )
                    outcomes.append("missing")
                    continue
                test = welch(a, b)
                outcomes.append(test["outcome"])
                honest = "-"
                if metric != "frechet_distance":
                    ha, hb = run_values(table.get(better), iwae_key), run_values(table.get(worse), iwae_key)
                    if ha and hb:
                        h = welch(ha, hb)
                        honest = f"{h['outcome']} (diff {h['diff']:+.2f}, p {fmt_p(h['p'])})"
                rows.append(
                    [
                        DATASET_LABELS[dataset],
                        f"{key_label(better)} < {key_label(worse)}",
                        fmt_ci(a),
                        fmt_ci(b),
                        f"{test['diff']:+.2f}",
                        f"{test['t']:.2f}",
                        fmt_p(test["p"]),
                        test["outcome"],
                        honest,
                    ]
                )
                csv_rows.append(
                    [
                        claim,
                        dataset,
                        key_label(better),
                        key_label(worse),
                        metric,
                        test["diff"],
                        test["t"],
                        test["p"],
                        test["outcome"],
                    ]
                )
        if outcomes and all(o == "agrees" for o in outcomes):
            verdict = "supported"
        elif any(o == "contradicts" for o in outcomes):
            verdict = "not supported"
        else:
            verdict = "inconclusive"
        counts = {
            o: sum(x.startswith(o) for x in outcomes) for o in ("agrees", "contradicts", "unclear", "missing")
        }
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        figure = "Frechet distance" if metric == "frechet_distance" else "test negative ELBO"
        lines += [
            "",
            f"### Claim {claim}: {text}",
            "",
            f"**Verdict: {verdict}** (Welch's t-test on the per-seed {figure}; {len(outcomes)} "
            f"comparisons: {summary}).",
            "",
            format_table(
                [
                    "data set",
                    "claim (lower is better)",
                    "better: mean ± 95% CI",
                    "worse: mean ± 95% CI",
                    "difference",
                    "t",
                    "p",
                    "outcome",
                    f"on {iwae_key.replace('iwae_k', 'IWAE-')}",
                ],
                rows,
            ),
        ]
    write_csv(
        figdir / "claims.csv",
        ["claim", "dataset", "better", "worse", "metric", "difference", "t", "p", "outcome"],
        csv_rows,
    )
    return "\n".join(lines)


def table1_section(table: dict, datasets: list[str], figdir: Path) -> str:
    from avae.experiments import PAPER_TABLE1

    lines = [
        "## Table 1: test negative ELBO, ours beside the paper's",
        "",
        "Nats, lower is better. Ours: mean ± 95% confidence interval over seeds (t distribution, n - 1 "
        "degrees of freedom) of each model's own objective on the test images, as the paper reports it "
        "(for VAE, VAE+eps and AVAE a lower bound on log p(x) under the Bernoulli decoder; for AVB a "
        "discriminator-based estimate, not a bound). Paper: its Table 1 (60,000 training images; its "
        "epochs and number of runs are not stated).",
    ]
    csv_rows = []
    for dataset in datasets:
        header = ["model"]
        for latent in (10, 15, 20):
            header += [f"z={latent} ours", f"z={latent} paper"]
        rows = []
        for model in ("vae", "vae-noise", "avb", "avae"):
            row = [MODEL_LABELS[model]]
            for latent in (10, 15, 20):
                run = table.get((dataset, model, latent, noise_of(model)))
                values = run.metric("neg_elbo") if run else None
                paper = PAPER_TABLE1[dataset][model][latent]
                row += [fmt_ci(values) if values else "not run", f"{paper:g}"]
                mean, half = mean_ci(values) if values else (float("nan"), float("nan"))
                csv_rows.append(
                    [
                        dataset,
                        model,
                        latent,
                        len(values or []),
                        mean,
                        half,
                        paper,
                        run.trained_epochs if run else 0,
                    ]
                )
            rows.append(row)
        example = next((r for r in table.values() if r.cfg.dataset == dataset), None)
        detail = ""
        if example is not None:
            points = example.eval.get("metrics", {}).get("neg_elbo", {}).get("points", "?")
            detail = (
                f" ({len(example.cfg.seeds)} seeds, {example.cfg.epochs} epochs, "
                f"{example.cfg.train_subset or 60000} training images, {points} test images)"
            )
        lines += ["", f"### {DATASET_LABELS[dataset]}{detail}", "", format_table(header, rows)]
    write_csv(
        figdir / "table1.csv",
        ["dataset", "model", "latent_dim", "seeds", "mean", "ci95", "paper", "epochs"],
        csv_rows,
    )
    lines += ["", "CSV: [report/table1.csv](report/table1.csv)"]
    return "\n".join(lines)


def honest_section(table: dict, datasets: list[str], figdir: Path, iwae_key: str) -> str:
    lines = [
        "## Honest figures: importance-weighted bound and annealed importance sampling",
        "",
        f"Negative {iwae_key.replace('iwae_k', 'IWAE-')} (Burda et al.; each model's encoder as the "
        "proposal, for AVB a "
        "Gaussian fitted to its samples) and negative AIS (from the prior, HMC transitions): both "
        "estimate -log p(x) from above in expectation and mean the same thing for every model, "
        "unlike the paper's figure. Mean ± 95% CI over seeds.",
    ]
    rows, csv_rows, missing = [], [], []
    honest_flags = set()
    for dataset in datasets:
        for latent in (10, 15, 20):
            for model in ("vae", "vae-noise", "avb", "avae"):
                run = table.get((dataset, model, latent, noise_of(model)))
                if run is None:
                    continue
                metrics = run.eval.get("metrics", {}) if run.eval.get("epoch") == run.trained_epochs else {}
                cells = []
                for key in ("neg_elbo", "iwae_k1", iwae_key, "ais"):
                    values = run.metric(key)
                    cells.append(fmt_ci(values) if values else "not evaluated")
                    if key in metrics:
                        honest_flags.add(bool(metrics[key].get("is_log_likelihood")))
                    mean, half = mean_ci(values) if values else (float("nan"), float("nan"))
                    csv_rows.append(
                        [
                            dataset,
                            model,
                            latent,
                            key,
                            len(values or []),
                            mean,
                            half,
                            metrics.get(key, {}).get("points", ""),
                        ]
                    )
                if iwae_key not in metrics or "ais" not in metrics:
                    missing.append(run.dir)
                points = "/".join(str(metrics.get(k, {}).get("points", "-")) for k in (iwae_key, "ais"))
                rows.append([DATASET_LABELS[dataset], MODEL_LABELS[model], latent, *cells, points])
    lines += [
        "",
        format_table(
            [
                "data set",
                "model",
                "latent",
                "paper's figure (ours)",
                "IWAE-1",
                iwae_key.replace("iwae_k", "IWAE-"),
                "AIS",
                "test points (IWAE/AIS)",
            ],
            rows,
        ),
    ]
    if False in honest_flags:
        lines += [
            "",
            "Caution: these runs use a Bernoulli decoder on continuous grey-level pixels (the paper's "
            "setting), which is not a normalised density on [0, 1]^784, so the figures are comparable "
            "between models but are not log-likelihoods. `--pixels binarized` or `--likelihood "
            "continuous-bernoulli` make them log-likelihoods.",
        ]
    if missing:
        lines += ["", f"{len(missing)} run(s) marked *not evaluated*; evaluate them with:", "", "```bash"]
        lines += [f"avae evaluate {d} --metrics iwae,ais" for d in missing]
        lines += ["avae report " + str(missing[0].parent), "```"]
    write_csv(
        figdir / "honest.csv",
        ["dataset", "model", "latent_dim", "metric", "seeds", "mean", "ci95", "points"],
        csv_rows,
    )
    lines += ["", "CSV: [report/honest.csv](report/honest.csv)"]
    return "\n".join(lines)


def curves_section(table: dict, datasets: list[str], figdir: Path, which: str) -> str:
    if which == "fig6":
        title = "Fig. 6: VAE+eps with noise dimension 5, 10, 15 against the VAE (latent 10)"
        panels = [
            {
                "title": DATASET_LABELS[d],
                "keys": [(d, "vae", 10, 0)] + [(d, "vae-noise", 10, n) for n in (5, 10, 15)],
            }
            for d in datasets
        ]
    else:
        title = "Fig. 7: VAE, VAE+eps and AVAE over training (latent 10 and 15)"
        panels = [
            {
                "title": f"{DATASET_LABELS[d]}, latent {z}",
                "keys": [(d, m, z, noise_of(m)) for m in ("vae", "vae-noise", "avae")],
            }
            for d in datasets
            for z in (10, 15)
        ]
    csv_rows = []
    for panel in panels:
        panel["curves"] = []
        for key in panel["keys"]:
            run = table.get(key)
            points = curve_stats(run) if run else []
            panel["curves"].append((key_label(key), points))
            csv_rows += [
                [key[0], key[1], key[2], key[3], p["epoch"], p["seeds"], p["mean"], p["lo"], p["hi"]]
                for p in points
            ]
    plot_curves(panels, figdir / f"{which}.png", title)
    write_csv(
        figdir / f"{which}.csv",
        ["dataset", "model", "latent_dim", "noise_dim", "epoch", "seeds", "mean", "ci95_low", "ci95_high"],
        csv_rows,
    )
    missing = [key_label(k) + f" ({k[0]})" for p in panels for k in p["keys"] if k not in table]
    note = f" Missing runs: {', '.join(missing)}." if missing else ""
    return "\n".join(
        [
            f"## {title}",
            "",
            "Test negative ELBO after every epoch (metrics.csv), mean over seeds with a shaded 95% CI band."
            + note,
            "",
            f"![{which}](report/{which}.png)",
            "",
            f"CSV: [report/{which}.csv](report/{which}.csv)",
        ]
    )


def fig8_section(table: dict, datasets: list[str], figdir: Path) -> str:
    lines = [
        "## Fig. 8: samples from the prior (latent 10, noise 10)",
        "",
        "Decoder means for 64 draws z ~ p(z), first seed of each run.",
        "",
        "| data set | VAE+eps | AVAE | AVB |",
        "|---|---|---|---|",
    ]
    for dataset in datasets:
        cells = []
        for model in ("vae-noise", "avae", "avb"):
            run = table.get((dataset, model, 10, 10))
            name = f"fig8_{dataset}_{model}.png"
            if run is not None and copy_file(run.dir / f"samples_seed{run.cfg.seeds[0]}.png", figdir / name):
                cells.append(f"![{model}](report/{name})")
            else:
                cells.append("missing run")
        lines.append(f"| {DATASET_LABELS[dataset]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beyond_section(table: dict, datasets: list[str], figdir: Path) -> str:
    lines = [
        "## Beyond the paper",
        "",
        "### Reconstructions (latent 10)",
        "",
        "Pairs of columns: a test image, then its reconstruction (decoder mean of one z ~ q(z|x)); "
        "first seed.",
        "",
        "| data set | VAE | VAE+eps | AVB | AVAE |",
        "|---|---|---|---|---|",
    ]
    for dataset in datasets:
        cells = []
        for model in ("vae", "vae-noise", "avb", "avae"):
            run = table.get((dataset, model, 10, noise_of(model)))
            name = f"recon_{dataset}_{model}.png"
            if run is not None and copy_file(run.dir / f"recon_seed{run.cfg.seeds[0]}.png", figdir / name):
                cells.append(f"![{model}](report/{name})")
            else:
                cells.append("missing run")
        lines.append(f"| {DATASET_LABELS[dataset]} | " + " | ".join(cells) + " |")
    rows, csv_rows, refs = [], [], {}
    keys = ("active_units", "kl_fitted_gaussian", "mmd", "frechet_distance")
    order = list(MODEL_LABELS)
    for key in sorted(table, key=lambda k: (datasets.index(k[0]), k[2], order.index(k[1]), k[3])):
        run = table[key]
        if not run.extras or run.extras.get("epoch") != run.trained_epochs:
            continue
        refs[key[0]] = (run.extras["reference_frechet_distance"], run.extras.get("classifier", {}))
        cells = []
        for metric in keys:
            values = run.extra(metric)
            cells.append(fmt_ci(values, 1 if metric == "active_units" else 3))
            mean, half = mean_ci(values)
            csv_rows.append([key[0], key[1], key[2], key[3], metric, len(values), mean, half])
        rows.append([DATASET_LABELS[key[0]], key_label(key), f"{cells[0]} of {key[2]}", *cells[1:]])
    lines += [
        "",
        "### Aggregate posterior against the prior, active units, sample quality",
        "",
        "Per run, mean ± 95% CI over seeds. *KL fit*: KL(N(m, C) || N(0, I)) for a Gaussian with full "
        "covariance fitted to one z ~ q(z|x) per test image (0 when the aggregate posterior q(z) "
        "matches the prior in its first two moments). *MMD*: unbiased MMD^2 between those z and draws "
        "from N(0, I), inverse multiquadratic kernel. *Active units*: latent units whose posterior "
        "mean varies across test images, Cov_x(E_q[z_u|x]) > 0.01 (Burda et al. 2016). *FD*: Frechet "
        "distance between the features of decoder-mean samples and of test images, on the 128 "
        "penultimate units of a 784-256-128-10 MLP classifier trained by the project (lower is better).",
        "",
        format_table(["data set", "run", "active units", "KL fit (nats)", "MMD^2", "FD"], rows),
    ]
    for dataset, (ref, info) in refs.items():
        lines.append(
            f"\n{DATASET_LABELS[dataset]}: reference FD between training and test images {ref:.3f}; "
            "classifier "
            f"test accuracy {info.get('test_accuracy')}, {info.get('epochs')} epoch(s) on "
            f"{info.get('train_images')} images."
        )
    write_csv(
        figdir / "beyond.csv",
        ["dataset", "model", "latent_dim", "noise_dim", "metric", "seeds", "mean", "ci95"],
        csv_rows,
    )
    lines += ["", "CSV: [report/beyond.csv](report/beyond.csv)"]
    return "\n".join(lines)


def runs_section(runs: list[RunResult], out: Path) -> str:
    rows = [
        [
            r.dir.name,
            MODEL_LABELS[r.cfg.model.name],
            DATASET_LABELS[r.cfg.dataset],
            r.cfg.model.latent_dim,
            r.cfg.model.noise_dim,
            ",".join(map(str, r.cfg.seeds)),
            f"{r.trained_epochs}/{r.cfg.epochs}",
            r.cfg.train_subset or 60000,
            r.cfg.test_subset or 10000,
        ]
        for r in runs
    ]
    return "\n".join(
        [
            "## Runs",
            "",
            f"Every figure above comes from these run directories under `{out}` (config.json, metrics.csv, "
            "checkpoint.safetensors, eval.json, extras.json).",
            "",
            format_table(
                [
                    "run",
                    "model",
                    "data set",
                    "latent",
                    "noise",
                    "seeds",
                    "epochs",
                    "train images",
                    "test images",
                ],
                rows,
            ),
        ]
    )


def write_report(out: str | Path, *, device: str = "cpu", data_dir: str | None = None) -> Path:
    """Write OUT/report.md, with figures and CSV files under OUT/report/, from the run directories."""
    from avae.errors import ConfigError
    from avae.experiments import DATASETS
    from avae.io import atomic_write_text, read_json

    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a directory; give the --out of `avae reproduce`")
    manifest = read_json(out / "reproduce.json") if (out / "reproduce.json").exists() else {}
    settings = manifest.get("settings", {})
    runs = collect_runs(out)
    if not runs:
        raise ConfigError(f"no trained runs in {out}; run `avae reproduce --out {out}` first")
    for run in runs:
        if run.extras.get("epoch") != run.trained_epochs:
            path = ensure_classifier(
                classifier_path(out, run.cfg.dataset),
                run.cfg.dataset,
                epochs=settings.get("classifier_epochs", 3),
                subset=settings.get("classifier_subset", 0),
                device=device,
                data_dir=data_dir,
            )
            run.extras = compute_extras(
                run.dir,
                classifier=path,
                samples=settings.get("extras_samples", 1000),
                device=device,
                data_dir=data_dir,
            )
    table = index_runs(runs)
    datasets = [d for d in DATASETS if any(k[0] == d for k in table)]
    figdir = out / "report"
    figdir.mkdir(parents=True, exist_ok=True)
    iwae_key = f"iwae_k{settings.get('iwae_k', 1000)}"
    profile = manifest.get("profile", "unknown (no reproduce.json)")
    sections = [
        "# Reproduction report: Variational Autoencoder Model Based on Adversarial Strategy (AVAE)\n\n"
        f"Profile `{profile}`, {len(runs)} runs, data sets: "
        f"{', '.join(DATASET_LABELS[d] for d in datasets)}. "
        "Written by `avae report` from the run directories alone; re-run it after more runs finish.",
        table1_section(table, datasets, figdir),
        honest_section(table, datasets, figdir, iwae_key),
        curves_section(table, datasets, figdir, "fig6"),
        curves_section(table, datasets, figdir, "fig7"),
        fig8_section(table, datasets, figdir),
        claims_section(table, datasets, figdir, iwae_key),
        beyond_section(table, datasets, figdir),
        runs_section(runs, out),
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path
