"""The tables printed by the job tools (`stepup jobs`, `canceljobs`, `removejobs`), with rich.

A table fits the terminal (80 columns when the output is not a terminal and `COLUMNS` is not
set): the folder column is shortened in the middle, where paths differ least, and the columns
named as wrappable (states, notes) wrap at spaces onto more lines. Optional columns whose
cells are all empty are left out. Cells are left-aligned, so that each column starts where
its header starts.
"""

import sys
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ("print_table", "shorten_middle")

# Columns are separated by two spaces (one of padding on either side).
_GAP = 2
# The narrowest a shortened folder becomes; the width down to which wrapped columns shrink
# before the folder is shortened.
_MIN_FOLDER = 12
_WRAP = 20
_FOLD = 8


def shorten_middle(text: str, width: int) -> str:
    """Shorten `text` to at most `width` characters by replacing its middle with `…`."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def print_table(
    headers: list[str],
    rows: list[list[str]],
    *,
    folder: str = "FOLDER",
    wrap: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    file: TextIO | None = None,
    width: int | None = None,
):
    """Print rows as an aligned table that fits the terminal.

    Parameters
    ----------
    headers
        The column headers.
    rows
        One list of cells per row, in the order of the headers.
    folder
        The header of the column shortened in the middle when the table is too wide.
    wrap
        Headers of the columns whose text may wrap onto more lines.
    optional
        Headers of the columns left out when all their cells are empty.
    file
        Where to print; standard output by default.
    width
        The width to fit; by default the terminal's (see the module's docstring).
    """
    console = Console(file=file or sys.stdout, highlight=False, soft_wrap=False, width=width)
    keep = [
        i
        for i, header in enumerate(headers)
        if header not in optional or any(row[i] for row in rows)
    ]
    headers = [headers[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    widths = _fit(headers, rows, folder, wrap, console.width - _GAP * (len(headers) - 1))
    if folder in headers:
        index = headers.index(folder)
        for row in rows:
            row[index] = shorten_middle(row[index], widths[index])
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False)
    for header, column_width in zip(headers, widths, strict=True):
        if header in wrap:
            table.add_column(header, width=column_width, overflow="fold")
        else:
            table.add_column(header, width=column_width, no_wrap=True, overflow="ellipsis")
    for row in rows:
        # Text, not markup: a folder or a note may contain `[`.
        table.add_row(*map(Text, row))
    with console.capture() as capture:
        console.print(table)
    # Without the padding of the last column, which rich prints as trailing spaces.
    for line in capture.get().splitlines():
        print(line.rstrip(), file=console.file)


def _fit(
    headers: list[str], rows: list[list[str]], folder: str, wrap: tuple[str, ...], room: int
) -> list[int]:
    """The widths of the columns: their contents' when they fit in `room`, else narrower.

    First the wrapped columns give up width down to `_WRAP` (or their longest word), then the
    folder down to `_MIN_FOLDER`, then the wrapped columns down to their longest word, and
    only then do they fold words longer than `_FOLD`.
    """
    columns = list(zip(headers, *rows, strict=True))
    widths = [max(map(len, column)) for column in columns]
    words = [max(len(word) for cell in column for word in cell.split()) for column in columns]
    wrapped = [i for i, header in enumerate(headers) if header in wrap]
    phases = [
        {i: max(words[i], min(widths[i], _WRAP)) for i in wrapped},
        {i: max(_MIN_FOLDER, len(folder)) for i, h in enumerate(headers) if h == folder},
        {i: words[i] for i in wrapped},
        {i: min(words[i], _FOLD) for i in wrapped},
    ]
    for floors in phases:
        while sum(widths) > room:
            # The widest column gives up one character, so that columns shrink evenly.
            i = max(floors, key=lambda i: widths[i] - floors[i], default=None)
            if i is None or widths[i] <= floors[i]:
                break
            widths[i] -= 1
    return widths
