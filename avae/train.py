"""`avae.train` as the README promises it: the training loop now lives in avae.training.train, whose
public names this module re-exports (`avae.train.train` is the function `avae train` runs)."""

from avae.training.train import *  # noqa: F403
from avae.training.train import train

__all__ = ["train"]
