"""The command line: its parser (parser), the options that are settings (options) and the commands
(commands). `avae.cli:main` is the `avae` script's entry point."""

from avae.cli.commands import main

__all__ = ["main"]
