import re

import pytest

from core.ops.charts import Series, svg_bar_chart


def _rects(svg: str) -> list[tuple[str, float, float]]:
    return [(css, float(y), float(h)) for css, y, h in
            re.findall(r'<rect class="(\w+)" x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)]


def test_bars_are_stacked_and_proportional_to_their_values():
    svg = svg_bar_chart(title="t", labels=["a", "b", "c"],
                        series=[Series("stored", [10, 0, 30], "s0"), Series("failed", [10, 5, 0], "s1")])
    rects = _rects(svg)
    assert [css for css, _, _ in rects] == ["s0", "s1", "s1", "s0"]  # zero values draw nothing
    heights = [h for _, _, h in rects]
    assert heights[0] == pytest.approx(heights[1], abs=0.1) == pytest.approx(heights[3] / 3, abs=0.1)
    assert heights[2] == pytest.approx(heights[0] / 2, abs=0.1)
    (_, y_stored, _), (_, y_failed, h_failed) = rects[0], rects[1]
    assert abs(y_failed + h_failed - y_stored) < 0.11  # failed sits on top of stored


def test_labels_and_names_are_escaped():
    svg = svg_bar_chart(title="<b>x</b>", labels=["<script>"], series=[Series("a&b", [1], "s0")])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in svg and "a&amp;b" in svg


def test_an_empty_chart_still_renders():
    svg = svg_bar_chart(title="none", labels=[], series=[Series("x", [], "s0")])
    assert svg.count("<svg") == 1 and "<rect" not in svg
