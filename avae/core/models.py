"""The five models (the paper's four and AVB-AC) behind one small interface, chosen from a registry
by name.

Every model is an ensemble of S independent members (see `avae.core.nets`). A model exposes:

- `phases(steps)`: the optimisation steps of one training iteration, in order. Each phase names
  the parameters it updates, a loss `(x, noise) -> (per-member loss [S], metrics)`, its learning
  rate and how often it repeats, taken from `steps` (the run's `StepSettings`). The training loop
  (`avae.training.steps.iteration`) does no more than this, for each phase top to bottom and
  `repeats` times: loss, terms = phase.loss(x, noise); grads = autograd.grad(loss.sum(),
  phase.params); one Adam step (the phase's own Adam, lr = phase.lr) on phase.params alone.
- `neg_elbo(x, noise)`: the test metric as the model's own objective defines it, [S, B].
- `sample(n, noise)`: decoder means for z ~ p(z), [S, n, D].
- `neg_critic_figure(x, noise)`: for models with a critic, the discriminator-based figure
  -(log p(x|z) + log p(z)/q estimate from the critic), [S, B]; None otherwise.

The registry (`MODELS`, filled by `@register`) is the one home of every fact about a model: its
name, label, colour in plots, default noise dimension, whether it has a critic, what its figure
means, its optimiser defaults, what a training step costs. Adding a model means adding one class
here; `LatentModel`'s docstring states the rules it must follow.

| name      | encoder                         | extra network | phases                                  |
|-----------|---------------------------------|---------------|-----------------------------------------|
| vae       | Gaussian q(z|x)                 | -             | elbo                                    |
| vae-noise | Gaussian q(z|x, eps1)           | -             | elbo                                    |
| avb       | implicit z = f(x, eps)          | T(x, z)       | elbo (eq. 5), discriminator (eq. 6)     |
| avb-ac    | implicit, adaptive contrast     | T(x, z~)      | elbo, discriminator (AVB Sec. 3.3)      |
| avae      | Gaussian q(z|x, eps1)           | D(x, z)       | elbo (+ adversarial term, joint),       |
|           |                                 |               | discriminator, [adversarial (separate)] |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.distributions import Normal

from avae.core import objectives as obj
from avae.core.nets import (
    ACTIVATIONS,
    Critic,
    GaussianEncoder,
    ImplicitEncoder,
    MemberRandom,
    init_members,
    mlp,
    repeat_points,
    split_draws,
)
from avae.errors import ConfigError, check_choice


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and objective settings. Defaults are the paper's where it states them.

    Settings the paper leaves unstated, with the reason for each default:
    - activation "leaky-relu" (slope 0.2, TensorFlow's default): the paper names none (see the
      README for how it was chosen and re-checked on a validation split).
    - noise_dim 10 for the noise-injected encoders: the paper's best (Fig. 6), used for all later runs.
    - likelihood "bernoulli": the paper's decoder; "continuous-bernoulli" is the normalised option.
    - critic_input "xz": the discriminator sees the concatenation [x, z] (the paper's D(x, z)), fed
      to an MLP of the same widths (256, 64, 32). For AVAE, "z" lets D see z alone, so that it
      compares the aggregate posterior q(z) with p(z), which is what the paper says the adversary
      is for.
    - adv_loss "non-saturating" (-log D on the encoder's samples) with weight 1: the usual GAN choice;
      the paper writes the min-max form of eq. 14 but does not say how the encoder's step is taken.
    - adv_update "joint": AVAE's encoder update against D. Algorithm 1 takes plain SGD steps with one
      step size h for the ELBO step and the adversarial step; under SGD, a separate adversarial step
      with the same step size equals a step on the summed loss to first order. "joint" adds
      adv_weight times the adversarial term to the ELBO step's loss, under one Adam. "separate"
      gives the adversarial step its own Adam, which normalises its step to about the learning rate
      although its gradient on the encoder is 40-370x smaller than the ELBO's: it makes the
      adversary ~100x stronger than Algorithm 1 would, so it is the least faithful reading. Both
      are reproduced.
    - ac_samples 8: AVB-AC's encoder draws per point for the moments of q(z|x) (AVB Sec. 3.3).
    - ac_moments "others": AVB-AC standardises its z by moments of the other ac_samples - 1 draws.
      "all" (how runs before this setting were trained) takes them from all draws, z included; then
      each standardised coordinate is bounded by (m - 1) / sqrt(m) (Samuelson's inequality; 2.47 for
      m = 8), so it is never N(0, I), even for a Gaussian q, and the critic can always tell.
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
    adv_update: str = "joint"
    critic_input: str = "xz"
    ac_samples: int = 8
    ac_moments: str = "others"
    data_dim: int = 784

    # Settings that only select a reading of one model (see LatentModel.readings).
    reading_keys: ClassVar[tuple[str, ...]] = ("adv_update",)

    def __post_init__(self) -> None:
        check_choice("model", self.name, MODELS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("likelihood", self.likelihood, obj.LIKELIHOODS)
        check_choice("adversarial loss", self.adv_loss, obj.ADVERSARIAL_LOSSES)
        check_choice("adversarial update", self.adv_update, ADV_UPDATES)
        for key in ("latent_dim", "data_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {getattr(self, key)}")
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive integers, got {self.hidden}")
        check_choice("ac_moments", self.ac_moments, AC_MOMENTS)
        fewest = 3 if self.ac_moments == "others" else 2  # a standard deviation needs two draws
        if self.ac_samples < fewest:
            raise ConfigError(
                f"ac_samples must be at least {fewest} with ac_moments {self.ac_moments!r} (moments need "
                f"two draws), got {self.ac_samples}"
            )
        MODELS[self.name].check_noise_dim(self.noise_dim)
        if self.critic_input not in MODELS[self.name].critic_inputs:
            raise ConfigError(
                f"model {self.name!r} takes critic_input {' or '.join(MODELS[self.name].critic_inputs)}, "
                f"not {self.critic_input!r}"
            )
        if self.adv_weight < 0:
            raise ConfigError(f"adv_weight must be >= 0, got {self.adv_weight}")


ADV_UPDATES = ("joint", "separate")
CRITIC_INPUTS = ("xz", "z")  # the critic sees [x, z], or z alone
AC_MOMENTS = ("others", "all")  # AVB-AC: moments from the other draws, or from all of them (z included)


@dataclass(frozen=True)
class StepSettings:
    """What `phases` makes steps of: the run's learning rates and discriminator steps per iteration
    (the TrainConfig fields of the same names, where their defaults are stated)."""

    lr: float  # the autoencoder's (encoder and decoder) steps
    disc_lr: float  # the critic's step
    adv_lr: float  # AVAE's separate adversarial step
    disc_steps: int  # critic steps per iteration


@dataclass
class Phase:
    """One optimisation step of a training iteration: `loss` minimised over `params` by one Adam
    step at learning rate `lr`, `repeats` times per iteration."""

    name: str
    params: list[nn.Parameter]
    loss: Callable[[torch.Tensor, MemberRandom], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    lr: float
    repeats: int = 1


MODELS: dict[str, type[LatentModel]] = {}
ABSTRACT = ("phases", "encode", "neg_elbo", "proposal")  # what every registered model defines


def register(name: str) -> Callable[[type[LatentModel]], type[LatentModel]]:
    """Add a model class to the registry under `name` (its order is the order of tables)."""

    def add(cls: type[LatentModel]) -> type[LatentModel]:
        missing = [what for what in ("label",) if not hasattr(cls, what)]
        missing += [
            f"{method}()" for method in ABSTRACT if getattr(cls, method) is getattr(LatentModel, method)
        ]
        if missing:
            raise TypeError(f"model {name!r} ({cls.__name__}) must define {', '.join(missing)}")
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def default_noise_dim(name: str) -> int:
    """The model's injected-noise dimension unless the user sets one (registry fact)."""
    check_choice("model", name, MODELS)
    return MODELS[name].default_noise_dim


def reading_of(cfg: ModelConfig) -> str:
    """The name of the registered reading whose settings `cfg` has ("" when the model has one)."""
    for reading, settings in MODELS[cfg.name].readings.items():
        if all(getattr(cfg, key) == value for key, value in settings.items()):
            return reading
    return ""


def row_label(name: str, reading: str = "") -> str:
    """A model's label in tables, with its reading: "AVAE (joint)"."""
    return MODELS[name].label + (f" ({reading})" if reading else "")


def critic_of(members: int, cfg: ModelConfig) -> Critic:
    """AVB's T or AVAE's D: an MLP of the encoder's widths on [x, z], or on z alone (critic_input)."""
    return Critic(members, cfg.data_dim, cfg.latent_dim, cfg.hidden, cfg.activation, cfg.critic_input == "xz")


def build_model(cfg: ModelConfig, seeds: Sequence[int]) -> LatentModel:
    """The registered model `cfg.name` with one member per seed, each initialised from its seed."""
    model = MODELS[cfg.name](cfg, len(seeds))
    init_members(model, seeds)
    return model


class LatentModel(nn.Module):
    """Prior N(0, I), decoder p_theta(x|z) with logits from an MLP, and an encoder of some kind.

    The class attributes are the registry's facts about the model; nothing outside this module
    lists model names or repeats these facts.

    The rules a model follows (the first three are what make CUDA-graph replay and the members'
    independence hold; `__init_subclass__` and `register` check what can be checked on the class):
    - Randomness comes only from the `noise` argument (a `MemberRandom`, or the static noise the
      training loop replays), never from torch's global generator: member s draws from its own
      stream alone, so a member of a 3-seed run equals the 1-seed run with its seed.
    - The number and shapes of the draws of a call do not depend on the data's values (the training
      loop counts one iteration's draws once, `graphs.count_draws`, and replays that many).
    - Distributions are built with `validate_args=False` (a validation check synchronises with the
      host, which graph capture forbids).
    - Every loss is per member, [S], never reduced across members (the loop sums them only to take
      one gradient, which leaves each member's own).
    - Parameters are registered in a fixed order (it decides the initialisation from each seed and
      the order of the optimiser state in checkpoints): a model that adds a network adds it last.
    - A model with a critic (a discriminator) is a `WithCritic` and has `has_critic`; its readings
      name only `ModelConfig.reading_keys`; `critic_inputs` are among CRITIC_INPUTS.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # how tables and figures name the model
    colour: ClassVar[str] = "tab:gray"  # its colour in plots (a matplotlib colour)
    default_noise_dim: ClassVar[int] = 0  # 0: the encoder takes no injected noise
    has_critic: ClassVar[bool] = False  # trains a discriminator (so has a discriminator-based figure)
    # What the critic may see: AVB's T needs x (T* = log q(z|x) - log p(z)); AVAE's D may also see z alone.
    critic_inputs: ClassVar[tuple[str, ...]] = ("xz",)
    metric_label: ClassVar[str] = "negative ELBO"  # what `neg_elbo`, the model's own figure, is
    # What `neg_elbo` is relative to log p(x): "lower bound" (in expectation) or merely "objective".
    elbo_kind: ClassVar[str] = "lower bound"
    # True: q(z|x) = E_eps1 q(z|x, eps1) with a Gaussian q(z|x, eps1), so SIVI's bound applies.
    semi_implicit: ClassVar[bool] = False
    proposal_label: ClassVar[str] = ""  # what `proposal` is, for eval.json
    # True: `proposal` is fitted to `samples` encoder draws per point (their cost, for the cost model).
    fitted_proposal: ClassVar[bool] = False
    # Optimiser settings this model trains with unless the user overrides them (avae.training.config).
    train_defaults: ClassVar[dict[str, float]] = {}
    # Where the paper is ambiguous about the model, each plausible reading as settings; a
    # reproduction trains every reading and shows each as its own row. "" is the only reading.
    readings: ClassVar[dict[str, dict[str, str]]] = {"": {}}
    # Settings this model reads beyond those every model reads, and those one reading alone reads;
    # any other of them does nothing for it and is refused at a value other than its default.
    own_settings: ClassVar[tuple[str, ...]] = ()
    reading_settings: ClassVar[dict[str, tuple[str, ...]]] = {}
    # The cost model's built-in CPU training step (batch 100, fp32, one thread) as (a, b) ms for
    # a + b * S with S members, used by `avae reproduce --dry-run` when benchmarks/bench.json has
    # no figure for the model; None: costs as the dearest registered model.
    cpu_step_ms: ClassVar[tuple[float, float] | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        """Check the class's registry facts against the rules above, as far as a class can be."""
        super().__init_subclass__(**kwargs)
        problems = []
        if cls.has_critic != issubclass(cls, WithCritic):
            problems.append("has_critic must be True exactly for a WithCritic model")
        for reading, settings in cls.readings.items():
            if set(settings) - set(ModelConfig.reading_keys):
                problems.append(
                    f"reading {reading!r} sets {sorted(settings)}, not only {ModelConfig.reading_keys}"
                )
        if set(cls.critic_inputs) - set(CRITIC_INPUTS):
            problems.append(f"critic_inputs {cls.critic_inputs} are not among {CRITIC_INPUTS}")
        if cls.cpu_step_ms is not None and (len(cls.cpu_step_ms) != 2 or min(cls.cpu_step_ms) < 0):
            problems.append(f"cpu_step_ms must be (a, b) milliseconds >= 0, got {cls.cpu_step_ms}")
        if problems:
            raise TypeError(f"model class {cls.__name__}: {'; '.join(problems)}")

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__()
        self.cfg, self.members = cfg, members
        sizes = [cfg.latent_dim, *cfg.hidden[::-1], cfg.data_dim]
        self.decoder = mlp(members, sizes, cfg.activation, (("latent", cfg.latent_dim),))
        # A padded pack's members (`pad_members`): each kind's widths per member, None when every
        # member has the model's own width.
        self.member_widths: dict[str, tuple[int, ...] | None] = {"latent": None, "noise": None}

    def pad_members(self, dims: Sequence[dict[str, int]]) -> None:
        """Make member s a member of latent and noise dimensions dims[s] ({"latent": l, "noise": n},
        at most the model's): its draws over those coordinates are its own width from its own
        stream, the rest exactly 0 (`MemberRandom.padded_normal`). Its weights over the padded
        coordinates must be exactly 0 (the caller embeds them, `avae.training.packs`); then the padded
        coordinates add exactly 0 to every loss and every gradient."""
        if len(dims) != self.members:
            raise ConfigError(f"pad_members needs one entry per member ({self.members}), got {len(dims)}")
        full = {"latent": self.cfg.latent_dim, "noise": self.cfg.noise_dim}
        for kind, width in full.items():
            widths = tuple(int(d[kind]) for d in dims)
            if any(not 0 <= w <= width for w in widths) or (kind == "latent" and min(widths) < 1):
                raise ConfigError(f"members' {kind} dimensions {list(widths)} do not fit the model's {width}")
            self.member_widths[kind] = None if all(w == width for w in widths) else widths
        widths = self.member_widths["latent"]
        if widths is not None:  # which latent coordinates are each member's, [S, 1, Z] (not saved)
            device = next(self.parameters()).device
            mine = (
                torch.arange(self.cfg.latent_dim, device=device)
                < torch.tensor(widths, device=device)[:, None]
            )
            self.register_buffer("latent_mask", mine[:, None, :], persistent=False)

    def draw(self, noise: MemberRandom, kind: str, *shape: int) -> torch.Tensor:
        """Standard normals [S, *shape] whose last dimension holds latent or noise (`kind`)
        coordinates: each member's own width when the members are padded (`pad_members`), else
        `noise.normal(*shape)`."""
        widths = self.member_widths[kind]
        if widths is None:
            return noise.normal(*shape)
        rows = math.prod(shape[:-1])  # drawn row by row, as the unpacked `normal(*shape)` is
        return noise.padded_normal(rows, shape[-1], widths).view(self.members, *shape)

    @classmethod
    def check_noise_dim(cls, noise_dim: int) -> None:
        if cls.default_noise_dim == 0 and noise_dim != 0:
            raise ConfigError(f"model {cls.name!r} has no injected noise; drop --noise-dim")
        if cls.default_noise_dim > 0 and noise_dim <= 0:
            raise ConfigError(f"model {cls.name!r} needs a positive noise dimension, got {noise_dim}")

    @property
    def noise_free(self) -> bool:
        return self.cfg.noise_dim == 0

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return obj.log_likelihood(self.cfg.likelihood, self.decoder(z), x)

    def draw_eps(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor | None:
        return None if self.noise_free else self.draw(noise, "noise", x.shape[1], self.cfg.noise_dim)

    def prior_sample(self, n: int, noise: MemberRandom) -> torch.Tensor:
        return self.draw(noise, "latent", n, self.cfg.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, noise: MemberRandom) -> torch.Tensor:
        """Decoder means E[x|z] for z ~ p(z) (Fig. 8): [S, n, D]."""
        return self.decoder_mean(self.prior_sample(n, noise))

    def decoder_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] under the decoder: [S, B, D]."""
        return obj.decoder_distribution(self.cfg.likelihood, self.decoder(z)).mean

    def phases(self, steps: StepSettings) -> list[Phase]:
        """The optimisation steps of one training iteration, in order (see the module docstring)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """One draw z ~ q(z|x) per point: [S, B, Z]."""
        raise NotImplementedError

    def code_location(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """The encoder's location for x given one draw of its input noise (for active units)."""
        return self.encode(x, noise)

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        raise NotImplementedError

    def neg_critic_figure(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor | None:
        """The discriminator-based figure, [S, B], for models with a critic; None otherwise."""
        return None

    def proposal(self, x: torch.Tensor, noise: MemberRandom, **options) -> Normal:
        """A distribution over z with a density, [S, B, Z], for importance sampling log p(x) (IWAE-k)."""
        raise NotImplementedError


class WithCritic:
    """A model that trains a critic beside its autoencoder (AVB's T, AVAE's D). The mixin holds the
    critic's registry facts and its step; the model builds `self.critic` (`critic_of`, after its
    encoder: see the rules) and defines `discriminator_loss`."""

    has_critic: ClassVar[bool] = True
    critic_settings: ClassVar[tuple[str, ...]] = ("disc_lr", "disc_steps")  # what the critic's step reads
    critic: Critic

    def discriminator_loss(self, x: torch.Tensor, noise: MemberRandom):
        raise NotImplementedError

    def critic_phase(self, steps: StepSettings) -> Phase:
        """The critic's step at `disc_lr`, `disc_steps` times per iteration."""
        return Phase(
            "discriminator",
            list(self.critic.parameters()),
            self.discriminator_loss,
            steps.disc_lr,
            steps.disc_steps,
        )


class GaussianEncoderModel(LatentModel):
    """Shared by VAE, VAE+eps and AVAE: a Gaussian encoder, possibly with injected noise eps1."""

    proposal_label = "the encoder's Gaussian q(z|x)"

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.encoder = GaussianEncoder(
            members, cfg.data_dim + cfg.noise_dim, cfg.hidden, cfg.latent_dim, cfg.activation, cfg.noise_dim
        )

    def posterior(self, x: torch.Tensor, noise: MemberRandom) -> Normal:
        """q(z|x) or, with injected noise, q(z|x, eps1) for a fresh eps1 ~ N(0, I)."""
        return self.encoder(x, self.draw_eps(x, noise))

    def encode(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        return self.reparameterise(self.posterior(x, noise), noise)

    def code_location(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        return self.posterior(x, noise).loc

    def proposal(self, x: torch.Tensor, noise: MemberRandom, **options) -> Normal:
        """The encoder's Gaussian; with injected noise, conditional on one eps1 per test point
        (for a fixed eps1 it is a proper proposal, so IWAE-k stays a valid bound)."""
        return self.posterior(x, noise)

    def posteriors(self, x: torch.Tensor, noise: MemberRandom, count: int) -> Normal:
        """q(z|x, eps1^(j)) for `count` independent eps1 draws per point: [count, S, B, Z] (SIVI)."""
        q = self.posterior(repeat_points(x, count), noise)
        loc, scale = split_draws(q.loc, count).movedim(1, 0), split_draws(q.scale, count).movedim(1, 0)
        return Normal(loc, scale, validate_args=False)

    def reparameterise(self, q: Normal, noise: MemberRandom) -> torch.Tensor:
        """z = mu + sigma * eps2 with eps2 from the member's own stream."""
        return q.loc + q.scale * self.draw(noise, "latent", *q.loc.shape[1:])

    def elbo_terms(self, x: torch.Tensor, noise: MemberRandom):
        """log p(x|z) and KL(q(z|x,eps1) || p(z)) per point, [S, B] each, and the z drawn: one eps1
        and one eps2 draw (eqs. 1, 9)."""
        q = self.posterior(x, noise)
        z = self.reparameterise(q, noise)
        return self.log_px_given_z(x, z), obj.kl_to_prior(q), z

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """-[log p(x|z) - KL(q(z|x,eps1) || p(z))] per point (eqs. 1, 9)."""
        log_px, kl, _ = self.elbo_terms(x, noise)
        return -(log_px - kl)

    def elbo_loss(self, x: torch.Tensor, noise: MemberRandom):
        """The batch mean of `neg_elbo`, per member [S], with its two terms."""
        log_px, kl, _ = self.elbo_terms(x, noise)
        recon, kl = -log_px.mean(-1), kl.mean(-1)
        return recon + kl, {"recon": recon, "kl": kl}

    def phases(self, steps: StepSettings) -> list[Phase]:
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [Phase("elbo", params, self.elbo_loss, steps.lr)]


@register("vae")
class VAE(GaussianEncoderModel):
    """Kingma & Welling's VAE: maximise the ELBO of eq. 1.

    One iteration, one phase:
    1. elbo (lr): q = N(mu(x), sigma(x)^2); z = mu + sigma * eps2; minimise
       -log p(x|z) + KL(q(z|x) || N(0, I)) (eq. 1) over encoder and decoder.
    """

    label = "VAE"
    colour = "tab:blue"
    cpu_step_ms = (15.0, 12.0)


@register("vae-noise")
class NoiseVAE(GaussianEncoderModel):
    """VAE+eps: eps1 ~ N(0, I) concatenated to x at the encoder input; maximise eq. 9.

    One iteration, one phase:
    1. elbo (lr): eps1 ~ N(0, I); q = N(mu(x, eps1), sigma(x, eps1)^2); z = mu + sigma * eps2;
       minimise -log p(x|z) + KL(q(z|x, eps1) || N(0, I)) (eq. 9) over encoder and decoder.
    """

    label = "VAE+eps"
    colour = "tab:orange"
    cpu_step_ms = (15.0, 12.0)
    default_noise_dim = 10  # the paper's best (Fig. 6)
    semi_implicit = True
    proposal_label = "the encoder's Gaussian q(z|x, eps1) given one eps1 draw per test point"


@register("avb")
class AVB(WithCritic, LatentModel):
    """Adversarial Variational Bayes (Mescheder et al. 2017) with an implicit encoder.

    One iteration, two phases:
    1. elbo (lr): eps ~ N(0, I); z = f(x, eps); minimise -log p(x|z) + T(x, z) (eq. 5) over encoder
       and decoder, the gradient flowing through T into z (T itself is not stepped).
    2. discriminator (disc_lr, disc_steps times): z ~ q(z|x) and z' ~ p(z), both without gradient
       into the encoder; minimise the logistic loss of T calling (x, z) 1 and (x, z') 0 (eq. 6),
       so that T* = log q(z|x) - log p(z).
    """

    label = "AVB"
    colour = "tab:green"
    default_noise_dim = 10
    cpu_step_ms = (40.0, 35.0)
    metric_label = "negative ELBO (AVB: discriminator-based estimate, not a bound)"
    elbo_kind = "objective"
    proposal_label = "a diagonal Gaussian fitted per test point to samples of the implicit encoder"
    fitted_proposal = True
    # Adam with beta1 = 0.5 as in the AVB reference code, one T step per encoder/decoder step, and
    # the learning rate every other model uses (the paper trains all four with one Adam setup).
    # The reference code's own rates (5e-5 encoder/decoder, 1e-4 T, for long training at batch 128)
    # are `--lr 5e-5 --disc-lr 1e-4`; measured on MNIST (20k images, latent 10) they leave AVB at
    # 216.6 nats after 400 steps, worse than independent pixels (198.9), against 168.5 after 200
    # steps at 1e-3.
    train_defaults = {"beta1": 0.5}
    own_settings = WithCritic.critic_settings

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.encoder = ImplicitEncoder(
            members, cfg.data_dim + cfg.noise_dim, cfg.hidden, cfg.latent_dim, cfg.activation, cfg.noise_dim
        )
        self.critic = critic_of(members, cfg)

    def encode(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        return self.encoder(x, self.draw_eps(x, noise))

    def proposal(
        self, x: torch.Tensor, noise: MemberRandom, *, samples: int = 500, inflate: float = 1.0, **options
    ) -> Normal:
        """The implicit q(z|x) has no density: fit a diagonal Gaussian per test point to `samples`
        draws of it, its scale times `inflate` (see `objectives.fitted_gaussian`)."""
        z = split_draws(self.encode(repeat_points(x, samples), noise), samples)
        return obj.fitted_gaussian(z, dim=1, inflate=inflate)

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """-(log p(x|z) - T(x, z)) with z ~ q(z|x): an estimate that is exact only at T* (eq. 4)."""
        z = self.encode(x, noise)
        return -(self.log_px_given_z(x, z) - self.critic(x, z))

    def neg_critic_figure(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        return self.neg_elbo(x, noise)

    def elbo_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 5: encoder and decoder maximise E[log p(x|z) - T(x, z)], gradients through T into z."""
        z = self.encode(x, noise)
        recon = -self.log_px_given_z(x, z).mean(-1)
        kl_estimate = self.critic(x, z).mean(-1)
        return recon + kl_estimate, {"recon": recon, "kl": kl_estimate}

    def critic_samples(self, x: torch.Tensor, noise: MemberRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """What T calls 1 (z ~ q(z|x)) and 0 (z ~ p(z)), eq. 6."""
        return self.encode(x, noise), self.prior_sample(x.shape[1], noise)

    def discriminator_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 6: T says 1 on (x, z~q(z|x)) and 0 on (x, z~p(z)), so T* = log q(z|x) - log p(z)."""
        with torch.no_grad():
            positive, negative = self.critic_samples(x, noise)
        return critic_loss(self.critic, x, positive, negative)

    def phases(self, steps: StepSettings) -> list[Phase]:
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        return [Phase("elbo", params, self.elbo_loss, steps.lr), self.critic_phase(steps)]


def critic_loss(critic: Critic, x: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor):
    """The logistic loss of a critic that should say 1 on (x, positive) and 0 on (x, negative),
    and its accuracy: AVB's T (eq. 6) and AVAE's D (eq. 13) alike."""
    pos, neg = critic(x, positive), critic(x, negative)
    return obj.logistic_discriminator_loss(pos, neg), {"disc_acc": obj.discriminator_accuracy(pos, neg)}


@register("avb-ac")
class AVBAC(AVB):
    """AVB with adaptive contrast (Mescheder et al. 2017, Sec. 3.3).

    The moments mu(x), sigma(x) of q(z|x) are estimated from encoder draws per point (gradients
    flow through them): with `ac_moments` "others", from the `ac_samples` - 1 draws other than the
    z they standardise, so that z~ is not bounded (see ModelConfig). With r(z|x) = N(mu, sigma^2),
        ELBO = E_q[log p(x|z)] - KL(r(z|x) || p(z)) - KL(q(z|x) || r(z|x)),
    the first KL analytic and the second estimated by T on the standardised z~ = (z - mu) / sigma,
    which T tells apart from N(0, I): T* = log q~(z~|x) - log N(z~; 0, I).

    One iteration, two phases (AVB's, with the contrast):
    1. elbo (lr): ac_samples draws z_j = f(x, eps_j); z = z_1; r = N(mu, sigma^2) fitted to the
       others (or to all); z~ = (z - mu) / sigma; minimise -log p(x|z) + KL(r || N(0, I)) + T(x, z~)
       over encoder and decoder, gradients through mu, sigma and T into the draws.
    2. discriminator (disc_lr, disc_steps times): T calls (x, z~) 1 and (x, e), e ~ N(0, I), 0
       (logistic loss, eq. 6 on the standardised codes), without gradient into the encoder.
    """

    label = "AVB-AC"
    colour = "tab:olive"
    # Not in benchmarks/bench.json: AVAE's benchmarked step times AVB-AC's measured step ratio to
    # AVAE's, 1.9, 2.1 and 2.7 at S = 1, 5 and 15 (process time, one thread, the two alternated, on
    # the loaded 2-core AMD EPYC, 2026-12-05), fitted as a + b * S. Its ac_samples encoder passes per
    # point make it dearer than AVB. (Before: the dearest model's (45, 40), 2.5x this at S = 5.)
    cpu_step_ms = (9.0, 18.0)
    own_settings = (*AVB.own_settings, "ac_samples", "ac_moments")
    metric_label = "negative ELBO (AVB-AC: discriminator-based estimate, not a bound)"

    def contrast(self, x: torch.Tensor, noise: MemberRandom) -> tuple[torch.Tensor, Normal, torch.Tensor]:
        """One z ~ q(z|x) per point, the moment-matched Gaussian r(z|x), and z standardised by it."""
        count = self.cfg.ac_samples
        draws = split_draws(self.encode(repeat_points(x, count), noise), count)  # [S, m, B, Z]
        z = draws[:, 0]
        r = obj.fitted_gaussian(draws[:, 1:] if self.cfg.ac_moments == "others" else draws, dim=1)
        if self.member_widths["latent"] is not None:  # padded coordinates' draws are 0: r is N(0, 1)
            mine = self.latent_mask  # [S, 1, Z] (`pad_members`)
            r = Normal(torch.where(mine, r.loc, 0.0), torch.where(mine, r.scale, 1.0), validate_args=False)
        return z, r, (z - r.loc) / r.scale

    def neg_elbo(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        z, r, standard = self.contrast(x, noise)
        return -self.log_px_given_z(x, z) + obj.kl_to_prior(r) + self.critic(x, standard)

    def elbo_loss(self, x: torch.Tensor, noise: MemberRandom):
        z, r, standard = self.contrast(x, noise)
        recon = -self.log_px_given_z(x, z).mean(-1)
        kl = (obj.kl_to_prior(r) + self.critic(x, standard)).mean(-1)
        return recon + kl, {"recon": recon, "kl": kl}

    def critic_samples(self, x: torch.Tensor, noise: MemberRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """T calls 1 the standardised encoder draws and 0 standard normals."""
        _, _, standard = self.contrast(x, noise)
        return standard, self.draw(noise, "latent", *standard.shape[1:])


@register("avae")
class AVAE(WithCritic, GaussianEncoderModel):
    """The paper's model: VAE+eps plus an adversary D(x, z) on the aggregate posterior (Alg. 1).

    One iteration, the joint reading (default), two phases:
    1. elbo (lr): eps1, eps2 ~ N(0, I); q = N(mu(x, eps1), sigma(x, eps1)^2); z = mu + sigma * eps2;
       minimise -log p(x|z) + KL(q || N(0, I)) (eq. 9) + adv_weight * A(D(x, z)) over encoder and
       decoder, A the encoder's side of eq. 14 (non-saturating: -log D(x, z)); D is not stepped.
    2. discriminator (disc_lr, disc_steps times): z' ~ p(z) and z ~ q(z|x, eps1) without gradient
       into the encoder; minimise the logistic loss of D calling (x, z') real and (x, z) fake (eq. 13).
    The separate reading: 1. the ELBO of eq. 9 alone (lr); 2. the discriminator as above; 3.
    adversarial (adv_lr * adv_weight): a fresh z ~ q(z|x, eps1), minimise A(D(x, z)) over the
    encoder alone, with an Adam of its own.
    """

    label = "AVAE"
    colour = "tab:red"
    default_noise_dim = 10
    cpu_step_ms = (45.0, 40.0)
    semi_implicit = True
    proposal_label = "the encoder's Gaussian q(z|x, eps1) given one eps1 draw per test point"
    critic_inputs = CRITIC_INPUTS
    readings = {"joint": {"adv_update": "joint"}, "separate": {"adv_update": "separate"}}
    own_settings = (*WithCritic.critic_settings, "adv_loss", "adv_weight", "adv_update", "critic_input")
    reading_settings = {"separate": ("adv_lr",)}

    def __init__(self, cfg: ModelConfig, members: int):
        super().__init__(cfg, members)
        self.critic = critic_of(members, cfg)

    def discriminator_loss(self, x: torch.Tensor, noise: MemberRandom):
        """Eq. 13: D calls (x, z'~p(z)) real and (x, z~q(z|x,eps1)) fake."""
        with torch.no_grad():
            fake = self.encode(x, noise)
        return critic_loss(self.critic, x, self.prior_sample(x.shape[1], noise), fake)

    def adversarial_term(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Eq. 14, encoder side: the encoder's loss for D seeing its z as fake, per member [S]."""
        return obj.adversarial_encoder_loss(self.cfg.adv_loss, self.critic(x, z))

    def adversarial_loss(self, x: torch.Tensor, noise: MemberRandom):
        """The separate reading's own step: move q(z|x,eps1) so that D takes its samples for prior draws."""
        return self.adversarial_term(x, self.encode(x, noise)), {}

    def joint_loss(self, x: torch.Tensor, noise: MemberRandom):
        """The joint reading: -ELBO (eq. 9) + adv_weight * adversarial term, on one z draw."""
        log_px, kl, z = self.elbo_terms(x, noise)
        recon, kl, adversarial = -log_px.mean(-1), kl.mean(-1), self.adversarial_term(x, z)
        return recon + kl + self.cfg.adv_weight * adversarial, {
            "recon": recon,
            "kl": kl,
            "adversarial": adversarial,
        }

    def neg_critic_figure(self, x: torch.Tensor, noise: MemberRandom) -> torch.Tensor:
        """-(log p(x|z) + logit D(x, z)), z ~ q(z|x, eps1): at the optimum D* of eq. 13 with input
        (x, z), logit D* = log p(z) - log q(z|x), so this is AVB's form of the ELBO for AVAE."""
        z = self.encode(x, noise)
        return -(self.log_px_given_z(x, z) + self.critic(x, z))

    def phases(self, steps: StepSettings) -> list[Phase]:
        autoencoder = [*self.encoder.parameters(), *self.decoder.parameters()]
        if self.cfg.adv_update == "joint":
            return [Phase("elbo", autoencoder, self.joint_loss, steps.lr), self.critic_phase(steps)]
        return [
            *super().phases(steps),
            self.critic_phase(steps),
            # The separate step has its own Adam, which is invariant to the scale of its loss, so
            # the adversarial weight scales this step's learning rate instead.
            Phase(
                "adversarial",
                list(self.encoder.parameters()),
                self.adversarial_loss,
                steps.adv_lr * self.cfg.adv_weight,
            ),
        ]
