"""Curves and tables: training curves (Figs. 6, 7) and Markdown tables (image grids are
avae.training.images). Everything is written atomically; matplotlib draws without pyplot, so importing
this module changes no global plotting state."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from avae.io import atomic_write_bytes


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


LINE_STYLES = ("-", "--", ":", "-.")  # a curve's `style` picks one, and the marker beside it
MARKERS = ("o", "s", "^", "D")
ZOOM_SHARE = 0.25  # a panel gets a zoom on its last third when its close curves end within this share
OUTLIER_SHARE = 0.5  # a curve ending this share of the best curve's descent above it sets no axes


@dataclass
class Curve:
    """One line of a training-curve figure: per-epoch points {"epoch", "mean", "lo", "hi"} (mean and
    95% band over seeds). Curves of one colour in a panel take different `style`s; `note` is said
    after the label ("diverged at epoch 12"; for a curve without points, why it has none)."""

    label: str
    points: list[dict[str, float]]
    colour: str | None = None
    style: int = 0
    note: str = ""

    @property
    def legend(self) -> str:
        if not self.note:
            return self.label
        return f"{self.label} ({self.note})" if self.points else f"{self.label}: {self.note}"


@dataclass
class Panel:
    title: str
    curves: list[Curve]


@dataclass
class View:
    """One set of axes: `curves` over epochs from `start` within y limits `ylim`, and the curves of
    the panel left out of it (`hidden`), which its title names."""

    title: str
    curves: list[Curve]
    start: float
    ylim: tuple[float, float]
    hidden: list[Curve]
    zoom: bool = False


def extent(curves: Sequence[Curve], start: float = -math.inf, key: str = "") -> tuple[float, float] | None:
    """The lowest and highest value of the curves' points from epoch `start` on: of their means
    with `key` "mean", else of their means and bands."""
    points = [p for c in curves for p in c.points if p["epoch"] >= start]
    if not points:
        return None
    low, high = ("mean", "mean") if key == "mean" else ("lo", "hi")
    return min(min(p[low], p["mean"]) for p in points), max(max(p[high], p["mean"]) for p in points)


def close_curves(curves: Sequence[Curve]) -> list[Curve]:
    """The curves the axes are fitted to: all but those ending far above the best one (more than
    OUTLIER_SHARE of the best curve's own descent), which would squash the comparison."""
    drawn = [c for c in curves if c.points]
    best = min(drawn, key=lambda c: c.points[-1]["mean"])
    descent = best.points[0]["mean"] - best.points[-1]["mean"]
    if descent <= 0:
        return drawn
    limit = best.points[-1]["mean"] + OUTLIER_SHARE * descent
    return [c for c in drawn if c.points[-1]["mean"] <= limit]


def padded(low: float, high: float, share: float = 0.05) -> tuple[float, float]:
    pad = (high - low) * share or max(abs(high) * 0.01, 0.5)
    return low - pad, high + pad


def panel_views(panel: Panel) -> list[View]:
    """The panel over every epoch, its axes fitted to its close curves; and, when those end within
    ZOOM_SHARE of that range, they alone enlarged over the last third of the epochs."""
    close = close_curves(panel.curves)
    main = View(panel.title, panel.curves, -math.inf, padded(*extent(close)), [])
    epochs = sorted({p["epoch"] for c in close for p in c.points})
    if len(epochs) < 4:
        return [main]
    start = epochs[0] + (2 * (epochs[-1] - epochs[0])) // 3
    low, high = extent(close, start)
    if high - low >= ZOOM_SHARE * (main.ylim[1] - main.ylim[0]):
        return [main]
    others = [c for c in panel.curves if c.points and c not in close and extent([c], start)]
    title = f"{panel.title}: epochs {start}-{epochs[-1]}, enlarged"
    return [main, View(title, close, start, padded(low, high), others, zoom=True)]


def range_notes(view: View) -> list[str]:
    """What the view's title says of each curve it does not show whole: left out, or beyond its y
    range (the curve, or only its 95% band), with the range it spans over the view's epochs."""
    notes = [f"not shown: {c.label} (mean {span(extent([c], view.start, 'mean'))})" for c in view.hidden]
    for curve in view.curves:
        means, whole = extent([curve], view.start, "mean"), extent([curve], view.start)
        if means is None or whole is None:
            continue
        if outside(means, view.ylim):
            notes.append(f"beyond this range: {curve.label} (mean {span(means)})")
        elif outside(whole, view.ylim):
            notes.append(f"beyond this range: the band of {curve.label} ({span(whole)})")
    return notes


def outside(values: tuple[float, float], limits: tuple[float, float]) -> bool:
    return values[0] < limits[0] or values[1] > limits[1]


def span(values: tuple[float, float] | None) -> str:
    return f"{values[0]:.0f} to {values[1]:.0f}" if values else "-"


def draw_view(ax: Any, view: View) -> None:
    for curve in view.curves:
        if not curve.points:
            ax.plot([], [], linestyle="none", label=curve.legend)  # named in the legend, not drawn
            continue
        points = [p for p in curve.points if p["epoch"] >= view.start]
        epochs = [p["epoch"] for p in points]
        style = curve.style % len(LINE_STYLES)
        line = ax.plot(
            epochs,
            [p["mean"] for p in points],
            linestyle=LINE_STYLES[style],
            marker=MARKERS[style],
            markersize=3,
            markevery=max(1, len(points) // 15),
            label=curve.legend,
            color=curve.colour,
        )[0]
        ax.fill_between(
            epochs, [p["lo"] for p in points], [p["hi"] for p in points], color=line.get_color(), alpha=0.15
        )
    drawn = [p["epoch"] for c in view.curves for p in c.points if p["epoch"] >= view.start]
    ax.set_title("\n".join([view.title, *range_notes(view)]), fontsize=9)
    ax.set_ylim(*view.ylim)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if max(drawn) - min(drawn) < 12:  # a tick on every epoch (one epoch: not a fraction of one)
        ax.set_xticks(range(int(min(drawn)), int(max(drawn)) + 1))
        ax.set_xlim(min(drawn) - 0.5, max(drawn) + 0.5)
    ax.set_ylabel("test negative ELBO (nats)")
    ax.grid(alpha=0.3)
    if not view.zoom:
        ax.legend(fontsize=8)


def finite(curve: Curve) -> Curve:
    """The curve without its points of non-finite mean (drawn as gaps, they would undo the axes);
    a non-finite band edge becomes the mean."""
    points = [
        {**p, **{k: p[k] if math.isfinite(p[k]) else p["mean"] for k in ("lo", "hi")}}
        for p in curve.points
        if math.isfinite(p["mean"])
    ]
    return replace(curve, points=points)


def layout(panels: Sequence[Panel]) -> list[View | None]:
    """The views of every panel with a drawn curve, two a row, a panel's enlargement beside it
    (None: an empty slot)."""
    slots: list[View | None] = []
    for panel in panels:
        if not any(c.points for c in panel.curves):
            continue
        views = panel_views(panel)
        if len(views) > 1 and len(slots) % 2:
            slots.append(None)
        slots += views
    return slots


def plot_curves(panels: Sequence[Panel], path: Path, title: str) -> Figure:
    """Training curves, two sets of axes a row: each panel with a drawn curve over every epoch
    (axes fitted to its close curves, those beyond named in its title) and, where they end close
    together, enlarged over its last third; panels without any are left out, and named. Written to
    `path` as a PNG; returned for inspection."""
    panels = [Panel(panel.title, [finite(c) for c in panel.curves]) for panel in panels]
    slots = layout(panels)
    empty = [panel.title for panel in panels if not any(c.points for c in panel.curves)]
    if empty:
        title += "\nnot drawn, no runs in this folder: " + "; ".join(empty)
    cols = min(2, max(1, len(slots)))
    rows = max(1, -(-len(slots) // cols))
    fig = Figure(figsize=(5.5 * cols, 3.8 * rows + 0.3 * title.count("\n")))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for i, ax in enumerate(axes):
        if i < len(slots) and slots[i] is not None:
            draw_view(ax, slots[i])
        else:
            ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return fig
