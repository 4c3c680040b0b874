"""Pictures of data and of a model: image grids (Fig. 8, reconstructions, a model's samples),
written atomically; matplotlib draws without pyplot, so importing this module changes no global
plotting state."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.image
import numpy as np

from avae.core.models import LatentModel
from avae.core.nets import MemberRandom
from avae.io import atomic_write_bytes


def image_shape(width: int) -> tuple[int, int]:
    """(height, width) to draw a vector of `width` values: square when it can be, else the most
    nearly square factorisation (a 50-vector is drawn 5 x 10)."""
    height = max(h for h in range(1, math.isqrt(width) + 1) if width % h == 0)
    return height, width // height


def image_grid(images: np.ndarray, rows: int = 8, pad: int = 2) -> np.ndarray:
    """Tile `images` [n, D] with values in [0, 1] into one array, `rows` per column; each image is
    drawn `image_shape(D)` (28 x 28 for MNIST)."""
    n = len(images)
    cols = -(-n // rows)
    height, width = image_shape(images.shape[1])
    grid = np.ones((rows * (height + pad) + pad, cols * (width + pad) + pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = image.reshape(height, width)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, rows: int = 8) -> Path:
    path = Path(path)
    grid = image_grid(np.clip(images, 0, 1), rows=rows)
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, grid, cmap="gray", vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_sample_grids(model: LatentModel, seeds: Sequence[int], out: Path, n: int = 64) -> list[Path]:
    """One 8x8 grid of decoder means for z ~ p(z) per member: `samples_seed{seed}.png`."""
    device = next(model.parameters()).device
    samples = model.sample(n, MemberRandom(seeds, "samples", device)).float().cpu().numpy()
    return [save_image_grid(samples[m], out / f"samples_seed{seed}.png") for m, seed in enumerate(seeds)]
