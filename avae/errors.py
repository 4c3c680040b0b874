"""The project's own error type: every failure a user can cause is reported as one of these."""


class AvaeError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""


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
