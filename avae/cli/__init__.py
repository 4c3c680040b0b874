"""The command line: its options and help (parser) and the commands (commands). `avae.cli:main` is the
`avae` script's entry point."""

from avae.cli.commands import main

__all__ = ["main"]
