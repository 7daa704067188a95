"""Geometry over candidate GT/detection pairs: the pairs, their intersection areas, and
PCC containment."""

from __future__ import annotations

import numpy as np

from ._polygons import _owners, _Polys, _shift


def _candidate_pairs(gb: np.ndarray, db: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, d) pairs whose closed boxes (rows x0, y0, x1, y1) overlap, sorted by g then d.

    A sweep over detections sorted by top edge: each GT only looks at detections whose top
    lies in [GT top - tallest detection, GT bottom].
    """
    order = np.argsort(db[1], kind="stable")
    top = db[1, order]
    tallest = float((db[3] - db[1]).max())
    lo = np.searchsorted(top, gb[1] - tallest, side="left")
    counts = np.maximum(np.searchsorted(top, gb[3], side="right") - lo, 0)
    g, rank = _owners(counts)
    d = order[lo[g] + rank]
    keep = (db[0, d] <= gb[2, g]) & (db[2, d] >= gb[0, g]) & (db[1, d] <= gb[3, g]) & (db[3, d] >= gb[1, g])
    g, d = g[keep], d[keep]
    order = np.lexsort((d, g))
    return g[order], d[order]


def _convex_pair_areas(A: np.ndarray, oA: np.ndarray, B: np.ndarray, oB: np.ndarray) -> np.ndarray:
    """Intersection areas of pairs of strictly convex polygons ((2, K, P) rings, +-1 orientations).

    Green's theorem: the boundary of A & B is the part of A's edges inside B plus the part
    of B's edges inside A; each edge is clipped to the other polygon's half-planes
    (Cyrus-Beck). An edge lying on an edge of the other polygon counts once (from A) when
    both run the same way and not at all when they run opposite ways (the polygons only
    touch there). Integer inputs make every side test exact.
    """
    P = A.shape[2]
    K = max(A.shape[1], B.shape[1])

    def pad(R):
        return R if R.shape[1] == K else np.concatenate([R, np.repeat(R[:, -1:], K - R.shape[1], axis=1)], 1)

    A, B = pad(A), pad(B)
    origin = A[:, :1]  # local coordinates: exact for integers, better conditioned
    S = np.concatenate([A - origin, B - origin], axis=2)  # edges to clip ...
    C = np.concatenate([S[:, :, P:], S[:, :, :P]], axis=2)  # ... against this polygon
    oS, oC = np.concatenate([oA, oB]), np.concatenate([oB, oA])
    keep_shared = np.arange(2 * P) < P
    nx = _shift(K, 1)
    sx, sy = S
    cx, cy = C
    dx, dy = sx[nx] - sx, sy[nx] - sy
    ex, ey = cx[nx] - cx, cy[nx] - cy
    live = (ex != 0) | (ey != 0)
    # side of vertex i of S to edge j of C, >= 0 inside: (Ks, Kc, 2P)
    sp = (ex * sy[:, None] - ey * sx[:, None] - (ex * cy - ey * cx)) * oC
    sq = sp[nx]  # an edge ends at the next vertex
    on_line = (sp == 0) & (sq == 0) & live
    same = (dx[:, None] * ex + dy[:, None] * ey) * (oS * oC) > 0
    out = (on_line & ~(same & keep_shared)) | ((sp < 0) & (sq < 0) & live)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = sp / (sp - sq)
    t0 = np.where((sp < 0) & (sq >= 0) & live, t, 0.0).max(1)
    t1 = np.where((sp >= 0) & (sq < 0) & live, t, 1.0).min(1)
    span = np.where(~out.any(1) & (t1 > t0), t1 - t0, 0.0)
    part = 0.5 * oS * (span * (sx * dy - sy * dx)).sum(0)
    return np.maximum(part[:P] + part[P:], 0.0)


def _shapely_pair_areas(G: _Polys, D: _Polys, g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Intersection areas for pairs with a non-convex polygon; self-intersecting rings are
    made valid first (even-odd, as the clipper fills them)."""
    import shapely

    def geoms(P: _Polys, idx: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(idx, return_inverse=True)
        polys = np.array([shapely.Polygon(P.ints[:, : P.k[i], i].T) for i in uniq], dtype=object)
        bad = ~shapely.is_valid(polys)
        if bad.any():
            polys[bad] = shapely.make_valid(polys[bad])
        return polys[inv]

    return shapely.area(shapely.intersection(geoms(G, g), geoms(D, d)))


def _points_inside(px: np.ndarray, py: np.ndarray, rings: np.ndarray) -> np.ndarray:
    """Polygon3's isInside for point t in ring t ((2, K, T)): even-odd crossings; edge
    (v[i], v[i-1]) counts when v[i].y <= y < v[i-1].y (or the reverse) and x < its x at y."""
    xi, yi = rings
    pv = _shift(xi.shape[0], -1)
    xj, yj = xi[pv], yi[pv]
    spans = ((yi <= py) & (py < yj)) | ((yj <= py) & (py < yi))
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = (xj - xi) * (py - yi) / (yj - yi) + xi
    return ((spans & (px < x_cross)).sum(0) & 1).astype(bool)
