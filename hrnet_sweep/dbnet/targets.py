"""DBNet training targets: the shrink (probability) map and the threshold (border) map.

The definition is the DB paper's, as its public code computes it (MhLiao/DB,
`make_seg_detection_data.py` and `make_border_map.py`), so that a model trained here
sees the same targets as one trained there:

* polygons are clamped into the image, and those whose signed area
  sum (x' - x)(y' + y) / 2 is positive have their points reversed, as the public code's
  `validate_polygons` does before any map is drawn (the order reaches the maps only
  through rounding: the NaN pixels described below); one with area < 1, a bounding box
  thinner than `min_text_size`, an ignore flag, or an empty shrink is *ignored*:
  `prob_mask` is 0 over it and it adds nothing else;
* shrink and dilation by D = A (1 - r^2) / L (area, perimeter), with pyclipper (round
  joins) on the polygon's points, which pyclipper truncates to integers;
* the border value of a pixel is 1 - min(dist / D, 1), dist its distance to the
  polygon's edges, over the bounding box of the dilated polygon, the max over
  polygons, scaled into [thresh_min, thresh_max]; `thresh_mask` is 1 inside the dilated
  polygons.

Two details of the public code are kept on purpose, since the targets are compared
with it: its pixel-to-edge distance is the distance to the nearer endpoint wherever
the edge subtends an acute angle at the pixel (not only beyond the edge's ends), which
raises the map slightly outside corners and more around edges shorter than about 2 D;
and on pixels lying exactly on an edge that runs along a pixel row or column (as
clamping to the border makes), its arithmetic gives NaN now and then, which leaves that
pixel's value to the other polygons.

Speed (benchmarks/bench_targets.py): the public code evaluates some twenty float64
temporaries per edge over the whole bounding box. Here the distance field of a polygon
is the minimum of squared vertex distances and of squared line distances masked to each
edge's circle; all of these are a quadratic in the row plus a quadratic in the column,
so the planes of all edges come from one small matrix product, followed by a handful
of cv2 passes. The border map starts at thresh_min and is scaled inside the windows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import pyclipper

__all__ = ["make_targets"]


def make_targets(
    polygons: Sequence[np.ndarray],
    height: int,
    width: int,
    *,
    ignore: Sequence[bool] | None = None,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: int = 8,
    compact: bool = False,
) -> dict[str, np.ndarray]:
    """Build the four DBNet target maps for one image.

    Args:
        polygons: (K, 2) arrays of x, y pixels in the network input, K >= 3; points
            outside the image are clamped into it.
        height, width: size of the maps (the network input).
        ignore: one flag per polygon; flagged polygons are masked out of the loss.
        shrink_ratio: r in D = A (1 - r^2) / L.
        thresh_min, thresh_max: range the border map is scaled into.
        min_text_size: polygons whose bounding box is thinner than this are ignored.
        compact: the three 0/1 maps as uint8 instead of float32 (a quarter of the
            memory to fill, collate and move; the training data path uses this).

    Returns:
        (height, width) maps `prob_map` (1 inside shrunk polygons), `prob_mask`
        (0 over ignored polygons, 1 elsewhere), `thresh_map` (float32, border map scaled
        into [thresh_min, thresh_max]) and `thresh_mask` (1 inside dilated polygons);
        float32, or uint8 for the 0/1 maps with `compact=True`.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} x {width}")
    if not 0.0 < shrink_ratio < 1.0:
        raise ValueError(f"shrink_ratio must be in (0, 1), got {shrink_ratio}")
    if not thresh_min < thresh_max:
        raise ValueError(f"thresh_min must be below thresh_max, got {thresh_min} and {thresh_max}")
    flags = [False] * len(polygons) if ignore is None else [bool(f) for f in ignore]
    if len(flags) != len(polygons):
        raise ValueError(f"ignore has {len(flags)} flags for {len(polygons)} polygons")

    binary = np.uint8 if compact else np.float32
    prob_map = np.zeros((height, width), binary)
    prob_mask = np.ones((height, width), binary)
    thresh_map = np.full((height, width), thresh_min, np.float32)
    thresh_mask = np.zeros((height, width), binary)
    maps = {"prob_map": prob_map, "prob_mask": prob_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}
    if not len(polygons):
        return maps

    geo = _measure(polygons, width, height)
    mono = _monomials(max(height, width))
    for index, (start, stop) in enumerate(geo.bounds):
        poly = geo.points[start:stop]
        area, perimeter = geo.area[index], geo.perimeter[index]
        if flags[index] or area < 1.0 or geo.span[index] < min_text_size:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            continue
        distance = area * (1.0 - shrink_ratio * shrink_ratio) / perimeter
        path = poly.tolist()  # pyclipper truncates these to integers, as in the public code
        shrunk = _offset(path, -distance)
        if not shrunk:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            continue
        cv2.fillPoly(prob_map, [np.array(shrunk[0], np.int32)], 1)
        dilated = np.array(_offset(path, distance)[0], np.int32)
        cv2.fillPoly(thresh_mask, [dilated], 1)
        _draw_border(thresh_map, geo, index, cv2.boundingRect(dilated), distance, thresh_min, thresh_max, mono)
    return maps


def _draw_border(canvas, geo, index, box, distance, lo, hi, mono) -> None:
    """canvas = max(canvas, hi - (hi - lo) * dist / D) over `box`, the dilated polygon's
    bounding rectangle (x, y, w, h), clipped to the canvas.

    The canvas starts at `lo`, so values below it never win, and the max over polygons
    of the scaled values is the scaled max: the paper's map, touched only in windows.
    """
    height, width = canvas.shape
    start, stop = geo.bounds[index]
    x, y, w, h = box
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    dist = _distance_sq(geo.coef[:, start:stop], mono[:, y0:y1], mono[:, x0:x1])
    cv2.sqrt(dist, dst=dist)
    value = cv2.addWeighted(dist, -(hi - lo) / distance, dist, 0.0, hi, dtype=cv2.CV_32F)
    poly = geo.points[start:stop]
    for i in geo.exact.get(index, ()):
        for hx, hy in _public_code_holes(poly[i], poly[(i + 1) % len(poly)], (x, y)):
            if x0 <= hx < x1 and y0 <= hy < y1:
                value[hy - y0, hx - x0] = lo  # NaN in the public code: its np.fmax keeps the canvas
    view = canvas[y0:y1, x0:x1]
    cv2.max(view, value, dst=view)


class _Geometry(NamedTuple):
    """All polygons of an image, clamped and measured at once."""

    points: np.ndarray  # (N, 2) float64, the clamped points of all polygons stacked
    bounds: list  # (start, stop) rows of each polygon
    area: list  # per polygon, float
    perimeter: list
    span: list  # the smaller side of the bounding box
    coef: np.ndarray  # (3, N, 3, 3) distance-plane coefficients of each edge, see _distance_sq
    exact: dict  # polygon -> its edges along a pixel row or column, see _public_code_holes


def _measure(polygons: Sequence[np.ndarray], width: int, height: int) -> _Geometry:
    arrays = []
    for index, raw in enumerate(polygons):
        poly = np.asarray(raw)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"polygon {index} has shape {list(poly.shape)}, expected [K, 2] with K >= 3")
        arrays.append(poly)
    points = np.concatenate(arrays).astype(np.float64)  # always a copy: callers' arrays stay as they are
    if not np.isfinite(points).all():
        index = next(i for i, p in enumerate(arrays) if not np.isfinite(p).all())
        raise ValueError(f"polygon {index} has NaN or infinite coordinates")
    np.clip(points, 0.0, (width - 1, height - 1), out=points)

    sizes = np.fromiter((len(p) for p in arrays), np.int64, len(arrays))
    stops = np.cumsum(sizes)
    starts = stops - sizes
    following = np.arange(1, len(points) + 1)
    following[stops - 1] = starts  # the point after each polygon's last is its first
    points = _public_code_order(points, following, starts, stops)
    x, y = points[:, 0], points[:, 1]
    xn, yn = x[following], y[following]
    area = 0.5 * np.abs(np.add.reduceat(x * yn - xn * y, starts))
    length = np.hypot(xn - x, yn - y)
    perimeter = np.add.reduceat(length, starts)
    span = (np.maximum.reduceat(points, starts) - np.minimum.reduceat(points, starts)).min(axis=1)

    # Edges along a pixel row or column (clamping to the border makes these) pass
    # exactly through pixel centres, where the public code's arithmetic can give NaN.
    on_grid = ((x == xn) & (x == np.floor(x))) | ((y == yn) & (y == np.floor(y)))
    exact: dict[int, list[int]] = {}
    for row in np.flatnonzero(on_grid).tolist():
        owner = int(np.searchsorted(stops, row, side="right"))
        exact.setdefault(owner, []).append(row - int(starts[owner]))

    return _Geometry(
        points,
        list(zip(starts.tolist(), stops.tolist())),
        area.tolist(),
        perimeter.tolist(),
        span.tolist(),
        _plane_coefficients(x, y, xn, yn, length),
        exact,
    )


def _public_code_order(points: np.ndarray, following: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The stacked points with each polygon whose signed area sum (x' - x)(y' + y) / 2 is
    positive reversed (counter-clockwise on screen), as the public code's
    `validate_polygons` reverses them before drawing."""
    x, y = points[:, 0], points[:, 1]
    signed = np.add.reduceat((x[following] - x) * (y[following] + y), starts)
    if not (signed > 0).any():
        return points
    owner = np.repeat(np.arange(len(starts)), stops - starts)
    index = np.arange(len(points))
    order = np.where(signed[owner] > 0, starts[owner] + stops[owner] - 1 - index, index)
    return points[order]


def _plane_coefficients(x, y, xn, yn, length) -> np.ndarray:
    """coef[plane, edge] (3 x 3) such that plane(x, y) = [1, y, y^2] @ coef @ [1, x, x^2],
    for the planes c^2, T and |P - A|^2 of `_distance_sq`, every edge (x, y) -> (xn, yn)."""
    safe = np.where(length > 0, length, 1.0)
    ux, uy = (xn - x) / safe, (yn - y) / safe  # 0 for a repeated point: c = 0, its vertex term decides
    alpha, beta = -ux, y * ux - x * uy  # c = alpha y + beta + uy x
    coef = np.zeros((3, len(x), 3, 3))
    c2, t, v = coef
    c2[:, 0, 0], c2[:, 0, 1], c2[:, 0, 2] = beta * beta, 2 * uy * beta, uy * uy
    c2[:, 1, 0], c2[:, 1, 1], c2[:, 2, 0] = 2 * alpha * beta, 2 * uy * alpha, alpha * alpha
    t[:, 0, 0], t[:, 0, 1], t[:, 1, 0] = x * xn + y * yn, -(x + xn), -(y + yn)  # (x - ax)(x - bx) + (y - ay)(y - by)
    v[:, 0, 0], v[:, 0, 1], v[:, 1, 0] = x * x + y * y, -2 * x, -2 * y  # (x - ax)^2 + (y - ay)^2
    coef[1:, :, 0, 2] = coef[1:, :, 2, 0] = 1.0
    return coef


def _monomials(n: int) -> np.ndarray:
    """[1, v, v^2] for v = 0 .. n-1, shape (3, n), float64."""
    v = np.arange(n, dtype=np.float64)
    return np.stack([np.ones_like(v), v, v * v])


def _offset(path: list, delta: float) -> list:
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(path, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(delta)


def _distance_sq(coef: np.ndarray, mono_y: np.ndarray, mono_x: np.ndarray) -> np.ndarray:
    """Squared public-code distance from every pixel of a window to a polygon's edges.

    For edge k from A to B, with c the distance to its line, the public code takes c
    where the pixel P sees the edge under a right or obtuse angle, i.e. inside the
    circle on AB as diameter, where T = (A - P).(B - P) <= 0, and the distance to the
    nearer endpoint elsewhere. The minimum of that over edges equals

        min( min over vertices A of |P - A|^2,  min over edges with T <= 0 of c^2 )

    because c^2 never exceeds the squared distance to either endpoint. c^2, T and
    |P - A|^2 are each [1, y, y^2] @ coef @ [1, x, x^2], so all 3K planes are two
    batched matrix products, in float64 (exact enough to decide the sign of T as the
    public code does).

    Args:
        coef: (3, K, 3, 3) coefficients of the polygon's edges (`_plane_coefficients`).
        mono_y, mono_x: (3, h) and (3, w) monomials [1, v, v^2] of the window's rows
            and columns.

    Returns:
        (h, w) float64 squared distances.
    """
    k, h, w = coef.shape[1], mono_y.shape[1], mono_x.shape[1]
    step = max(1, _BUDGET // (3 * h * w))  # edges per pass: big polygons go in parts
    nearest = None
    for first in range(0, k, step):
        part = coef[:, first : first + step]
        n = part.shape[1]
        planes = np.matmul(mono_y.T @ part, mono_x, out=_scratch(3 * n * h * w).reshape(3, n, h, w))
        flat = planes.reshape(3 * n * h, w)
        c2, t, v = flat[: n * h], flat[n * h : 2 * n * h], flat[2 * n * h :]  # c^2, T, |P - A|^2
        cv2.threshold(t, 0.0, _FAR, cv2.THRESH_BINARY, dst=t)  # outside the circle: no c term
        cv2.max(c2, t, dst=c2)
        cv2.min(c2, v, dst=c2)
        while n > 1:  # fold the edges' planes pairwise: log2(K) passes
            half = n // 2
            head, tail = flat[: half * h], flat[(n - half) * h : n * h]
            cv2.min(head, tail, dst=head)
            n -= half
        if step >= k:
            nearest = planes[0, 0]
        elif nearest is None:
            nearest = planes[0, 0].copy()
        else:
            cv2.min(nearest, planes[0, 0], dst=nearest)
    return cv2.max(nearest, 0.0, dst=nearest)  # c^2 can round to a hair below 0 on the line


_FAR = 1e30
_BUDGET = 1 << 20  # float64 elements (8 MB) of planes at a time
_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A float64 buffer of `size` elements, kept per thread across calls up to _BUDGET.

    The planes of a word take about half a megabyte; a fresh array each time comes from
    fresh pages of memory, whose faults cost more than the arithmetic.
    """
    if size > _BUDGET:
        return np.empty(size)
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(_BUDGET)
    return buf[:size]


def _public_code_holes(a: np.ndarray, b: np.ndarray, origin: tuple[int, int]) -> list[tuple[int, int]]:
    """Pixels on the row or column edge AB where the public code's distance is NaN.

    On a pixel strictly inside the edge the public code's cosine is 1 up to rounding,
    and where rounding makes 1 - cos^2 negative its square root is NaN; a repeated
    point (A = B) gives 0 / 0 at that pixel. This repeats its float64 arithmetic, in
    its window coordinates (relative to the dilated polygon's top-left `origin`), on
    those pixels only, so that the maps agree there too.
    """
    ox, oy = origin
    (ax, ay), (bx, by) = a.tolist(), b.tolist()
    if ax == bx and ay == by:
        integral = ax == int(ax) and ay == int(ay)
        return [(int(ax), int(ay))] if integral else []
    along_y = ax == bx
    lo, hi = sorted((ay, by) if along_y else (ax, bx))
    steps = np.arange(np.ceil(lo), np.floor(hi) + 1)
    if along_y:
        px, py = np.full_like(steps, ax) - ox, steps - oy
    else:
        px, py = steps - ox, np.full_like(steps, ay) - oy
    p1 = (ax - ox, ay - oy)
    p2 = (bx - ox, by - oy)
    d1 = np.square(px - p1[0]) + np.square(py - p1[1])
    d2 = np.square(px - p2[0]) + np.square(py - p2[1])
    edge = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = (edge - d1 - d2) / (2 * np.sqrt(d1 * d2))
        nan = 1 - np.square(cosine) < 0
    hits = steps[nan].astype(int).tolist()
    return [(int(ax), v) for v in hits] if along_y else [(v, int(ay)) for v in hits]
