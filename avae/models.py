"""The four models of the paper behind one small interface, chosen from a registry by name.

Every model is an ensemble of S independent members (see `avae.nets`). A model exposes:

- `phases()`: the optimisation steps of one training iteration, in order. Each phase names the
  parameters it updates and a loss `(x, noise) -> (per-member loss [S], metrics)`. The training
  loop (`avae.train`) runs them top to bottom with one Adam optimiser per phase.
- `neg_elbo(x, noise)`: the test metric as the model's own objective defines it, [S, B].
- `sample(n, noise)`: decoder means for z ~ p(z), [S, n, D].

| name      | encoder                         | extra network | phases                                  |
|-----------|---------------------------------|---------------|-----------------------------------------|
| vae       | Gaussian q(z|x)                 | -             | elbo                                    |
| vae-noise | Gaussian q(z|x, eps1)           | -             | elbo                                    |
| avae      | Gaussian q(z|x, eps1)           | D(x, z)       | elbo, discriminator, adversarial (Alg 1)|
| avb       | implicit z = f(x, eps)          | T(x, z)       | elbo (eq. 5), discriminator (eq. 6)     |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Normal

from avae import objectives as obj
from avae.errors import ConfigError
from avae.nets import ACTIVATIONS, MemberRandom, init_members, mlp


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective settings. Defaults are the paper's where it states them.

    Settings the paper leaves unstated, with the reason for each default:
    - activation "leaky-relu" (slope 0.2, TensorFlow's default): the paper names none. Measured on
      continuous MNIST, VAE, latent 10, 10 epochs, test negative ELBO: leaky-relu 115.6, elu 115.9,
      relu 122.9, softplus 125.3, tanh 144.4 (ReLU needed 100 epochs to reach 115.8).
    - noise_dim 10 for the noise-injected encoders: the paper's best (Fig. 6), used for all later runs.
    - likelihood "bernoulli": the paper's decoder; "continuous-bernoulli" is the normalised option.
    - critic_input "xz": the discriminator sees the concatenation [x, z] (the issue's D(x, z)), fed
      to an MLP of the same widths (256, 64, 32). For AVAE, "z" lets D see z alone, so that it
      compares the aggregate posterior q(z) with p(z), which is what the paper says the adversary
      is for; with (x, z) it instead pushes every q(z|x) towards p(z), like a second KL term.
    - adv_loss "non-saturating" (-log D on the encoder's samples) with weight 1: the usual GAN choice;
      the paper writes the min-max form of eq. 14 but does not say how the encoder's step is taken.
    - decoder widths: the encoder's reversed (32, 64, 256), the usual mirrored layout.
    """

    name: str = "vae"
    latent_dim: int = 10
    noise_dim: int = 0
    hidden: tuple[int, ...] = (256, 64, 32)
    activation: str = "leaky-relu"
    likelihood: str = "bernoulli"
    adv_loss: str = "non-saturating"
    adv_weight: float = 1.0
    critic_input: str = "xz"
    data_dim: int = 784

    def __post_init__(self) -> None:
        obj.check_choice("model", self.name, MODELS)
        obj.check_choice("activation", self.activation, ACTIVATIONS)
        obj.check_choice("likelihood", self.likelihood, obj.LIKELIHOODS)
        obj.check_choice("adversarial loss", self.adv_loss, obj.ADVERSARIAL_LOSSES)
        for key in ("latent_dim", "data_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive integers, got {self.hidden}")
        MODELS[self.name].check_noise_dim(self.noise_dim)
        if self.critic_input not in MODELS[self.name].critic_inputs:
            raise ConfigError(
                f"model {self.name!r} takes critic_input {' or '.join(MODELS[self.name].critic_inputs)}, "
                f"not {self.critic_input!r}"
            )
        if self.adv_weight < 0:
            raise ConfigError(f"adv_weight must be >= 0, got {self.adv_weight}")


@dataclass
class Phase:
    """One optimisation step of a training iteration: `loss` minimised over `params`."""

    name: str
    params: list[nn.Parameter]
    loss: Callable[[torch.Tensor, MemberRandom], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    lr_key: str = "lr"  # the TrainConfig field holding this phase's learning rate
    repeats_key: str | None = None  # the TrainConfig field saying how often to repeat it, if any
    lr_scale: float = 1.0  # multiplies that learning rate (AVAE's adversarial weight)


MODELS: dict[str, type[LatentModel]] = {}


def register(name: str) -> Callable[[type[LatentModel]], type[LatentModel]]:
    def add(cls: type[LatentModel]) -> type[LatentModel]:
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def default_noise_dim(name: str) -> int:
    """0 for a model without injected noise, else the paper's best dimension, 10 (Fig. 6)."""
    obj.check_choice("model", name, MODELS)
    return 0 if MODELS[name].noise_free else 10


def build_model(cfg: ModelConfig, seeds: Sequence[int]) -> LatentModel:
    """The registered model `cfg.name` with one member per seed, each initialised from its seed."""
    model = MODELS[cfg.name](cfg, len(seeds))
    init_members(model, seeds)
    return model


def with_noise(x: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    return x if eps is None else torch.cat([x, eps], dim=-1)


class GaussianEncoder(nn.Module):
    """q(z|x) or q(z|x, eps1) = N(mu, diag sigma^2); the net outputs mu and log sigma^2."""

    def __init__(self, members: int, cfg: ModelConfig):
        super().__init__()
        sizes = [cfg.data_dim + cfg.noise_dim, *cfg.hidden, 2 * cfg.latent_dim]
        self.net = mlp(members, sizes, cfg.activation)

    def forward(self, x: torch.Tensor, eps1: torch.Tensor | None = None) -> Normal:
        mu, logvar = self.net(with_noise(x, eps1)).chunk(2, dim=-1)
        return Normal(mu, torch.exp(0.5 * logvar), validate_args=False)


class ImplicitEncoder(nn.Module):
    """AVB's implicit q(z|x): z = f_phi(x, eps), with eps concatenated at the input."""

    def __init__(self, members: int, cfg: ModelConfig):
        super().__init__()
        sizes = [cfg.data_dim + cfg.noise_dim, *cfg.hidden, cfg.latent_dim]
        self.net = mlp(members, sizes, cfg.activation)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.net(with_noise(x, eps))


class Critic(nn.Module):
    """A network returning one logit per pair (x, z): AVB's T or AVAE's D.

    With `critic_input` "xz" it sees the concatenation [x, z]; with "z" it sees z alone, so it
    compares the aggregate posterior q(z) with p(z) rather than each q(z|x) with p(z).
    """

    def __init__(self, members: int, cfg: ModelConfig):
        super().__init__()
        self.sees_x = cfg.critic_input == "xz"
        width = (cfg.data_dim if self.sees_x else 0) + cfg.latent_dim
        self.net = mlp(members, [width, *cfg.hidden, 1], cfg.activation)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, z], dim=-1) if self.sees_x else z).squeeze(-1)


class LatentModel(nn.Module):
    """Prior N(0, I), decoder p_theta(x|z) with logits from an MLP, and an encoder of some kind."""

    name: ClassVar[str]
    metric_label: ClassVar[str] = "negative ELBO"
    noise_free: ClassVar[bool] = False  # True: the encoder takes no injected noise
    # What the critic may see: AVB's T needs x (T* = log q(z|x) - log p(z)); AVAE's D may also see z alone.
    critic_inputs: ClassVar[tuple[str, ...]] = ("xz",)
    # What `neg_elbo` is relative to log p(x): "lower bound" (in expectation) or merely "objective".
    elbo_kind: ClassVar[str] = "lower bound"
    # True: q(z|x) = E_eps1 q(z|x, eps1) with a Gaussian q(z|x, eps1), so SIVI's bound applies.
    semi_implicit: ClassVar[bool] = False
    proposal_label: ClassVar[str] = ""  # what `proposal` is, for eval.json
    # Optimiser settings this model trains with unless the user overrides them (avae.train).
    train_defaults: ClassVar[dict[str, float]] = {}

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__()
        self.cfg, self.members = cfg, members
        self.decoder = mlp(members, [cfg.latent_dim, *cfg.hidden[::-1], cfg.data_dim], cfg.activation)

    @classmethod
    def check_noise_dim(cls, noise_dim: int) -> None:
        if cls.noise_free and noise_dim != 0:
            raise ConfigError(f"model {cls.name!r} has no injected noise; drop --noise-dim")
        if not cls.noise_free and noise_dim <= 0:
            raise ConfigError(f"model {cls.name!r} needs a positive noise dimension, got {noise_dim}")

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return obj.log_likelihood(self.cfg.likelihood, self.decoder(z), x)

    def draw_eps(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor | None:
        return None if self.noise_free else noise.normal(x.shape[1], self.cfg.noise_dim)

    def prior_sample(self, n: int, noise: MemberRandom) -> torch.Tensor:
        return noise.normal(n, self.cfg.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, noise: MemberRandom) -> torch.Tensor:
        """Decoder means E[x|z] for z ~ p(z) (Fig. 8): [S, n, D]."""
        logits = self.decoder(self.prior_sample(n, noise))
        return obj.decoder_distribution(self.cfg.likelihood, logits).mean

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def critic_phase(self) -> Phase:
        """The discriminator step shared by AVB (T, eq. 6) and AVAE (D, eq. 13), `disc_steps` times."""
        return Phase(
            "discriminator", list(self.critic.parameters()), self.discriminator_loss, "disc_lr", "disc_steps"
        )

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        raise NotImplementedError

    def proposal(self, x: torch.Tensor, noise: MemberRandom, **options) -> Normal:
        """A distribution over z with a density, [S, B, Z], for importance sampling log p(x) (IWAE-k)."""
        raise NotImplementedError


class GaussianEncoderModel(LatentModel):
    """Shared by VAE, VAE+eps and AVAE: a Gaussian encoder, possibly with injected noise eps1."""

    proposal_label = "the encoder's Gaussian q(z|x)"

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.encoder = GaussianEncoder(members, cfg)

    def posterior(self, x: torch.Tensor, noise: MemberRandom) -> Normal:
        """q(z|x) or, with injected noise, q(z|x, eps1) for a fresh eps1 ~ N(0, I)."""
        return self.encoder(x, self.draw_eps(x, noise))

    def proposal(self, x: torch.Tensor, noise: MemberRandom, **options) -> Normal:
        """The encoder's Gaussian; with injected noise, conditional on one eps1 per test point
        (for a fixed eps1 it is a proper proposal, so IWAE-k stays a valid bound)."""
        return self.posterior(x, noise)

    def posteriors(self, x: torch.Tensor, noise: MemberRandom, count: int) -> Normal:
        """q(z|x, eps1^(j)) for `count` independent eps1 draws per point: [count, S, B, Z] (SIVI)."""
        members, batch, dim = x.shape
        repeated = x.unsqueeze(1).expand(members, count, batch, dim).reshape(members, count * batch, dim)
        q = self.posterior(repeated, noise)
        shape = (members, count, batch, -1)
        return Normal(q.loc.reshape(shape).movedim(1, 0), q.scale.reshape(shape).movedim(1, 0))

    def reparameterise(self, q: Normal, noise: MemberRandom) -> torch.Tensor:
        """z = mu + sigma * eps2 with eps2 from the member's own stream."""
        return q.loc + q.scale * noise.normal(*q.loc.shape[1:])

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """-[log p(x|z) - KL(q(z|x,eps1) || p(z))], one eps1 and one eps2 draw (eqs. 1, 9)."""
        q = self.posterior(x, noise)
        return obj.neg_elbo_gaussian(self.log_px_given_z(x, self.reparameterise(q, noise)), q)

    def elbo_loss(self, x: torch.Tensor, noise: MemberRandom):
        q = self.posterior(x, noise)
        z = self.reparameterise(q, noise)
        recon = -self.log_px_given_z(x, z).mean(-1)
        kl = obj.kl_to_prior(q).mean(-1)
        return recon + kl, {"recon": recon, "kl": kl}

    def phases(self) -> list[Phase]:
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [Phase("elbo", params, self.elbo_loss)]


@register("vae")
class VAE(GaussianEncoderModel):
    """Kingma & Welling's VAE: maximise the ELBO of eq. 1."""

    noise_free = True


@register("vae-noise")
class NoiseVAE(GaussianEncoderModel):
    """VAE+eps: eps1 ~ N(0, I) concatenated to x at the encoder input; maximise eq. 9."""

    semi_implicit = True
    proposal_label = "the encoder's Gaussian q(z|x, eps1) given one eps1 draw per test point"


@register("avae")
class AVAE(GaussianEncoderModel):
    """The paper's model: VAE+eps plus an adversary D(x, z) on the aggregate posterior (Alg. 1)."""

    semi_implicit = True
    proposal_label = "the encoder's Gaussian q(z|x, eps1) given one eps1 draw per test point"
    critic_inputs = ("xz", "z")

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.critic = Critic(members, cfg)

    def discriminator_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 13: D calls (x, z'~p(z)) real and (x, z~q(z|x,eps1)) fake."""
        with torch.no_grad():
            fake = self.reparameterise(self.posterior(x, noise), noise)
        real = self.prior_sample(x.shape[1], noise)
        real_logits, fake_logits = self.critic(x, real), self.critic(x, fake)
        loss = obj.logistic_discriminator_loss(real_logits, fake_logits)
        return loss, {"disc_acc": obj.discriminator_accuracy(real_logits, fake_logits)}

    def adversarial_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 14, encoder side: move q(z|x,eps1) so that D takes its samples for prior draws."""
        fake = self.reparameterise(self.posterior(x, noise), noise)
        loss = obj.adversarial_encoder_loss(self.cfg.adv_loss, self.critic(x, fake))
        return loss, {}

    def phases(self) -> list[Phase]:
        return [
            *super().phases(),
            self.critic_phase(),
            # The weight of eq. 14's encoder term scales this step's learning rate: the step has its
            # own Adam, which is invariant to the scale of its loss, so a factor on the loss would
            # change nothing.
            Phase(
                "adversarial",
                list(self.encoder.parameters()),
                self.adversarial_loss,
                "adv_lr",
                lr_scale=self.cfg.adv_weight,
            ),
        ]


@register("avb")
class AVB(LatentModel):
    """Adversarial Variational Bayes (Mescheder et al. 2017) with an implicit encoder."""

    metric_label = "negative ELBO (AVB: discriminator-based estimate, not a bound)"
    elbo_kind = "objective"
    proposal_label = "a diagonal Gaussian fitted per test point to samples of the implicit encoder"
    # Adam with beta1 = 0.5 as in the AVB reference code, one T step per encoder/decoder step, and
    # the learning rate every other model uses (the paper trains all four with one Adam setup).
    # The reference code's own rates (5e-5 encoder/decoder, 1e-4 T, for long training at batch 128)
    # are `--lr 5e-5 --disc-lr 1e-4`; measured on MNIST (20k images, latent 10) they leave AVB at
    # 216.6 nats after 400 steps, worse than independent pixels (198.9), against 168.5 after 200
    # steps at 1e-3.
    train_defaults = {"beta1": 0.5}

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.encoder = ImplicitEncoder(members, cfg)
        self.critic = Critic(members, cfg)

    def encode(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        return self.encoder(x, self.draw_eps(x, noise))

    def proposal(
        self, x: torch.Tensor, noise: MemberRandom, *, samples: int = 500, inflate: float = 1.0, **options
    ) -> Normal:
        """The implicit q(z|x) has no density: fit a diagonal Gaussian per test point to `samples`
        draws of it, its scale times `inflate` (see `objectives.fitted_gaussian`)."""
        members, batch, dim = x.shape
        repeated = x.unsqueeze(1).expand(members, samples, batch, dim).reshape(members, samples * batch, dim)
        z = self.encode(repeated, noise).reshape(members, samples, batch, -1)
        return obj.fitted_gaussian(z, dim=1, inflate=inflate)

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """-(log p(x|z) - T(x, z)) with z ~ q(z|x): an estimate that is exact only at T* (eq. 4)."""
        z = self.encode(x, noise)
        return -(self.log_px_given_z(x, z) - self.critic(x, z))

    def elbo_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 5: encoder and decoder maximise E[log p(x|z) - T(x, z)], gradients through T into z."""
        z = self.encode(x, noise)
        recon = -self.log_px_given_z(x, z).mean(-1)
        kl_estimate = self.critic(x, z).mean(-1)
        return recon + kl_estimate, {"recon": recon, "kl": kl_estimate}

    def discriminator_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 6: T says 1 on (x, z~q(z|x)) and 0 on (x, z~p(z)), so T* = log q(z|x) - log p(z)."""
        with torch.no_grad():
            posterior = self.encode(x, noise)
        prior = self.prior_sample(x.shape[1], noise)
        pos, neg = self.critic(x, posterior), self.critic(x, prior)
        loss = obj.logistic_discriminator_loss(pos, neg)
        return loss, {"disc_acc": obj.discriminator_accuracy(pos, neg)}

    def phases(self) -> list[Phase]:
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [
            Phase("elbo", params, self.elbo_loss),
            self.critic_phase(),
        ]
