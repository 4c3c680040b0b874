"""`avae.train` as the README promises it: the training loop now lives in avae.training.train (with
its steps in avae.training.steps and its exact resume in avae.training.resume), whose public names this
module re-exports (`avae.train.train` is the function `avae train` runs)."""

from avae.training.resume import *  # noqa: F403
from avae.training.steps import *  # noqa: F403
from avae.training.train import *  # noqa: F403
from avae.training.train import train

__all__ = ["train"]
