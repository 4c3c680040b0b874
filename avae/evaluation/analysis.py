"""Analyses beyond the paper, computed once per run and stored in RUN_DIR/analysis.json:

- how far the aggregate posterior q(z) is from p(z): KL of a Gaussian fitted to q(z) samples, MMD;
- active latent units (Burda et al. 2016);
- a Frechet distance of samples to test images on the features of a classifier trained once per
  data set and cached as safetensors;
- a reconstruction grid;
- whether a noise-injected encoder uses its noise (`noise_usage`, on demand: scripts/noise_usage.py).

`avae reproduce` (or `avae analyse RUN`) runs them; `avae report` only reads their results.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from scipy import linalg
from torch import nn
from tqdm.auto import tqdm

from avae.core.models import LatentModel
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.errors import ConfigError
from avae.io import atomic_write_bytes, file_lock, write_json
from avae.training.config import Runtime
from avae.training.images import save_image_grid
from avae.training.runs import ANALYSIS, load_run

CLASSIFIER_DIR = "classifiers"


CLASSIFIER = "cnn1"  # names the architecture in the cached file's name, so an old cache is never misread


def classifier_net() -> nn.Sequential:
    """A small convolutional classifier of 28 x 28 images [N, 784]; its features for the Frechet
    distance are the 128 units before the last layer (`classifier_features`)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def classifier_path(out: str | Path, dataset: str) -> Path:
    return Path(out) / CLASSIFIER_DIR / f"{dataset}-{CLASSIFIER}.safetensors"


def ensure_classifier(
    path: str | Path,
    dataset: str,
    *,
    epochs: int = 3,
    subset: int = 0,
    runtime: Runtime | None = None,
) -> Path:
    """The feature classifier of `dataset`, trained once and cached as safetensors at `path`; an
    existing file is reused. A file lock keeps parallel workers from training it twice."""
    train_classifier_once(path, dataset, epochs=epochs, subset=subset, runtime=runtime)
    return Path(path)


def train_classifier_once(
    path: str | Path, dataset: str, *, epochs: int = 3, subset: int = 0, runtime: Runtime | None = None
) -> bool:
    """`ensure_classifier`'s work; True when this call trained the classifier, False when it was
    there already or another process trained it while this one waited for the lock."""
    path = Path(path)
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return False
        net, meta = train_classifier(dataset, epochs=epochs, subset=subset, runtime=runtime or Runtime())
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic_write_bytes(path, save(tensors, metadata={"avae_classifier": json.dumps(meta)}))
    return True


def train_classifier(
    dataset: str, *, epochs: int, subset: int, runtime: Runtime
) -> tuple[nn.Sequential, dict[str, Any]]:
    """The CNN of `classifier_net` trained with Adam 1e-3, batch 128, seed 0, and its test accuracy,
    with a progress bar over its steps on a terminal. The global torch RNG is left as it was."""
    started, device, data_dir = time.perf_counter(), runtime.device, runtime.data_dir
    images, labels = data.load_split(dataset, "train", data_dir)
    if subset:
        images, labels = images[:subset], labels[:subset]
    x = torch.from_numpy(images).float().div_(255).to(device)
    y = torch.from_numpy(labels.astype("int64")).to(device)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = classifier_net().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = epochs * math.ceil(len(x) / 128)
    shown = None if runtime.progress else True  # None: a bar only when stderr is a terminal
    with tqdm(total=steps, desc=f"classifier for {dataset}", unit="step", leave=False, disable=shown) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            for start in range(0, len(x), 128):
                batch = order[start : start + 128]
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update()
    test_images, test_labels = data.load_split(dataset, "test", data_dir)
    with torch.no_grad():
        test_x = torch.from_numpy(test_images).float().div_(255).to(device)
        predicted = torch.cat([net(chunk).argmax(1).cpu() for chunk in test_x.split(1000)])
    accuracy = float((predicted == torch.from_numpy(test_labels.astype("int64"))).float().mean())
    meta = {
        "dataset": dataset,
        "architecture": "CNN conv32-pool-conv64-pool-128-10, ReLU; features: the 128 penultimate units",
        "epochs": epochs,
        "train_images": len(x),
        "test_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return net, meta


def load_classifier(path: str | Path, device: str = "cpu"):
    tensors = {}
    with safe_open(str(path), framework="pt") as handle:  # safetensors: no pickle
        meta = json.loads((handle.metadata() or {}).get("avae_classifier", "{}"))
        for key in handle.keys():
            tensors[key] = handle.get_tensor(key)
    net = classifier_net()
    net.load_state_dict(tensors)
    return net.to(device).eval(), meta


def classifier_features(net, x):
    """The penultimate (128-unit) activations of images x [N, 784], float64 numpy, in batches."""
    with torch.no_grad():
        return torch.cat([net[:-1](chunk) for chunk in x.split(1000)]).double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets [N, F]."""
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


DEFINITIONS = {
    "kl_fitted_gaussian": "KL(N(mean, cov) fitted to one z ~ q(z|x) per test image || N(0, I))",
    "mmd": "unbiased MMD^2 to N(0, I), inverse multiquadratic kernel, C = 2 * latent_dim",
    "active_units": "units u with Cov_x(E_q[z_u|x]) > 0.01 (Burda et al. 2016); E_q over 10 draws",
    "frechet_distance": "Frechet distance, decoder-mean samples vs test images, classifier features",
    "reference_frechet_distance": "the same distance between training and test images",
}


def analyse_run(
    run_dir: str | Path,
    *,
    classifier: str | Path | None,
    samples: int = 1000,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Beyond the paper, per member: KL of a Gaussian fitted to q(z) to p(z), MMD(q(z), p(z)), active
    units, and (with a classifier; the user's own data has none) the Frechet distance of samples to
    test images on the classifier's features. Writes RUN_DIR/analysis.json and a reconstruction grid
    RUN_DIR/recon_seed{seed}.png (first member)."""
    runtime = runtime or Runtime()
    device, run_dir = runtime.device, Path(run_dir)
    cfg, model, meta = load_run(run_dir, device)
    model.requires_grad_(False).eval()
    own = {"test_data": cfg.test_data, "test_fraction": cfg.test_fraction}
    test_x = data.load_pixels(cfg.dataset, "test", cfg.pixels, runtime.data_dir, **own)[:samples].to(device)
    rng = MemberRandom(cfg.seeds, "extras", device)
    with torch.no_grad():
        x = test_x.unsqueeze(0).expand(len(cfg.seeds), -1, -1)
        z = model.encode(x, rng)
        z_mean = sum(model.code_location(x, rng) for _ in range(10)) / 10
        recon = model.decoder_mean(z[:, :32]).float()
    np_rng = np.random.default_rng(0)
    per_member = [
        {
            "seed": seed,
            "kl_fitted_gaussian": gaussian_fit_kl(z[m].double().cpu().numpy()),
            "mmd": mmd_to_prior(z[m].double().cpu().numpy(), np_rng),
            "active_units": int((z_mean[m].double().var(0).cpu().numpy() > 0.01).sum()),
        }
        for m, seed in enumerate(cfg.seeds)
    ]
    record = {"epoch": meta["epoch"], "points": len(test_x), "latent_dim": cfg.model.latent_dim}
    if classifier is not None:
        record.update(sample_quality(model, cfg, test_x, Path(classifier), per_member, runtime))
    pairs = torch.stack([test_x[:32], recon[0]], 1).reshape(-1, test_x.shape[1])  # original, reconstruction
    save_image_grid(pairs.cpu().numpy(), run_dir / f"recon_seed{cfg.seeds[0]}.png")
    record.update(per_member=per_member, definitions=DEFINITIONS)
    write_json(run_dir / ANALYSIS, record)
    return record


def sample_quality(model, cfg, test_x: torch.Tensor, classifier: Path, per_member, runtime: Runtime) -> dict:
    """Each member's Frechet distance of samples to the test images (added to `per_member`), and the
    reference distance between as many training and test images."""
    device = test_x.device
    net, net_meta = load_classifier(classifier, device)
    train_x = data.load_pixels(cfg.dataset, "train", cfg.pixels, runtime.data_dir)[-len(test_x) :].to(device)
    with torch.no_grad():
        generated = model.sample(len(test_x), MemberRandom(cfg.seeds, "extras-samples", device)).float()
        test_features = classifier_features(net, test_x)
        for m, row in enumerate(per_member):
            row["frechet_distance"] = frechet_distance(classifier_features(net, generated[m]), test_features)
        reference = frechet_distance(classifier_features(net, train_x), test_features)
    keys = ("architecture", "epochs", "train_images", "test_accuracy")
    return {"classifier": {k: net_meta.get(k) for k in keys}, "reference_frechet_distance": reference}


# --- does a noise-injected encoder use its noise? ---------------------------------------------------


@dataclass(frozen=True)
class MemberNoiseUsage:
    """One member's noise usage on the test points (variances in latent units squared).

    - mean_spread: Var_eps[mu(x, eps)], averaged over points and coordinates.
    - within_variance: E_eps[sigma^2(x, eps)], averaged over points and coordinates.
    - noise_share: the sum over points and coordinates of Var_eps[mu] over that of
      Var_eps[mu] + E_eps[sigma^2], i.e. the share of tr Var[z|x] due to the noise (0: unused).
    - coordinate_share: the same ratio per latent coordinate (summed over points only).
    - image_spread: Var_x[E_eps mu(x, eps)] across the test points, averaged over coordinates: how far
      q's mean moves from image to image, the scale to read mean_spread against. Estimated from the
      K-draw means less E_x[Var_eps mu] / K, the part of their spread due to the draws (so unbiased).
    - active_units: coordinates whose Var_x[E_eps mu] exceeds ACTIVE_UNIT_VARIANCE (Burda et al. 2016).
    - active_share: noise_share over the active units alone (nan without one): an inactive unit has
      sigma near 1 and a mean near 0, and would otherwise dilute the share of those in use.
    """

    seed: int
    mean_spread: float
    within_variance: float
    noise_share: float
    coordinate_share: tuple[float, ...]
    image_spread: float
    active_units: int
    active_share: float


@dataclass(frozen=True)
class NoiseUsage:
    """`noise_usage`'s result: the settings it ran with and one record per member."""

    points: int
    draws: int
    latent_dim: int
    noise_dim: int
    stream: str
    members: tuple[MemberNoiseUsage, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


NOISE_USAGE_DEFINITIONS = {
    "mean_spread": "Var_eps[mu(x, eps)] (unbiased over the draws), mean over points and coordinates",
    "within_variance": "E_eps[sigma^2(x, eps)], mean over points and coordinates",
    "noise_share": "sum Var_eps[mu] / sum (Var_eps[mu] + E_eps[sigma^2]), sums over points and "
    "coordinates: the share of tr Var[z|x] due to the injected noise (law of total variance)",
    "coordinate_share": "noise_share per latent coordinate",
    "image_spread": "Var_x[E_eps mu(x, eps)] across test points (unbiased: the K-draw means' variance "
    "less E_x[Var_eps mu] / K), mean over coordinates",
    "active_units": "coordinates u with Var_x[E_eps mu_u] > 0.01 (Burda et al. 2016)",
    "active_share": "noise_share summed over the active units alone (nan without one)",
}

ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al. 2016's threshold on Cov_x(E[z_u|x]), as `analyse_run`


def noise_usage_not_applicable(model: LatentModel) -> str:
    """Why `noise_usage` does not apply to `model`, or "" when it does."""
    if model.noise_free:
        return f"model {model.name!r} has no injected noise (noise_dim 0), so there is no noise to use"
    if not model.semi_implicit:
        return (
            f"not applicable to model {model.name!r}: its implicit encoder z = f(x, eps) has no "
            "Gaussian head, so all of Var[z|x] comes from eps (the share is 1 by construction)"
        )
    return ""


@torch.no_grad()
def noise_usage(
    model: LatentModel,
    x: torch.Tensor,
    seeds: Sequence[int],
    *,
    draws: int = 64,
    batch_size: int = 100,
    seed: int = 0,
) -> NoiseUsage:
    """How much of each member's q(z|x) is due to its injected noise eps, on test points x [N, D].

    For a semi-implicit encoder q(z|x) = E_eps N(z; mu(x, eps), diag sigma^2(x, eps)) (VAE+eps, AVAE),
    the law of total variance splits each coordinate's posterior variance in two,
        Var[z|x] = Var_eps[mu(x, eps)] + E_eps[sigma^2(x, eps)],
    the first part due to the noise, the second the Gaussian's own. With `draws` = K draws of eps per
    point (from the members' own MemberRandom streams, named by `seed`, so the result repeats), the
    first is estimated by the unbiased sample variance of mu over the K draws and the second by the
    mean of sigma^2; `noise_share` is the first's share of their sum over coordinates and points.
    A share near 0 means the encoder ignores its noise and q(z|x) is one Gaussian. That is what SIVI
    (Yin & Zhou, ICML 2018, Proposition 1) predicts: the objective these models train with (eq. 9,
    SIVI's L_0) is an average over eps of Gaussian ELBOs, never above the best single Gaussian's, so
    the noise cannot raise it and the encoder has no reason to use it. Per coordinate, and over the
    active units alone, too (an inactive unit, sigma near 1, would dilute the share); and the spread
    of q's mean across images, Var_x[E_eps mu], to read Var_eps[mu] against.

    Only for semi-implicit encoders: a model without noise (VAE) raises ConfigError, and so does an
    implicit one (AVB, AVB-AC), for which the share is 1 by construction (`noise_usage_not_applicable`).
    """
    reason = noise_usage_not_applicable(model)
    if reason:
        raise ConfigError(reason)
    if draws < 2:
        raise ConfigError(f"noise usage needs at least 2 draws of eps per point (a variance), got {draws}")
    if len(x) < 2 or batch_size < 1:
        raise ConfigError(f"noise usage needs at least 2 test points and a positive batch size, got {len(x)}")
    stream = f"noise-usage-{seed}"
    noise = MemberRandom(seeds, stream, x.device)
    latent = model.cfg.latent_dim
    spread = torch.zeros(len(seeds), latent, dtype=torch.float64, device=x.device)
    within = torch.zeros_like(spread)
    locations = []
    for chunk in x.split(batch_size):
        q = model.posteriors(chunk.unsqueeze(0).expand(len(seeds), -1, -1), noise, draws)  # [K, S, B, Z]
        mu, var = q.loc.double(), q.scale.double().square()
        # two passes about the first draw: exactly 0 when mu does not depend on eps
        shifted = mu - mu[:1]
        spread += (shifted - shifted.mean(0)).square().sum(0).sum(1) / (draws - 1)
        within += var.mean(0).sum(1)
        locations.append(mu.mean(0))  # [S, B, Z]
    points = len(x)
    # Var_x of the K-draw means = Var_x[E_eps mu] + E_x[Var_eps mu] / K: take the draws' part away
    image = torch.cat(locations, dim=1).var(dim=1) - spread / (points * draws)  # [S, Z]
    total = spread.sum(-1) / (spread.sum(-1) + within.sum(-1))
    per_coordinate = spread / (spread + within)
    active = image > ACTIVE_UNIT_VARIANCE
    in_use = (spread * active).sum(-1) / ((spread + within) * active).sum(-1)  # nan: no active unit
    members = tuple(
        MemberNoiseUsage(
            seed=int(s),
            mean_spread=float(spread[m].sum() / (points * latent)),
            within_variance=float(within[m].sum() / (points * latent)),
            noise_share=float(total[m]),
            coordinate_share=tuple(float(v) for v in per_coordinate[m]),
            image_spread=float(image[m].mean()),
            active_units=int(active[m].sum()),
            active_share=float(in_use[m]),
        )
        for m, s in enumerate(seeds)
    )
    return NoiseUsage(points, draws, latent, model.cfg.noise_dim, stream, members)
