"""How exported records are laid out in JSON Lines and CSV, shared by export and verify.

Every exported record is the event's dotted ECS mapping plus bookkeeping that is not hashed:

    exfilguard.chain.prev                  chain value before this event (hex)
    exfilguard.chain.hash                  chain value of this event (hex)
    exfilguard.export.previous_sequence    sequence of the previous record of the same agent
                                           in this export (0 for the agent's first), so a
                                           deleted or moved row is named even when a filter
                                           makes the exported records non-contiguous

CSV: a header of ECS names (every scalar path of the `.proto` Event, in declaration order),
then the bookkeeping columns and `exfilguard.chain.record`, the exact canonical JSON that was
hashed. Every cell is quoted (`CsvDialect`, the one dialect export writes and verify reads), so
a file name or command line holding a newline or a carriage return stays inside its row. The
ECS columns are for people and spreadsheets: a cell whose text starts with one of
`= + - @ TAB CR`, or holds one right after a line break inside it (`x\n=1+1`), gets an
apostrophe there (formula-injection defence); lists and nested records are shown as JSON.
Verification hashes the record column and checks that every ECS cell is the display of the
record's value, so editing either is detected.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor

from protos import chain
from protos.events import model_fields

PREV = "exfilguard.chain.prev"
HASH = "exfilguard.chain.hash"
PREVIOUS_SEQUENCE = "exfilguard.export.previous_sequence"
RECORD = "exfilguard.chain.record"
BOOKKEEPING = (PREV, HASH, PREVIOUS_SEQUENCE)
# Fields an export adds; they are never part of the hashed bytes.
NOT_HASHED = frozenset((*BOOKKEEPING, RECORD))

SEQUENCE = "event.sequence"
AGENT = "agent.id"
EVENT_ID = "event.id"
TIMESTAMP = "@timestamp"

# Spreadsheet formula triggers (OWASP CSV injection guidance).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NEUTRALISER = "'"
# Where a spreadsheet starts reading a formula: the cell's start, or any line start inside it.
_FORMULA_STARTS = re.compile(r"(?:^|(?<=[\r\n]))(?=[=+\-@\t\r])")


class CsvDialect(csv.Dialect):
    """How exports are written and read: every cell quoted, so CR and LF stay inside their cell."""

    delimiter = ","
    quotechar = '"'
    doublequote = True
    skipinitialspace = False
    lineterminator = "\n"
    quoting = csv.QUOTE_ALL
    strict = True  # verify: a stray quote is a broken row, not a guess

# The one declaration of the event model is the .proto; the CSV header follows it.
ECS_COLUMNS: tuple[str, ...] = tuple(f.name for f in model_fields() if f.kind != "message")
CSV_HEADER: tuple[str, ...] = (*ECS_COLUMNS, *BOOKKEEPING, RECORD)
COLUMN_INDEX = {name: i for i, name in enumerate(CSV_HEADER)}
# Columns whose values csv.writer would not print as their display: booleans and lists.
SHAPED = frozenset(
    f.name for f in model_fields()
    if f.kind != "message" and (f.repeated or f.field.cpp_type == FieldDescriptor.CPPTYPE_BOOL)
)  # fmt: skip


_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_ENCODE_LINE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def neutralise(text: str) -> str:
    """Text a spreadsheet shows as text: a trigger at the start or after a line break gets an apostrophe."""
    if "\n" in text or "\r" in text:
        return _FORMULA_STARTS.sub(NEUTRALISER, text)
    if text and text[0] in FORMULA_TRIGGERS:
        return NEUTRALISER + text
    return text


def display(value: Any) -> str:
    """The CSV cell of one mapping value."""
    if isinstance(value, str):
        text = value
    elif value is True:
        text = "true"
    elif value is False:
        text = "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = chain.sorted_json(value).decode()  # lists and records: the JSON the record holds
    return neutralise(text)


def jsonl_line(mapping: dict[str, Any]) -> bytes:
    """One JSON Lines record (no newline), UTF-8; key order as in the mapping.

    `mapping` is a stored event's (to_mapping's, plus text and integer bookkeeping): orjson
    writes the same text as json wherever chain.event_floats_agree says so.
    """
    if chain.event_floats_agree(mapping):
        try:
            return orjson.dumps(mapping)
        except orjson.JSONEncodeError:
            pass
    return _ENCODE_LINE(mapping).encode()
