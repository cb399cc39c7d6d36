"""The CLI's terminal: tables that never cut a name or a number.

Why: rich fits a table to the terminal and, when the output is piped (``p2pinfer zoo list |
grep``, a log file, CI), to 80 columns, cutting what does not fit with an ellipsis: every
variant of ``zoo list`` read ``digits-c…`` and a parameter count ``3,5…``. Piped, the console
here is ``PIPED_WIDTH`` wide (a table takes only the width it needs); at a narrow terminal a
cell folds onto more lines instead of losing characters, and names (variants, nodes,
addresses) stay on one line while there is room for them. ``COLUMNS`` still sets the width.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Sequence

from rich.console import Console
from rich.table import Table

PIPED_WIDTH = 240


def cli_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, ``PIPED_WIDTH`` when piped."""
    stream = sys.stderr if stderr else sys.stdout
    if "COLUMNS" in os.environ or stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPED_WIDTH)


def cli_table(title: str, columns: Sequence[str], *, names: Collection[str] = ()) -> Table:
    """A table whose cells fold rather than lose characters; ``names`` do not wrap."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in names)
    return table


__all__ = ["PIPED_WIDTH", "cli_console", "cli_table"]
