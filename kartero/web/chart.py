"""The dashboard's activity chart: hourly counts of received, delivered, deferred and bounced messages,
drawn on the server as SVG.

SVG made here needs no JavaScript library and passes the strict CSP (`style-src 'self'`): the drawing
uses presentation attributes and classes from kartero.css, never `style=`. Every number is formatted
from an int and every label from the clock, so nothing a client sent reaches the markup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

SERIES = ("received", "delivered", "deferred", "bounced")
MAX_BUCKETS = 24 * 31  # a month of hours: a provider that returns more is cut to the latest ones

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # room for the axis labels


@dataclass(frozen=True, slots=True)
class Bucket:
    """Messages counted in the hour that starts at `start` (unix time)."""

    start: int
    received: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0

    def __post_init__(self) -> None:
        if min(self.received, self.delivered, self.deferred, self.bounced) < 0:
            raise ValueError("a bucket's counts are never negative")


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least `value` (the y axis' top)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def totals(buckets: Sequence[Bucket]) -> dict[str, int]:
    return {name: sum(getattr(b, name) for b in buckets) for name in SERIES}


def activity_svg(buckets: Sequence[Bucket]) -> str:
    """The chart of `buckets` (oldest first) as an `<svg>` element: one polyline per series over a
    y axis from 0 to a round maximum, hour labels every 6 buckets (UTC)."""
    buckets = sorted(buckets, key=lambda b: b.start)[-MAX_BUCKETS:]
    top = nice_ceiling(max((getattr(b, name) for b in buckets for name in SERIES), default=0) or 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(buckets) - 1)

    def x(i: int) -> str:
        return f"{LEFT + i * step:.1f}"

    def y(value: int) -> str:
        return f"{TOP + plot_h - value * plot_h / top:.1f}"

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">',
             '<title id="chart-title">Messages per hour</title>']  # fmt: skip
    for fraction in (0, 0.5, 1):
        value = int(top * fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value)}" y2="{y(value)}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y(value)}" text-anchor="end" '
                     f'dominant-baseline="middle">{value}</text>')  # fmt: skip
    for i, bucket in enumerate(buckets):
        if i % 6 == 0:
            label = time.strftime("%H:%M", time.gmtime(bucket.start))
            anchor = "start" if i == 0 else "middle"  # the first clears the y axis' labels
            parts.append(f'<text class="axis" x="{x(i)}" y="{HEIGHT - 6}" text-anchor="{anchor}">{label}</text>')
    for name in SERIES:
        points = " ".join(f"{x(i)},{y(getattr(b, name))}" for i, b in enumerate(buckets))
        parts.append(f'<polyline class="series {name}" fill="none" points="{points}"><title>{name}</title></polyline>')
    parts.append("</svg>")
    return "".join(parts)
