"""Replayable units: a piece of work that reads all its inputs from static buffers, so that on CUDA
it can be captured once in a CUDA graph and replayed, one launch instead of hundreds.

- `StaticNoise` stands in for a `MemberRandom` inside such a unit: `normal(*shape)` hands out
  consecutive slices of one fixed buffer [S, N]. Before each replay the caller fills the buffer
  with exactly the values the member's own stream would have handed out (`MemberRandom.fill`),
  so the numbers, the random streams and an exact resume are those of the eager code.
- `count_draws` finds the sizes of the draws a unit makes (they never depend on the data);
  `record_draws` also their layouts, for a padded model (`avae.core.nets.Padding`: members of
  other latent or noise widths draw other numbers of values, each into its place in the buffer).
- `GraphedCall` runs `fn()` eagerly (CPU, or graphs off), or on CUDA warms it up eagerly on a side
  stream, captures it in a CUDA graph and from then on replays it. Its output tensors are the
  graph's static outputs: the caller copies what it keeps before the next call.

On CUDA the training loop, the per-epoch test pass, the IWAE chunk and the AIS transition
(`avae.likelihood.estimators`) use graphs unless AVAE_CUDA_GRAPHS=0 (or, for training, --compile) is set; on
CPU the same code runs eagerly and gives the same numbers as before.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch

from avae.core.nets import Padding

ENV_SWITCH = "AVAE_CUDA_GRAPHS"  # "0" turns CUDA graphs off (eager CUDA, for comparison or debugging)


def graphs_wanted(device: torch.device, compile: bool = False) -> bool:
    """CUDA graphs by default on CUDA (not with torch.compile, and not with AVAE_CUDA_GRAPHS=0).
    Only on the current CUDA device (`use_device`): a capture records the current device's streams,
    so work sent to another device would silently stay out of the graph."""
    if device.type != "cuda" or compile or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return device.index is None or device.index == torch.cuda.current_device()


def use_device(device: torch.device | str) -> torch.device:
    """Make a CUDA device given with an index (cuda:N) the current one, so that graphs, streams and
    kernels all go to it; returns the torch.device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


class StaticNoise:
    """A `MemberRandom` stand-in over a fixed buffer [S, sum(counts)]: the i-th `normal` call of a
    pass returns the i-th slice, of counts[i] values per member; `rewind()` starts a new pass.
    Drawing a size other than the recorded one is an error, never silently other numbers.

    A padded model's draws (`padded_normal`) lie in the buffer in their padded layout, [rows,
    width] each; `padding` (from `record_draws`) says where each member's own values go, so that
    `MemberRandom.fill(buffer, counts, padding)` leaves the padded entries 0."""

    def __init__(
        self,
        members: int,
        counts: Sequence[int],
        device: torch.device | str,
        layouts: Sequence[tuple[int, int, Sequence[int] | None]] | None = None,
    ):
        self.device = torch.device(device)
        self.counts = tuple(int(c) for c in counts)
        self.buffer = torch.zeros(members, sum(self.counts), device=self.device)
        self.index = self.used = 0
        padded = layouts is not None and any(widths is not None for _, _, widths in layouts)
        self.padding = Padding(layouts, members, self.device) if padded else None

    def rewind(self) -> None:
        self.index = self.used = 0

    def normal(self, *shape: int) -> torch.Tensor:
        count = math.prod(shape)
        if self.index >= len(self.counts) or self.counts[self.index] != count:
            raise RuntimeError(
                f"draw {self.index} of a replayable unit asks for {count} values per member; "
                f"recorded: {list(self.counts)}"
            )
        values = self.buffer[:, self.used : self.used + count]
        self.index, self.used = self.index + 1, self.used + count
        return values.view(self.buffer.shape[0], *shape)

    def padded_normal(self, rows: int, width: int, widths: Sequence[int]) -> torch.Tensor:
        """A padded draw (`MemberRandom.padded_normal`): its slice in the padded layout."""
        return self.normal(rows, width)

    def fill_from(self, rng) -> None:
        """Fill the buffer from `rng` (a `MemberRandom`) with the values the eager draws would take."""
        rng.fill(self.buffer, self.counts, self.padding)


class CountingNoise:
    """Records the size of every `normal` call and returns zeros of the asked shape; `layouts`:
    each draw's (rows, width, each member's width or None), for a padded model's draws."""

    def __init__(self, members: int, device: torch.device | str):
        self.members, self.device = members, torch.device(device)
        self.counts: list[int] = []
        self.layouts: list[tuple[int, int, tuple[int, ...] | None]] = []

    def normal(self, *shape: int) -> torch.Tensor:
        self.counts.append(math.prod(shape))
        self.layouts.append((1, math.prod(shape), None))
        return torch.zeros(self.members, *shape, device=self.device)

    def padded_normal(self, rows: int, width: int, widths: Sequence[int]) -> torch.Tensor:
        self.counts.append(rows * width)
        self.layouts.append((rows, width, tuple(int(w) for w in widths)))
        return torch.zeros(self.members, rows, width, device=self.device)


@torch.no_grad()
def count_draws(fn: Callable[[CountingNoise], object], members: int, device: torch.device) -> list[int]:
    """The sizes of the draws `fn(noise)` makes, in order (fn is run once without gradients)."""
    return record_draws(fn, members, device)[0]


@torch.no_grad()
def record_draws(fn: Callable[[CountingNoise], object], members: int, device: torch.device):
    """The sizes of the draws `fn(noise)` makes and their layouts (`StaticNoise`'s arguments)."""
    noise = CountingNoise(members, device)
    fn(noise)
    return noise.counts, noise.layouts


class GraphedCall:
    """`fn()` (no arguments: it reads static buffers) as one replayable unit.

    Disabled: every call runs `fn()`. Enabled (CUDA): the first `warmup` calls run it eagerly on a
    side stream (lazy initialisation: optimiser state, cuBLAS handles, autograd), the next captures
    it in a CUDA graph and every call from then on is one `replay()`. Each call does the work once,
    capture included, so a caller may count calls as steps. No call synchronises with the host,
    except the capture (PyTorch synchronises the device before it).

    `release()` (or leaving a `with unit:` block) destroys the graph at a moment the caller
    chooses. Do so as soon as the unit is no longer needed: PyTorch keys cuBLAS workspaces by
    capture stream and may free them when any graph captured on that stream is destroyed
    (pytorch/pytorch#193402), so a graph left to the garbage collector could free the workspace of
    another live graph. `capture_stream` (default:
    PyTorch's shared capture stream) gives a unit replayed beside others its own workspace.
    """

    def __init__(
        self, fn: Callable[[], object], enabled: bool, warmup: int = 2, pool=None, name: str = "unit"
    ):
        self.fn, self.enabled, self.warmup, self.pool, self.name = fn, enabled, warmup, pool, name
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: object = None
        self.capture_stream: torch.cuda.Stream | None = None

    def __call__(self):
        self.calls += 1
        if not self.enabled:
            return self.fn()
        if self.graph is None and self.calls <= self.warmup:
            return self._warm_up()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.out

    def _warm_up(self):
        main, side = torch.cuda.current_stream(), torch.cuda.Stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.fn()
        main.wait_stream(side)
        if isinstance(out, torch.Tensor):
            out.record_stream(main)  # made on the side stream, used and freed on the main one
        return out

    def _capture(self) -> None:
        # (every distribution in the models is built with validate_args=False: argument checks
        # read values on the host, which a capture forbids)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.capture_stream):
                self.out = self.fn()
        except RuntimeError as error:
            raise RuntimeError(
                f"capturing the {self.name} in a CUDA graph failed ({error}); {ENV_SWITCH}=0 runs it eagerly"
            ) from error
        self.graph = graph  # only a complete capture is ever replayed

    def __enter__(self) -> GraphedCall:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Destroy the graph and its outputs now; a later call warms up and captures again."""
        if self.graph is not None:
            self.graph.reset()
        self.graph, self.out, self.calls = None, None, 0
