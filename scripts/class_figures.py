"""Issue 22.4: could a different test subset explain why Fashion-MNIST sits ~20 nats above the paper?
The own figure (each model's -ELBO, as the paper's Table 1 reports) of trained runs on every test image,
averaged per class, so the report can say how easy a subset chosen by class could be. The order of
the test images does not change a mean over all of them; the first N images are section 2's.

    PYTHONPATH=. python scripts/class_figures.py RUN_DIR [RUN_DIR ...] --out class_figures.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from avae.data import datasets as data
from avae.io import write_json
from avae.likelihood.scoring import per_point
from avae.training.runs import load_run


def class_figures(run_dir: Path, data_dir: str | None = None) -> dict:
    """Per class of the test set: its number of images and each member's mean own figure on them;
    and each member's mean over all test images."""
    cfg, model, meta = load_run(run_dir)
    model.requires_grad_(False)
    x = data.load_pixels(cfg.dataset, "test", cfg.pixels, data_dir)
    labels = torch.from_numpy(data.load_split(cfg.dataset, "test", data_dir)[1].astype("int64"))
    with torch.no_grad():
        figures = per_point(model.neg_elbo, x, cfg.seeds)  # [S, N]
    classes = {
        str(label): {
            "count": int((labels == label).sum()),
            "per_member": figures[:, labels == label].mean(1).tolist(),
        }
        for label in sorted(set(labels.tolist()))
    }
    return {
        "model": cfg.model.name,
        "dataset": cfg.dataset,
        "epoch": meta["epoch"],
        "seeds": list(cfg.seeds),
        "all": figures.mean(1).tolist(),
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained run directories (with weights)")
    parser.add_argument("--name", action="append", default=[], help="the name to file each run under")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args(argv)
    names = args.name or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        parser.error("give one --name per run, or none")
    torch.set_num_threads(1)
    record = {name: class_figures(run, args.data_dir) for name, run in zip(names, args.runs, strict=True)}
    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
