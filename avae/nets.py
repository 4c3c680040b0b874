"""MLP builders whose every weight carries a leading *member* dimension.

An ensemble of S independent networks (one per seed) is evaluated with batched matrix products:
an input of shape [S, B, in] gives an output of shape [S, B, out], member s using only its own
weights. S = 1 is the ordinary single network. Each member is initialised from its own seed, so
member s of an S-member ensemble starts exactly where a 1-member run with that seed starts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from avae.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky-relu": lambda: nn.LeakyReLU(0.2),
}


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream ("init", "data", "noise", ...) of one member."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class MemberLinear(nn.Module):
    """S independent affine maps y_s = x_s W_s + b_s computed by one `baddbmm`."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    @torch.no_grad()
    def reset_member(self, member: int, generator: torch.Generator) -> None:
        """PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        for tensor in (self.weight[member], self.bias[member]):
            values = torch.rand(tensor.shape, generator=generator) * (2 * bound) - bound
            tensor.copy_(values)

    def extra_repr(self) -> str:
        members = self.weight.shape[0]
        return f"members={members}, in={self.in_features}, out={self.out_features}"


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


def mlp(members: int, sizes: Sequence[int], act: str) -> nn.Sequential:
    """An MLP `sizes[0] -> ... -> sizes[-1]` with `act` between layers and a linear output."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(MemberLinear(members, fan_in, fan_out))
        if i < len(sizes) - 2:
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
    """

    def __init__(self, seeds: Sequence[int], stream: str, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(stream_seed(s, stream)) for s in seeds
        ]

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal draws of `shape` for every member: [S, *shape]."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def permutations(self, n: int) -> torch.Tensor:
        """One random permutation of range(n) per member: [S, n]."""
        return torch.stack([torch.randperm(n, generator=g, device=self.device) for g in self.generators])

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: Sequence[torch.Tensor]) -> None:
        for g, state in zip(self.generators, states, strict=True):
            g.set_state(state)
