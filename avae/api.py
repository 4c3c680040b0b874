"""The Python API: train a configuration, load a finished run, and use its members.

    import avae
    cfg = avae.make_config({"model": "avae", "dataset": "mnist", "epochs": 10, "seeds": (0, 1, 2)})
    run_dir = avae.fit(cfg, "runs/avae-mnist")
    model = avae.load(run_dir)
    z = model.encode(x)                      # x [N, D] in [0, 1] -> z [S, N, Z], one draw per member
    x_hat = model.reconstruct(x)             # [S, N, D] decoder means
    images = model.sample(64)                # [S, 64, D]
    scores = model.score(x, "iwae", k=100)   # negative log p(x) estimates per member and point [S, N]

`avae.fit` is the function `avae train` runs (`avae.train.train`); `avae.evaluate_run` and
`avae.run_profile` are those of `avae evaluate` and `avae reproduce`. Every call uses all members
(one per seed) at once: index the leading dimension for one member. Inputs are checked (a torch
tensor of the right shape, finite, images in [0, 1]); a bad one raises `avae.errors.ConfigError`
naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from avae.core.models import LatentModel
from avae.core.nets import MemberRandom
from avae.errors import ConfigError, check_choice
from avae.likelihood.scoring import EvalSettings, ais_points, iwae_points, per_point
from avae.training.config import TrainConfig
from avae.training.runs import load_run

SCORES = ("elbo", "iwae", "ais")


@dataclass
class TrainedModel:
    """A finished run's members, ready to use: the configuration and the batched model."""

    cfg: TrainConfig
    model: LatentModel
    epoch: int
    seed: int = 0  # of the random draws each call makes; the same seed gives the same draws

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def points_of(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D], finite values in [0, 1], as float32 on the model's device; else ConfigError."""
        x = tensor_argument("x", x)
        if x.dim() != 2 or x.shape[1] != self.cfg.model.data_dim:
            raise ConfigError(f"x must be [N, {self.cfg.model.data_dim}], got {list(x.shape)}")
        x = x.to(self.device, torch.float32)
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ConfigError(f"x holds {bad} NaN or infinite values; give finite values in [0, 1]")
        if len(x) and not (x.min() >= 0 and x.max() <= 1):
            raise ConfigError(
                f"x holds values from {float(x.min()):g} to {float(x.max()):g}; give values in [0, 1], "
                "as the model was trained on (images: divide by 255)"
            )
        return x

    def members_of(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] (values in [0, 1]) as [S, N, D] on the model's device."""
        return self.points_of(x).unsqueeze(0).expand(len(self.cfg.seeds), -1, -1)

    def noise(self, stream: str) -> MemberRandom:
        return MemberRandom(self.cfg.seeds, f"api-{stream}-{self.seed}", self.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One draw z ~ q(z|x) per member and point: [S, N, Z]."""
        return self.model.encode(self.members_of(x), self.noise("encode"))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|z] for z [S, N, Z]: [S, N, D]."""
        z, members, latent = tensor_argument("z", z), len(self.cfg.seeds), self.cfg.model.latent_dim
        if z.dim() != 3 or z.shape[0] != members or z.shape[2] != latent:
            raise ConfigError(
                f"z must be [{members}, N, {latent}] (members, points, latent), got {list(z.shape)}"
            )
        if not bool(torch.isfinite(z).all()):
            raise ConfigError("z holds NaN or infinite values; give finite codes")
        return self.model.decoder_mean(z.to(self.device, torch.float32))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means of one z ~ q(z|x): [S, N, D]."""
        return self.decode(self.encode(x))

    def sample(self, n: int) -> torch.Tensor:
        """Decoder means for n draws z ~ p(z) per member: [S, n, D]."""
        return self.model.sample(positive_int("n", n), self.noise("sample"))

    def score(
        self, x: torch.Tensor, metric: str = "elbo", *, k: int = 1000, ais_steps: int = 500
    ) -> torch.Tensor:
        """Negative log p(x)-type figures per member and point, [S, N] (lower is better): the
        model's own objective ("elbo"), the IWAE-k bound ("iwae") or AIS ("ais"); `.mean(0)`
        averages the members."""
        check_choice("score", metric, SCORES)
        points, k, ais_steps = self.points_of(x), positive_int("k", k), positive_int("ais_steps", ais_steps)
        self.model.requires_grad_(False)
        settings = EvalSettings(k=(k,), ais_steps=ais_steps, seed=self.seed)
        if metric == "elbo":
            return per_point(self.model.neg_elbo, points, self.cfg.seeds, stream=f"api-{self.seed}").float()
        if metric == "iwae":
            return -iwae_points(self.model, points, self.cfg.seeds, settings)[k].float()
        return -ais_points(self.model, points, self.cfg.seeds, settings, "api-ais")[0].float()


def load(run_dir: str | Path, *, device: str = "cpu", seed: int = 0) -> TrainedModel:
    """The trained members of a run directory (its config.json and checkpoint.safetensors)."""
    check_device(device)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    cfg, model, meta = load_run(run_dir, device)
    return TrainedModel(cfg, model.eval(), int(meta["epoch"]), seed)


def tensor_argument(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        kind = f"{type(value).__module__}.{type(value).__name__}".removeprefix("builtins.")
        raise ConfigError(
            f"{name} must be a torch.Tensor, got {kind}; convert it with torch.as_tensor({name})"
        )
    return value


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_device(device: str) -> None:
    """Refuse a device that is not one, or a CUDA device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not one avae runs on; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no CUDA device available; use device='cpu'")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use 'cuda:0' or another index below that"
        )
