"""The project's own error type: every failure a user can cause is reported as one of these."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def _rebuild(cls: type[AvaeError], args: tuple[Any, ...], fields: dict[str, Any]) -> AvaeError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(fields)
    return error


class AvaeError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do.

    An error keeps its fields when it crosses a process boundary (a worker process or a Ray task
    pickles it): Exception's own pickling would call `cls(*args)` and lose keyword-only fields."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class DataError(AvaeError):
    """A data file is missing, unreadable, malformed or fails its checksum."""


class ConfigError(AvaeError):
    """A configuration value or file is invalid."""


class CheckpointError(AvaeError):
    """A checkpoint is missing, unreadable, untrusted or does not match the configuration."""


class DivergenceError(AvaeError):
    """Training produced a non-finite loss: `term` of member `member` (seed `seed`) at `epoch`,
    `step` (1-based), kept as fields so the run directory can record where it happened."""

    def __init__(self, message: str, *, epoch: int, step: int, member: int, seed: int, term: str):
        super().__init__(message)
        self.epoch, self.step, self.member, self.seed, self.term = epoch, step, member, seed, term


def check_choice(kind: str, name: object, choices: Iterable[str]) -> None:
    """Refuse `name` unless it is one of `choices`: "unknown {kind} 'x'; choose one of a, b"."""
    if name not in choices:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {', '.join(choices)}")
