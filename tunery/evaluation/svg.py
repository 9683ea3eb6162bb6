"""Small inline SVG charts (grouped bars with intervals, delta bars, line charts) for the HTML report.

Drawn by hand so the report needs no JavaScript and no network; every text is escaped.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac")


def fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def legend(labels: list[str], x: float, y: float) -> str:
    parts = []
    for i, label in enumerate(labels):
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{fmt(x)}" y="{fmt(y + i * 16)}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{fmt(x + 14)}" y="{fmt(y + i * 16 + 9)}" font-size="11">{escape(label)}</text>')
    return "".join(parts)


LABEL_CHARS = 22  # a longer axis label is shortened with an ellipsis; the full text is its tooltip


def short_label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def grouped_bars(groups: list[str], series: list[tuple[str, list[tuple[float, float, float]]]]) -> str:
    """Bars in [0, 1] per group (metric) and series (model), each (mean, low, high) with a whisker.

    Group labels are slanted below the axis (shortened past LABEL_CHARS, full text on hover) so long
    metric names stay readable however many groups there are."""
    if not groups or not series:
        return ""
    label_w = 6 * min(LABEL_CHARS, max(len(g) for g in groups))  # about 6 px a character at font-size 11
    bar_w, gap, height, top = 18, 18, 180, 10
    left = max(36, int(label_w * 0.82))  # cos 35°: the first slanted label reaches this far left
    label_h = int(label_w * 0.58) + 20  # sin 35°: and this far down
    group_w = bar_w * len(series) + gap
    width = left + group_w * len(groups) + 160
    body = [f'<line x1="{left}" y1="{top + height}" x2="{left + group_w * len(groups)}" y2="{top + height}" '
            f'stroke="#333"/>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - tick)
        body.append(f'<line x1="{left}" y1="{fmt(y)}" x2="{left + group_w * len(groups)}" y2="{fmt(y)}" '
                    f'stroke="#ddd"/><text x="{left - 4}" y="{fmt(y + 4)}" font-size="10" '
                    f'text-anchor="end">{tick:g}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * group_w + gap / 2
        for s, (name, values) in enumerate(series):
            mean, low, high = (clamp01(v) for v in values[g])
            x = x0 + s * bar_w
            y = top + height * (1 - mean)
            color = PALETTE[s % len(PALETTE)]
            body.append(f'<rect x="{fmt(x)}" y="{fmt(y)}" width="{bar_w - 3}" height="{fmt(top + height - y)}" '
                        f'fill="{color}"><title>{escape(name)}, {escape(group)}: {values[g][0]:.3f} '
                        f'[{values[g][1]:.3f}, {values[g][2]:.3f}]</title></rect>')
            xc = x + (bar_w - 3) / 2
            body.append(f'<line x1="{fmt(xc)}" y1="{fmt(top + height * (1 - low))}" x2="{fmt(xc)}" '
                        f'y2="{fmt(top + height * (1 - high))}" stroke="#222"/>')
        xl, yl = x0 + bar_w * len(series) / 2, top + height + 12
        body.append(f'<text x="{fmt(xl)}" y="{yl}" font-size="11" text-anchor="end" '
                    f'transform="rotate(-35 {fmt(xl)} {yl})"><title>{escape(group)}</title>'
                    f'{escape(short_label(group))}</text>')
    body.append(legend([name for name, _ in series], left + group_w * len(groups) + 10, top))
    total_h = top + height + label_h
    return (f'<svg role="img" width="{width}" height="{total_h}" '
            f'viewBox="0 0 {width} {total_h}">{"".join(body)}</svg>')


def delta_bars(rows: list[tuple[str, float, float, float]]) -> str:
    """Horizontal delta bars around zero with the bootstrap interval as a whisker."""
    if not rows:
        return ""
    span = max(0.05, *(max(abs(lo), abs(hi), abs(d)) for _, d, lo, hi in rows))
    label_w, half, row_h = 150, 150, 20
    width, height = label_w + 2 * half + 60, row_h * len(rows) + 20
    zero = label_w + half
    body = [f'<line x1="{zero}" y1="0" x2="{zero}" y2="{height - 14}" stroke="#333"/>',
            f'<text x="{label_w}" y="{height - 2}" font-size="10">{-span:+.2f}</text>',
            f'<text x="{zero + half}" y="{height - 2}" font-size="10" text-anchor="end">{span:+.2f}</text>']
    for i, (name, delta, low, high) in enumerate(rows):
        y = i * row_h + 4
        x_d = zero + half * delta / span
        color = "#54a24b" if delta > 0 else "#e45756" if delta < 0 else "#999"
        body.append(f'<text x="{label_w - 6}" y="{y + 11}" font-size="11" text-anchor="end"><title>{escape(name)}'
                    f'</title>{escape(short_label(name))}</text>')
        body.append(f'<rect x="{fmt(min(zero, x_d))}" y="{y}" width="{fmt(abs(x_d - zero))}" height="12" '
                    f'fill="{color}"><title>{escape(name)}: {delta:+.3f} [{low:+.3f}, {high:+.3f}]</title></rect>')
        body.append(f'<line x1="{fmt(zero + half * low / span)}" y1="{y + 6}" x2="{fmt(zero + half * high / span)}" '
                    f'y2="{y + 6}" stroke="#222"/>')
        body.append(f'<text x="{zero + half + 6}" y="{y + 11}" font-size="11">{delta:+.3f}</text>')
    return f'<svg role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(body)}</svg>'


MARKED_POINTS = 40  # a curve with at most this many points shows each one (one point is no line at all)


def line_chart(series: list[tuple[str, list[list[float]], bool]]) -> str:
    """Lines of (x, y) points; the bool marks a dashed series (validation). Short curves mark their points."""
    points = [p for _, pts, _ in series for p in pts]
    if not points:
        return ""
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0
    left, top, w, h = 46, 10, 420, 180
    body = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>',
            f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{y_max:.3g}</text>',
            f'<text x="{left - 4}" y="{top + h}" font-size="10" text-anchor="end">{y_min:.3g}</text>',
            f'<text x="{left}" y="{top + h + 14}" font-size="10">step {x_min:g}</text>',
            f'<text x="{left + w}" y="{top + h + 14}" font-size="10" text-anchor="end">step {x_max:g}</text>']
    for i, (_, pts, dashed) in enumerate(series):
        if not pts:
            continue
        xy = [(left + w * (x - x_min) / x_span, top + h * (1 - (y - y_min) / y_span)) for x, y in pts]
        color = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        body.append(f'<polyline points="{" ".join(f"{fmt(x)},{fmt(y)}" for x, y in xy)}" fill="none" '
                    f'stroke="{color}" stroke-width="1.5"{dash}/>')
        if len(pts) <= MARKED_POINTS:
            body += [f'<circle cx="{fmt(x)}" cy="{fmt(y)}" r="3" fill="{"#fff" if dashed else color}" '
                     f'stroke="{color}"><title>step {p[0]:g}: {p[1]:.4g}</title></circle>'
                     for (x, y), p in zip(xy, pts)]
    body.append(legend([name for name, _, _ in series], left + w + 10, top))
    width = left + w + 200
    return (f'<svg role="img" width="{width}" height="{top + h + 20}" '
            f'viewBox="0 0 {width} {top + h + 20}">{"".join(body)}</svg>')


def clamp01(value: float) -> float:
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))
