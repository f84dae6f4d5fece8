"""Records filled from what already names their fields.

A command's filter or a component's limits are dataclasses whose fields carry the same names as
the options (argparse `dest`) or config keys they come from: `from_attributes` reads them by
name, so adding a field is one edit, not three.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    T = TypeVar("T", bound=DataclassInstance)
else:
    T = TypeVar("T")


def from_attributes(cls: type[T], source: object, **given: Any) -> T:
    """A `cls` dataclass: each field `source` has an attribute of that name for (an argparse
    Namespace, a config model) is read from it, the `given` ones are as given, the rest keep
    their defaults."""
    values = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(cls)
        if f.init and f.name not in given and hasattr(source, f.name)
    }
    return cls(**values, **given)
