"""The dashboard's activity chart (issue 14): SVG drawn on the server from hourly buckets."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from kartero.web.chart import Bucket, activity_svg, nice_ceiling, totals

SVG = "{http://www.w3.org/2000/svg}"
HOUR = 3600
START = 1_795_000_000 - 1_795_000_000 % 86400  # a midnight UTC


def _points(svg: str, series: str) -> list[tuple[float, float]]:
    root = ET.fromstring(svg)
    line = next(p for p in root.iter(f"{SVG}polyline") if p.get("class") == f"series {series}")
    return [(float(a), float(b)) for a, b in (pair.split(",") for pair in (line.get("points") or "").split())]


def test_each_series_is_a_polyline_scaled_to_a_round_maximum() -> None:
    buckets = [Bucket(START + i * HOUR, received=i, delivered=i // 2, deferred=1 if i == 3 else 0,
                      bounced=0) for i in range(24)]  # fmt: skip
    svg = activity_svg(buckets)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.get("viewBox") == "0 0 720 220"
    received = _points(svg, "received")
    assert len(received) == 24
    # x: from the left margin (44) to the right edge (720 - 8), evenly; y: 0 at the bottom (220 - 24),
    # the top (10) is 50 (23 received rounded up to 1, 2, 5 x 10^n).
    assert received[0] == (44.0, 196.0)
    assert received[-1] == (712.0, pytest.approx(196 - 23 * 186 / 50, abs=0.05))
    assert _points(svg, "deferred")[3][1] == pytest.approx(196 - 186 / 50, abs=0.05)
    assert all(y == 196.0 for _, y in _points(svg, "bounced"))
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert labels == ["0", "25", "50", "00:00", "06:00", "12:00", "18:00"]
    assert "style=" not in svg  # the CSP allows no inline styles


def test_buckets_are_drawn_oldest_first_whatever_the_order_given() -> None:
    buckets = [Bucket(START + HOUR, received=2), Bucket(START, received=1)]
    assert [y for _, y in _points(activity_svg(buckets), "received")] == [pytest.approx(196 - 186 / 2), 10.0]


def test_no_activity_still_draws_axes() -> None:
    svg = activity_svg([])
    ET.fromstring(svg)
    assert re.search(r'<polyline class="series received" fill="none" points="">', svg)


def test_counts_are_never_negative_and_totals_add_up() -> None:
    with pytest.raises(ValueError):
        Bucket(START, received=-1)
    assert totals([Bucket(START, 1, 2, 3, 4), Bucket(START + HOUR, 1, 1, 1, 1)]) == {
        "received": 2, "delivered": 3, "deferred": 4, "bounced": 5}  # fmt: skip
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 51, 999)] == [1, 1, 5, 10, 10, 20, 100, 1000]
