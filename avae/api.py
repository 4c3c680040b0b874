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
(one per seed) at once: index the leading dimension for one member.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from avae.config import TrainConfig
from avae.errors import ConfigError
from avae.models import LatentModel
from avae.nets import MemberRandom
from avae.runs import load_run
from avae.scoring import EvalSettings, ais_points, iwae_points, per_point

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

    def members_of(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] (values in [0, 1]) as [S, N, D] on the model's device."""
        if x.dim() != 2 or x.shape[1] != self.cfg.model.data_dim:
            raise ConfigError(f"x must be [N, {self.cfg.model.data_dim}], got {list(x.shape)}")
        return x.to(self.device, torch.float32).unsqueeze(0).expand(len(self.cfg.seeds), -1, -1)

    def noise(self, stream: str) -> MemberRandom:
        return MemberRandom(self.cfg.seeds, f"api-{stream}-{self.seed}", self.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One draw z ~ q(z|x) per member and point: [S, N, Z]."""
        return self.model.encode(self.members_of(x), self.noise("encode"))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder means E[x|z] for z [S, N, Z]: [S, N, D]."""
        return self.model.decoder_mean(z.to(self.device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means of one z ~ q(z|x): [S, N, D]."""
        return self.decode(self.encode(x))

    def sample(self, n: int) -> torch.Tensor:
        """Decoder means for n draws z ~ p(z) per member: [S, n, D]."""
        return self.model.sample(n, self.noise("sample"))

    def score(
        self, x: torch.Tensor, metric: str = "elbo", *, k: int = 1000, ais_steps: int = 500
    ) -> torch.Tensor:
        """Negative log p(x)-type figures per member and point, [S, N] (lower is better): the
        model's own objective ("elbo"), the IWAE-k bound ("iwae") or AIS ("ais"); `.mean(0)`
        averages the members."""
        if metric not in SCORES:
            raise ConfigError(f"unknown score {metric!r}; choose one of {', '.join(SCORES)}")
        points = x.to(self.device, torch.float32)
        self.model.requires_grad_(False)
        settings = EvalSettings(k=(k,), ais_steps=ais_steps, seed=self.seed)
        if metric == "elbo":
            return per_point(self.model.neg_elbo, points, self.cfg.seeds, stream=f"api-{self.seed}").float()
        if metric == "iwae":
            return -iwae_points(self.model, points, self.cfg.seeds, settings)[k].float()
        return -ais_points(self.model, points, self.cfg.seeds, settings, "api-ais")[0].float()


def load(run_dir: str | Path, *, device: str = "cpu", seed: int = 0) -> TrainedModel:
    """The trained members of a run directory (its config.json and checkpoint.safetensors)."""
    cfg, model, meta = load_run(run_dir, device)
    return TrainedModel(cfg, model.eval(), int(meta["epoch"]), seed)
