"""A synthetic enterprise in the shape of CERT-style insider-threat datasets, as ExfilGuard events.

Our own generator (the research datasets may not be redistributed). Users have roles: office
staff on one PC, engineers on one or two, IT admins on dozens; some are late workers. Some use
USB sticks by habit (a daily probability, their own one or two sticks, now and then a borrowed
one), copying a few files at a time; some pick the habit up during the period. Weekends, public
holidays and each person's own leave days are quiet. Every working day leaves activity events
(tagged documents opened at the start, middle and end of the user's hours).

Injected insiders follow the two classic scenarios:
  after_hours  a user who never used removable media starts doing so, late at night;
  departing    a USB user on the departing list copies many times their usual volume, daily,
               in the two weeks before leaving.
Events come out one local day at a time, sorted by time, so a month of a large fleet is never
held in memory at once. Times are UTC (run the pack with timezone UTC).
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday
HOLIDAYS = {dt.date(2026, 1, 6), dt.date(2026, 2, 16), dt.date(2026, 4, 3), dt.date(2026, 4, 6)}
MiB = 1 << 20
VENDORS = (
    ("0781", "5567", "SanDisk", "Cruzer Blade"),
    ("0951", "1666", "Kingston", "DataTraveler"),
    ("090c", "1000", "Samsung", "Flash Drive"),
    ("13fe", "4200", "Verbatim", "Store n Go"),
)


@dataclass
class Person:
    """One user of the synthetic fleet and their habits."""

    name: str
    role: str  # office | engineer | it-admin
    hosts: list[str]
    start_hour: int
    end_hour: int
    usb_daily: float  # probability of a USB session on a working day (0: never)
    sticks: list[str]
    files_mean: float  # files per USB session
    leave: set[int] = field(default_factory=set)  # day numbers on leave
    adopts_on: int = -1  # picks up the USB habit on this day (benign new adopter)
    insider: str = ""  # "", "after_hours" or "departing"
    acts_from: int = -1  # first day of the malicious acts
    first_act: float = 0.0  # epoch seconds of the first malicious act (set while generating)


@dataclass
class Fleet:
    """The people, the departing list and the peer groups of one generated enterprise."""

    people: list[Person]
    days: int
    departing: list[str]
    groups: dict[str, str]
    seed: int

    def insiders(self) -> list[Person]:
        """The injected insiders."""
        return [p for p in self.people if p.insider]


def build(users: int, days: int, seed: int = 18, insiders: int = 10) -> Fleet:
    """People with roles and habits; half the insiders of each scenario, acting in the last weeks."""
    rng = random.Random(seed)
    hosts = [f"ws-{i:05d}" for i in range(max(users, 10))]
    people: list[Person] = []
    for i in range(users):
        draw = rng.random()
        role = "it-admin" if draw < 0.03 else "engineer" if draw < 0.25 else "office"
        own = [hosts[i]]
        if role == "it-admin":
            own += rng.sample(hosts, min(len(hosts), rng.randint(20, 60)))
        elif role == "engineer" and rng.random() < 0.3:
            own.append(rng.choice(hosts))
        late = rng.random() < 0.1
        start = rng.choice((11, 12, 14)) if late else rng.choice((7, 8, 8, 9, 9, 10))
        end = min(start + rng.choice((8, 9, 9, 10)), 23)
        uses = {"it-admin": 0.95, "engineer": 0.45, "office": 0.2}[role] > rng.random()
        daily = (0.8 if role == "it-admin" else rng.uniform(0.05, 0.6)) if uses else 0.0
        name = f"u{i:05d}"
        own_sticks = rng.randint(2, 4) if role == "it-admin" else rng.randint(1, 2)
        sticks = [f"{name}-S{k}" for k in range(own_sticks)]
        leave_start = rng.randrange(max(days - 5, 1))
        person = Person(
            name,
            role,
            own,
            start,
            end,
            daily,
            sticks,
            rng.uniform(1.5, 6.0),
            leave=set(range(leave_start, leave_start + rng.randint(0, 5))),
        )
        if not uses and rng.random() < 0.03:
            person.adopts_on = rng.randrange(days)
        people.append(person)
    groups = {p.name: p.role for p in people}
    departing = [p.name for p in people if rng.random() < 0.01]  # benign leavers
    warm = min(21, days // 2)
    staff = [p for p in people if p.role != "it-admin" and p.name not in departing]
    never = [p for p in staff if not p.usb_daily and p.adopts_on < 0]
    habit = [p for p in staff if p.usb_daily >= 0.2]
    for person in rng.sample(never, min(len(never), (insiders + 1) // 2)):
        person.insider, person.acts_from = "after_hours", rng.randrange(warm, days - 1)
    for person in rng.sample(habit, min(len(habit), insiders // 2)):
        person.insider, person.acts_from = "departing", rng.randrange(max(warm, days - 14), days - 1)
        departing.append(person.name)
    return Fleet(people, days, sorted(departing), groups, seed)


def _working(day: int) -> bool:
    date = (START + dt.timedelta(days=day)).date()
    return date.weekday() < 5 and date not in HOLIDAYS


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"ev-{self.n:010d}"


def _ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def events(fleet: Fleet) -> Iterator[list[dict[str, Any]]]:
    """Each day's events of the whole fleet, sorted by time (one list per day)."""
    rng = random.Random(fleet.seed * 7919 + 1)
    ids = _Ids()
    for day in range(fleet.days):
        base = (START + dt.timedelta(days=day)).timestamp()
        out: list[tuple[float, dict[str, Any]]] = []
        for person in fleet.people:
            acting = person.insider and day >= person.acts_from
            at_work = _working(day) and day not in person.leave
            if at_work or (acting and person.insider == "after_hours"):
                _workday(person, day, base=base, rng=rng, ids=ids, out=out, acting=acting)
        out.sort(key=lambda pair: pair[0])
        yield [event for _, event in out]


def _event(ids: _Ids, at: float, action: str, person: Person, host: str, **extra: Any) -> dict[str, Any]:
    event = {
        "@timestamp": _ts(at),
        "event.id": ids.next(),
        "event.action": action,
        "agent.id": f"agent-{host}",
        "host.name": host,
        "user.name": person.name,
    }
    event.update(extra)
    return event


def _workday(
    person: Person,
    day: int,
    *,
    base: float,
    rng: random.Random,
    ids: _Ids,
    out: list[tuple[float, dict[str, Any]]],
    acting: bool | str,
) -> None:
    host = person.hosts[0] if person.role != "it-admin" else rng.choice(person.hosts)
    start = base + person.start_hour * 3600 + rng.uniform(0, 3000)
    end = base + person.end_hour * 3600 - rng.uniform(0, 3000)
    weekend = not _working(day)
    if not weekend:
        for at in (start, (start + end) / 2 + rng.uniform(-3600, 3600), end):
            path = f"/srv/share/{person.role}/doc-{rng.randrange(500)}.odt"
            out.append(
                (at, _event(ids, at, "file.open", person, host, **{"file.path": path, "tags": ["documents"]}))
            )
    daily = person.usb_daily or (0.3 if 0 <= person.adopts_on <= day else 0.0)
    sessions = 0
    if rng.random() < daily:  # a USB day: a few connects (IT admins: many, on several PCs)
        sessions = rng.randint(3, 12) if person.role == "it-admin" else 1 + int(rng.expovariate(1 / 1.5))
    for _ in range(sessions):
        at = rng.uniform(start, max(start + 60, end - 600))
        stick = rng.choice(person.sticks) if rng.random() > 0.03 else f"BORROWED-{rng.randrange(10**6):06d}"
        files = max(1, int(rng.expovariate(1 / person.files_mean)))
        where = rng.choice(person.hosts) if person.role == "it-admin" else host
        _session(person, where, at, stick, _Writes(files, 1.0), rng=rng, ids=ids, out=out)
    if acting and person.insider == "after_hours":
        at = base + rng.uniform(22, 25.5) * 3600  # 22:00 to 01:30
        _mark(person, at)
        _session(
            person, host, at, f"{person.name}-X", _Writes(rng.randint(5, 30), 4.0), rng=rng, ids=ids, out=out
        )
    elif acting and person.insider == "departing" and not weekend:
        at = rng.uniform(start, max(start + 60, end - 1800))
        _mark(person, at)
        files = int(max(person.files_mean, 2.0) * rng.uniform(10, 20))
        _session(person, host, at, person.sticks[0], _Writes(files, 3.0), rng=rng, ids=ids, out=out)


def _mark(person: Person, at: float) -> None:
    if not person.first_act:
        person.first_act = at


@dataclass
class _Writes:
    files: int
    size_factor: float  # times the usual file size


def _session(
    person: Person,
    host: str,
    at: float,
    serial: str,
    writes: _Writes,
    *,
    rng: random.Random,
    ids: _Ids,
    out: list[tuple[float, dict[str, Any]]],
) -> None:
    vid, pid, vendor, model = VENDORS[zlib.crc32(serial.encode()) % len(VENDORS)]
    device = {
        "device.serial": serial,
        "device.vendor_id": vid,
        "device.product_id": pid,
        "device.vendor": vendor,
        "device.model": model,
        "device.bus": "usb",
        "device.removable": True,
        "device.size": 32_000_000_000,
    }
    mount = f"/media/{person.name}/STICK"
    out.append((at, _event(ids, at, "device.attach", person, host, **device, **{"device.type": "disk"})))
    out.append(
        (
            at + 2,
            _event(ids, at + 2, "device.mount", person, host, **device, **{"exfilguard.mount.point": mount}),
        )
    )
    moment = at + 5
    for _ in range(writes.files):
        moment += rng.uniform(1, 20)
        size = int(rng.lognormvariate(14.5, 1.2) * writes.size_factor)  # median ~2 MB
        path = f"{mount}/file-{rng.randrange(10**6)}.dat"
        out.append(
            (
                moment,
                _event(
                    ids,
                    moment,
                    "file.write",
                    person,
                    host,
                    **device,
                    **{"file.path": path, "file.size": size},
                ),
            )
        )
    moment += 10
    out.append(
        (moment, _event(ids, moment, "device.detach", person, host, **device, **{"device.type": "disk"}))
    )
