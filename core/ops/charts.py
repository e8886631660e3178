"""Inline SVG bar charts rendered on the server: no JavaScript, no CDN, readable offline and in a
screenshot. Hand-written because the pages need one chart shape (stacked bars per night) and the
small libraries that draw it (pygal, leather) bring a styling system and a dependency for ~80 lines.
"""

from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 720
HEIGHT = 170
PAD_LEFT = 56
PAD_RIGHT = 8
PAD_TOP = 10
PAD_BOTTOM = 22


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: list[float]
    css: str  # the class that colours it (see core/static/ops/ops.css)


def _fmt(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "s":
        return f"{value:,.0f} s" if value >= 10 else f"{value:.1f} s"
    if abs(value) >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def svg_bar_chart(*, title: str, labels: list[str], series: list[Series], unit: str = "") -> SafeString:
    """Stacked bars, one per label (a night), with a legend and a <title> tooltip per bar segment."""
    n = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(n)]
    top = max(totals, default=0) or 1
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    base = PAD_TOP + plot_h
    slot = plot_w / max(n, 1)
    bar_w = max(slot * 0.75, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - PAD_RIGHT}" y2="{base}"/>',
        f'<line class="grid" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{WIDTH - PAD_RIGHT}" y2="{PAD_TOP}"/>',
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + 4}" text-anchor="end">{escape(_fmt(top, unit))}</text>',
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, label in enumerate(labels):
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        y = PAD_TOP + plot_h
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(
                f'<rect class="{escape(s.css)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)} {escape(s.name)}: {escape(_fmt(value, unit))}</title></rect>"
            )
    if labels:
        step = max(1, n // 6)
        for i in range(0, n, step):
            x = PAD_LEFT + i * slot + slot / 2
            parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                         f"{escape(labels[i])}</text>")
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch {escape(s.css)}"></span>{escape(s.name)}</span>' for s in series
    )
    return mark_safe(f'<figure class="chart-box"><figcaption>{escape(title)} {legend}</figcaption>'
                     f'{"".join(parts)}</figure>')
