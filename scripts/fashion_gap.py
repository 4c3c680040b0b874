"""Issue 22.4: can a pixel-intensity mapping explain why Fashion-MNIST sits ~20 nats above the paper
while MNIST matches it? Writes each data set under each mapping as an own-data .npz (train and test
arrays in [0, 1]) for `avae train --dataset FILE.npz`, and the binary-entropy floor of each: under a
Bernoulli decoder on grey levels, -log p(x|z) >= sum_i H(x_i), so a mapping that lowers Fashion-MNIST's
floor but not MNIST's could move one and not the other.

    PYTHONPATH=. python scripts/fashion_gap.py OUT            # OUT/{data set}-{mapping}.npz, floors.json
    avae train --model vae --dataset OUT/fashion-mnist-sqrt.npz --latent-dim 10 --epochs 10 \\
        --seeds 0,1 --out OUT/vae-fashion-mnist-sqrt          # one screen run per (data set, mapping)

`scripts/measurement_report.py` reads floors.json and the screen runs' metrics.csv (section 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from avae.data.datasets import load_split

DATASETS = ("mnist", "fashion-mnist")
# Each mapping takes pixel/255 in [0, 1] to [0, 1]. "linear" is the paper's and ours.
MAPPINGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "sqrt": np.sqrt,  # gamma 0.5: lifts dark grey levels, so Fashion-MNIST's cloth textures move to 1
    "square": np.square,  # gamma 2
}


def entropy_floor(x: np.ndarray) -> float:
    """Mean over images of sum_i H(x_i) in nats: the least -log p(x|z) any Bernoulli decoder can reach."""
    t = torch.from_numpy(x.astype(np.float64))
    return float(-(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)).sum(1).mean())


def images(dataset: str, split: str) -> np.ndarray:
    pixels, _ = load_split(dataset, split)
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-npz", action="store_true", help="write floors.json only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    floors: dict[str, dict[str, float]] = {}
    for dataset in DATASETS:
        train, test = images(dataset, "train"), images(dataset, "test")
        for name, mapping in MAPPINGS.items():
            mapped_test = mapping(test).astype(np.float32)
            floors.setdefault(dataset, {})[name] = round(entropy_floor(mapped_test), 4)
            if not args.no_npz:
                np.savez(
                    args.out / f"{dataset}-{name}.npz",
                    train=mapping(train).astype(np.float32),
                    test=mapped_test,
                )
    (args.out / "floors.json").write_text(json.dumps({"test_floor_nats": floors}, indent=1) + "\n")
    print(json.dumps(floors, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
