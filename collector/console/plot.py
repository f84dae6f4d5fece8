"""The per-day plot of a timeline: bytes (bars) and files (dots) written to removable media, and
the alerts of each day (red marks), as an SVG drawn on the server (no script, prints as it is)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from xml.sax.saxutils import escape

from collector.console.queries import Day
from common.units import human_bytes

WIDTH, HEIGHT = 900, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 50, 20, 40
MAX_DAYS = 400


def _days(since: str, until: str) -> list[str]:
    start = dt.date.fromisoformat(since[:10])
    end = dt.date.fromisoformat(until[:10])
    count = min((end - start).days + 1, MAX_DAYS)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(max(count, 1))]


def svg(days: Sequence[Day], alert_days: Sequence[str], since: str, until: str) -> str:
    """The plot from `since` to `until` (ECS times; days in UTC)."""
    axis = _days(since, until)
    by_day = {d.day: d for d in days}
    alerts: dict[str, int] = {}
    for day in alert_days:
        alerts[day] = alerts.get(day, 0) + 1
    top_bytes = max((d.bytes for d in days), default=0) or 1
    top_files = max((d.files for d in days), default=0) or 1
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    step = plot_w / len(axis)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="plot" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="bytes and files written to removable media per day">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" stroke="#444"/>',
        f'<text x="4" y="{_TOP + 10}" font-size="11">{escape(human_bytes(top_bytes))}</text>',
        f'<text x="{WIDTH - _RIGHT + 4}" y="{_TOP + 10}" font-size="11" fill="#06c">{top_files} files</text>',
    ]
    label_every = max(1, len(axis) // 10)
    for i, day in enumerate(axis):
        x = _LEFT + i * step
        d = by_day.get(day)
        if d is not None and d.bytes:
            h = plot_h * d.bytes / top_bytes
            title = f"{day}: {escape(human_bytes(d.bytes))} in {d.files} files"
            parts.append(
                f'<rect class="bytes" x="{x + step * 0.1:.1f}" y="{_TOP + plot_h - h:.1f}" '
                f'width="{step * 0.8:.1f}" height="{h:.1f}" fill="#8aa"><title>{title}</title></rect>'
            )
        if d is not None and d.files:
            y = _TOP + plot_h - plot_h * d.files / top_files
            parts.append(f'<circle class="files" cx="{x + step / 2:.1f}" cy="{y:.1f}" r="3" fill="#06c"/>')
        if day in alerts:
            parts.append(
                f'<path class="alert" d="M{x + step / 2:.1f} {_TOP - 2} l-5 -9 h10 z" fill="#c00">'
                f"<title>{day}: {alerts[day]} alert(s)</title></path>"
            )
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 20}" font-size="10">{day[5:]}</text>')
    parts.append("</svg>")
    return "".join(parts)
