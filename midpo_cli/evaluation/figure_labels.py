"""Point labels that never overlap: a greedy placer for matplotlib annotations (no adjustText dependency).

Labels are placed most important first. Each tries offsets around its point, ring by ring (8 directions, growing
radius), and keeps the first whose box is inside the axes and clear of every label placed so far and of every
marker (`Obstacle`s: the points' own marker boxes). Beyond the first ring a thin leader line joins label and point.
A label with no free spot is dropped: every element is in the legend anyway, so a crowded figure loses text, never
legibility. Call it after the figure's layout is final (the boxes are measured in display pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.text import Text

RINGS = (4.0, 10.0, 18.0, 28.0, 40.0, 56.0, 76.0)  # offsets from the marker's edge, in points
NEAR = 3  # labels below KEY priority try only the first NEAR rings: a far-off grid label would mislead
KEY = 5
DIRECTIONS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
PAD = 1.5  # pixels kept free around each label box


@dataclass
class Label:
    """One label: data point, text, importance (higher first), marker size (points, diameter), text style."""

    x: float
    y: float
    text: str
    priority: int = 0
    marker: float = 8.0
    style: dict[str, Any] = field(default_factory=dict)


def _box(extent) -> tuple[float, float, float, float]:
    return extent.x0 - PAD, extent.y0 - PAD, extent.x1 + PAD, extent.y1 + PAD


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def marker_boxes(ax, labels: Sequence[Label], extra: Sequence[tuple[float, float, float]] = ()) -> list:
    """Display-pixel boxes of the markers at the labels' points and at `extra` (x, y, diameter in points)."""
    scale = ax.figure.dpi / 72
    out = []
    for x, y, size in [(lab.x, lab.y, lab.marker) for lab in labels] + list(extra):
        px, py = ax.transData.transform((x, y))
        r = size / 2 * scale
        out.append((px - r, py - r, px + r, py + r))
    return out


def place(ax, labels: Sequence[Label], obstacles: Sequence[Sequence[float]] = ()) -> list:
    """Annotate `ax` with the labels that fit (see the module docstring); returns the placed Annotations."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [tuple(o) for o in obstacles]
    placed = []
    for lab in sorted(labels, key=lambda item: -item.priority):
        mine = marker_boxes(ax, [lab])[0]
        blockers = [b for b in taken if b != mine]  # its own marker is where the label points
        text = _first_fit(ax, lab, renderer, frame, blockers)
        if text is not None:
            taken.append(_box(Text.get_window_extent(text, renderer)))
            placed.append(text)
    return placed


def _first_fit(ax, lab: Label, renderer, frame, blockers: Sequence[Sequence[float]]):
    for ring, gap in enumerate(RINGS if lab.priority >= KEY else RINGS[:NEAR]):
        radius = lab.marker / 2 + gap
        for dx, dy in DIRECTIONS:
            norm = (dx * dx + dy * dy) ** 0.5
            offset = (radius * dx / norm, radius * dy / norm)
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            arrow = {"arrowprops": {"arrowstyle": "-", "lw": 0.6, "color": "0.45", "shrinkA": 0, "shrinkB": 2}} \
                if ring >= 2 else {}
            text = ax.annotate(lab.text, (lab.x, lab.y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                               annotation_clip=False, **arrow, **lab.style)
            text.update_positions(renderer)
            box = _box(Text.get_window_extent(text, renderer))  # the words; a leader may cross a marker
            inside = box[0] >= frame.x0 and box[2] <= frame.x1 and box[1] >= frame.y0 and box[3] <= frame.y1
            if inside and not any(_overlap(box, b) for b in blockers):
                return text
            text.remove()
    return None
