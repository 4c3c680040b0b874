"""avae: adversarial variational autoencoders (VAE, VAE+eps, AVB, AVB-AC, AVAE) with honest
evaluation. The command line is `avae --help`; from Python:

- `make_config(settings)` -> `TrainConfig`; `fit(cfg, out, runtime=Runtime(...))` trains it (the
  function `avae train` runs, `avae.train.train`);
- `load(run_dir)` -> `TrainedModel`: encode, decode, reconstruct, sample, score (ELBO, IWAE, AIS);
- `evaluate_run(run_dir, metrics=..., settings=EvalSettings(...))` writes eval.json;
  `evaluate_pack([run_dir, ...], ...)` does it for runs that differ only in seeds and data set, as one model;
- `run_profile(profile, out)` runs a profile of the paper's experiments (`PROFILES`), as
  `avae reproduce` does (`avae.reproduce.reproduce`);
- `MODELS` is the registry and `register` adds a model (a `LatentModel` subclass).
"""

from avae.api import TrainedModel, load
from avae.core.models import MODELS, LatentModel, ModelConfig, register
from avae.evaluation.evaluate import EvalSettings, evaluate_run
from avae.evaluation.packs import evaluate_pack
from avae.repro.plan import PROFILES
from avae.repro.reproduce import reproduce as run_profile
from avae.training.config import Runtime, TrainConfig, make_config
from avae.training.train import train as fit
from avae.version import __version__

__all__ = [
    "EvalSettings",
    "LatentModel",
    "MODELS",
    "ModelConfig",
    "PROFILES",
    "Runtime",
    "TrainConfig",
    "TrainedModel",
    "__version__",
    "evaluate_pack",
    "evaluate_run",
    "load",
    "make_config",
    "fit",
    "register",
    "run_profile",
]
