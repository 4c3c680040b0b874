"""MLP builders whose every weight carries a leading *member* dimension.

An ensemble of S independent networks (one per seed) is evaluated with batched matrix products:
an input of shape [S, B, in] gives an output of shape [S, B, out], member s using only its own
weights. S = 1 is the ordinary single network. Each member is initialised from its own seed, so
member s of an S-member ensemble starts exactly where a 1-member run with that seed starts.

Padding (`avae.training.packs`): the members of one model may have latent and noise dimensions of
their own, each at most the model's. A layer whose input or output holds latent or noise
coordinates says so (`MemberLinear.in_parts` / `out_parts`, `Parts`), so that a member's weights
can be cut to its own sizes and embedded again (`kept_positions`), and `MemberRandom.padded_normal`
draws each member's own width from its own stream, the padded coordinates exactly 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Normal

from avae.errors import check_choice

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky-relu": lambda: nn.LeakyReLU(0.2),
}


# The layout of a layer's input or output: consecutive parts (kind, width), the kind "latent",
# "noise" or None (data, fixed); a member with a smaller latent or noise dimension keeps the first
# coordinates of each part of that kind.
Parts = tuple[tuple[str | None, int], ...]


def kept_positions(parts: Parts, dims: dict[str, int]) -> torch.Tensor:
    """The positions of `parts` that a member with dimensions `dims` ({"latent": l, "noise": n})
    has: of each part of a padded kind its first dims[kind] coordinates, every other part whole."""
    positions: list[int] = []
    start = 0
    for kind, width in parts:
        keep = width if kind is None else dims[kind]
        if keep > width:
            raise ValueError(f"a member's {kind} dimension {keep} exceeds the model's {width}")
        positions.extend(range(start, start + keep))
        start += width
    return torch.tensor(positions, dtype=torch.long)


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream ("init", "data", "noise", ...) of one member."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _MemberAffine(torch.autograd.Function):
    """y = x W^T + b for x [S, B, in], W [S, out, in], b [S, 1, out], with a backward that writes
    the weight gradient straight into W's layout (autograd's baddbmm backward through a transposed
    view returns [S, in, out] and then copies it; measured ~8 ms per step at S = 15). Under autocast
    the operands are cast once, before the transpose, and the products of both passes run in the
    autocast dtype with explicit casts, so the backward does not depend on the autocast state of
    the thread that runs it (CPU or CUDA). Gradients are returned in the parameters' dtype by
    autograd (float32 master weights)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # Cast the contiguous weight once (casting its transposed view is a slow strided copy)
            # and keep the cast copies for the backward pass.
            dtype = torch.get_autocast_dtype(device)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(device, enabled=False):
            y = torch.baddbmm(bias, x, weight.transpose(1, 2))
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.to(weight.dtype)
            grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
            grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
            grad_b = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class MemberLinear(nn.Module):
    """S independent affine maps y_s = x_s W_s^T + b_s computed by one `baddbmm`.

    Weights are stored [S, out, in] (nn.Linear's layout, per member): measured on this CPU, the
    forward and backward batched products are 10-30% faster than with [S, in, out] (fp32 / bf16).
    With `float_output` the result is returned in float32 even under bf16 autocast, so that losses
    and the Gaussian's scale are computed in full precision (set on every network's last layer).
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        out_features: int,
        float_output: bool = False,
        in_parts: Parts | None = None,
        out_parts: Parts | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.float_output = float_output
        # Where latent or noise coordinates lie in the input and output (None: none do), for padding.
        self.in_parts, self.out_parts = in_parts, out_parts
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _MemberAffine.apply(x, self.weight, self.bias)
        return y.float() if self.float_output else y

    @torch.no_grad()
    def reset_member(self, member: int, generator: torch.Generator) -> None:
        """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.

        The weight is drawn in [in, out] order (as before the layout change), so a seed gives the
        same initial network as earlier versions."""
        bound = 1.0 / math.sqrt(self.in_features)
        shapes = ((self.in_features, self.out_features), tuple(self.bias.shape[1:]))
        pairs = ((self.weight[member], shapes[0], True), (self.bias[member], shapes[1], False))
        for tensor, shape, flip in pairs:
            values = torch.rand(shape, generator=generator) * (2 * bound) - bound
            tensor.copy_(values.t() if flip else values)

    def extra_repr(self) -> str:
        members = self.weight.shape[0]
        return f"members={members}, in={self.in_features}, out={self.out_features}"


def activation(name: str) -> nn.Module:
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def mlp(
    members: int,
    sizes: Sequence[int],
    act: str,
    in_parts: Parts | None = None,
    out_parts: Parts | None = None,
) -> nn.Sequential:
    """An MLP `sizes[0] -> ... -> sizes[-1]` with `act` between layers and a linear output; the
    layout of its input and output, `in_parts` and `out_parts`, is its first and last layer's."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        last = i == len(sizes) - 2
        parts = {"in_parts": in_parts if i == 0 else None, "out_parts": out_parts if last else None}
        layers.append(MemberLinear(members, fan_in, fan_out, float_output=last, **parts))
        if not last:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def init_members(module: nn.Module, seeds: Sequence[int]) -> None:
    """Initialise member s of every MemberLinear in `module` from seed `seeds[s]` alone."""
    layers = [m for m in module.modules() if isinstance(m, MemberLinear)]
    for member, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(stream_seed(seed, "init"))
        for layer in layers:
            layer.reset_member(member, generator)


class MemberRandom:
    """Independent random streams, one per member: member s draws only from its own generator.

    A stream is named ("data", "noise", "eval", ...) so that, e.g., the order in which a member
    sees the data does not depend on how much noise its model consumed.

    With `pool` > 0, `normal` hands out consecutive slices of a buffer of `pool` standard normals
    per member, refilled by one `randn` per member when used up (instead of S small draws and a
    stack per call). Member s's values still come from its generator alone, in the same order for
    any S. `clear_pool()` drops the unused rest, so that a checkpoint taken right after it (the
    generator states) continues exactly; the training loop clears it at the start of each epoch.

    Members of other widths (`padded_normal`, a padded pack's draws) take other numbers of values:
    from the first such draw until `clear_pool` each member keeps its own place in its row of the
    pool (`offsets`) and refills its row alone, exactly when its unpacked run would refill its pool.
    """

    def __init__(self, seeds: Sequence[int], stream: str, device: torch.device | str = "cpu", pool: int = 0):
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(stream_seed(s, stream)) for s in seeds
        ]
        self.pool = pool
        self.buffer: torch.Tensor | None = None  # [S, pool]
        self.used = 0
        self.offsets: list[int] | None = None  # each member's place in its row (`pool`: not yet filled)

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal draws of `shape` for every member: [S, *shape]."""
        count = math.prod(shape)
        if self.offsets is not None:
            return torch.stack([self.take(m, count).view(shape) for m in range(len(self.generators))])
        if self.pool <= 0 or count > self.pool:
            return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])
        if self.buffer is None or self.used + count > self.pool:
            self.buffer = torch.empty(len(self.generators), self.pool, device=self.device)
            for row, g in zip(self.buffer, self.generators, strict=True):
                torch.randn(self.pool, generator=g, device=self.device, out=row)
            self.used = 0
        values = self.buffer[:, self.used : self.used + count]
        self.used += count
        return values.view(len(self.generators), *shape)

    def take(self, member: int, count: int) -> torch.Tensor:
        """Member `member`'s next `count` values, [count], as its unpacked `normal(count)` would
        hand them out (member by member: each keeps its own place in its row of the pool)."""
        generator = self.generators[member]
        if self.pool <= 0 or count > self.pool:
            return torch.randn(count, generator=generator, device=self.device)
        if self.offsets is None:  # from here on, every member keeps its own place
            full = self.buffer is None
            if full:
                self.buffer = torch.empty(len(self.generators), self.pool, device=self.device)
            self.offsets = [self.pool if full else self.used] * len(self.generators)
        start = self.offsets[member]
        if start + count > self.pool:
            torch.randn(self.pool, generator=generator, device=self.device, out=self.buffer[member])
            start = 0
        self.offsets[member] = start + count
        return self.buffer[member, start : start + count]

    def padded_normal(self, rows: int, width: int, widths: Sequence[int]) -> torch.Tensor:
        """[S, rows, width]: member s's rows x widths[s] standard normals from its own stream (what
        its unpacked `normal(rows, widths[s])` would return) in its first widths[s] columns, the
        other columns exactly 0."""
        out = torch.zeros(len(self.generators), rows, width, device=self.device)
        for member, own in enumerate(widths):
            out[member, :, :own] = self.take(member, rows * own).view(rows, own)
        return out

    def fill(self, out: torch.Tensor, counts: Sequence[int], padding: Padding | None = None) -> None:
        """Write into `out` [S, sum(counts)] the values that `normal(c)` for each c in `counts`, in
        order, would return, and advance the stream as those calls would: a replayable unit's static
        noise (`avae.core.graphs.StaticNoise`) then holds exactly the eager draws. One copy when the
        pool holds them all; else call by call (across a refill the pool drops its unused rest).
        With `padding` (a padded unit's draws), member by member: its own draws at its positions."""
        if padding is None and self.offsets is not None:  # members at their own places in the pool
            padding = Padding([(1, count, None) for count in counts], len(self.generators), out.device)
        if padding is not None:
            self.fill_padded(out, padding)
            return
        total = sum(counts)
        if self.pool > 0 and self.buffer is not None and self.used + total <= self.pool:
            out.copy_(self.buffer[:, self.used : self.used + total])
            self.used += total
            return
        start = 0
        for count in counts:
            out[:, start : start + count].copy_(self.normal(count))
            start += count

    def fill_padded(self, out: torch.Tensor, padding: Padding) -> None:
        """`fill` of a padded unit: member s takes its own draws (padding.counts[s], in order) and
        writes them at padding.positions[s] of its row, every other entry 0."""
        out.zero_()
        for member, (counts, positions) in enumerate(zip(padding.counts, padding.positions, strict=True)):
            total, start = sum(counts), None
            if self.pool > 0 and self.buffer is not None:
                start = self.used if self.offsets is None else self.offsets[member]
            if start is not None and start + total <= self.pool:
                values = self.take(member, total)  # one slice of its row, as its unpacked `fill`
            else:
                # (each copied before the next: a refill overwrites the row a slice views)
                values = torch.cat([self.take(member, count).clone() for count in counts])
            out[member, positions] = values

    def clear_pool(self) -> None:
        self.buffer, self.used, self.offsets = None, 0, None

    def permutations(self, n: int) -> torch.Tensor:
        """One random permutation of range(n) per member: [S, n]."""
        return torch.stack([torch.randperm(n, generator=g, device=self.device) for g in self.generators])

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: Sequence[torch.Tensor]) -> None:
        self.clear_pool()
        for g, state in zip(self.generators, states, strict=True):
            g.set_state(state)


class Padding:
    """Where each member's own draws lie in a padded unit's static noise (`avae.core.graphs`):
    member s's i-th draw is counts[s][i] values, and its values, in order, go to positions[s] of
    its row (the padded layout of every draw, [rows, width] each, one after another)."""

    def __init__(self, layouts: Sequence[tuple[int, int, Sequence[int] | None]], members: int, device):
        """`layouts`: each draw's (rows, width, each member's width or None: all the whole width)."""
        self.counts: list[list[int]] = [[] for _ in range(members)]
        positions: list[list[torch.Tensor]] = [[] for _ in range(members)]
        start = 0
        for rows, width, widths in layouts:
            grid = torch.arange(rows * width).view(rows, width) + start
            for member in range(members):
                own = width if widths is None else int(widths[member])
                self.counts[member].append(rows * own)
                positions[member].append(grid[:, :own].reshape(-1))
            start += rows * width
        self.positions = [
            torch.cat(p).to(device) if p else torch.zeros(0, dtype=torch.long, device=device)
            for p in positions
        ]


# --- the building blocks of the models ----------------------------------------------------------


def with_noise(x: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    return x if eps is None else torch.cat([x, eps], dim=-1)


def repeat_points(x: torch.Tensor, count: int) -> torch.Tensor:
    """x [S, B, D] -> [S, count * B, D]: every point `count` times, draw-major (see `split_draws`)."""
    members, batch, dim = x.shape
    return x.unsqueeze(1).expand(members, count, batch, dim).reshape(members, count * batch, dim)


def split_draws(values: torch.Tensor, count: int) -> torch.Tensor:
    """[S, count * B, ...] from `repeat_points` -> [S, count, B, ...]."""
    members, rows = values.shape[:2]
    return values.reshape(members, count, rows // count, *values.shape[2:])


class GaussianEncoder(nn.Module):
    """q(z|x) or q(z|x, eps1) = N(mu, diag sigma^2); the net outputs mu and log sigma^2."""

    def __init__(
        self, members: int, inputs: int, hidden: Sequence[int], latent: int, act: str, noise: int = 0
    ):
        super().__init__()
        in_parts = ((None, inputs - noise), ("noise", noise))
        out_parts = (("latent", latent), ("latent", latent))  # mu, then log sigma^2
        self.net = mlp(members, [inputs, *hidden, 2 * latent], act, in_parts, out_parts)

    def forward(self, x: torch.Tensor, eps1: torch.Tensor | None = None) -> Normal:
        mu, logvar = self.net(with_noise(x, eps1)).chunk(2, dim=-1)
        return Normal(mu, torch.exp(0.5 * logvar), validate_args=False)


class ImplicitEncoder(nn.Module):
    """AVB's implicit q(z|x): z = f_phi(x, eps), with eps concatenated at the input."""

    def __init__(
        self, members: int, inputs: int, hidden: Sequence[int], latent: int, act: str, noise: int = 0
    ):
        super().__init__()
        in_parts = ((None, inputs - noise), ("noise", noise))
        self.net = mlp(members, [inputs, *hidden, latent], act, in_parts, (("latent", latent),))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.net(with_noise(x, eps))


class Critic(nn.Module):
    """A network returning one logit per pair (x, z): AVB's T or AVAE's D.

    With `sees_x` it sees the concatenation [x, z]; without, z alone, so it compares the aggregate
    posterior q(z) with p(z) rather than each q(z|x) with p(z).
    """

    def __init__(
        self, members: int, data_dim: int, latent: int, hidden: Sequence[int], act: str, sees_x: bool
    ):
        super().__init__()
        self.sees_x = sees_x
        in_parts = ((None, data_dim if sees_x else 0), ("latent", latent))
        self.net = mlp(members, [(data_dim if sees_x else 0) + latent, *hidden, 1], act, in_parts)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, z], dim=-1) if self.sees_x else z).squeeze(-1)
