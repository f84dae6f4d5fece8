"""YAML files with positions: duplicate keys rejected, every value traceable to file:line:column.

Both roles' config files and the policy files load through here, so an admin always
gets an error that names the file, the line and the key.

Documents are bounded, so a hostile file costs little: at most MAX_DOCUMENT_CHARS characters,
MAX_DEPTH levels of nesting (counting what aliases bring in), MAX_ALIASES alias uses and
MAX_ALIAS_NODES nodes added by expanding them (a 547-byte "billion laughs" document would
otherwise expand to gigabytes), and recursive aliases are refused.

Errors:
    YamlError            any problem in a YAML file; carries path, line, column, key
      YamlLimitError     the document is beyond one of the bounds above
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from common.errors import ExfilGuardError

Location = tuple[str | int, ...]

MAX_DOCUMENT_CHARS = 4 << 20  # the largest policy file; configs are far smaller
MAX_DEPTH = 64  # policies nest conditions a few levels deep; configs less
MAX_ALIASES = 1_000
MAX_ALIAS_NODES = 100_000  # nodes that alias expansion may add to a document

# Scalars only: mappings and sequences are built by _construct so each gets its mark.
_SCALARS = yaml.constructor.SafeConstructor()


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in a file."""

    line: int
    column: int


class YamlError(ExfilGuardError):
    """A YAML file is malformed or does not fit its schema."""

    def __init__(self, path: str, line: int, column: int, key: str, message: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.key = key
        self.message = message
        where = f"{path}:{line}:{column}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class YamlLimitError(YamlError):
    """A YAML document is too large, too deeply nested, or expands too many aliases."""


class _Beyond(yaml.MarkedYAMLError, ExfilGuardError):
    """Raised inside the composer at the node that crossed a bound; parse() turns it into YamlLimitError."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing nodes with the bounds of this module.

    The composer is recursive (about three frames a level), so depth is checked before descending:
    deep nesting is a located error, never a RecursionError.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._aliases = 0
        self._alias_nodes = 0
        # Per composed node (by id; the graph keeps them alive): nodes in its expanded subtree and
        # its height. A node whose entry is missing is still being composed: an alias to it recurses.
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Compose one node, counting depth, aliases and the nodes they expand to."""
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if self.check_event(AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                self._alias(event, target)
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Beyond(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:
            return None
        size, height = 1, 1
        for child in _children(node):
            child_size, child_height = self._sizes.get(id(child), (1, 1))
            size += child_size
            height = max(height, child_height + 1)
        self._sizes[id(node)] = (size, height)
        return node

    def _alias(self, event: Any, target: Node) -> None:
        mark = event.start_mark
        known = self._sizes.get(id(target))
        if known is None:
            raise _Beyond(None, None, f"alias *{event.anchor} refers to a node that contains it", mark)
        size, height = known
        self._aliases += 1
        self._alias_nodes += size
        if self._aliases > MAX_ALIASES:
            raise _Beyond(None, None, f"more than {MAX_ALIASES} aliases", mark)
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _Beyond(None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes", mark)
        if self._depth + height > MAX_DEPTH:
            raise _Beyond(None, None, f"alias *{event.anchor} nests deeper than {MAX_DEPTH} levels", mark)


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, SequenceNode):
        yield from node.value
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            yield key
            yield value


@dataclass
class Document:
    """A parsed YAML document with the position of every key and value in it."""

    path: str
    data: Any
    marks: dict[Location, Mark]

    def mark(self, loc: Location) -> Mark:
        """Position of the innermost known node on `loc` (falls back to its parents)."""
        while loc not in self.marks and loc:
            loc = loc[:-1]
        return self.marks.get(loc, Mark(1, 1))

    def error(self, loc: Location, message: str) -> YamlError:
        """A YamlError pointing at `loc`."""
        mark = self.mark(loc)
        return YamlError(self.path, mark.line, mark.column, dotted(loc), message)


def dotted(loc: Location) -> str:
    """('alerts', 0, 'type') -> 'alerts[0].type'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse(text: str, path: str = "<string>") -> Document:
    """Parse one YAML document; duplicate keys, non-string keys and documents beyond the bounds are errors."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise YamlLimitError(path, 1, 1, "", f"larger than {MAX_DOCUMENT_CHARS} characters")
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses unprintable characters here already
        node = loader.get_single_node()
    except _Beyond as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlLimitError(path, line, col, "", str(exc.problem)) from exc
    except yaml.MarkedYAMLError as exc:
        problem_mark = exc.problem_mark
        line, col = (problem_mark.line + 1, problem_mark.column + 1) if problem_mark else (1, 1)
        raise YamlError(path, line, col, "", f"invalid YAML: {exc.problem}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlError(path, line, col, "", f"invalid YAML: {exc.reason} (#x{exc.character:04x})") from exc
    except yaml.YAMLError as exc:
        raise YamlError(path, 1, 1, "", f"invalid YAML: {exc}") from exc
    finally:
        if loader is not None:
            loader.dispose()
    marks: dict[Location, Mark] = {}
    data = None if node is None else _construct(node, (), path, marks)
    return Document(path, data, marks)


def load(path: str | os.PathLike[str]) -> Document:
    """Read and parse a YAML file; an unreadable file is a YamlError too."""
    name = str(path)
    try:
        with Path(path).open(encoding="utf-8") as handle:
            # One character past the bound is enough to refuse it: never read a huge file whole.
            text = handle.read(MAX_DOCUMENT_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlError(name, 0, 0, "", f"cannot read: {exc}") from exc
    return parse(text, name)


def _construct(node: Node, loc: Location, path: str, marks: dict[Location, Mark]) -> Any:
    marks[loc] = Mark(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _at(key_node, path, loc, "keys must be plain strings")
            key = str(key_node.value)
            if key in result:
                raise _at(key_node, path, (*loc, key), "duplicate key")
            result[key] = _construct(value_node, (*loc, key), path, marks)
            marks[(*loc, key)] = Mark(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, SequenceNode):
        return [_construct(item, (*loc, i), path, marks) for i, item in enumerate(node.value)]
    # Scalars: let PyYAML's safe constructor resolve ints, bools, nulls. An explicit tag it cannot
    # honour (!!python/object, !!int x, !!binary of non-base64) is the file's error, not a crash;
    # its constructors fail in many ways on such text ('!!int ' IndexError, '!!timestamp x'
    # AttributeError, found by tests/fuzz), so every failure of this one library call is translated.
    try:
        return _SCALARS.construct_object(node, deep=True)
    except Exception as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _at(node, path, loc, f"cannot read this value as {node.tag}: {problem}") from exc


def _at(node: Node, path: str, loc: Location, message: str) -> YamlError:
    return YamlError(path, node.start_mark.line + 1, node.start_mark.column + 1, dotted(loc), message)


ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def validate(doc: Document, model: type[ModelT]) -> ModelT:
    """Validate a document against a pydantic model; the first error names file:line:key."""
    errors = list(validation_errors(doc, model))
    if errors:
        raise errors[0]
    return model.model_validate(doc.data if doc.data is not None else {})


def validation_errors(doc: Document, model: type[pydantic.BaseModel]) -> Iterator[YamlError]:
    """Every schema error in the document, located."""
    try:
        model.model_validate(doc.data if doc.data is not None else {})
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = _document_location(doc.data, err["loc"])
            message = _MESSAGES.get(err["type"], err["msg"])
            yield doc.error(loc, message)


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required key is missing"}


def _document_location(data: Any, loc: tuple[Any, ...]) -> Location:
    """Drop the parts of a pydantic location that are not in the document (union tags, model names)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
            out.append(part)
        elif i == len(loc) - 1 and isinstance(part, (str, int)):
            out.append(part)  # a missing key: name it, point at its parent mapping
    return tuple(out)
