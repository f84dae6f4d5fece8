"""OCSF documents: alerts as Data Security Findings, events as File System or Peripheral Activity.

The removable device goes in `device.peripheral_devices[]` (type External Storage), the host in
`device`, who in `actor.user`, the process in `actor.process`. Fields OCSF has no attribute for
go in `unmapped` under their SPEC names, as OCSF asks. Times are epoch milliseconds.
Checked against the OCSF schema (classes and objects compiled from ocsf-schema) in the tests.
Forwarding lays events out once per shape (layout.py): a value used other than as it is goes
through `derive()`, and `event` branches on the values of SHAPED_BY only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from collector import __version__
from collector.formats.layout import derive
from common.ecstime import ecs_epoch

OCSF_VERSION = "1.9.0-dev"  # device.peripheral_devices is new in 1.9 (ocsf-schema #1645)

DATA_SECURITY_FINDING = 2006
FILE_ACTIVITY = 1001
PERIPHERAL_ACTIVITY = 1010
BASE_EVENT = 0

SEVERITY_ID = {"low": 2, "medium": 3, "high": 4, "critical": 5}
_SEVERITY_NAME = {2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
SHA256 = 3  # fingerprint.algorithm_id
EXTERNAL_STORAGE = 1  # peripheral_device.type_id
RULE = 1  # analytic.type_id

# event.action -> (class_uid, activity_id, activity_name)
ACTIONS: dict[str, tuple[int, int, str]] = {
    "file.create": (FILE_ACTIVITY, 1, "Create"),
    "file.write": (FILE_ACTIVITY, 1, "Create"),
    "file.copy": (FILE_ACTIVITY, 1, "Create"),
    "file.archive": (FILE_ACTIVITY, 1, "Create"),
    "device.write": (FILE_ACTIVITY, 1, "Create"),
    "file.read": (FILE_ACTIVITY, 2, "Read"),
    "file.mass_read": (FILE_ACTIVITY, 2, "Read"),
    "file.modify": (FILE_ACTIVITY, 3, "Update"),
    "file.delete": (FILE_ACTIVITY, 4, "Delete"),
    "file.rename": (FILE_ACTIVITY, 5, "Rename"),
    "device.mount": (FILE_ACTIVITY, 12, "Mount"),
    "device.unmount": (FILE_ACTIVITY, 13, "Unmount"),
    "file.open": (FILE_ACTIVITY, 14, "Open"),
    "device.attach": (PERIPHERAL_ACTIVITY, 1, "Connect"),
    "device.detach": (PERIPHERAL_ACTIVITY, 2, "Disconnect"),
}
SHAPED_BY = ("event.action", "file.type")  # the values `event` branches on
_CATEGORY = {DATA_SECURITY_FINDING: 2, FILE_ACTIVITY: 1, PERIPHERAL_ACTIVITY: 1, BASE_EVENT: 0}

# SPEC fields the mapping below places in OCSF objects (everything else goes to `unmapped`).
_MAPPED = frozenset(
    {
        "@timestamp", "event.id", "event.action", "event.kind", "event.sequence", "event.reason",
        "agent.id", "agent.version", "host.name", "host.id", "user.id", "user.name",
        "process.pid", "process.executable", "process.command_line", "process.name",
        "process.parent.pid", "file.path", "file.size", "file.name", "file.extension",
        "file.hash.sha256", "file.type", "device.name", "device.serial", "device.vendor",
        "device.model", "device.vendor_id", "device.product_id", "device.bus", "device.size",
        "device.removable", "device.type", "tags",
    }
)  # fmt: skip


def epoch_ms(text: object) -> int:
    """An ECS time string as OCSF's timestamp_t (milliseconds since the epoch, the fraction cut
    off); 0 if it is none."""
    if type(text) is str and len(text) == len(_ECS_FORM) and text[19] == "." and text[26] == "Z":
        # Every stored event's time has this form, and events come in bursts within a second:
        # the whole second is parsed once (parsing is most of what formatting a time costs).
        base = _SECOND_MS.get(text[:19])
        if base is None:
            seconds = ecs_epoch(text[:19] + "Z")
            base = -1 if seconds is None or seconds < 0 else int(seconds) * 1000
            if len(_SECOND_MS) >= 4096:
                _SECOND_MS.clear()
            _SECOND_MS[text[:19]] = base
        millis = text[20:23]
        if base >= 0 and millis.isascii() and millis.isdigit():
            return base + int(millis)
    seconds = ecs_epoch(text)
    return 0 if seconds is None else round(seconds * 1_000_000) // 1000  # whole microseconds, then cut


_ECS_FORM = "2026-01-31T08:15:00.123456Z"
_SECOND_MS: dict[str, int] = {}  # "2026-01-31T08:15:00" -> its epoch milliseconds (-1: not a time)


def _metadata(uid: str, product_uid: str = "") -> dict[str, Any]:
    product: dict[str, Any] = {"name": "ExfilGuard", "vendor_name": "ExfilGuard", "version": __version__}
    out: dict[str, Any] = {"version": OCSF_VERSION, "product": product}
    if uid:
        out["uid"] = uid
    if product_uid:
        out["log_name"] = product_uid
    return out


def _texts(m: Mapping[str, Any], names: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """{OCSF attribute: text} for each (mapping key, OCSF attribute) whose value is set, in order."""
    return {attribute: str(m[key]) for key, attribute in names if m.get(key)}


def _peripheral(m: Mapping[str, Any]) -> dict[str, Any] | None:
    if not any(m.get(k) for k in ("device.serial", "device.name", "device.model")):
        return None
    out: dict[str, Any] = {
        "name": str(m.get("device.name") or m.get("device.model") or m.get("device.serial")),
        "type_id": EXTERNAL_STORAGE,
        "type": "External Storage",
    }
    if m.get("device.serial"):
        out["serial_number"] = str(m["device.serial"])
        out["uid"] = str(m["device.serial"])
    out.update(_texts(m, (("device.model", "model"), ("device.vendor", "vendor_name"))))
    if m.get("device.vendor_id"):
        out["vendor_id_list"] = [str(m["device.vendor_id"])]
    if m.get("device.bus"):
        out["class"] = str(m["device.bus"])
    return out


def _device(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type_id": 0, "type": "Unknown", "hostname": str(m.get("host.name", ""))}
    if m.get("host.id"):
        out["uid"] = str(m["host.id"])
    peripheral = _peripheral(m)
    if peripheral is not None:
        out["peripheral_devices"] = [peripheral]
    return out


def _actor(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    user = _texts(m, (("user.name", "name"), ("user.id", "uid")))
    if user:
        out["user"] = user
    process: dict[str, Any] = {}
    if m.get("process.pid"):
        process["pid"] = int(m["process.pid"])
    process.update(_texts(m, (("process.name", "name"), ("process.command_line", "cmd_line"))))
    if m.get("process.executable"):
        exe = str(m["process.executable"])
        process["file"] = {"path": exe, "name": derive(_last_part, exe), "type_id": 1}
    if m.get("process.parent.pid"):
        process["parent_process"] = {"pid": int(m["process.parent.pid"])}
    if process:
        out["process"] = process
    return out


def _file(m: Mapping[str, Any]) -> dict[str, Any] | None:
    path = m.get("file.path") or m.get("exfilguard.mount.point")
    if not path:
        return None
    path = str(path)
    folder = m.get("file.type") == "dir" or (not m.get("file.path"))
    out: dict[str, Any] = {
        "path": path,
        "name": str(m.get("file.name") or derive(_basename, path)),
        "type_id": 2 if folder else 1,
        "type": "Folder" if folder else "Regular File",
    }
    if m.get("file.size") is not None:
        out["size"] = int(m["file.size"])
    if m.get("file.extension"):
        out["ext"] = str(m["file.extension"])
    if m.get("file.hash.sha256"):
        digest = str(m["file.hash.sha256"])
        out["hashes"] = [{"algorithm_id": SHA256, "algorithm": "SHA-256", "value": digest}]
    if m.get("tags"):
        out["tags"] = [{"name": "tag", "value": str(t)} for t in m["tags"]]
    return out


def _last_part(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _unmapped(m: Mapping[str, Any], skip: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in sorted(m.items()) if k not in skip and v not in (None, "", [])}


def _base(class_uid: int, activity_id: int, activity_name: str, time: object) -> dict[str, Any]:
    category = _CATEGORY[class_uid]
    return {
        "class_uid": class_uid,
        "category_uid": category,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": derive(epoch_ms, time),
    }


def event(m: Mapping[str, Any]) -> dict[str, Any]:
    """One stored event as an OCSF event: File System Activity, Peripheral Activity or Base Event."""
    action = str(m.get("event.action", ""))
    class_uid, activity_id, activity_name = ACTIONS.get(action, (BASE_EVENT, 99, action or "Other"))
    out = _base(class_uid, activity_id, activity_name, m.get("@timestamp"))
    out["severity_id"] = 1
    out["severity"] = "Informational"
    out["metadata"] = _metadata(str(m.get("event.id", "")))
    if m.get("event.sequence"):
        out["metadata"]["sequence"] = int(m["event.sequence"])
    out["message"] = action
    if class_uid != BASE_EVENT:
        out["actor"] = _actor(m)
        out["device"] = _device(m)
    if class_uid == FILE_ACTIVITY:
        file = _file(m)
        out["file"] = file if file is not None else {"name": action, "type_id": 0, "type": "Unknown"}
    if class_uid == PERIPHERAL_ACTIVITY:
        peripheral = _peripheral(m) or {"name": "unknown", "type_id": EXTERNAL_STORAGE}
        out["peripheral_device"] = peripheral
    skip = _MAPPED if class_uid != BASE_EVENT else frozenset({"@timestamp", "event.id", "event.sequence"})
    unmapped = _unmapped(m, skip)
    if unmapped:
        out["unmapped"] = unmapped
    return out


def alert(body: Mapping[str, Any]) -> dict[str, Any]:
    """One alert as an OCSF Data Security Finding (activity Create; Update for a folded repeat)."""
    repeat = bool(body.get("exfilguard.alert.repeat_of"))
    activity, name = (2, "Update") if repeat else (1, "Create")
    out = _base(DATA_SECURITY_FINDING, activity, name, body.get("@timestamp"))
    severity = SEVERITY_ID.get(str(body.get("severity", "low")), 2)
    out["severity_id"] = severity
    out["severity"] = _SEVERITY_NAME[severity]
    out["status_id"] = 1
    out["status"] = "New"
    out["is_alert"] = True
    out["message"] = str(body.get("summary", ""))
    out["metadata"] = _metadata(str(body.get("id", "")))
    if body.get("event.start"):
        out["start_time"] = epoch_ms(body["event.start"])
    if body.get("event.end"):
        out["end_time"] = epoch_ms(body["event.end"])
    if body.get("count"):
        out["count"] = int(body["count"])
    finding: dict[str, Any] = {
        "uid": str(body.get("id", "")),
        "title": str(body.get("policy.title", "")),
        "analytic": {
            "uid": str(body.get("policy.id", "")),
            "name": str(body.get("policy.title", "")),
            "type_id": RULE,
            "type": "Rule",
        },
        "types": ["Data Exfiltration"],
    }
    if body.get("policy.description"):
        finding["desc"] = str(body["policy.description"])
    evidence = [str(e) for e in body.get("evidence") or []]
    if evidence:
        finding["related_events"] = [{"uid": e} for e in evidence]
        finding["related_events_count"] = len(evidence)
    if body.get("policy.tags"):
        finding["tags"] = [{"name": "policy", "value": str(t)} for t in body["policy.tags"]]
    out["finding_info"] = finding
    out["actor"] = _actor(body)
    out["device"] = _device(body)
    file = _file(body)
    if file is not None:
        out["file"] = file
    skip = _MAPPED | {"id", "summary", "severity", "count", "evidence", "event.start", "event.end"}
    skip |= {k for k in body if k.startswith("policy.") and k != "policy.set_hash"}
    unmapped = _unmapped(body, frozenset(skip))
    if unmapped:
        out["unmapped"] = unmapped
    return out
