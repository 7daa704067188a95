"""Options of the metric and the packed polygon layout, with the ring helpers on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..constants import MAX_DETECTIONS
from ..formats import integer_points

Convention = Literal["competition", "cleval"]
_CONVENTIONS = ("competition", "cleval")


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
    def make(
        cls,
        *,
        pseudo_char_cap=100,
        area_precision_constraint=0.3,
        granularity_penalty=1.0,
        vertical_aspect_ratio_thresh=0.5,
        max_detections=MAX_DETECTIONS,
        convention="competition",
    ):
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
        return cls(
            int(pseudo_char_cap),
            float(area_precision_constraint),
            float(granularity_penalty),
            float(vertical_aspect_ratio_thresh),
            max_detections,
            convention,
        )


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

    def take(self, idx: np.ndarray) -> _Polys:
        return _Polys(self.raw[:, :, idx], self.ints[:, :, idx], self.k[idx])


def _pack(
    polys, limit: int | None = None, *, convention: str = "competition", what: str = "GT", round_points: bool = False
) -> _Polys:
    """Validate and pad (K, 2) polygons; those with fewer than 4 points or non-finite
    coordinates are skipped (the competition skips short ones). `round_points` rounds
    the float64 points to integers (`formats.integer_points`), as the competition rounds GT."""
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
            arr[i, len(a) :] = a[-1]
    if convention == "cleval" and (k != 4).any():
        raise ValueError(
            f"a {what} polygon has {int(k[k != 4][0])} points; convention='cleval' takes quadrilaterals only"
        )
    if len(arr) == 0:
        arr = np.zeros((0, 4, 2))
    raw = np.ascontiguousarray(arr.transpose(2, 1, 0))
    if round_points:
        raw = integer_points(raw).astype(np.float64)
    return _Polys(raw, np.trunc(raw), k)


def _shift(K: int, step: int) -> np.ndarray:
    """Index of the next (step=1) or previous (step=-1) vertex of a padded ring."""
    return (np.arange(K) + step) % K


def _owners(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items grouped by owner (`lengths` each): each item's owner and rank within it."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


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
