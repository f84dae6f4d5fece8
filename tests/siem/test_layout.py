"""Layouts give the same JSON bytes as the format functions, for every shape the corpus makes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector import formats
from collector.formats import ecs, layout, ocsf
from collector.formats.layout import Layouts, derive
from protos import exfilguard_pb2 as pb
from protos.events import to_mapping
from tests.eventcorpus import corpus
from tests.helpers import make_event
from tests.siem import samples

MAPPINGS = [to_mapping(e) for e in corpus(600)] + list(samples.events().values())


@pytest.mark.parametrize("fmt", ["ecs", "ocsf", "exfilguard"])
def test_every_corpus_event_is_the_format_functions_json(fmt: str) -> None:
    for mapping in MAPPINGS:
        assert formats.event_json(fmt, mapping) == orjson.dumps(formats.event(fmt, mapping)), mapping


@pytest.mark.parametrize("module", [ecs, ocsf], ids=["ecs", "ocsf"])
def test_common_shapes_are_laid_out_and_values_land_in_their_holes(module: Any) -> None:
    fn = module.event
    layouts = Layouts(fn, module.SHAPED_BY)
    for sequence in (1, 2, 3):
        event = make_event("agent-1", sequence, "file.copy" if sequence == 3 else "file.read")
        if sequence == 2:
            event.file.path = "/home/alice/100% done/"  # a % and a trailing slash (a derived name)
        mapping = to_mapping(event)
        assert layouts.json(mapping) == orjson.dumps(fn(mapping))
    assert len(layouts._layouts) == 2
    assert None not in layouts._layouts.values()


def _branches_on_a_value(m: Any) -> dict[str, Any]:
    return {"big": len(m["file.path"]) > 10}  # a use of a value the layout cannot repeat


def _upper(text: str) -> str:
    return text.upper()


def test_a_value_used_in_an_unrepeatable_way_keeps_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = {"file.path": "/a"}, {"file.path": "/srv/db/customers.csv"}
    layouts = Layouts(_branches_on_a_value)  # the first event takes another branch than the probes
    assert layouts.json(short) == b'{"big":false}' and layouts.json(long) == b'{"big":true}'
    assert list(layouts._layouts.values()) == [None]
    monkeypatch.setattr(layout, "CHECK_EVERY", 1)
    later = Layouts(_branches_on_a_value)  # the first takes the probes' branch; a check finds the other
    assert later.json(long) == b'{"big":true}' and later.json(short) == b'{"big":false}'
    assert list(later._layouts.values()) == [None]
    derived = Layouts(lambda m: {"path": m["p"], "upper": derive(_upper, m["p"]), "n": m["n"] + 0})
    assert derived.json({"p": "/x/y", "n": 7}) == b'{"path":"/x/y","upper":"/X/Y","n":7}'
    assert derived.json({"p": '%s\\"', "n": 8}) == b'{"path":"%s\\\\\\"","upper":"%S\\\\\\"","n":8}'
    assert None not in derived._layouts.values()


def test_events_with_long_lists_are_not_shapes_of_their_own() -> None:
    layouts = Layouts(ecs.event, ecs.SHAPED_BY)
    for sequence in range(1, 6):
        event = make_event("agent-1", sequence, "file.archive")
        event.exfilguard.copy.sources.extend(f"/srv/db/table-{sequence}-{n}.csv" for n in range(10))
        mapping = to_mapping(event)
        assert layouts.json(mapping) == orjson.dumps(ecs.event(mapping))
    assert layouts._layouts == {}  # five events, five different lists: none laid out


@pytest.mark.parametrize("module", [ecs, ocsf], ids=["ecs", "ocsf"])
def test_values_with_commas_quotes_and_numbers_land_in_their_holes(module: Any) -> None:
    # A layout serialises all of an event's values in one call and cuts the array at its commas;
    # a comma inside a value must not cut it (then each value is serialised on its own).
    layouts = Layouts(module.event, module.SHAPED_BY)
    lines = ["cp -r /srv/db /media/usb", 'cp "a,b" c,d', "x,", ",", 'say "\\",\\""', "tar -cf - /srv"]
    for sequence, line in enumerate(lines, start=1):
        event = make_event("agent-1", sequence, file=pb.File(path=f"/srv/{line}", size=sequence * 4096))
        event.process.command_line = line
        mapping = to_mapping(event)
        assert layouts.json(mapping) == orjson.dumps(module.event(mapping)), line
    assert len(layouts._layouts) == 1 and None not in layouts._layouts.values()  # all laid out


@pytest.mark.parametrize("module", [ecs, ocsf], ids=["ecs", "ocsf"])
def test_kept_lists_that_read_alike_are_shapes_of_their_own(module: Any) -> None:
    # A shape's kept values (here the tags) are told apart by their JSON text: lists that would
    # join to the same text must still be different shapes.
    layouts = Layouts(module.event, module.SHAPED_BY)
    for sequence, tags in enumerate((["a", "b"], ["a,b"], ['a","b'], ["a", "b", ""]), start=1):
        event = make_event("agent-1", sequence)
        event.tags.extend(tags)
        mapping = to_mapping(event)
        assert layouts.json(mapping) == orjson.dumps(module.event(mapping)), tags
    assert len(layouts._layouts) == 4
