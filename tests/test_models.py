"""Each model's loss is finite and each phase moves only the parameters it owns."""

from __future__ import annotations

import pytest
import torch

from avae.errors import ConfigError
from avae.models import MODELS, ModelConfig, build_model, default_noise_dim
from avae.nets import MemberRandom
from avae.train import make_config, new_state, take_step

SMALL = {"hidden": (16, 8), "latent_dim": 3}


def small_model(name: str, seeds=(0, 1)):
    cfg = ModelConfig(name=name, noise_dim=default_noise_dim(name) and 4, **SMALL)
    return build_model(cfg, seeds)


def test_registry_holds_the_four_models():
    assert set(MODELS) == {"vae", "vae-noise", "avb", "avae"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_losses_finite_and_shapes(name):
    model = small_model(name)
    x = torch.rand(2, 5, 784)
    rng = MemberRandom((0, 1), "noise")
    for phase in model.phases():
        loss, terms = phase.loss(x, rng)
        assert loss.shape == (2,) and torch.isfinite(loss).all(), phase.name
        assert all(torch.isfinite(v).all() for v in terms.values())
    assert model.neg_elbo(x, rng).shape == (2, 5)
    samples = model.sample(7, rng)
    assert samples.shape == (2, 7, 784) and samples.min() >= 0 and samples.max() <= 1


OWNED = {  # phase -> which sub-networks it may move
    ("vae", "elbo"): {"encoder", "decoder"},
    ("vae-noise", "elbo"): {"encoder", "decoder"},
    ("avae", "elbo"): {"encoder", "decoder"},
    ("avae", "discriminator"): {"critic"},
    ("avae", "adversarial"): {"encoder"},
    ("avb", "elbo"): {"encoder", "decoder"},
    ("avb", "discriminator"): {"critic"},
}


@pytest.mark.parametrize("name,phase_name", sorted(OWNED))
def test_phase_moves_only_its_own_parameters(name, phase_name):
    cfg = make_config({"model": name, **SMALL, "seeds": (0, 1)})
    state = new_state(cfg, torch.device("cpu"))
    index = [p.name for p in state.phases].index(phase_name)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    x = torch.rand(2, 8, 784)
    take_step(state.phases[index], state.optimizers[index], x, MemberRandom((0, 1), "noise"))
    moved = {k.split(".")[0] for k, v in state.model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved == OWNED[(name, phase_name)]
    # every parameter of the phase moved, in every member
    for k, v in state.model.state_dict().items():
        if k.split(".")[0] in OWNED[(name, phase_name)]:
            assert all(not torch.equal(v[m], before[k][m]) for m in range(2)), k


def test_avae_runs_algorithm_1_in_order():
    assert [p.name for p in small_model("avae").phases()] == [
        "elbo",
        "discriminator",
        "adversarial",
    ]


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
        cfg = make_config({"model": "avae", **SMALL, "adv_weight": weight, "seeds": (0,)})
        state = new_state(cfg, torch.device("cpu"))
        before = state.model.encoder.net[0].weight.detach().clone()
        take_step(state.phases[2], state.optimizers[2], torch.rand(1, 8, 784), MemberRandom((0,), "noise"))
        moves.append((state.model.encoder.net[0].weight.detach() - before).abs().max())
    torch.testing.assert_close(moves[1], moves[0] / 2)
