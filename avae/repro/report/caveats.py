"""What a report says before its figures when runs fall short: runs still improving at the end of training
(`convergence_warning`) and runs whose loss went non-finite (`divergence_note`). Both a reproduction's
report and a sweep's open with them."""

from __future__ import annotations

from avae.repro.paper import dataset_label
from avae.repro.report.claims import key_label
from avae.repro.results import CONVERGENCE_EPOCHS, RunResult, recent_gain, short_of_convergence


def convergence_warning(runs: list[RunResult], caveated: str) -> str:
    """A warning when runs were still improving at the end of training (diverged runs are said apart),
    saying that `caveated` carries that caveat."""
    short = [r for r in runs if short_of_convergence(r) and not r.divergence]
    if not short:
        return ""
    gains = [g for g in (recent_gain(r) for r in short) if g is not None]
    largest = f" (up to {max(gains):.1f} nats an epoch)" if gains else ""
    return (
        f" **Warning: {len(short)} of {len(runs)} runs were still improving by more than 1 nat per "
        f"epoch over their last {CONVERGENCE_EPOCHS} epochs (the least-squares trend of the seeds' mean "
        f"test figure){largest}: their numbers describe how fast each model learns, "
        f"not what it reaches, and {caveated} carries that caveat.**"
    )


def divergence_note(runs: list[RunResult]) -> str:
    """A sentence per diverged run: where its loss went non-finite; it has no figures, only the curves
    of the epochs before."""
    notes = [
        f"{key_label(r.key)} on {dataset_label(r.cfg.dataset)} diverged: its {r.divergence['term']} went "
        f"non-finite at epoch {r.divergence['epoch']}, step {r.divergence['step']}, seed "
        f"{r.divergence['seed']}, at learning rate {r.divergence['settings']['lr']:g}"
        for r in runs
        if r.divergence
    ]
    if not notes:
        return ""
    return (
        f" **Diverged: {'; '.join(notes)}.** A diverged run trains all its seeds together, so it has no "
        "figure for any seed; its curves show the epochs before, and every test that needs it is missing."
    )
