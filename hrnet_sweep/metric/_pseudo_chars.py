"""Pseudo characters: the count of each box (both conventions) and where their centres lie."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._polygons import Convention, _convex_orientation, _edges, _Options, _owners, _pack, _Polys

_EPS32 = float(np.finfo(np.float32).eps)  # the competition's epsilon, as a float64
_AR_CLAMP = 100.0  # the competition clamps h/w at 100 before counting
_TIE_RTOL = 1e-6  # hull edges whose rectangle areas are this close count as tied


def _competition_counts(w, h, cap: int, *, fp: bool):
    """The competition's character count from its min-area-rectangle sides (w along the edge)."""
    ar = np.minimum(_AR_CLAMP, h / (w + _EPS32))
    value = 1.0 / (_EPS32 + ar) if fp else np.maximum(ar, 1.0 / (ar + _EPS32))
    return np.minimum(np.rint(0.5 + value), cap).astype(np.int64)


def _min_area_rect_sides(points: np.ndarray) -> tuple[float, float]:
    """Sides of the minimum-area rectangle exactly as the competition finds them.

    `points` is float32. Hull edges in qhull's (scipy) order, the first edge with a
    strictly smaller rectangle wins; returns (side along that edge, side across it), or
    (0, 0) when qhull fails. Edges often tie exactly (whenever the same three vertices
    bound both rectangles), so float rounding picks the winner: the arithmetic follows the
    competition's code under NumPy 1.x promotion (edge length in float32, the rest in
    float64, projections with np.dot).
    """
    from scipy.spatial import ConvexHull

    try:
        order = ConvexHull(points).vertices
    except Exception:  # flat or too few distinct points: the competition returns zeros
        return 0.0, 0.0
    hull = [points[i] for i in order]
    hull.append(hull[0])
    hull64 = [p.astype(np.float64) for p in hull]
    best = None
    for p0, p1 in zip(hull, hull[1:]):
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]  # float32; ** 2 rounds unlike dx * dx
        norm = math.sqrt(dx**2 + dy**2)
        u = np.array([float(dx) / norm, float(dy) / norm])
        o = np.array([-u[1], u[0]])
        along = [np.dot(u, p) for p in hull64]
        across = [np.dot(o, p) for p in hull64]
        w, h = max(along) - min(along), max(across) - min(across)
        if best is None or w * h < best[0]:
            best = (w * h, w, h)
    return float(best[1]), float(best[2])


def _competition_ratio_counts(polys: _Polys, cap: int, *, fp: bool) -> np.ndarray:
    """Character counts from the minimum-area rectangle, vectorised for convex polygons.

    Points are taken as float32 first (the competition casts them). Where hull edges tie
    (within 1e-6) and the tied rectangles give different counts, the exact procedure
    (`_min_area_rect_sides`) decides.
    """
    pts = polys.raw.astype(np.float32).astype(np.float64)
    counts = np.full(polys.n, -1, dtype=np.int64)
    fast = np.flatnonzero(_convex_orientation(pts, polys.k) != 0)
    if len(fast):
        p = pts[:, :, fast]
        e, real = _edges(p, polys.k[fast])  # hull edges (convex: all of them)
        norm = np.sqrt(e[0] * e[0] + e[1] * e[1])
        ux, uy = e[0] / norm, e[1] / norm  # (E, f)
        along = ux[:, None] * p[0][None] + uy[:, None] * p[1][None]  # (E, V, f)
        across = ux[:, None] * p[1][None] - uy[:, None] * p[0][None]
        w = along.max(1) - along.min(1)
        h = across.max(1) - across.min(1)
        area = np.where(real, w * h, np.inf)
        tied = real & (area <= area.min(0) * (1 + _TIE_RTOL))
        c = np.where(tied, _competition_counts(np.where(tied, w, 1.0), np.where(tied, h, 1.0), cap, fp=fp), -1)
        cmax = c.max(0)
        agree = ((c == cmax) | ~tied).all(0)
        counts[fast[agree]] = cmax[agree]
    for i in np.flatnonzero(counts < 0):
        w, h = _min_area_rect_sides(pts[:, : polys.k[i], i].T.astype(np.float32))
        counts[i] = _competition_counts(np.float64(w), np.float64(h), cap, fp=fp)
    return counts


def _quad_aspect_ratio(raw: np.ndarray) -> np.ndarray:
    """The cleval package's QUAD aspect ratio: mean horizontal over mean vertical side."""
    x, y = raw

    def dist(a: int, b: int) -> np.ndarray:
        dx, dy = np.abs(x[a] - x[b]), np.abs(y[a] - y[b])
        return np.sqrt(dx * dx + dy * dy)

    return ((dist(0, 1) + dist(2, 3)) / 2 + 1e-5) / ((dist(1, 2) + dist(3, 0)) / 2 + 1e-5)


def _gt_counts(polys: _Polys, opts: _Options) -> np.ndarray:
    if polys.n == 0:
        return np.zeros(0, dtype=np.int64)
    if opts.convention == "cleval":
        ar = _quad_aspect_ratio(polys.raw)
        return np.minimum(np.rint(0.5 + np.maximum(ar, 1.0 / ar)), opts.cap).astype(np.int64)
    return _competition_ratio_counts(polys, opts.cap, fp=False)


def _fp_counts(polys: _Polys, opts: _Options) -> np.ndarray:
    if polys.n == 0:
        return np.zeros(0, dtype=np.int64)
    if opts.convention == "cleval":
        ar = _quad_aspect_ratio(polys.raw)
        return np.minimum(np.rint(0.5 + 1.0 / (1e-5 + ar)), opts.cap).astype(np.int64)
    return _competition_ratio_counts(polys, opts.cap, fp=True)


def pseudo_char_counts(
    polygons: Sequence[np.ndarray], *, cap: int = 100, convention: Convention = "competition"
) -> np.ndarray:
    """Pseudo character count of each polygon as a GT box (points used as given, not rounded)."""
    opts = _Options.make(pseudo_char_cap=cap, convention=convention)
    polys = _pack(polygons, convention=convention)
    if polys.n != len(polygons):
        raise ValueError("every polygon needs 4 or more finite points")
    return _gt_counts(polys, opts)


def _pcc_cleval(raw: np.ndarray, lengths: np.ndarray, thresh: float) -> np.ndarray:
    """PCCs of the package's QUAD, (2, T): evenly along the mid-line from left to right side;
    a box with aspect ratio below `thresh` is read rotated by one corner."""
    upright = _quad_aspect_ratio(raw) >= thresh
    idx = np.where(upright, np.array([[0], [1], [2], [3]]), np.array([[3], [0], [1], [2]]))
    c = raw[:, idx, np.arange(raw.shape[2])]  # corners lt, rt, rb, lb
    start = (c[:, 0] + c[:, 3]) / 2
    end = (c[:, 1] + c[:, 2]) / 2
    owner, i = _owners(lengths)
    unit = (end - start)[:, owner] / lengths[owner]
    return start[:, owner] + unit / 2 + unit * i


def _pcc_competition(raw: np.ndarray, k: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """PCCs of the competition's POLY, (2, T), for integer points.

    Top line = the first half of the points, bottom line = the rest reversed; each section
    of a line is cut into `length` steps whose inner points are truncated to integers, and
    character c averages the points c and c + 1 (in units of whole sections) of both lines.
    With integer points every sum is exact, so the summation order does not matter.
    """
    out = np.empty((2, int(lengths.sum())))
    start = np.cumsum(lengths) - lengths
    for kk in np.unique(k):
        rows = np.flatnonzero(k == kk)
        half, sections = kk // 2, kk // 2 - 1
        L = lengths[rows]
        owner, j = _owners(L + 1)  # line points j * sections, j = 0 .. L
        Lw = L[owner]
        m = j * sections
        s = np.minimum(m // Lw, sections - 1)
        step = (m - s * Lw)[None]
        end = m == sections * Lw

        def line(pts: np.ndarray) -> np.ndarray:  # pts (2, points of the line, rows)
            a, b = pts[:, s, rows[owner]], pts[:, s + 1, rows[owner]]
            return np.where(end, pts[:, -1, rows[owner]], np.trunc(a + (b - a) / Lw * step))

        both = line(raw[:, :half]) + line(raw[:, half:kk][:, ::-1])
        c = _owners(L)[1]
        first = np.repeat(np.cumsum(L + 1) - (L + 1), L) + c  # line point c of each character
        out[:, np.repeat(start[rows], L) + c] = (both[:, first] + both[:, first + 1]) / 4
    return out
