"""CLEval detection-only H-Mean, as the receipt competition scores it (DESIGN.md section 5).

CLEval (Baek et al., 2020) scores detection at the character level. Without transcriptions
every ground-truth box gets a *pseudo* character count from its aspect ratio and that many
pseudo character centres (PCCs) spaced along it. A detection matches ground truth when it
holds PCCs and covers enough of itself with the box ("area precision" >= 0.3); splits and
merges are allowed and cost a granularity penalty of 1 per extra box. Per image:

    recall    = max(0, TP - split penalty) / (pseudo characters of all GT boxes)
    precision = max(0, TP - merge penalty) / (PCCs inside matched detections + FP characters)

with TP the number of distinct PCCs inside a matched detection, and an unmatched detection
counting `round(0.5 + 1 / aspect_ratio)` characters. An image with no GT characters has
recall 0, one with no detection characters precision 0, and H-Mean is 0 when both are 0
(so an image with neither GT nor detections scores 0, as in CLEval).

Two conventions, both exact:

* ``"competition"`` (default): the competition's own copy of CLEval (its baseline's
  ``ocr/metrics``), which takes polygons of 4 or more points. GT points are rounded to
  integers first (its dataset does). Each box's aspect ratio comes from its minimum-area
  rectangle, found over the convex hull's edges in qhull's order (the first strict minimum
  wins): ``ar = min(100, h / (w + eps))`` with w along that edge and eps the float32
  epsilon. A GT box has ``min(round(0.5 + max(ar, 1 / (ar + eps))), cap)`` characters, an
  unmatched detection ``min(round(0.5 + 1 / (eps + ar)), cap)`` (so it depends on which
  side the rectangle lies along), ``cap`` = 100. PCCs are interpolated along the top
  (first half of the points) and the reversed bottom line with integer truncation; the
  vertical aspect-ratio threshold is not used. Hull edges tie exactly more often than one
  would think (whenever the same three vertices bound both rectangles); where a tie
  changes a count, the competition's own procedure runs with its arithmetic as NumPy 1.x
  evaluates it (float32 points, float64 projections), since only rounding breaks the tie.
* ``"cleval"``: the ``cleval`` package (PyPI, clovaai) on quadrilaterals:
  ``ar = (mean top/bottom side + 1e-5) / (mean left/right side + 1e-5)`` from the point
  order, ``min(round(0.5 + max(ar, 1 / ar)), cap)`` characters per GT box (the package
  caps at 10: pass ``pseudo_char_cap=10``), ``min(round(0.5 + 1 / (1e-5 + ar)), cap)`` per
  unmatched detection, PCCs evenly on the mid-line, and a box with ``ar`` below the vertical
  threshold is read rotated by one corner. (The package itself has no transcription-free
  mode; this is what it computes when each GT box is given its own pseudo count.)

In both, geometry is done as Polygon3 (the package's clipper) does it: vertices truncated
to integers, area by the shoelace formula, PCC containment by the even-odd crossing rule
with half-open edges. Detections past `max_detections` are dropped before polygons with
fewer than 4 points are skipped, as the competition does.

Speed: candidate GT/detection pairs come from a sorted bounding-box sweep; areas of
convex pairs are computed in NumPy (segment clipping + Green's theorem), other pairs with
shapely; PCC containment is one vectorised crossing test. Everything else is sparse over
the candidate pairs, so the cost grows linearly with the boxes per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from .constants import MAX_DETECTIONS

__all__ = ["EvalResult", "ImageResult", "evaluate", "evaluate_image", "pseudo_char_counts", "main"]

log = logging.getLogger(__name__)

Convention = Literal["competition", "cleval"]
_CONVENTIONS = ("competition", "cleval")
_EPS32 = float(np.finfo(np.float32).eps)  # the competition's epsilon, as a float64
_AR_CLAMP = 100.0  # the competition clamps h/w at 100 before counting
_TIE_RTOL = 1e-6  # hull edges whose rectangle areas are this close count as tied


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageResult:
    """CLEval detection counts and scores of one image."""

    precision: float
    recall: float
    hmean: float
    num_gt: int  # GT polygons scored (4 or more points)
    num_det: int  # detections scored (after the cap, 4 or more points)
    num_char_gt: int  # pseudo characters of all GT boxes (recall denominator)
    num_char_det: int  # PCCs inside matched detections + FP characters (precision denominator)
    num_char_tp: int  # distinct PCCs inside a matched detection
    num_char_fp: int  # characters charged to unmatched detections
    gran_recall: float  # split penalty
    gran_precision: float  # merge penalty
    num_splitted: int
    num_merged: int
    num_char_overlapped: int  # PCCs counted by more than one matched detection

    def to_dict(self) -> dict:
        return asdict(self)


_COUNT_KEYS = ("num_gt", "num_det", "num_char_gt", "num_char_det", "num_char_tp", "num_char_fp",
               "num_splitted", "num_merged", "num_char_overlapped")


@dataclass
class EvalResult:
    """Scores over a set of images.

    `precision`, `recall`, `hmean` are the mean of the per-image values (what the
    competition's validation logs); `micro` holds the scores of the summed counts (CLEval's
    own dataset-level aggregation) and the sums; `per_image` maps image name to
    `ImageResult.to_dict()`. `ignored_images` lists prediction images absent from the
    ground truth: like the competition, scoring ignores them.
    """

    precision: float
    recall: float
    hmean: float
    micro: dict
    per_image: dict[str, dict]
    ignored_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "hmean": self.hmean,
                "micro": self.micro, "per_image": self.per_image}


def _scores(tp: float, gran_r: float, gran_p: float, n_gt: int, n_det: int) -> tuple[float, float, float]:
    recall = 0.0 if n_gt == 0 else max(0.0, tp - gran_r) / n_gt
    precision = 0.0 if n_det == 0 else max(0.0, tp - gran_p) / n_det
    hmean = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return precision, recall, hmean


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    cap: int
    ap_constraint: float
    gran_weight: float
    vertical_thresh: float
    max_detections: int | None
    convention: str

    @classmethod
    def make(cls, *, pseudo_char_cap=100, area_precision_constraint=0.3, granularity_penalty=1.0,
             vertical_aspect_ratio_thresh=0.5, max_detections=MAX_DETECTIONS, convention="competition"):
        if convention not in _CONVENTIONS:
            raise ValueError(f"convention={convention!r} is not one of {_CONVENTIONS}")
        integer = isinstance(pseudo_char_cap, (int, np.integer)) and not isinstance(pseudo_char_cap, bool)
        if not integer or pseudo_char_cap < 1:
            raise ValueError(f"pseudo_char_cap={pseudo_char_cap!r} must be an integer >= 1")
        if not 0.0 <= float(area_precision_constraint) <= 1.0:
            raise ValueError(f"area_precision_constraint={area_precision_constraint!r} must be in [0, 1]")
        if not float(granularity_penalty) >= 0.0:
            raise ValueError(f"granularity_penalty={granularity_penalty!r} must be >= 0")
        if max_detections is not None and (not isinstance(max_detections, (int, np.integer)) or max_detections < 0):
            raise ValueError(f"max_detections={max_detections!r} must be an integer >= 0 or None")
        return cls(int(pseudo_char_cap), float(area_precision_constraint), float(granularity_penalty),
                   float(vertical_aspect_ratio_thresh), max_detections, convention)


# ----------------------------------------------------------------------------- polygons
#
# Polygons are held vertex-major, (2, K, n): x or y, vertex, polygon. NumPy reduces over a
# short trailing axis slowly, so the small axes (vertices, edges) come first and the long
# one (polygons, pairs, points) last. Rings are padded to K by repeating their last vertex,
# which only adds null edges.


@dataclass
class _Polys:
    raw: np.ndarray  # (2, K, n) float64 coordinates as scored
    ints: np.ndarray  # (2, K, n) float64 truncated toward zero: what Polygon3 sees
    k: np.ndarray  # (n,) real vertex counts

    @property
    def n(self) -> int:
        return len(self.k)

    def take(self, idx: np.ndarray) -> "_Polys":
        return _Polys(self.raw[:, :, idx], self.ints[:, :, idx], self.k[idx])


def _pack(polys, limit: int | None = None, *, convention: str = "competition", what: str = "GT",
          round_points: bool = False) -> _Polys:
    """Validate and pad (K, 2) polygons; those with fewer than 4 points or non-finite
    coordinates are skipped (the competition skips short ones)."""
    polys = list(polys)
    if limit is not None:
        polys = polys[:limit]
    try:  # fast path: all of one shape
        arr = np.asarray(polys, dtype=np.float64)
        if arr.size == 0:
            arr = arr.reshape(len(polys), 0, 2)
        ragged = arr.ndim != 3 or arr.shape[2] != 2
    except ValueError:
        ragged = True
    if not ragged:
        keep = np.isfinite(arr).all(axis=(1, 2)) & (arr.shape[1] >= 4)
        arr = arr if keep.all() else arr[keep]
        k = np.full(len(arr), arr.shape[1], dtype=np.int64)
    else:
        kept = []
        for i, poly in enumerate(polys):
            a = np.asarray(poly, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != 2:
                raise ValueError(f"{what} polygon {i} has shape {a.shape}, expected (K, 2)")
            if len(a) >= 4 and np.isfinite(a).all():
                kept.append(a)
        k = np.fromiter((len(a) for a in kept), dtype=np.int64, count=len(kept))
        arr = np.empty((len(kept), int(k.max()) if len(k) else 4, 2))
        for i, a in enumerate(kept):
            arr[i, : len(a)] = a
            arr[i, len(a):] = a[-1]
    if convention == "cleval" and (k != 4).any():
        raise ValueError(f"a {what} polygon has {int(k[k != 4][0])} points; "
                         "convention='cleval' takes quadrilaterals only")
    if len(arr) == 0:
        arr = np.zeros((0, 4, 2))
    raw = np.ascontiguousarray(arr.transpose(2, 1, 0))
    if round_points:
        raw = np.rint(raw)
    return _Polys(raw, np.trunc(raw), k)


def _shift(K: int, step: int) -> np.ndarray:
    """Index of the next (step=1) or previous (step=-1) vertex of a padded ring."""
    return (np.arange(K) + step) % K


def _next_real(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """a (..., K, n) at the next real vertex of each ring (cyclic within its k vertices)."""
    K, n = a.shape[-2:]
    if (k == K).all():
        return a[..., _shift(K, 1), :]
    i = np.arange(K)[:, None]
    flat = np.where(i + 1 < k, i + 1, 0) * n + np.arange(n)
    return np.take(a.reshape(a.shape[:-2] + (K * n,)), flat, axis=-1)


def _edges(pts: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge vectors (2, K, n) of the real rings and the real-edge mask (K, n)."""
    return _next_real(pts, k) - pts, np.arange(pts.shape[1])[:, None] < k


def _convex_orientation(pts: np.ndarray, k: np.ndarray) -> np.ndarray:
    """+1 / -1 for strictly convex simple polygons (CCW / CW in y-up axes), 0 otherwise."""
    n = pts.shape[2]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    e, real = _edges(pts, k)
    en = _next_real(e, k)
    cross = e[0] * en[1] - e[1] * en[0]
    pos = ((cross > 0) | ~real).all(0)
    neg = ((cross < 0) | ~real).all(0)
    orient = np.where(pos, 1, np.where(neg, -1, 0))
    many = (k > 4) & (orient != 0)  # same-sign turns can still wind twice beyond 4 vertices
    if many.any():
        dot = e[0] * en[0] + e[1] * en[1]
        turn = np.where(real, np.arctan2(cross, dot), 0.0).sum(0)
        orient = np.where(many & (np.abs(turn) > 3 * np.pi), 0, orient)
    return orient


def _shoelace_area(ints: np.ndarray) -> np.ndarray:
    """Polygon3's area: half the absolute shoelace sum over the (padded) ring."""
    x, y = ints
    nx = _shift(x.shape[0], 1)
    return 0.5 * np.abs(((x + x[nx]) * (y[nx] - y)).sum(0))


# ----------------------------------------------------------------------------- pseudo characters


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
        norm = math.sqrt(dx ** 2 + dy ** 2)
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


def pseudo_char_counts(polygons: Sequence[np.ndarray], *, cap: int = 100,
                       convention: Convention = "competition") -> np.ndarray:
    """Pseudo character count of each polygon as a GT box (points used as given, not rounded)."""
    opts = _Options.make(pseudo_char_cap=cap, convention=convention)
    polys = _pack(polygons, convention=convention)
    if polys.n != len(polygons):
        raise ValueError("every polygon needs 4 or more finite points")
    return _gt_counts(polys, opts)


def _owners(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items grouped by owner (`lengths` each): each item's owner and rank within it."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


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


# ----------------------------------------------------------------------------- geometry


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
    pad = lambda R: R if R.shape[1] == K else np.concatenate([R, np.repeat(R[:, -1:], K - R.shape[1], axis=1)], 1)
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


# ----------------------------------------------------------------------------- one image


def evaluate_image(gt_polys: Sequence[np.ndarray], det_polys: Sequence[np.ndarray], *,
                   pseudo_char_cap: int = 100, area_precision_constraint: float = 0.3,
                   granularity_penalty: float = 1.0, vertical_aspect_ratio_thresh: float = 0.5,
                   max_detections: int | None = MAX_DETECTIONS,
                   convention: Convention = "competition") -> ImageResult:
    """CLEval detection scores of one image; polygons are (K, 2) arrays of pixels.

    Detections past `max_detections` are dropped, then polygons with fewer than 4 points
    are skipped (GT and detections). See the module docstring for the conventions.
    """
    opts = _Options.make(pseudo_char_cap=pseudo_char_cap, area_precision_constraint=area_precision_constraint,
                         granularity_penalty=granularity_penalty,
                         vertical_aspect_ratio_thresh=vertical_aspect_ratio_thresh,
                         max_detections=max_detections, convention=convention)
    return _evaluate_image(gt_polys, det_polys, opts)


def _evaluate_image(gt_polys, det_polys, opts: _Options) -> ImageResult:
    # the competition's dataset rounds GT points to int32 before scoring
    G = _pack(gt_polys, convention=opts.convention, round_points=opts.convention == "competition")
    D = _pack(det_polys, opts.max_detections, convention=opts.convention, what="detection")
    n, m = G.n, D.n

    lengths = _gt_counts(G, opts)  # pseudo characters per GT box, >= 1 each
    if opts.convention == "cleval":
        pcc = _pcc_cleval(G.raw, lengths, opts.vertical_thresh)
    else:
        pcc = _pcc_competition(G.raw, G.k, lengths)
    pcc_start = np.cumsum(lengths) - lengths

    # candidate pairs: GT envelope (polygon and PCCs) against detection boxes
    g = d = np.zeros(0, dtype=np.int64)
    if n and m:
        gb = np.concatenate([np.minimum(G.ints.min(1), np.minimum.reduceat(pcc, pcc_start, axis=1)),
                             np.maximum(G.ints.max(1), np.maximum.reduceat(pcc, pcc_start, axis=1))])
        db = np.concatenate([D.ints.min(1), D.ints.max(1)])
        g, d = _candidate_pairs(gb, db)

    # area precision |G & D| / |D| on the integer polygons, kept as float32 like CLEval
    inter = np.zeros(len(g))
    if len(g):
        overlap = ((np.minimum(gb[2, g], db[2, d]) > np.maximum(gb[0, g], db[0, d]))
                   & (np.minimum(gb[3, g], db[3, d]) > np.maximum(gb[1, g], db[1, d])))
        og, od = _convex_orientation(G.ints, G.k), _convex_orientation(D.ints, D.k)
        fast = overlap & (og[g] != 0) & (od[d] != 0)
        slow = overlap & ~fast
        if fast.any():
            gf, df = g[fast], d[fast]
            inter[fast] = _convex_pair_areas(G.ints[:, :, gf], og[gf].astype(float),
                                             D.ints[:, :, df], od[df].astype(float))
        if slow.any():
            inter[slow] = _shapely_pair_areas(G, D, g[slow], d[slow])
    det_area = _shoelace_area(D.ints)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(det_area[d] > 0, inter / det_area[d], 0.0).astype(np.float32)
    ap_ok = ap >= np.float32(opts.ap_constraint)

    # PCC containment for every candidate pair
    test_pair, rank = _owners(lengths[g])
    test_pcc = pcc_start[g][test_pair] + rank
    inside = _points_inside(pcc[0, test_pcc], pcc[1, test_pcc], D.ints[:, :, d[test_pair]])
    pcnt = np.bincount(test_pair[inside], minlength=len(g))

    # matching: one-to-one, one-to-many (split), many-to-one (merge)
    has = pcnt > 0
    q = ap_ok & has
    row_q = np.bincount(g[q], minlength=n)
    col_q = np.bincount(d[q], minlength=m)
    col_p = np.bincount(d[has], minlength=m)
    ap_sum = np.bincount(d[has], weights=ap[has].astype(np.float64), minlength=m)  # GT order, like CLEval
    merge_det = (col_p >= 2) & (ap_sum >= opts.ap_constraint)
    matched = (q & (row_q[g] == 1) & (col_q[d] == 1)) | (q & (row_q[g] >= 2)) | (has & merge_det[d])

    # scoring
    per_gt = np.bincount(g[matched], minlength=n)
    per_det = np.bincount(d[matched], minlength=m)
    covered = inside & matched[test_pair]
    num_char_det_matched = int(covered.sum())
    tp = int(np.count_nonzero(np.bincount(test_pcc[covered], minlength=pcc.shape[1])))
    gran_r = float(np.maximum(per_gt - 1, 0).sum()) * opts.gran_weight
    gran_p = float(np.maximum(per_det - 1, 0).sum()) * opts.gran_weight
    num_char_fp = int(_fp_counts(D.take(np.flatnonzero(per_det == 0)), opts).sum())
    num_char_gt = int(lengths.sum())
    num_char_det = num_char_det_matched + num_char_fp
    precision, recall, hmean = _scores(tp, gran_r, gran_p, num_char_gt, num_char_det)
    return ImageResult(
        precision=precision, recall=recall, hmean=hmean, num_gt=n, num_det=m,
        num_char_gt=num_char_gt, num_char_det=num_char_det, num_char_tp=tp, num_char_fp=num_char_fp,
        gran_recall=gran_r, gran_precision=gran_p, num_splitted=int((per_gt > 1).sum()),
        num_merged=int((per_det > 1).sum()), num_char_overlapped=num_char_det_matched - tp)


# ----------------------------------------------------------------------------- many images


def evaluate(gt: Mapping[str, Sequence[np.ndarray]], pred: Mapping[str, Sequence[np.ndarray]], *,
             pseudo_char_cap: int = 100, area_precision_constraint: float = 0.3,
             granularity_penalty: float = 1.0, vertical_aspect_ratio_thresh: float = 0.5,
             max_detections: int | None = MAX_DETECTIONS,
             convention: Convention = "competition") -> EvalResult:
    """CLEval detection scores over the images of `gt`.

    An image of `gt` missing from `pred` has no detections (it scores 0, as in the
    competition); images only in `pred` are ignored (listed in `ignored_images`). The
    macro scores average the per-image scores; with no images they are 0.
    """
    opts = _Options.make(pseudo_char_cap=pseudo_char_cap, area_precision_constraint=area_precision_constraint,
                         granularity_penalty=granularity_penalty,
                         vertical_aspect_ratio_thresh=vertical_aspect_ratio_thresh,
                         max_detections=max_detections, convention=convention)
    per_image = {name: _evaluate_image(polys, pred.get(name, ()), opts).to_dict() for name, polys in gt.items()}
    ignored = [name for name in pred if name not in gt]
    if ignored:
        log.warning("%d prediction image(s) not in the ground truth are ignored, e.g. %s",
                    len(ignored), ", ".join(map(repr, ignored[:3])))
    rows = list(per_image.values())
    macro = {key: float(np.mean([r[key] for r in rows])) if rows else 0.0 for key in ("precision", "recall", "hmean")}
    sums = {key: int(sum(r[key] for r in rows)) for key in _COUNT_KEYS}
    sums["gran_recall"] = float(sum(r["gran_recall"] for r in rows))
    sums["gran_precision"] = float(sum(r["gran_precision"] for r in rows))
    p, r, h = _scores(sums["num_char_tp"], sums["gran_recall"], sums["gran_precision"],
                      sums["num_char_gt"], sums["num_char_det"])
    micro = {"precision": p, "recall": r, "hmean": h, "num_images": len(rows), **sums}
    return EvalResult(macro["precision"], macro["recall"], macro["hmean"], micro, per_image, ignored)


# ----------------------------------------------------------------------------- CLI


def _table(result: EvalResult, worst: int = 5) -> str:
    m = result.micro
    lines = [f"images: {m['num_images']}" + (f" ({len(result.ignored_images)} prediction-only image(s) ignored)"
                                            if result.ignored_images else ""),
             f"{'':8}{'precision':>10}{'recall':>10}{'hmean':>10}",
             f"{'macro':8}{result.precision:10.4f}{result.recall:10.4f}{result.hmean:10.4f}",
             f"{'micro':8}{m['precision']:10.4f}{m['recall']:10.4f}{m['hmean']:10.4f}"]
    ranked = sorted(result.per_image.items(), key=lambda kv: (kv[1]["hmean"], kv[0]))[:worst]
    if ranked:
        width = max(len(name) for name, _ in ranked)
        lines.append(f"worst {len(ranked)} image(s) by hmean:")
        lines.append(f"  {'image':<{width}}{'hmean':>8}{'prec':>8}{'recall':>8}{'gt':>6}{'det':>6}")
        for name, r in ranked:
            lines.append(f"  {name:<{width}}{r['hmean']:8.4f}{r['precision']:8.4f}{r['recall']:8.4f}"
                         f"{r['num_gt']:6d}{r['num_det']:6d}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`hrnet_sweep eval --gt GT.json --pred PRED.json|submission.csv [--json] [--cap N]`.

    File errors raise `hrnet_sweep.errors.DataError` (the CLI prints them and exits 2).
    """
    from . import io

    parser = argparse.ArgumentParser(prog="hrnet_sweep eval",
                                     description="CLEval detection-only precision / recall / H-Mean.")
    parser.add_argument("--gt", required=True, help="ground-truth annotation JSON")
    parser.add_argument("--pred", required=True, help="prediction JSON or submission CSV")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--cap", type=int, default=100,
                        help="pseudo character cap (default 100; the cleval package uses 10)")
    parser.add_argument("--convention", choices=_CONVENTIONS, default="competition",
                        help="'competition' (default) or the 'cleval' package's quadrilateral rules")
    args = parser.parse_args(argv)
    if args.cap < 1:
        parser.error(f"--cap {args.cap}: must be an integer >= 1")
    gt = {name: img.polygons() for name, img in io.load_annotations(args.gt).items()}
    pred = io.load_predictions(args.pred)
    result = evaluate(gt, pred, pseudo_char_cap=args.cap, convention=args.convention)
    print(json.dumps(result.to_dict(), indent=2) if args.json else _table(result))
    return 0
