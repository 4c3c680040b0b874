"""Packs (`avae.training.packs`): configurations that differ in seed, data set and latent and
noise dimensions (padded) train as the members of one model, each into its own run directory,
with the results of its unpacked run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_reproduce import tiny_profile  # tests/ is on sys.path

from avae.core.graphs import StaticNoise
from avae.core.nets import MemberRandom
from avae.data import datasets as data
from avae.errors import AvaeError, ConfigError
from avae.evaluation import cost_model
from avae.io import read_json
from avae.repro import costs, execute, plan, runner
from avae.repro.paper import Experiment
from avae.repro.plan import Profile, runs_for
from avae.repro.reproduce import reproduce
from avae.training import packs, resume
from avae.training.checkpoint import load_checkpoint, save_checkpoint
from avae.training.config import Runtime, config_hash, make_config
from avae.training.packs import PackEntry, pack_groups, train_pack
from avae.training.runs import CHECKPOINT, CONFIG, DIVERGED, METRICS, read_divergence, read_metrics
from avae.training.train import train

QUIET = Runtime(progress=False)
SMALL = {"hidden": (16, 8), "latent_dim": 3, "batch_size": 50}
# The largest difference a packed configuration may show against its unpacked run, over every
# metrics.csv value and every tensor of its final checkpoint (weights, Adam moments), after two
# epochs of 8 steps. Measured on this CPU (torch 2.13, one thread): VAE 1.2e-10, AVAE 1.5e-8,
# AVB 6.0e-8 (one epoch packed, one alone): rounding of the batched products and of the fused
# Adam over more members, not bitwise. A pack resumed from its configurations' checkpoints is
# bitwise the pack trained straight.
TOLERANCE = 1e-6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_datasets(monkeypatch):
    """MNIST and Fashion-MNIST as different random images, 400 training and 100 test each, so
    that a member trained on the wrong one is seen."""
    generator = torch.Generator().manual_seed(99)
    images = {
        (name, split): torch.rand(size, 784, generator=generator) ** power
        for name, power in (("mnist", 1.0), ("fashion-mnist", 3.0))
        for split, size in (("train", 400), ("test", 100))
    }

    def load_pixels(dataset, split, mode, data_dir=None, *, test_seed=0, **own_data):
        x = images[(dataset, split)]
        if mode == "binarized" and split == "test":
            return torch.bernoulli(x, generator=torch.Generator().manual_seed(test_seed))
        return x

    monkeypatch.setattr(data, "load_pixels", load_pixels)
    monkeypatch.setattr(data, "checksums", lambda dataset, test_data="": {dataset: "no-md5"})
    return images


def configs(model: str, epochs: int = 2, **extra):
    """Two configurations of one model: MNIST seeds 0, 1 and Fashion-MNIST seeds 0, 2 (seed 0 in
    both: its streams are its own in each)."""
    settings = {"model": model, **SMALL, "epochs": epochs, **extra}
    return [
        make_config({**settings, "dataset": "mnist", "seeds": (0, 1)}),
        make_config({**settings, "dataset": "fashion-mnist", "seeds": (0, 2)}),
    ]


def numbers(run) -> list[list[float]]:
    """metrics.csv without the seconds column, as numbers."""
    return [[float(v) for k, v in row.items() if k != "seconds"] for row in read_metrics(run / METRICS)]


def largest_difference(packed, alone) -> float:
    """The largest absolute difference between two runs: every metrics.csv value, every tensor of
    the checkpoint (RNG states must be equal)."""
    a, b = numbers(packed), numbers(alone)
    assert len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b, strict=True))
    worst = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    tensors_a, meta_a = load_checkpoint(packed / CHECKPOINT)
    tensors_b, meta_b = load_checkpoint(alone / CHECKPOINT)
    assert tensors_a.keys() == tensors_b.keys() and meta_a["config_hash"] == meta_b["config_hash"]
    for key, value in tensors_a.items():
        if key.startswith("rng."):
            assert torch.equal(value, tensors_b[key]), key
        else:
            worst = max(worst, float((value.double() - tensors_b[key].double()).abs().max()))
    return worst


@pytest.mark.parametrize(("model", "pixels"), [("vae", "binarized"), ("avae", "continuous")])
def test_a_packed_configuration_equals_its_unpacked_run(tmp_path, two_datasets, model, pixels):
    cfgs = configs(model, pixels=pixels)
    for index, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{index}", runtime=QUIET)
    entries = [PackEntry(cfg, tmp_path / f"packed{index}") for index, cfg in enumerate(cfgs)]
    outcomes = train_pack(entries, runtime=QUIET)
    assert [o.diverged for o in outcomes] == [None, None]
    for index, cfg in enumerate(cfgs):
        packed, alone = tmp_path / f"packed{index}", tmp_path / f"alone{index}"
        assert largest_difference(packed, alone) <= TOLERANCE
        record = json.loads((packed / CONFIG).read_text())
        assert record["config_hash"] == config_hash(cfg) and record["data"]["examples"] == {
            "train": 400,
            "test": 100,
        }
        assert {p.name for p in alone.iterdir()} == {p.name for p in packed.iterdir()}
    # the two data sets really differ: the configurations' figures are far apart
    assert abs(numbers(tmp_path / "packed0")[-1][-1] - numbers(tmp_path / "packed1")[-1][-1]) > 1.0


def test_a_packed_configuration_resumes_alone_and_a_pack_resumes_exactly(tmp_path, two_datasets):
    cfgs = configs("avb", epochs=1)
    entries = [PackEntry(cfg, tmp_path / f"split{index}") for index, cfg in enumerate(cfgs)]
    train_pack(entries, runtime=QUIET)
    # one configuration of the pack goes on alone, as from its own checkpoint
    train(configs("avb")[1], tmp_path / "split1", runtime=QUIET, resume=True)
    train(configs("avb")[1], tmp_path / "alone1", runtime=QUIET)
    assert largest_difference(tmp_path / "split1", tmp_path / "alone1") <= TOLERANCE
    # a pack resumes from its configurations' checkpoints: bitwise the pack trained straight
    cfgs3 = configs("avb", epochs=3)
    straight = [PackEntry(cfg, tmp_path / f"straight{index}") for index, cfg in enumerate(cfgs3)]
    train_pack(straight, runtime=QUIET)
    first = [PackEntry(cfg, tmp_path / f"resumed{index}") for index, cfg in enumerate(configs("avb"))]
    train_pack(first, runtime=QUIET)
    resumed = [PackEntry(cfg, tmp_path / f"resumed{index}") for index, cfg in enumerate(cfgs3)]
    train_pack(resumed, runtime=QUIET, resume=True)
    for index in range(2):
        assert largest_difference(tmp_path / f"resumed{index}", tmp_path / f"straight{index}") == 0.0
        epochs = [int(row["epoch"]) for row in read_metrics(tmp_path / f"resumed{index}" / METRICS)]
        assert epochs == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ConfigError, match="one epoch"):  # packs resume only from one epoch
        train_pack([resumed[0], PackEntry(cfgs3[1], tmp_path / "alone1")], runtime=QUIET, resume=True)


def test_a_diverging_configuration_leaves_the_others_intact(tmp_path, two_datasets):
    """Member 1 of the second configuration (member 3 of the pack) gets a NaN weight after epoch 1:
    in epoch 2 it is recorded as diverged as an unpacked run would be, and the first configuration
    is trained on without it to its unpacked result."""
    entries = [PackEntry(cfg, tmp_path / f"packed{index}") for index, cfg in enumerate(configs("vae", 1))]
    train_pack(entries, runtime=QUIET)
    path = tmp_path / "packed1" / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    tensors["model.decoder.0.weight"][1, 0, 0] = float("nan")
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    poisoned = path.read_bytes()
    entries = [PackEntry(cfg, tmp_path / f"packed{index}") for index, cfg in enumerate(configs("vae"))]
    outcomes = train_pack(entries, runtime=QUIET, resume=True)
    assert outcomes[0].diverged is None
    error = outcomes[1].diverged
    assert error is not None and (error.epoch, error.step, error.member, error.seed) == (2, 1, 1, 2)
    record = read_divergence(tmp_path / "packed1")
    assert record is not None and record["member"] == 1 and record["seed"] == 2 and record["epoch"] == 2
    assert "member 1 (seed 2)" in record["message"]
    assert path.read_bytes() == poisoned  # its last good checkpoint is kept
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "packed1" / METRICS)] == [1, 1]
    assert not (tmp_path / "packed0" / DIVERGED).exists()
    train(configs("vae")[0], tmp_path / "alone0", runtime=QUIET)
    assert largest_difference(tmp_path / "packed0", tmp_path / "alone0") <= TOLERANCE


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"lr": 1e-4}, "lr 0.001 vs 0.0001"),
        ({"hidden": (16, 4), "latent_dim": 5}, r"hidden \[16, 8\] vs \[16, 4\]\)"),
        ({"model": "vae-noise"}, r"model 'vae' vs 'vae-noise'\)"),
    ],
)
def test_configurations_that_differ_in_more_than_seed_data_set_and_dimensions_are_refused(
    tmp_path, two_datasets, change, fragment
):
    base = {"model": "vae", **SMALL, "epochs": 1}
    other = make_config({**base, **change, "seeds": (1,)})
    entries = [PackEntry(make_config(base), tmp_path / "a"), PackEntry(other, tmp_path / "b")]
    with pytest.raises(ConfigError, match=fragment):
        train_pack(entries, runtime=QUIET)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="one directory"):
        train_pack([entries[0], PackEntry(make_config({**base, "seeds": (5,)}), tmp_path / "a")])


def test_data_sets_of_other_sizes_do_not_pack(tmp_path, two_datasets):
    """The members of one model take their steps together, so every data set has one size."""
    two_datasets[("fashion-mnist", "train")] = two_datasets[("fashion-mnist", "train")][:300]
    entries = [PackEntry(cfg, tmp_path / f"packed{index}") for index, cfg in enumerate(configs("vae", 1))]
    sizes = r"one number of training images \(mnist: 400, fashion-mnist: 300\)"
    with pytest.raises(ConfigError, match=sizes):
        train_pack(entries, runtime=QUIET)
    assert not any(tmp_path.iterdir())


def test_pack_groups_keep_apart_what_cannot_train_together():
    base = {"model": "vae", **SMALL, "epochs": 1}
    cfgs = [
        make_config({**base, "seeds": (0,)}),
        make_config({**base, "seeds": (1,), "latent_dim": 5}),
        make_config({**base, "seeds": (2,), "dataset": "fashion-mnist"}),
        make_config({**base, "seeds": (3,), "model": "avae"}),
    ]
    assert pack_groups(cfgs) == [[0, 1, 2], [3]]  # latent dimensions pad
    assert pack_groups([*cfgs, make_config({**base, "seeds": (4,), "hidden": (16, 4)})]) == [
        [0, 1, 2],
        [3],
        [4],
    ]


# ----------------------------------------------------------------------------- avae reproduce --pack


def two_dataset_profile(monkeypatch, epochs: int = 1) -> Profile:
    """VAE at latent 10 on MNIST and Fashion-MNIST (real subsets of 300 images), 2 seeds each:
    two runs that differ only in their data set, so one pack."""
    return tiny_profile(monkeypatch, epochs=epochs, datasets=("mnist", "fashion-mnist"))


def test_reproduce_with_pack_trains_each_run_as_it_would_alone(tmp_path, monkeypatch):
    profile = two_dataset_profile(monkeypatch)
    runs = runs_for(profile)
    assert plan.pack_members(runs, tmp_path / "packed") == {run.key: 4 for run in runs}
    packs = []
    monkeypatch.setattr(
        runner, "train_pack", lambda entries, **kw: packs.append(entries) or train_pack(entries, **kw)
    )
    quiet = Runtime(progress=False)
    results = reproduce(profile, tmp_path / "packed", runtime=quiet, train_only=True, pack=True)
    assert [r["trained"] for r in results] == [True, True]
    spent = [entry["seconds"] for entry in read_json(tmp_path / "packed" / "index.json")["runs"].values()]
    assert len(spent) == 2 and spent[0] == spent[1] and spent[0]["train"] > 0  # the pack's, by members
    reproduce(profile, tmp_path / "alone", runtime=quiet, train_only=True, pack=False)
    assert [[e.out.name for e in entries] for entries in packs] == [[run.dir_name for run in runs]]
    for run in runs:
        assert (
            largest_difference(tmp_path / "packed" / run.dir_name, tmp_path / "alone" / run.dir_name)
            <= TOLERANCE
        )
    # a second call finds them trained: no pack, nothing to train
    reproduce(profile, tmp_path / "packed", runtime=quiet, train_only=True, pack=True)
    assert len(packs) == 1


class Stopped(Exception):
    """The session's end, in the middle of a pack's training."""


def test_a_pack_stopped_part_way_keeps_its_training_seconds_in_the_index(tmp_path, monkeypatch):
    """A pack's training is charged to its runs' index.json entries as epochs end, by members, so
    a session stopped in the middle of the pack keeps what it spent; the next session adds to it."""
    profile = two_dataset_profile(monkeypatch, epochs=3)
    monkeypatch.setattr(execute, "TRAIN_CHARGE_SECONDS", 0.0)  # at each epoch's end
    out, quiet = tmp_path / "out", Runtime(progress=False)

    def train_pack_stopped_after_epoch_2(entries, *, on_epoch, **kw):
        def then_stop(epoch, rows, model):
            on_epoch(epoch, rows, model)
            if epoch == 2:
                raise Stopped

        return train_pack(entries, on_epoch=then_stop, **kw)

    booked = []
    real_charge = runner.charge_by_members

    def charge_and_note(runs, out, part, seconds):
        booked.append(part)
        real_charge(runs, out, part, seconds)

    monkeypatch.setattr(runner, "train_pack", train_pack_stopped_after_epoch_2)
    monkeypatch.setattr(runner, "charge_by_members", charge_and_note)
    with pytest.raises(Stopped):
        reproduce(profile, out, runtime=quiet, train_only=True, pack=True)
    assert booked == ["train", "train"]  # at the end of epochs 1 and 2, before the stop
    entries = read_json(out / "index.json")["runs"]
    assert len(entries) == 2
    for entry in entries.values():
        epochs = {row["epoch"]: row["seconds"] for row in read_metrics(out / entry["dir"] / METRICS)}
        assert entry["trained_epochs"] == 2 and list(entry["seconds"]) == ["train"]
        assert entry["seconds"]["train"] >= sum(epochs.values()) - 0.1  # its share of both epochs
    monkeypatch.setattr(runner, "train_pack", train_pack)
    reproduce(profile, out, runtime=quiet, train_only=True, pack=True)  # the next session: epoch 3
    for key, after in read_json(out / "index.json")["runs"].items():
        assert after["trained_epochs"] == 3
        assert after["seconds"]["train"] > entries[key]["seconds"]["train"]


def test_a_run_diverging_in_a_reproduce_pack_fails_alone(tmp_path, monkeypatch):
    profile = two_dataset_profile(monkeypatch, epochs=2)
    mnist, fashion = runs_for(profile)
    out, quiet = tmp_path / "out", Runtime(progress=False)
    train_pack([PackEntry(replace(run.cfg, epochs=1), out / run.dir_name) for run in (mnist, fashion)])
    path = out / fashion.dir_name / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    tensors["model.encoder.net.0.weight"][0, 0, 0] = float("inf")
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    with pytest.raises(AvaeError, match=f"1 of 2 runs failed \\({fashion.dir_name}: non-finite"):
        reproduce(profile, out, runtime=quiet, train_only=True, pack=True)
    assert read_divergence(out / fashion.dir_name)["epoch"] == 2
    trained = plan.select(profile, (), True)
    assert plan.status_of(mnist, trained, out) == ("finished", 2)
    assert plan.status_of(fashion, trained, out) == ("diverged", 1)


def test_the_estimate_of_a_packed_run_is_its_share_of_its_pack(tmp_path, monkeypatch):
    profile = two_dataset_profile(monkeypatch, epochs=3)
    run = runs_for(profile)[0]
    alone = costs.estimate_run_seconds(run, profile, tmp_path, "cpu")[0]
    packed = costs.estimate_run_seconds(run, profile, tmp_path, "cpu", pack=4)[0]
    whole = costs.estimate_train_seconds("vae", 4, 3, 300, "cpu", test_images=cost_model.test_points(run.cfg))
    assert packed == pytest.approx(whole / 2) and packed < alone


def test_pack_is_refused_where_it_cannot_run_and_its_estimate_is_a_share(tmp_path, monkeypatch, capsys):
    profile = two_dataset_profile(monkeypatch)
    with pytest.raises(ConfigError, match="--executor local"):
        reproduce(profile, tmp_path, pack=True, executor="ray", dry_run=True)
    with pytest.raises(ConfigError, match="without --tensorboard"):
        reproduce(profile, tmp_path, pack=True, tensorboard=True, dry_run=True)
    cuda = Runtime(device="cuda", progress=False)
    reproduce(profile, tmp_path, runtime=cuda, dry_run=True)  # off unless asked for
    alone = train_seconds(capsys.readouterr().out)
    reproduce(profile, tmp_path, runtime=cuda, pack=True, dry_run=True)  # each run its share of its pack
    packed = train_seconds(capsys.readouterr().out)
    assert len(packed) == len(alone) == 2 and sum(packed) < sum(alone)


def train_seconds(table: str) -> list[float]:
    """The "train s (est.)" column of a --dry-run table."""
    return [float(line.split("|")[-3]) for line in table.splitlines() if line.startswith("| vae-")]


# ----------------------------------------------------------------------------- padding


# Configurations of other latent and noise dimensions in one pack: two seeds on MNIST at latent 3
# (noise 10) and two on Fashion-MNIST at latent 5 (noise 8), so that each kind is padded in some
# member. The largest packed-minus-unpacked difference measured on this CPU (torch 2.13, one
# thread, 2 epochs of 8 steps, over every metrics.csv value and checkpoint tensor of both
# configurations): vae 6.1e-5, vae-noise 4e-6, avb 1e-6, avb-ac 6.1e-5, avae 2e-6. 6.1e-5 is one
# float32 step of a per-epoch figure between 256 and 512 nats; checkpoint tensors differ by at
# most 2.5e-6 (vae) and 2.7e-5 (avb-ac, whose unpadded pack of latent 3, noise 4 differs from its
# unpacked run by 3.2e-5 too: its standardised codes amplify rounding). Only the widths of the
# matrix products differ (rounding); the padded coordinates add exact zeros (checked below).
PADDINGS = {
    "vae": ({"latent_dim": 3}, {"latent_dim": 5}),
    "vae-noise": ({"latent_dim": 3, "noise_dim": 10}, {"latent_dim": 5, "noise_dim": 8}),
    "avb": ({"latent_dim": 3, "noise_dim": 10}, {"latent_dim": 5, "noise_dim": 8}),
    "avb-ac": ({"latent_dim": 3, "noise_dim": 10}, {"latent_dim": 5, "noise_dim": 8}),
    "avae": ({"latent_dim": 3, "noise_dim": 10}, {"latent_dim": 5, "noise_dim": 8}),
}
PADDED_TOLERANCE = 2e-4


def padded_configs(model: str, epochs: int = 2):
    settings = {"model": model, **SMALL, "epochs": epochs}
    first, second = PADDINGS[model]
    return [
        make_config({**settings, **first, "dataset": "mnist", "seeds": (0, 1)}),
        make_config({**settings, **second, "dataset": "fashion-mnist", "seeds": (0, 2)}),
    ]


def captured_state(monkeypatch) -> list:
    """The pack's training state, caught as `train_epochs` receives it."""
    states = []
    real = packs.train_epochs

    def spy(state, *args, **kwargs):
        states.append(state)
        return real(state, *args, **kwargs)

    monkeypatch.setattr(packs, "train_epochs", spy)
    return states


def padded_entries(state, runs, tensors_of) -> list[torch.Tensor]:
    """Every entry of `tensors_of(name)` (a tensor shaped as the parameter `name`, members first)
    that a padded member does not have: flat, one tensor per parameter."""
    out = []
    for name, param in state.model.named_parameters():
        values = tensors_of(name)
        for run in runs:
            dims = resume.own_dims(run.cfg)
            own = resume.resize_payload(state, {f"model.{name}": param[run.members]}, dims, pad=False)
            ones = {key: torch.ones_like(value) for key, value in own.items()}
            mask = resume.resize_payload(state, ones, dims, pad=True)[f"model.{name}"]
            out.append(values[run.members][mask == 0])
    return out


@pytest.mark.parametrize("model", list(PADDINGS))
def test_padding_is_exact(tmp_path, two_datasets, monkeypatch, model):
    """Configurations of other latent and noise dimensions train in one pack at the largest of
    them: every padded weight and Adam moment is exactly 0 after training, the padded entries'
    gradients are exactly 0, and each configuration's metrics and checkpoint (at its own sizes)
    are its unpacked run's to PADDED_TOLERANCE (the measured differences are above PADDINGS)."""
    cfgs = padded_configs(model)
    for index, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{index}", runtime=QUIET)
    states = captured_state(monkeypatch)
    entries = [PackEntry(cfg, tmp_path / f"packed{index}") for index, cfg in enumerate(cfgs)]
    assert [o.diverged for o in train_pack(entries, runtime=QUIET)] == [None, None]
    for index in range(2):
        assert largest_difference(tmp_path / f"packed{index}", tmp_path / f"alone{index}") <= PADDED_TOLERANCE
        packed, alone = tmp_path / f"packed{index}", tmp_path / f"alone{index}"
        tensors, meta = load_checkpoint(packed / CHECKPOINT)
        own = load_checkpoint(alone / CHECKPOINT)[0]
        assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in own.items()}
        assert meta["config_hash"] == config_hash(cfgs[index])
        assert json.loads((packed / CONFIG).read_text())["config_hash"] == config_hash(cfgs[index])
        assert {p.name for p in alone.iterdir()} == {p.name for p in packed.iterdir()}
    (state,) = states
    assert state.model.cfg.latent_dim == 5 and state.model.member_widths["latent"] == (3, 3, 5, 5)
    runs = packs.slots_of(entries)
    params = dict(state.model.named_parameters())
    assert all(bool((part == 0).all()) for part in padded_entries(state, runs, lambda n: params[n].detach()))
    assert sum(part.numel() for part in padded_entries(state, runs, lambda n: params[n])) > 0
    for phase, optimizer in zip(state.phases, state.optimizers, strict=True):
        moments = {id(p): s for p, s in optimizer.state.items()}
        for slot in ("exp_avg", "exp_avg_sq"):
            by_name = {n: moments[id(p)][slot] for n, p in params.items() if id(p) in moments}
            parts = padded_entries(
                state, runs, lambda n, by_name=by_name: by_name.get(n, params[n].detach() * 0)
            )
            assert all(bool((part == 0).all()) for part in parts), (phase.name, slot)
        # one more step's gradients, on the last batch with fresh noise: exactly 0 where padded
        loss, _ = phase.loss(state.batch, state.noise_rng)
        grads = dict(
            zip([id(p) for p in phase.params], torch.autograd.grad(loss.sum(), phase.params), strict=True)
        )
        by_name = {n: grads.get(id(p), torch.zeros_like(p)) for n, p in params.items()}
        assert all(bool((part == 0).all()) for part in padded_entries(state, runs, by_name.__getitem__)), (
            phase.name
        )
        assert any(bool(g.abs().sum() > 0) for g in grads.values())  # (the rest is not all 0)


def test_a_padded_pack_checkpoint_resumes_alone_and_as_a_pack(tmp_path, two_datasets):
    """A padded pack's checkpoints are at each configuration's own sizes: one continues alone as
    its unpacked run would (to PADDED_TOLERANCE), and the pack resumes from them (embedded again)
    bitwise as the pack trained straight."""
    first = padded_configs("avae", epochs=1)
    entries = [PackEntry(cfg, tmp_path / f"split{index}") for index, cfg in enumerate(first)]
    train_pack(entries, runtime=QUIET)
    for index, (latent, noise) in enumerate([(3, 10), (5, 8)]):  # its own sizes, not the pack's (5, 10)
        tensors, _ = load_checkpoint(tmp_path / f"split{index}" / CHECKPOINT)
        assert tensors["model.decoder.0.weight"].shape == (2, 8, latent)
        assert tensors["model.encoder.net.0.weight"].shape == (2, 16, 784 + noise)
        assert tensors["optim.elbo.4.exp_avg"].shape == (2, 2 * latent, 8)  # the encoder's mu, log sigma^2
        assert tensors["model.critic.net.0.weight"].shape == (2, 16, 784 + latent)
    cfgs = padded_configs("avae")
    train(cfgs[0], tmp_path / "split0", runtime=QUIET, resume=True)
    train(cfgs[0], tmp_path / "alone0", runtime=QUIET)
    assert largest_difference(tmp_path / "split0", tmp_path / "alone0") <= PADDED_TOLERANCE
    train_pack([PackEntry(c, tmp_path / f"straight{i}") for i, c in enumerate(cfgs)], runtime=QUIET)
    train_pack([PackEntry(c, tmp_path / f"resumed{i}") for i, c in enumerate(first)], runtime=QUIET)
    train_pack(
        [PackEntry(c, tmp_path / f"resumed{i}") for i, c in enumerate(cfgs)], runtime=QUIET, resume=True
    )
    for index in range(2):
        assert largest_difference(tmp_path / f"resumed{index}", tmp_path / f"straight{index}") == 0.0


def test_padded_draws_are_each_members_own_unpacked_draws():
    """`MemberRandom.padded_normal` and a padded `StaticNoise` fill give each member what its
    unpacked stream (its own width) gives, across pool refills, draws larger than the pool and
    cleared pools, the padded entries exactly 0; the streams end where the unpacked ones end."""
    seeds, widths, pool = (0, 1, 2), (3, 5, 2), 64
    packed = MemberRandom(seeds, "noise", pool=pool)
    alone = [MemberRandom((seed,), "noise", pool=pool) for seed in seeds]

    def check(values, own_draws):
        for member, own in enumerate(own_draws):
            assert torch.equal(values[member, :, : widths[member]], own)
            assert bool((values[member, :, widths[member] :] == 0).all())

    for step, rows in enumerate([4, 7, 1, 30, 9, 2, 5]):  # 30 x 5 > pool: drawn outside it
        if step == 4:
            packed.clear_pool()
            for rng in alone:
                rng.clear_pool()
        values = packed.padded_normal(rows, 5, widths)
        check(values, [rng.normal(rows, w)[0] for rng, w in zip(alone, widths, strict=True)])
        # a replayable unit's draws: one padded draw and one plain draw, filled at once
        noise = StaticNoise(3, [rows * 5, 6], "cpu", [(rows, 5, widths), (1, 6, None)])
        noise.fill_from(packed)
        for member, (rng, w) in enumerate(zip(alone, widths, strict=True)):
            out = torch.empty(1, rows * w + 6)
            rng.fill(out, [rows * w, 6])
            own = noise.buffer[member].view(-1)[: rows * 5].view(rows, 5)
            assert torch.equal(own[:, :w].reshape(-1), out[0, : rows * w])
            assert bool((own[:, w:] == 0).all()) and torch.equal(
                noise.buffer[member, rows * 5 :], out[0, rows * w :]
            )
    for rng, own in zip(alone, packed.get_state(), strict=True):
        assert torch.equal(rng.get_state()[0], own)
    assert torch.equal(packed.normal(3, 2)[1], alone[1].normal(3, 2)[0])  # plain draws follow on


def test_reproduce_packs_runs_of_other_latent_dimensions_together(tmp_path, monkeypatch):
    """`avae reproduce --pack` groups by `pack_key`: runs that differ in their latent dimension (and
    data set) are one padded pack."""
    profile = replace(two_dataset_profile(monkeypatch), latent_dims=(10, 15))
    monkeypatch.setitem(plan.EXPERIMENTS, "tiny", Experiment("test", ("vae",), (10, 15)))
    runs = runs_for(profile)
    assert sorted({run.cfg.model.latent_dim for run in runs}) == [10, 15] and len(runs) == 4
    assert [[run.key for run in group] for group in plan.packs_of(runs, tmp_path)] == [[r.key for r in runs]]


def test_reproduce_evaluates_a_padded_pack_in_evaluation_packs_of_equal_sizes(tmp_path, monkeypatch):
    """Training packs pad, evaluation packs do not (checkpoints are at each run's own sizes): the
    four runs at latent 10 and 15 train as one padded pack and are evaluated as two evaluation
    packs, one per latent dimension, none failing over to its runs alone."""
    profile = replace(two_dataset_profile(monkeypatch), latent_dims=(10, 15), honest_latents=())
    monkeypatch.setitem(plan.EXPERIMENTS, "tiny", Experiment("test", ("vae",), (10, 15)))
    runs = runs_for(profile)
    trained, evaluated = [], []
    monkeypatch.setattr(
        runner, "train_pack", lambda entries, **kw: trained.append(entries) or train_pack(entries, **kw)
    )
    real = runner.evaluate_pack
    monkeypatch.setattr(
        runner, "evaluate_pack", lambda dirs, **kw: evaluated.append(list(dirs)) or real(dirs, **kw)
    )
    monkeypatch.setattr(execute, "analyse_run", lambda *a, **kw: None)  # not what is tested here
    reproduce(profile, tmp_path, runtime=Runtime(progress=False), pack=True)
    assert [len(entries) for entries in trained] == [4]
    latent = {tmp_path / run.dir_name: run.cfg.model.latent_dim for run in runs}
    assert evaluated and all(len({latent[d] for d in dirs}) == 1 and len(dirs) == 2 for dirs in evaluated)
    assert {latent[d] for dirs in evaluated for d in dirs} == {10, 15}
    for run in runs:
        assert "neg_elbo" in json.loads((tmp_path / run.dir_name / "eval.json").read_text())["metrics"]


def test_a_sweep_with_pack_trains_its_points_as_one_padded_pack(tmp_path, monkeypatch, capsys):
    """`avae sweep --pack` over latent dimensions: the two points train as one padded pack, each
    equal to its unpacked sweep's run to PADDED_TOLERANCE, sweep.json as without --pack; --pack
    with the Ray executor is refused before anything is written."""
    from test_cli import refused  # tests/ is on sys.path

    from avae.cli.commands import main
    from avae.repro.sweep import SWEEP

    settings = ["--model", "vae", "--epochs", "1", "--seeds", "0,1", "--train-subset", "300"]
    settings += ["--test-subset", "100", "--grid", "latent_dim=3,5", "--threads", "1", "--no-progress"]
    packs_trained = []
    monkeypatch.setattr(
        runner, "train_pack", lambda entries, **kw: packs_trained.append(entries) or train_pack(entries, **kw)
    )
    assert main(["sweep", *settings, "--pack", "--out", str(tmp_path / "packed")]) == 0
    assert main(["sweep", *settings, "--out", str(tmp_path / "alone")]) == 0
    assert [len(entries) for entries in packs_trained] == [2]
    packed, alone = (json.loads((tmp_path / d / SWEEP).read_text())["points"] for d in ("packed", "alone"))
    assert [p["dir"] for p in packed] == [p["dir"] for p in alone] and len(packed) == 2
    for point in packed:
        difference = largest_difference(tmp_path / "packed" / point["dir"], tmp_path / "alone" / point["dir"])
        assert difference <= PADDED_TOLERANCE
        assert "neg_elbo" in point["figures"]
    out = tmp_path / "ray"
    argv = ["sweep", *settings, "--pack", "--executor", "ray", "--out", str(out)]
    assert "--pack trains its packs in this process: use it with --executor local" in refused(capsys, argv)
    assert not out.exists()


def test_a_diverging_configuration_of_a_padded_pack_leaves_the_others_intact(tmp_path, two_datasets):
    """As for an unpadded pack: the padded configuration (latent 3 in a pack of latent 5) whose
    member gets a NaN weight is recorded as diverged, its last good checkpoint kept at its own
    sizes, and the other trains on alone to its unpacked result."""
    cfgs = padded_configs("vae", 1)
    train_pack([PackEntry(cfg, tmp_path / f"packed{i}") for i, cfg in enumerate(cfgs)], runtime=QUIET)
    path = tmp_path / "packed0" / CHECKPOINT
    tensors, meta = load_checkpoint(path)
    assert tensors["model.decoder.0.weight"].shape[-1] == 3  # its own latent dimension
    tensors["model.decoder.0.weight"][0, 0, 0] = float("nan")
    save_checkpoint(path, tensors, {k: v for k, v in meta.items() if k != "format"})
    poisoned = path.read_bytes()
    cfgs = padded_configs("vae", 2)
    outcomes = train_pack(
        [PackEntry(cfg, tmp_path / f"packed{i}") for i, cfg in enumerate(cfgs)], runtime=QUIET, resume=True
    )
    assert outcomes[1].diverged is None
    error = outcomes[0].diverged
    assert error is not None and (error.epoch, error.member, error.seed) == (2, 0, 0)
    assert read_divergence(tmp_path / "packed0")["epoch"] == 2 and path.read_bytes() == poisoned
    assert not (tmp_path / "packed1" / DIVERGED).exists()
    train(cfgs[1], tmp_path / "alone1", runtime=QUIET)
    assert largest_difference(tmp_path / "packed1", tmp_path / "alone1") <= PADDED_TOLERANCE
