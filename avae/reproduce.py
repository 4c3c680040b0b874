"""`avae.reproduce` as the README promises it: a profile's reproduction now lives in
avae.repro.reproduce, whose public names this module re-exports (`avae.reproduce.reproduce` is the
function `avae reproduce` runs)."""

from avae.repro.reproduce import *  # noqa: F403
from avae.repro.reproduce import reproduce

__all__ = ["reproduce"]
