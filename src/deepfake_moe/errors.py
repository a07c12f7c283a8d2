"""The errors a user can fix, and the exit codes the command line turns them into.

Library code raises `ConfigError` (a configuration value, from YAML or from flags, does not fit) or
`InputError` (an input file or table is missing or malformed), with messages about the configuration
and the data, never about flags: `experiment` calls the same functions from YAML. Each stage's
`commands.py` translates options into configurations and results into exit codes; `cli.main` prints
these errors without a traceback and exits with `EXIT_USAGE`.
"""

from __future__ import annotations

EXIT_OK = 0
"""Everything ran and every input was processed."""
EXIT_PARTIAL = 1
"""The run finished, but some inputs failed (each has its error row or line in the output)."""
EXIT_USAGE = 2
"""Nothing useful ran: bad options, configuration or inputs (argparse uses 2 as well)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as shells report it)."""


class UserError(Exception):
    """Something the user must fix; shown as one line without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value, file or mapping does not fit its dataclass or the data it is used on."""


class InputError(UserError):
    """An input the user gave is missing or malformed: image files, manifests, checkpoints, folders."""
