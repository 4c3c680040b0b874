"""Each model's loss is finite and each phase moves only the parameters it owns."""

from __future__ import annotations

import pytest
import torch

from avae.core.models import MODELS, ModelConfig, StepSettings, build_model, default_noise_dim
from avae.core.nets import MemberRandom
from avae.errors import ConfigError
from avae.training.config import make_config
from avae.training.steps import new_state, take_step

SMALL = {"hidden": (16, 8), "latent_dim": 3}
STEPS = StepSettings(lr=1e-3, disc_lr=1e-3, adv_lr=1e-3, disc_steps=1)


def small_model(name: str, seeds=(0, 1)):
    cfg = ModelConfig(name=name, noise_dim=default_noise_dim(name) and 4, **SMALL)
    return build_model(cfg, seeds)


def test_registry_holds_the_papers_four_models_and_avb_ac():
    assert set(MODELS) == {"vae", "vae-noise", "avb", "avb-ac", "avae"}
    assert MODELS["avae"].readings.keys() == {"joint", "separate"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_losses_finite_and_shapes(name):
    model = small_model(name)
    x = torch.rand(2, 5, 784)
    rng = MemberRandom((0, 1), "noise")
    for phase in model.phases(STEPS):
        loss, terms = phase.loss(x, rng)
        assert loss.shape == (2,) and torch.isfinite(loss).all(), phase.name
        assert all(torch.isfinite(v).all() for v in terms.values())
    assert model.neg_elbo(x, rng).shape == (2, 5)
    samples = model.sample(7, rng)
    assert samples.shape == (2, 7, 784) and samples.min() >= 0 and samples.max() <= 1


OWNED = {  # (model, its settings, phase) -> which sub-networks the phase may move
    ("vae", "", "elbo"): {"encoder", "decoder"},
    ("vae-noise", "", "elbo"): {"encoder", "decoder"},
    ("avae", "joint", "elbo"): {"encoder", "decoder"},
    ("avae", "joint", "discriminator"): {"critic"},
    ("avae", "separate", "elbo"): {"encoder", "decoder"},
    ("avae", "separate", "discriminator"): {"critic"},
    ("avae", "separate", "adversarial"): {"encoder"},
    ("avb", "", "elbo"): {"encoder", "decoder"},
    ("avb", "", "discriminator"): {"critic"},
    ("avb-ac", "", "elbo"): {"encoder", "decoder"},
    ("avb-ac", "", "discriminator"): {"critic"},
}


@pytest.mark.parametrize("name,reading,phase_name", sorted(OWNED))
def test_phase_moves_only_its_own_parameters(name, reading, phase_name):
    cfg = make_config({"model": name, **SMALL, "seeds": (0, 1), **MODELS[name].readings[reading]})
    state = new_state(cfg, torch.device("cpu"))
    assert sorted(p.name for p in state.phases) == sorted(k[2] for k in OWNED if k[:2] == (name, reading))
    index = [p.name for p in state.phases].index(phase_name)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    x = torch.rand(2, 8, 784)
    take_step(state.phases[index], state.optimizers[index], x, MemberRandom((0, 1), "noise"))
    moved = {k.split(".")[0] for k, v in state.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == OWNED[(name, reading, phase_name)]
    # every parameter of the phase moved, in every member
    for k, v in state.model.state_dict().items():
        if k.split(".")[0] in OWNED[(name, reading, phase_name)]:
            assert all(not torch.equal(v[m], before[k][m]) for m in range(2)), k


def test_avae_runs_algorithm_1_in_order():
    separate = ModelConfig(name="avae", noise_dim=4, adv_update="separate", **SMALL)
    phases = build_model(separate, (0,)).phases(STEPS)
    assert [p.name for p in phases] == ["elbo", "discriminator", "adversarial"]
    assert [p.name for p in small_model("avae").phases(STEPS)] == ["elbo", "discriminator"]  # joint


def test_joint_update_adds_the_weighted_adversarial_term_to_the_encoder_only():
    """Joint reading: one Adam step on -ELBO + w * adversarial term. The decoder's update does not
    depend on w (the term does not reach it); the encoder's does; w = 0 is VAE+eps's step."""
    x = torch.rand(1, 8, 784)
    steps = {}
    for weight in (0.0, 1.0):
        cfg = make_config({"model": "avae", **SMALL, "adv_weight": weight, "seeds": (0,)})
        state = new_state(cfg, torch.device("cpu"))
        take_step(state.phases[0], state.optimizers[0], x, MemberRandom((0,), "noise"))
        steps[weight] = {k: v.clone() for k, v in state.model.state_dict().items()}
    plain = make_config({"model": "vae-noise", **SMALL, "noise_dim": 10, "seeds": (0,)})
    state = new_state(plain, torch.device("cpu"))
    take_step(state.phases[0], state.optimizers[0], x, MemberRandom((0,), "noise"))
    for key, value in state.model.state_dict().items():
        torch.testing.assert_close(steps[0.0][key], value, rtol=0, atol=0)  # w = 0: VAE+eps exactly
    changed = {key.split(".")[0] for key in steps[0.0] if not torch.equal(steps[0.0][key], steps[1.0][key])}
    assert changed == {"encoder"}  # (Adam's first step is lr * sign(grad): only sign flips show)


def test_adversarial_term_is_the_non_saturating_loss_of_d_on_the_encoders_draw():
    model = small_model("avae")
    x = torch.rand(2, 6, 784)
    loss, terms = model.joint_loss(x, MemberRandom((0, 1), "n"))
    log_px, kl, z = model.elbo_terms(x, MemberRandom((0, 1), "n"))
    adversarial = torch.nn.functional.softplus(-model.critic(x, z)).mean(-1)  # -log sigmoid(D)
    torch.testing.assert_close(terms["adversarial"], adversarial)
    torch.testing.assert_close(loss, -log_px.mean(-1) + kl.mean(-1) + adversarial)


def test_members_are_initialised_from_their_own_seed():
    pair = small_model("avae", seeds=(3, 5)).state_dict()
    alone = small_model("avae", seeds=(5,)).state_dict()
    assert all(torch.equal(pair[k][1], alone[k][0]) for k in alone)
    assert not torch.equal(pair["decoder.0.weight"][0], pair["decoder.0.weight"][1])


@pytest.mark.parametrize(
    "settings,fragment",
    [
        ({"name": "vae", "noise_dim": 10}, "has no injected noise"),
        ({"name": "avae", "noise_dim": 0}, "positive noise dimension"),
        ({"name": "gan", "noise_dim": 0}, "unknown model"),
        ({"name": "vae", "latent_dim": 0}, "latent_dim must be a positive"),
        ({"name": "vae", "hidden": (256, -1)}, "hidden widths"),
        ({"name": "vae", "activation": "sigmoidish"}, "unknown activation"),
        ({"name": "vae", "likelihood": "gaussian"}, "unknown likelihood"),
    ],
)
def test_bad_model_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ModelConfig(**settings)


def test_avb_estimate_matches_its_definition():
    """AVB's neg ELBO is -log p(x|z) + T(x, z) for z from its implicit encoder, same noise."""
    model = small_model("avb")
    x = torch.rand(2, 6, 784)
    got = model.neg_elbo(x, MemberRandom((0, 1), "n"))
    z = model.encode(x, MemberRandom((0, 1), "n"))
    expected = -model.log_px_given_z(x, z) + model.critic(x, z)
    torch.testing.assert_close(got, expected)


def test_critic_on_z_alone_ignores_x_and_avb_needs_x():
    model = build_model(ModelConfig(name="avae", noise_dim=4, critic_input="z", **SMALL), (0, 1))
    z = torch.randn(2, 5, 3)
    torch.testing.assert_close(model.critic(torch.rand(2, 5, 784), z), model.critic(torch.rand(2, 5, 784), z))
    with pytest.raises(ConfigError, match="critic_input xz"):
        ModelConfig(name="avb", noise_dim=4, critic_input="z")


def test_adversarial_weight_scales_the_adversarial_step():
    """Adam ignores a constant factor on a loss, so the weight must act on the step size: half the
    weight gives (on the first Adam step, |update| = lr) exactly half the update."""
    moves = []
    for weight in (1.0, 0.5):
        settings = {"model": "avae", **SMALL, "adv_weight": weight, "adv_update": "separate", "seeds": (0,)}
        state = new_state(make_config(settings), torch.device("cpu"))
        before = state.model.encoder.net[0].weight.detach().clone()
        take_step(state.phases[2], state.optimizers[2], torch.rand(1, 8, 784), MemberRandom((0,), "noise"))
        moves.append((state.model.encoder.net[0].weight.detach() - before).abs().max())
    torch.testing.assert_close(moves[1], moves[0] / 2)


def test_avae_critic_figure_is_avbs_form_with_logit_d():
    model = small_model("avae")
    x = torch.rand(2, 6, 784)
    got = model.neg_critic_figure(x, MemberRandom((0, 1), "n"))
    z = model.encode(x, MemberRandom((0, 1), "n"))
    torch.testing.assert_close(got, -(model.log_px_given_z(x, z) + model.critic(x, z)))
    assert small_model("vae").neg_critic_figure(x, MemberRandom((0, 1), "n")) is None


@pytest.mark.parametrize("moments", ["others", "all"])
def test_avb_ac_objective_matches_an_independent_computation(moments):
    """AVB-AC (Mescheder et al. 2017, Sec. 3.3): -log p(x|z) + KL(N(mu, sigma^2) || N(0, I))
    + T(x, (z - mu) / sigma), with z the first of m encoder draws and mu, sigma (unbiased std) the
    moments of the other m - 1 draws ("others") or of all m ("all"); recomputed here draw by draw
    with the same noise."""
    m, batch = 5, 4
    cfg = ModelConfig(name="avb-ac", noise_dim=4, ac_samples=m, ac_moments=moments, **SMALL)
    model = build_model(cfg, (0, 1))
    x = torch.rand(2, batch, 784)
    got = model.neg_elbo(x, MemberRandom((0, 1), "n"))
    eps = MemberRandom((0, 1), "n").normal(m * batch, 4).reshape(2, m, batch, 4)
    draws = torch.stack([model.encoder(x, eps[:, k]) for k in range(m)], dim=1)  # [S, m, B, Z]
    used = draws[:, 1:] if moments == "others" else draws
    n = used.shape[1]
    mu = used.sum(1) / n
    sigma = ((used - mu.unsqueeze(1)) ** 2).sum(1).div(n - 1).sqrt()
    kl = 0.5 * (mu**2 + sigma**2 - 1 - 2 * sigma.log()).sum(-1)
    z = draws[:, 0]
    expected = -model.log_px_given_z(x, z) + kl + model.critic(x, (z - mu) / sigma)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    loss, _ = model.elbo_loss(x, MemberRandom((0, 1), "n"))
    torch.testing.assert_close(loss, expected.mean(-1), rtol=1e-5, atol=1e-4)


def test_avb_ac_critic_tells_standardised_draws_from_standard_normals():
    model = build_model(ModelConfig(name="avb-ac", noise_dim=4, ac_samples=6, **SMALL), (0,))
    positive, negative = model.critic_samples(torch.rand(1, 300, 784), MemberRandom((0,), "n"))
    assert positive.shape == negative.shape == (1, 300, 3)
    # standardised by the other draws' moments: about N(0, 1) per coordinate; the negatives are N(0, I)
    assert abs(float(negative.mean())) < 0.1 and abs(float(negative.std()) - 1) < 0.1
    assert torch.isfinite(positive).all()


@pytest.mark.parametrize("moments", ["all", "others"])
def test_avb_ac_standardised_z_is_bounded_only_when_its_moments_include_it(moments):
    """With moments from all m draws, z itself among them, every standardised coordinate lies within
    (m - 1) / sqrt(m) (Samuelson's inequality; 2.47 for m = 8), so it can never look N(0, I). With
    the moments of the other m - 1 draws (the default) it is unbounded, as N(0, I) is."""
    cfg = ModelConfig("avb-ac", data_dim=6, hidden=(8,), latent_dim=4, noise_dim=3, ac_moments=moments)
    model = build_model(cfg, (0,))
    x = torch.rand(1, 2000, 6)
    with torch.no_grad():
        _, _, standard = model.contrast(x, MemberRandom((0,), "test", torch.device("cpu")))
    bound = 7 / 8**0.5
    largest = float(standard.abs().max())
    if moments == "all":
        assert largest <= bound + 1e-4
    else:
        assert largest > bound + 0.5


def test_avb_ac_moments_need_enough_draws_and_a_known_choice():
    with pytest.raises(ConfigError, match="ac_samples must be at least 3 with ac_moments 'others'"):
        ModelConfig("avb-ac", noise_dim=10, ac_samples=2)
    ModelConfig("avb-ac", noise_dim=10, ac_samples=2, ac_moments="all")
    with pytest.raises(ConfigError, match="ac_moments"):
        ModelConfig("avb-ac", noise_dim=10, ac_moments="some")
