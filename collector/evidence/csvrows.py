"""CSV rows of an export as bytes: the ECS cells, the bookkeeping, and the canonical record.

The layout (every cell quoted, formula triggers neutralised, lists and records as JSON) is
docs/evidence.md's; `formats` holds the names, the dialect and the display of a value.
"""

from __future__ import annotations

import csv
import operator
import re
from typing import Any

from collector.evidence import formats

_LIST_CELLS = 4096  # distinct list values whose cells an export keeps
_SHAPES = 1024  # distinct sets of fields whose row templates an export keeps


class _Appender:
    """A csv.writer target whose write is list.append (a C call per row, no Python frame)."""

    def __init__(self, parts: list[str]) -> None:
        self.write = parts.append


# A row needs its cells looked at one by one when a cell starts with a formula trigger (every cell
# is quoted, so a cell starts right after `,"` or at the row's start; inside a cell a quote is
# always doubled) or holds a line break (rows are written without a terminator). One literal
# prefix for the regex: an alternation with `^` made it scan several times slower, and `in` for
# each `,"=`-like needle is slower still (each of the row's ~75 cell starts is a partial match).
_TRIGGER_CELL = re.compile(r',"[=+\-@\t\r]')
_TRIGGERS = frozenset(formats.FORMULA_TRIGGERS)


def _needs_care(text: str) -> bool:
    return "\n" in text or "\r" in text or text[1:2] in _TRIGGERS or _TRIGGER_CELL.search(text) is not None


class _RowShape:
    """How the rows of events with one set of fields (two or more of the columns) are written: a
    %-template of the whole row, every absent column an empty quoted cell, and which values need
    their display."""

    __slots__ = ("shaped", "template", "values")

    def __init__(self, names: list[str], columns: tuple[str, ...]) -> None:
        self.values = operator.itemgetter(*names)  # a tuple, in column order
        self.shaped = tuple((i, name) for i, name in enumerate(names) if name in formats.SHAPED)
        present = set(names)
        cells = ["%s" if name in present else "" for name in columns] + ["%s"] * len(formats.BOOKKEEPING)
        self.template = '"' + '","'.join(cells) + '"'  # no literal % in it: the columns' cells are empty


class CsvRows:
    """CSV rows of export records, as UTF-8 in `parts`: the header first, then one row per `add`.

    A row is its shape's template filled with the values (strings and numbers print as their
    display; booleans and lists are turned into theirs first): one C call rather than csv.writer
    over every column. A row whose text shows a quote inside a cell, a None, or a cell that needs
    neutralising is written again by csv.writer, cell by cell.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        # Rows end without a terminator: the record column is appended by hand (see add).
        self._written: list[str] = []
        self._writer = csv.writer(_Appender(self._written), formats.CsvDialect, lineterminator="")
        self._writer.writerow(formats.CSV_HEADER)
        self.parts.append(self._written.pop().encode() + b"\n")
        self._columns = formats.ECS_COLUMNS
        self._blanks = ("",) * len(self._columns)
        self._shaped = tuple((name, i) for i, name in enumerate(self._columns) if name in formats.SHAPED)
        self._list_cells: dict[tuple[Any, ...], str] = {}
        self._quoted_cells: dict[str, tuple[str, int]] = {}
        self._shapes: dict[tuple[str, ...], _RowShape | None] = {}
        # The quotes of a row none of whose cells holds one.
        self._quotes = 2 * (len(self._columns) + len(formats.BOOKKEEPING))

    def add(self, body: dict[str, Any], prev_hex: str, hash_hex: str, previous: int, record: bytes) -> None:
        """One row: the ECS cells of `body`, the bookkeeping, and the canonical record."""
        keys = tuple(body)
        try:
            shape = self._shapes[keys]
        except KeyError:
            shape = self._shape_of(keys)
        text = None if shape is None else self._by_template(shape, body, (prev_hex, hash_hex, previous))
        if text is None:
            text = self._by_writer(body, prev_hex, hash_hex, previous)
        # The record is JSON, full of quotes: quoting it here is several times cheaper than
        # letting csv.writer scan it; always quoted, as CsvDialect quotes every cell. Its bytes
        # are the hashed bytes: they are not decoded and encoded again.
        self.parts += (text.encode(), b',"', record.replace(b'"', b'""'), b'"\n')

    def _by_template(
        self, shape: _RowShape, body: dict[str, Any], bookkeeping: tuple[str, str, int]
    ) -> str | None:
        """The row's ECS and bookkeeping cells from the shape's template; None: csv.writer must write them."""
        values = [*shape.values(body), *bookkeeping]
        if None in values:  # csv.writer writes it as an empty cell
            return None
        quotes = self._quotes
        for i, name in shape.shaped:
            value = values[i]
            if value is True or value is False:
                values[i] = "true" if value else "false"
            else:  # lists show as JSON: their quotes are doubled here
                values[i], doubled = self._quoted(name, value)
                quotes += doubled
        text: str = shape.template % tuple(values)
        # Any other quote is inside a value (csv.writer doubles it); a trigger needs neutralising.
        return None if text.count('"') != quotes or _needs_care(text) else text

    def _shape_of(self, keys: tuple[str, ...]) -> _RowShape | None:
        present = set(keys)
        names = [name for name in self._columns if name in present]
        shape = _RowShape(names, self._columns) if len(names) > 1 else None
        if len(self._shapes) < _SHAPES:
            self._shapes[keys] = shape
        return shape

    def _by_writer(self, body: dict[str, Any], prev_hex: str, hash_hex: str, previous: int) -> str:
        """The row's ECS and bookkeeping cells written by csv.writer, neutralised where needed."""
        row: list[Any] = list(map(body.get, self._columns, self._blanks))
        get = body.get
        for name, i in self._shaped:
            value = get(name)
            if value is not None:
                row[i] = self._shape(name, value)
        row += (prev_hex, hash_hex, previous)
        self._writer.writerow(row)
        text = self._written.pop()
        if _needs_care(text):
            self._writer.writerow([_careful(cell) for cell in row])
            text = self._written.pop()
        return text

    def _quoted(self, name: str, value: Any) -> tuple[str, int]:
        """The cell of a shaped value with its quotes doubled, and how many quotes that holds."""
        cell = self._shape(name, value)
        quoted = self._quoted_cells.get(cell)
        if quoted is None:
            quoted = (cell.replace('"', '""'), 2 * cell.count('"'))
            if len(self._quoted_cells) < _LIST_CELLS:
                self._quoted_cells[cell] = quoted
        return quoted

    def _shape(self, name: str, value: Any) -> str:
        if type(value) is not list:
            return formats.display(value)
        # Lists repeat from event to event (tags, copy methods): their cells are kept, per field
        # (one field's values share one proto type: 1 and True never meet).
        try:
            shape: tuple[Any, ...] | None = (name, *value)
            cell = self._list_cells.get(shape)  # type: ignore[arg-type]
        except TypeError:  # records in the list (copy members): not kept
            shape, cell = None, None
        if cell is None:
            cell = formats.display(value)
            if shape is not None and len(self._list_cells) < _LIST_CELLS:
                self._list_cells[shape] = cell
        return cell


def _careful(cell: Any) -> Any:
    """A cell with its formula triggers neutralised (a non-negative integer is none)."""
    if type(cell) is int and cell >= 0:
        return cell
    return formats.display(cell)
