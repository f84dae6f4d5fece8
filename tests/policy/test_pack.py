"""The shipped pack (policies/): lints clean, and every policy fires on its positive examples only.

Examples live in tests/policy/examples/<policy-id>.positive.jsonl and .negative.jsonl, in the
recorded-event form `exfilguard policy test --events` replays. The pack runs with
tests/policy/examples/lists.yaml in place of the site lists (who is departing, which sticks are
approved). A paging alert is high or critical; the innocent look-alikes of THREATS.md must raise none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from admin.policy import read_events
from collector.policy import loader
from collector.policy.replay import engine_for
from collector.policy.replay import replay as replay_events
from collector.policy.summary import evidence
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "policies"
EXAMPLES = Path(__file__).resolve().parent / "examples"
PACK_IDS = sorted(p.id for p in loader.load([PACK]).policies)


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("pack")
    for path in PACK.glob("*.yaml"):
        shutil.copy(path, where / path.name)
    shutil.copy(EXAMPLES / "lists.yaml", where / "lists.yaml")
    return where


def replay(pack: Path, name: str) -> list[dict[str, object]]:
    # As the collector runs it: baselines and risk built from the events replayed.
    engine = engine_for(loader.load([pack]), timezone="Europe/Berlin")
    return [a.to_json() for a in replay_events(engine, read_events(EXAMPLES / name))]


def test_pack_lints_clean_without_warnings() -> None:
    policy_set, problems = loader.lint_paths([PACK])
    assert [str(p) for p in problems] == []
    assert len(policy_set.policies) >= 11


def test_every_policy_has_positive_and_negative_examples() -> None:
    for policy_id in PACK_IDS:
        assert (EXAMPLES / f"{policy_id}.positive.jsonl").is_file(), policy_id
        assert (EXAMPLES / f"{policy_id}.negative.jsonl").is_file(), policy_id


@pytest.mark.parametrize("policy_id", PACK_IDS)
def test_positive_examples_fire(pack: Path, policy_id: str) -> None:
    alerts = [a for a in replay(pack, f"{policy_id}.positive.jsonl") if a["policy.id"] == policy_id]
    assert alerts, f"{policy_id} did not fire on its positive examples"
    for alert in alerts:
        assert (
            "?" not in str(alert["summary"]).split("(login")[0] or policy_id == "usb-write-watchlisted-user"
        )


@pytest.mark.parametrize("policy_id", PACK_IDS)
def test_negative_examples_do_not_fire(pack: Path, policy_id: str) -> None:
    alerts = [a for a in replay(pack, f"{policy_id}.negative.jsonl") if a["policy.id"] == policy_id]
    assert alerts == []


def test_the_database_copy_is_one_critical_alert_per_stick_and_the_whole_collection(pack: Path) -> None:
    alerts = replay(pack, "usb-copy-whole-collection.positive.jsonl")
    first = [a for a in alerts if "exfilguard.alert.repeats" not in a]
    assert sorted(str(a["policy.id"]) for a in first) == ["usb-copy-database", "usb-copy-whole-collection"]
    whole = next(a for a in first if a["policy.id"] == "usb-copy-whole-collection")
    assert whole["exfilguard.alert.coverage"] == "80%"
    assert whole["device.serial"] == "SANDISK-4C53-0001"
    assert len(whole["evidence"]) == 4  # type: ignore[arg-type]


INNOCENT = [
    "usb-bulk-copy.negative.jsonl",  # holiday photos, a handful of tagged files
    "staging-mass-read.negative.jsonl",  # updatedb
    "staging-mass-read-user.negative.jsonl",  # an engineer opening files, clamscan
    "staging-archive.negative.jsonl",  # borg backup
    "usb-write-after-hours.negative.jsonl",  # daytime, untagged photos at night, the backup job
]


@pytest.mark.parametrize("name", INNOCENT)
def test_innocent_look_alikes_page_nobody(pack: Path, name: str) -> None:
    paging = [a["policy.id"] for a in replay(pack, name) if a["severity"] in ("high", "critical")]
    allowed = {"usb-copy-tagged-file"} if name.startswith("usb-bulk-copy") else set()  # a few real copies
    assert set(paging) <= allowed


def test_backup_job_pages_nobody(pack: Path) -> None:
    # the job in its window raises nothing; the same job run by hand at 10:00 (in the database
    # negatives) is left by the copy policies to usb-backup-outside-window
    for name in ("usb-copy-database.negative.jsonl", "usb-copy-tagged-file.negative.jsonl"):
        alerts = replay(pack, name)
        backup = {a["policy.id"] for a in alerts if a["user.name"] == "svc-backup"}
        assert backup <= {"usb-backup-outside-window"}


def test_the_backup_run_by_hand_is_one_medium_alert_that_says_so(pack: Path) -> None:
    # the backup account's copies onto its approved drive at 10:00: not the nightly job, and no
    # theft on its face (critical before): medium, its repeats folded, its evidence in words
    alerts = replay(pack, "usb-backup-outside-window.positive.jsonl")
    assert {(a["policy.id"], a["severity"]) for a in alerts} == {("usb-backup-outside-window", "medium")}
    summary = str(alerts[0]["summary"])
    assert "outside the backup window (00:00-05:00)" in summary
    assert "byte for byte that of /srv/db/customers.sqlite (content match, confidence 1.0)" in summary


def test_policy_test_compares_with_the_peer_groups_of_a_collector_config(pack: Path, tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text("peer_groups:\n  finance: [kim, lena]\n")
    events = str(EXAMPLES / "usb-volume-spike.positive.jsonl")
    done = run_cli("policy", "test", str(pack), "--events", events, "--json", "--peer-groups", str(config))
    assert done.returncode == 0, done.stderr
    spikes = [json.loads(line) for line in done.stdout.splitlines()]
    groups = {a["exfilguard.baseline.peer_group"] for a in spikes if a["policy.id"] == "usb-volume-spike"}
    assert groups == {"finance"}
    bad = run_cli(
        "policy", "test", str(pack), "--events", events, "--peer-groups", str(tmp_path / "none.yaml")
    )
    assert bad.returncode == 2 and "none.yaml" in bad.stderr


def test_copy_summaries_say_the_evidence_in_words(pack: Path) -> None:
    # exfilguard.copy.identified_by keeps its contract values; the text an officer reads says
    # what they mean: a content match, or timing and sizes that are not one, or a guess
    alerts = {str(a["file.path"]): a for a in replay(pack, "usb-copy-database.positive.jsonl")
              if a["policy.id"] == "usb-copy-database"}
    exact = str(alerts["/media/alice/STICK/holiday.jpg"]["summary"])
    assert "byte for byte that of /srv/db/customers.sqlite (content match, confidence 1.0)" in exact
    timing = str(alerts["/media/alice/STICK/db.tgz"]["summary"])
    assert alerts["/media/alice/STICK/db.tgz"]["exfilguard.copy.identified_by"] == "lineage-bytes"
    assert "lineage-bytes" not in timing
    assert "and 4 other tagged files as it wrote them: timing and sizes" in timing
    assert "120,000,000 bytes written, 310,000,000 tagged bytes read; confidence 0.8), not a content match" \
        in timing
    decoded = evidence({"exfilguard.copy.identified_by": "exact", "exfilguard.content.format": "hexdump",
                        "exfilguard.source.path": "/srv/db/customers.csv",
                        "exfilguard.copy.confidence": 0.99})
    assert decoded.startswith("decoded from its hex dump text, its content is byte for byte that of "
                              "/srv/db/customers.csv")
    assert evidence({"exfilguard.copy.identified_by": "member", "exfilguard.content.format": "tar.gz"}) \
        .startswith("the archive's members")
    guesses = replay(pack, "usb-possible-copy.positive.jsonl")
    guess = [a for a in guesses if a["policy.id"] == "usb-possible-copy"]
    assert guess and all("a guess" in str(a["summary"]).lower() for a in guess)


def test_the_backup_accounts_archive_is_excepted_only_in_its_window(pack: Path) -> None:
    # the same tar of a tagged tree by the backup account: at 10:00 it is staging, at 02:00 the job
    alerts = replay(pack, "staging-archive.positive.jsonl")
    alerts = [a for a in alerts if a["policy.id"] == "staging-archive"]
    fired = {str(e) for a in alerts for e in list(a["evidence"])}  # type: ignore[call-overload]
    assert "00000000-0000-0000-0000-0000000004e3" in fired
    # written straight onto a stick that is no backup drive: staging too; onto the approved
    # backup drive it is the job run by hand (usb-backup-outside-window, on the copy)
    assert "00000000-0000-0000-0000-0000000004f2" in fired
    assert not [a for a in replay(pack, "staging-archive.negative.jsonl") if a["user.name"] == "backup"]


def _read_events(where: Path, user: str, reads: list[tuple[str, str, str]]) -> Path:
    path = where / f"{user}.jsonl"
    with path.open("w") as fh:
        for i, (action, process, file) in enumerate(reads):
            event = {"@timestamp": f"2026-11-18T10:{i // 60 % 10:02d}:{i % 60:02d}.000000Z",
                     "agent.id": "agent-ws17", "event.action": action, "event.id": f"{user}-{i}",
                     "event.kind": "event", "event.sequence": i + 1, "exfilguard.attribution": "exact",
                     "file.path": file, "host.name": "ws-17", "process.name": process,
                     "process.executable": f"/home/{user}/bin/{process}" if user == "mallory"
                     else f"/usr/bin/{process}",
                     "tags": ["source-code"],
                     "user.id": "1000", "user.name": user}
            fh.write(json.dumps(event) + "\n")
    return path


def test_a_build_in_a_tagged_source_tree_is_not_a_mass_read(pack: Path, tmp_path: Path) -> None:
    # a code generator opens 320 files to write them (file.open, no read) and the compiler reads
    # every source; a script reading the same 320 sources is still a mass read
    tree = "/home/alice/projects/secret"
    build = [("file.open", "protoc", f"{tree}/m{i}.pb.c") for i in range(320)]
    build += [("file.read", "cc1", f"{tree}/m{i}.c") for i in range(320)]
    script = [("file.read", "python3", f"{tree}/m{i}.c") for i in range(320)]
    # a program named like a compiler but living in the user's home is not excepted
    renamed = [("file.read", "cc1", f"{tree}/m{i}.c") for i in range(320)]
    engine = engine_for(loader.load([pack]), timezone="Europe/Berlin")
    fired = {}
    for user, reads in (("alice", build), ("bob", script), ("mallory", renamed)):
        events = read_events(_read_events(tmp_path, user, reads))
        fired[user] = [a.to_json()["policy.id"] for a in replay_events(engine, events)]
    assert "staging-mass-read-user" not in fired["alice"]
    assert "staging-mass-read-user" in fired["bob"]
    assert "staging-mass-read-user" in fired["mallory"]


def test_a_new_git_object_directory_is_no_lost_view_but_a_new_tagged_directory_is(pack: Path) -> None:
    lost = "agent-events-lost"
    fired = {str(e) for a in replay(pack, f"{lost}.positive.jsonl") if a["policy.id"] == lost
             for e in list(a["evidence"])}  # type: ignore[call-overload]
    assert "00000000-0000-0000-0000-0000000005b2" in fired  # /srv/db/q3
    assert not [a for a in replay(pack, f"{lost}.negative.jsonl") if a["policy.id"] == lost]


def test_an_installed_scanner_whose_account_was_not_read_is_no_mass_read(pack: Path, tmp_path: Path) -> None:
    # clamscan ended before the agent read its account (a busy machine): no user, attribution
    # inferred. Installed under /usr it is the scanner; a program given its name elsewhere is not
    events = tmp_path / "scans.jsonl"
    with events.open("w") as fh:
        for i, exe in enumerate(("/usr/bin/clamscan", "/home/mallory/bin/clamscan")):
            fh.write(json.dumps({
                "@timestamp": f"2026-11-18T09:0{i}:00.000000Z", "agent.id": f"agent-ws3{i}",
                "event.action": "file.mass_read", "event.id": f"scan-{i}", "event.kind": "event",
                "event.sequence": i + 1, "exfilguard.attribution": "inferred", "exfilguard.count": 50,
                "file.path": "/srv/code", "file.type": "dir", "host.name": f"ws-3{i}",
                "process.executable": exe, "process.name": "clamscan", "process.pid": 26569 + i,
                "tags": ["source-code"]}) + "\n")
    engine = engine_for(loader.load([pack]), timezone="Europe/Berlin")
    alerts = [a.to_json() for a in replay_events(engine, read_events(events))]
    assert [(a["policy.id"], a["process.executable"]) for a in alerts] == [
        ("staging-mass-read", "/home/mallory/bin/clamscan")]


def test_an_alert_says_who_how_much_of_the_collection_and_whether_after_hours(pack: Path) -> None:
    # root copying one database file at 22:30 Berlin time, logged in as alice (sudo): the summary
    # names both, the share of the collection the agent counted, and that it was after hours
    engine = engine_for(loader.load([pack]), timezone="Europe/Berlin")
    common = {"agent.id": "agent-ws9", "host.name": "ws-9", "event.kind": "event", "agent.version": "0.1.0"}
    inventory = {**common, "@timestamp": "2026-11-18T08:00:00.000000Z", "event.action": "agent.inventory",
                 "event.id": "00000000-0000-0000-0000-0000000f0001", "event.sequence": 1,
                 "exfilguard.inventory": [{"bytes": 70000, "files": 7, "tag": "database"}]}
    copy = {**common, "@timestamp": "2026-11-18T21:30:00.000000Z", "event.action": "file.copy",
            "event.id": "00000000-0000-0000-0000-0000000f0002", "event.sequence": 2,
            "device.bus": "usb", "device.vendor": "SanDisk", "device.model": "Cruzer Blade",
            "device.serial": "SANDISK-9", "exfilguard.mount.point": "/media/alice/STICK",
            "exfilguard.copy.identified_by": "exact", "exfilguard.copy.confidence": 1.0,
            "exfilguard.copy.method": ["process", "fingerprint"], "exfilguard.copy.files_read": 1,
            "exfilguard.source.path": "/srv/db/customers.sqlite", "exfilguard.source.tags": ["database"],
            "file.path": "/media/alice/STICK/c.sqlite", "file.size": 10000, "process.name": "cp",
            "process.command_line": "cp /srv/db/customers.sqlite /media/alice/STICK/c.sqlite",
            "tags": ["database"], "user.name": "root", "user.id": "0", "exfilguard.login_user.name": "alice"}
    alerts = [a.to_json() for a in replay_events(engine, [inventory, copy])]
    database = next(a for a in alerts if a["policy.id"] == "usb-copy-database")
    summary = str(database["summary"])
    assert summary.startswith("root (login alice) on ws-9 copied database data to usb SanDisk Cruzer Blade")
    assert "from 1 of 7 files tagged database (14%)" in summary
    assert "at 2026-11-18 22:30:00 CET (after hours)" in summary
    assert database["exfilguard.alert.after_hours"] is True
    assert database["exfilguard.alert.collection_share"] == "1 of 7 files tagged database (14%)"
