"""Alert summary templates: `{user.name} copied {count} files ({bytes}) to {device.serial}`.

Placeholders are event fields (from the event that fired the policy) or the measures below.
A placeholder with no value renders as `?`, so a summary never fails at alert time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from collector.policy import conditions
from collector.policy.model import Aggregate

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# Measures an alert knows besides the event's fields.
MEASURES = {
    "count": "events (or files) the alert covers",
    "distinct": "distinct values counted by a distinct measure",
    "bytes": "bytes summed by a sum measure or copied under coverage, human-readable",
    "coverage": "share of the tag's collection copied, e.g. 85%",
    "tag": "the tag a coverage alert is about",
    "inventory_files": "files the agent counted under the tag",
    "window": "the aggregate window or sequence span, e.g. 10m",
    "local_time": "local time of the event in the collector's timezone",
    "steps": "names of the sequence steps seen, in order",
    "destination": "where a write went: a device (vendor, model, serial), a network share or a phone (MTP)",
    "evidence": "what ties a copy to tagged data, in plain words (content match, or timing and sizes)",
    "after_hours": "whether the event was after hours by the pack's after_hours macro (local_time says it)",
    "collection_share": "the tagged files the alert covers against the agent's count of their tag, "
                        "e.g. 7 of 7 files tagged database (100%)",
    "who": "the user, and the login user when another (root (login alice): sudo, su, runuser)",
    "how": "the process by name, with its command line when the agent read one (cut at 120 characters)",
}
_COMMAND_LINE_SHOWN = 120
# aggregate fields whose distinct values are tagged files
_FILE_FIELDS = ("file.path", "exfilguard.source.path")

_EGRESS_KINDS = {"network": "network share", "mtp": "phone (MTP)"}
# exfilguard.content.format of a text the agent decoded before matching it (base64, hex dumps)
_ENCODINGS = {"base64": "base64", "base32": "base32", "hex": "hex", "xxd": "hex dump", "hexdump": "hex dump",
              "od": "hex dump", "od-x1": "hex dump", "od-x2": "hex dump", "od-o1": "octal dump",
              "od-o2": "octal dump", "od-d1": "decimal dump", "xxd-b": "binary dump",
              **{f"utf-{bits}{order}": f"UTF-{bits}" for bits in ("16", "32")
                 for order in ("", "-le", "-be")}}
_CONTENT = ("exact", "sampled", "member", "chunks", "text")


def destination(event: Mapping[str, Any]) -> str:
    """The removable medium an event names, in words: `usb Kingston DataTraveler serial EG0001`,
    `network share server:/export (nfs4)`; "" when it names none."""
    bus = str(event.get("device.bus") or "")
    if bus in _EGRESS_KINDS:
        source = event.get("exfilguard.mount.source") or event.get("device.name") or "?"
        fs_type = event.get("exfilguard.mount.fs_type") or event.get("device.type") or "?"
        return f"{_EGRESS_KINDS[bus]} {source} ({fs_type})"
    words = [str(event.get(name) or "") for name in ("device.vendor", "device.model")]
    serial = str(event.get("device.serial") or "")
    if not (any(words) or serial or event.get("device.name")):
        return ""
    named = " ".join(w for w in (bus, *words) if w) or str(event.get("device.name"))
    return f"{named} serial {serial or '?'}"


def evidence(event: Mapping[str, Any]) -> str:
    """What ties a written file to tagged data, in words an officer reads at once; "" for an
    event without `exfilguard.copy.identified_by` (the field keeps its contract value)."""
    how = str(event.get("exfilguard.copy.identified_by") or "")
    if not how:
        return ""
    source = str(event.get("exfilguard.source.path") or "a tagged file")
    others = _int(event.get("exfilguard.copy.files_read")) - 1
    also = f" and {others} other tagged file{'s' if others != 1 else ''}" if others > 0 else ""
    sure = f"confidence {event.get('exfilguard.copy.confidence', '?')}"
    share = event.get("exfilguard.copy.share")
    part = f"{round(float(share) * 100)}%" if isinstance(share, int | float) and share else "part"
    members = _int(event.get("exfilguard.copy.members_total"))
    read = _int(event.get("exfilguard.copy.bytes_read"))
    written = _int(event.get("exfilguard.copy.bytes_written"))
    sizes = f"{written:,} bytes written, {read:,} tagged bytes read; " if read and written else ""
    words = {
        "exact": f"its content is byte for byte that of {source} (content match, {sure})",
        "sampled": f"its size and sampled content equal those of {source}, too large to hash whole "
                   f"(content match, {sure})",
        "member": f"the archive's members are tagged files, {source}{also} "
                  f"({members or '?'} members listed; content match, {sure})",
        "chunks": f"{part} of {source} is found in its bytes: an edited, cut or split copy (content "
                  f"match, {sure})",
        "text": f"lines of {source} are found in it, rewritten or reordered (content match, {sure})",
        "lineage-bytes": f"the bytes written follow what the process that wrote them (or its pipeline) read "
                         f"from {source}{also} as it wrote them: timing and sizes ({sizes}{sure}), not a "
                         "content match",
        "lineage-process": "the writing process had read tagged files at some point; nothing ties these "
                           f"bytes to them (a guess, {sure})",
    }
    said = words.get(how, f"identified by {how} ({sure})")
    encoding = _ENCODINGS.get(str(event.get("exfilguard.content.format") or "").split("+")[0], "")
    if encoding and how in _CONTENT:
        said = f"decoded from its {encoding} text, {said}"
    if event.get("exfilguard.copy.revises"):
        said += (f"; the write judged again: what ties it arrived after its first judgement (event "
                 f"{event['exfilguard.copy.revises']})")
    return said


def describe(event: Mapping[str, Any], measures: dict[str, Any], inventory: Mapping[tuple[str, str], Any],
             aggregate: Aggregate | None = None, *, zone: str = "UTC",
             after_hours: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
    """Add the measures an officer reads an alert by: when (`local_time` in `zone`, and whether
    `after_hours`, the pack's macro, holds), who, how, where to, on what evidence, and what share
    of the collection."""
    moment = conditions.local_time(str(event.get("@timestamp", "")), zone)
    if moment is not None:
        measures["local_time"] = moment.strftime("%Y-%m-%d %H:%M:%S %Z")
        if after_hours is not None:
            measures["after_hours"] = late = bool(after_hours(event))
            measures["local_time"] += " (after hours)" if late else ""
    for name, value in (("destination", destination(event)), ("evidence", evidence(event))):
        if value:
            measures.setdefault(name, value)
    user = str(event.get("user.name") or "")
    login = str(event.get("exfilguard.login_user.name") or "")
    also = f" (login {login})" if login and login != user else ""
    measures.setdefault("who", f"{user or 'an unknown user'}{also}")
    name = str(event.get("process.name") or "")
    line = " ".join(str(event.get("process.command_line") or "").split())  # a script's newlines
    if len(line) > _COMMAND_LINE_SHOWN:
        line = line[: _COMMAND_LINE_SHOWN - 3] + "..."
    measures.setdefault("how", f"{name} ({line})" if name and line else name or line or "an unknown process")
    if share := collection_share(event, measures, inventory, aggregate):
        measures.setdefault("collection_share", share)


def collection_share(event: Mapping[str, Any], measures: Mapping[str, Any],
                     inventory: Mapping[tuple[str, str], Any], aggregate: Aggregate | None = None) -> str:
    """How many tagged files an alert covers, against the agent's latest count of their tag
    (`7 of 7 files tagged database (100%)`): a whole collection or one file of it reads at once.
    "" when the alert counts no files, or is a coverage alert (which says so itself)."""
    if "coverage" in measures:
        return ""
    files = 0
    measured = aggregate.measures if aggregate is not None else ()
    if any(m.kind == "distinct" and m.field in _FILE_FIELDS for m in measured):
        files = _int(measures.get("distinct"))
    elif event.get("event.action") == "file.mass_read":
        files = _int(event.get("exfilguard.count"))
    elif str(event.get("event.action", "")).startswith("file."):
        # a copy naming its source came from one tagged file at least
        named = 1 if event.get("exfilguard.source.path") else 0
        files = max(_int(event.get("exfilguard.copy.files_read")), named)
    if files <= 0:
        return ""
    agent = str(event.get("agent.id", ""))
    for tag in event.get("exfilguard.source.tags") or event.get("tags") or ():
        known = inventory.get((agent, str(tag)))
        if known is not None and known.files > 0:
            share = min(100, round(100 * files / known.files))
            return f"{files} of {known.files} files tagged {tag} ({share}%)"
    return f"{files} tagged file{'s' if files != 1 else ''}"  # the agent sent no count of the tag yet


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def placeholders(template: str) -> list[str]:
    """Every `{name}` in a template, in order."""
    return _PLACEHOLDER.findall(template)


def render(template: str, event: Mapping[str, Any], measures: Mapping[str, Any]) -> str:
    """Fill a template from the measures, then the event; unknown values become `?`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = measures.get(name, event.get(name))
        if found is None or found in ("", []):
            return "?"
        if isinstance(found, list):
            return ",".join(str(v) for v in found)
        return str(found)

    return _PLACEHOLDER.sub(value, template)
