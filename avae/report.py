"""Tables and figures: sample grids (Fig. 8) and the results table printed after training."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avae.models import LatentModel
from avae.nets import MemberRandom


def image_grid(images: np.ndarray, rows: int = 8, side: int = 28, pad: int = 2) -> np.ndarray:
    """Tile `images` [n, side*side] with values in [0, 1] into one array, `rows` per column."""
    n = len(images)
    cols = -(-n // rows)
    grid = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (side + pad), pad + c * (side + pad)
        grid[top : top + side, left : left + side] = image.reshape(side, side)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, rows: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avae.io import atomic_write_bytes

    path = Path(path)
    grid = image_grid(np.clip(images, 0, 1), rows=rows)
    buffer = io.BytesIO()
    plt.imsave(buffer, grid, cmap="gray", vmin=0, vmax=1, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_sample_grids(model: LatentModel, seeds: Sequence[int], out: Path, n: int = 64) -> list[Path]:
    """One 8x8 grid of decoder means for z ~ p(z) per member: `samples_seed{seed}.png`."""
    device = next(model.parameters()).device
    samples = model.sample(n, MemberRandom(seeds, "samples", device)).float().cpu().numpy()
    return [save_image_grid(samples[m], out / f"samples_seed{seed}.png") for m, seed in enumerate(seeds)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
