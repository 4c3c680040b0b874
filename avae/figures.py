"""Pictures and tables: image grids (Fig. 8, reconstructions), training curves (Figs. 6, 7) and
Markdown tables. Everything is written atomically; matplotlib draws without pyplot, so importing
this module changes no global plotting state."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avae.io import atomic_write_bytes
from avae.models import LatentModel
from avae.nets import MemberRandom


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


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(panels: list[dict[str, Any]], path: Path, title: str) -> None:
    """One subplot per panel; each panel {"title", "curves": [(label, points, colour)]}, colour None
    for matplotlib's cycle; seed bands shaded."""
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.5 * cols, 3.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, points, colour in panel["curves"]:
            if not points:
                continue
            epochs = [p["epoch"] for p in points]
            line = ax.plot(
                epochs, [p["mean"] for p in points], marker="o", markersize=3, label=label, color=colour
            )[0]
            ax.fill_between(
                epochs,
                [p["lo"] for p in points],
                [p["hi"] for p in points],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test negative ELBO (nats)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
