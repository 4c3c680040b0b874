"""The paper as data: its experiments, its Table 1, and its five claims as comparisons of runs.

A row of a table is a `RowKey`: (data set, model, reading, latent dim, noise dim). Models and their
readings come from the registry (`avae.core.models`); the paper names models only where it makes a
statement about them (Figs. 6-8 and the claims).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from avae.core.models import MODELS, default_noise_dim
from avae.data import datasets as data


class RowKey(NamedTuple):
    """A row of a table: which runs it holds (a plain tuple of the same values is the same key)."""

    dataset: str
    model: str
    reading: str
    latent: int  # latent_dim
    noise: int  # noise_dim


DATASET_LABELS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def dataset_label(name: str) -> str:
    """How tables name a data set: the paper's name, or the user's file or folder name."""
    return DATASET_LABELS.get(name) or data.label(name)


PAPER_LATENTS = (10, 15, 20)
PAPER_NOISE = 10  # the injected-noise dimension of every run after Fig. 6


@dataclass(frozen=True)
class Experiment:
    """Models (None: every registered model) at some latent and noise sizes, on every data set."""

    title: str
    models: tuple[str, ...] | None
    latent_dims: tuple[int, ...]
    noise_dims: tuple[int, ...] = (PAPER_NOISE,)

    def model_names(self) -> tuple[str, ...]:
        return tuple(MODELS) if self.models is None else self.models


EXPERIMENTS: dict[str, Experiment] = {
    "table1": Experiment(
        "Table 1: test negative ELBO of every model at latent 10, 15 and 20", None, PAPER_LATENTS
    ),
    "fig6": Experiment(
        "Fig. 6: VAE+eps with noise dimension 5, 10 and 15 against the VAE, latent 10",
        ("vae", "vae-noise"),
        (10,),
        (5, 10, 15),
    ),
    "fig7": Experiment(
        "Fig. 7: VAE, VAE+eps and AVAE over training, latent 10 and 15",
        ("vae", "vae-noise", "avae"),
        (10, 15),
    ),
    "fig8": Experiment(
        "Fig. 8: 8x8 sample grids of VAE+eps, AVAE and AVB, latent 10, noise 10",
        ("vae-noise", "avae", "avb"),
        (10,),
    ),
}

# Table 1 of the paper, negative ELBO in nats: dataset -> model -> latent -> value.
PAPER_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "mnist": {
        "vae": {10: 109.8, 15: 111.2, 20: 112.8},
        "vae-noise": {10: 107.3, 15: 109.4, 20: 111.1},
        "avb": {10: 95.12, 15: 97.01, 20: 97.81},
        "avae": {10: 93.08, 15: 96.90, 20: 97.90},
    },
    "fashion-mnist": {
        "vae": {10: 221.1, 15: 223.5, 20: 225.4},
        "vae-noise": {10: 220.1, 15: 222.4, 20: 223.9},
        "avb": {10: 216.9, 15: 217.3, 20: 220.3},
        "avae": {10: 216.1, 15: 217.1, 20: 220.6},
    },
}


def noise_of(model: str, noise: int = PAPER_NOISE) -> int:
    """The noise dimension a model's row uses: none for a noise-free model."""
    return noise if default_noise_dim(model) else 0


def rows_of(dataset: str, model: str, latent: int, noise: int = PAPER_NOISE) -> list[RowKey]:
    """One row per registered reading of the model."""
    return [
        RowKey(dataset, model, reading, latent, noise_of(model, noise)) for reading in MODELS[model].readings
    ]


@dataclass(frozen=True)
class Claim:
    number: int
    text: str
    metric: str  # "neg_elbo" (the paper's figure) or "frechet_distance"


CLAIMS = (
    Claim(1, "Injecting noise into the encoder improves the bound (VAE+eps better than VAE).", "neg_elbo"),
    Claim(2, "Noise dimension 10 is best (VAE+eps, latent 10: 10 better than 5 and than 15).", "neg_elbo"),
    Claim(
        3,
        "AVAE beats VAE+eps on the bound at every latent size, and AVB at latent 10 and 15 (at 20 the paper "
        "has AVB close or ahead).",
        "neg_elbo",
    ),
    Claim(4, "Latent dimension 10 is best for every model (10 better than 15 and than 20).", "neg_elbo"),
    Claim(
        5,
        "AVAE and AVB give sharper samples than VAE+eps (tested as a lower Frechet distance to test "
        "images on the project's classifier features, latent 10).",
        "frechet_distance",
    ),
)

Comparison = tuple[RowKey, RowKey]  # (claimed better, claimed worse)


def claim_families(claim: int, datasets: Sequence[str]) -> dict[str, list[Comparison]]:
    """The comparisons of one claim, grouped into families that each get a verdict (Holm's
    correction applies within a family): one per AVAE reading where the claim is about AVAE."""

    def one(model: str, latent: int, noise: int = PAPER_NOISE) -> RowKey:
        return rows_of(dataset, model, latent, noise)[0]

    families: dict[str, list[Comparison]] = {}
    for dataset in datasets:
        if claim == 1:
            families.setdefault("", []).extend((one("vae-noise", z), one("vae", z)) for z in PAPER_LATENTS)
        elif claim == 2:
            families.setdefault("", []).extend(
                (one("vae-noise", 10, 10), one("vae-noise", 10, other)) for other in (5, 15)
            )
        elif claim == 4:
            for model in PAPER_TABLE1["mnist"]:  # the paper's four models
                for reading in MODELS[model].readings:
                    family = families.setdefault("", [])
                    for z in (15, 20):
                        better = RowKey(dataset, model, reading, 10, noise_of(model))
                        family.append((better, better._replace(latent=z)))
        else:
            for avae in rows_of(dataset, "avae", 10):
                family = families.setdefault(f"AVAE {avae.reading}" if avae.reading else "", [])
                if claim == 3:  # the paper: better than VAE+eps "at any latent size", than AVB at 10 and 15
                    for z in PAPER_LATENTS:
                        mine = avae._replace(latent=z)
                        family.append((mine, one("vae-noise", z)))
                        if z in (10, 15):
                            family.append((mine, one("avb", z)))
                else:
                    family += [(avae, one("vae-noise", 10)), (one("avb", 10), one("vae-noise", 10))]
    return families
