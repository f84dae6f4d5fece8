"""A case as a signed evidence package: the evidence events of its alerts exported as JSON Lines with
the signed manifest (collector/evidence, as `exfilguard export --alert ...` writes them), the
collector's public key, and the printable HTML report, in one zip:

    CASE/events.jsonl                 the export
    CASE/events.jsonl.manifest.json   its signed manifest
    CASE/collector-key.pem            the public key that verifies it
    CASE/report.html                  who, what, when, which device, how identified, custody
    CASE/README.txt                   how to verify it (`exfilguard verify`)
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.evidence import export, keys
from collector.store import Store

EXPORT_NAME = "events.jsonl"
KEY_NAME = "collector-key.pem"


@dataclass(frozen=True)
class CaseFilter(export.ExportFilter):
    """A case's events: its alerts' evidence and the events added to it by hand, by event id.

    Exported by id (one pass over the store's rows in SQL, no decoding of the rest), and named in
    the manifest as the case, its alerts and how many events it holds.
    """

    case: str = ""
    case_alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `filter`."""
        return {"case": self.case, "alert": list(self.case_alerts), "events": len(self.event_ids or ())}


@dataclass(frozen=True)
class ExportFacts:
    """What the report says about the export it travels with."""

    rows: int
    sha256: str
    signer: str  # the key's fingerprint
    agents: int
    unchained: int  # evidence events not chained yet (left out)


def build(
    store: Store,
    state_dir: str,
    case_id: str,
    alert_ids: Sequence[str],
    *,
    event_ids: Sequence[str],
    report: Callable[[ExportFacts], str],
) -> tuple[bytes, ExportFacts]:
    """The zip of a case's package (its alerts' evidence and `event_ids`), and the facts of its export."""
    key = keys.load_or_create(state_dir)
    with tempfile.TemporaryDirectory(prefix="exfilguard-case-") as tmp:
        out = Path(tmp) / EXPORT_NAME
        manifest = Path(tmp) / (EXPORT_NAME + ".manifest.json")
        with store.ledger() as ledger:
            wanted = ledger.alert_evidence(alert_ids) | set(event_ids)
            where = CaseFilter(event_ids=tuple(sorted(wanted)), case=case_id, case_alerts=tuple(alert_ids))
            done = export.export_store(store, ledger, where, "jsonl", str(out), str(manifest), key)
        facts = ExportFacts(
            done.result.rows,
            done.result.sha256,
            key.public.fingerprint(),
            len(done.result.agents),
            done.unchained,
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(out, f"{case_id}/{EXPORT_NAME}")
            archive.write(manifest, f"{case_id}/{manifest.name}")
            archive.writestr(f"{case_id}/{KEY_NAME}", key.public.pem())
            archive.writestr(f"{case_id}/report.html", report(facts))
            archive.writestr(
                f"{case_id}/README.txt",
                f"Evidence package of case {case_id}.\n\nVerify it offline (exit code 0: the signature, "
                f"the file hash and every record's hash chain link hold):\n\n"
                f"    exfilguard verify {EXPORT_NAME} --public-key {KEY_NAME}\n\n"
                f"and compare the key's fingerprint ({facts.signer}) with the collector's "
                "(`exfilguard key export`). report.html prints as the case report.\n",
            )
    return buffer.getvalue(), facts
