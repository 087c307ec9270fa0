#!/usr/bin/env python3
"""Draws the soak's chart (scripts/soak.sh) as SVG, with no library: RSS of
each replica, open descriptors and PostgreSQL sessions over time, the
faults as marks, and p50/p99 per minute. soak.sh renders it to PNG with
headless Chromium (already the console tests' browser), so the chart adds
nothing to the build.

    soak-chart.py SAMPLES.csv MINUTES.csv EVENTS.csv OUT.svg
"""

import csv
import sys

W, H = 1200, 900
LEFT, RIGHT = 80, 30


def rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def panel(out, top, height, title, xs_max, series, y_label, marks=()):
    """series: [(label, colour, [(x, y), ...])]"""
    y_max = max([y for _, _, pts in series for _, y in pts] + [1.0]) * 1.1
    plot_w = W - LEFT - RIGHT
    sx = lambda x: LEFT + plot_w * x / max(xs_max, 1)
    sy = lambda y: top + height - height * y / y_max
    out.append(f'<text x="{LEFT}" y="{top - 10}" font-size="16" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{height}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = y_max * i / 4
        y = sy(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:.0f}</text>')
    out.append(f'<text x="15" y="{top + height / 2}" font-size="12" transform="rotate(-90 15 {top + height / 2})" text-anchor="middle">{y_label}</text>')
    for x, label in marks:
        out.append(f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + height}" stroke="#f4a" stroke-dasharray="3,3"/>')
        out.append(f'<text x="{sx(x) + 2:.1f}" y="{top + 12}" font-size="9" fill="#c28" transform="rotate(90 {sx(x) + 2:.1f} {top + 12})">{label}</text>')
    for n, (label, colour, pts) in enumerate(series):
        if pts:
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<rect x="{W - RIGHT - 220}" y="{top + 8 + n * 16}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{W - RIGHT - 205}" y="{top + 17 + n * 16}" font-size="12">{label}</text>')


def main():
    samples, minutes, events, svg = sys.argv[1:5]
    s = rows(samples)[1:]
    t = [float(r[0]) for r in s]
    t_max = max(t + [1.0])
    num = lambda v: float(v) if v not in ("", None) else 0.0
    marks = [(float(r[0]), r[1].split(":")[0]) for r in rows(events)[1:]
             if not r[1].endswith(("started", "up", "off"))]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    panel(out, 50, 230, "RSS of each replica (MiB); faults marked", t_max, [
        ("replica a", "#1f77b4", [(x, num(r[1]) / 1024) for x, r in zip(t, s)]),
        ("replica b", "#ff7f0e", [(x, num(r[2]) / 1024) for x, r in zip(t, s)]),
    ], "MiB", marks)
    panel(out, 340, 230, "open descriptors of each replica, PostgreSQL sessions", t_max, [
        ("fds a", "#1f77b4", [(x, num(r[3])) for x, r in zip(t, s)]),
        ("fds b", "#ff7f0e", [(x, num(r[4])) for x, r in zip(t, s)]),
        ("pg sessions", "#2ca02c", [(x, num(r[5])) for x, r in zip(t, s)]),
    ], "count", marks)
    m = rows(minutes)
    panel(out, 630, 230, "push received -> reply sent per minute (ms)", max(len(m) - 1, 1), [
        ("p50", "#1f77b4", [(i, num(r[2])) for i, r in enumerate(m)]),
        ("p99", "#d62728", [(i, num(r[3])) for i, r in enumerate(m)]),
    ], "ms")
    out.append(f'<text x="{LEFT}" y="{H - 10}" font-size="11">x: seconds since start (top two), minutes (bottom)</text>')
    out.append("</svg>")
    with open(svg, "w") as f:
        f.write("\n".join(out))


if __name__ == "__main__":
    main()
