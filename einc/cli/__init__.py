"""The ``einc`` command line: ``entry`` (the command table and ``main``), ``options`` (checked
option types and the options commands share), ``session`` (a training run's set-up, report and
writes, shared by one process and many), ``commands`` (the subcommands) and ``launch`` (workers).

Imports run one way: entry → commands → launch → session → options.
"""

from einc.cli.entry import COMMANDS, build_parser, command_line, main
from einc.cli.options import FILE, Arg, Command

__all__ = ["COMMANDS", "FILE", "Arg", "Command", "build_parser", "command_line", "main"]
