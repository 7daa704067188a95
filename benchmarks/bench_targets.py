"""Benchmark `hrnet_sweep.targets.make_targets` against a straightforward reference.

The reference below is the DB paper's target algorithm written plainly, polygon by
polygon and edge by edge, over the whole bounding box in float64, the way its public
code does it (MhLiao/DB: make_seg_detection_data.py, make_border_map.py). The tests
import it as the oracle for `make_targets`.

    python benchmarks/bench_targets.py            # full run
    python benchmarks/bench_targets.py --quick    # a few repeats, small scaling curve
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyclipper
from shapely.geometry import Polygon

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrnet_sweep.targets import make_targets  # noqa: E402

IMAGE_SIZE = 1280
WORDS = 72

# ----------------------------------------------------------------------------- reference


def reference_targets(polygons, height, width, *, ignore=None, shrink_ratio=0.4, thresh_min=0.3, thresh_max=0.7, min_text_size=8):
    """The paper's targets, straightforwardly: returns the same dict as `make_targets`."""
    polys = [np.clip(np.array(p, np.float64), 0, [width - 1, height - 1]) for p in polygons]
    skip = [False] * len(polys) if ignore is None else list(ignore)
    for i, poly in enumerate(polys):
        x, y = poly[:, 0], poly[:, 1]
        signed = 0.5 * np.sum((np.roll(x, -1) - x) * (np.roll(y, -1) + y))
        if abs(signed) < 1:
            skip[i] = True

    # shrink map (make_seg_detection_data.py)
    prob_map = np.zeros((height, width), np.float32)
    prob_mask = np.ones((height, width), np.float32)
    for i, poly in enumerate(polys):
        span = min(np.ptp(poly[:, 0]), np.ptp(poly[:, 1]))
        if skip[i] or span < min_text_size:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            skip[i] = True
            continue
        shape = Polygon(poly)
        distance = shape.area * (1 - shrink_ratio**2) / shape.length
        offset = pyclipper.PyclipperOffset()
        offset.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        shrunk = offset.Execute(-distance)
        if not shrunk:
            cv2.fillPoly(prob_mask, [poly.astype(np.int32)], 0)
            skip[i] = True
            continue
        cv2.fillPoly(prob_map, [np.array(shrunk[0]).astype(np.int32)], 1)

    # border map (make_border_map.py)
    canvas = np.zeros((height, width), np.float32)
    thresh_mask = np.zeros((height, width), np.float32)
    for i, poly in enumerate(polys):
        if not skip[i]:
            _reference_border(poly, canvas, thresh_mask, shrink_ratio)
    thresh_map = canvas * (thresh_max - thresh_min) + thresh_min
    return {"prob_map": prob_map, "prob_mask": prob_mask, "thresh_map": thresh_map, "thresh_mask": thresh_mask}


def _reference_border(poly, canvas, mask, shrink_ratio):
    shape = Polygon(poly)
    if shape.area <= 0:
        return
    distance = shape.area * (1 - shrink_ratio**2) / shape.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    dilated = np.array(offset.Execute(distance)[0])
    cv2.fillPoly(mask, [dilated.astype(np.int32)], 1.0)

    xmin, ymin = dilated.min(axis=0)
    xmax, ymax = dilated.max(axis=0)
    w, h = xmax - xmin + 1, ymax - ymin + 1
    local = poly - [xmin, ymin]
    xs = np.broadcast_to(np.linspace(0, w - 1, num=w).reshape(1, w), (h, w))
    ys = np.broadcast_to(np.linspace(0, h - 1, num=h).reshape(h, 1), (h, w))
    per_edge = np.zeros((len(local), h, w), np.float32)
    for i in range(len(local)):
        j = (i + 1) % len(local)
        per_edge[i] = np.clip(_reference_edge_distance(xs, ys, local[i], local[j]) / distance, 0, 1)
    nearest = per_edge.min(axis=0)

    # Clip the bounding box to the canvas (the public code slices the x range with a
    # typo, xmax_valid - xmin + width, that only works when nothing is cut on the right).
    x0, x1 = min(max(0, xmin), canvas.shape[1] - 1), min(max(0, xmax), canvas.shape[1] - 1)
    y0, y1 = min(max(0, ymin), canvas.shape[0] - 1), min(max(0, ymax), canvas.shape[0] - 1)
    region = canvas[y0 : y1 + 1, x0 : x1 + 1]
    region[...] = np.fmax(1 - nearest[y0 - ymin : y1 - ymin + 1, x0 - xmin : x1 - xmin + 1], region)


def _reference_edge_distance(xs, ys, p1, p2):
    """The public code's pixel-to-edge distance: the height of the triangle (pixel, p1,
    p2) over the edge, or the nearer endpoint's distance where the angle at the pixel is
    acute (its cosine, by the law of cosines, is negative below)."""
    d1 = np.square(xs - p1[0]) + np.square(ys - p1[1])
    d2 = np.square(xs - p2[0]) + np.square(ys - p2[1])
    edge = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = (edge - d1 - d2) / (2 * np.sqrt(d1 * d2))
        sine_sq = np.nan_to_num(1 - np.square(cosine))
        result = np.sqrt(d1 * d2 * sine_sq / edge)
    acute = cosine < 0
    result[acute] = np.sqrt(np.fmin(d1, d2))[acute]
    return result


# ----------------------------------------------------------------------------- data


def receipt_words(count: int, size: int = IMAGE_SIZE, seed: int = 0) -> list[np.ndarray]:
    """`count` receipt-like word quads on a `size` x `size` image, deterministic per seed.

    Lines of 1 to 5 words on a receipt about 62% of the image wide, word height 22-32 px
    at 72 words (scaled down as sqrt(72 / count) for more words, so they still fit),
    the page rotated by up to 3 degrees and every corner jittered a little.
    """
    rng = np.random.default_rng(seed)
    scale = min(1.0, (WORDS / count) ** 0.5) * size / IMAGE_SIZE
    left, right = 0.19 * size, 0.81 * size
    words, y = [], 0.06 * size
    while len(words) < count:
        h = rng.uniform(22, 32) * scale
        x = left + rng.uniform(0, 40) * scale
        for _ in range(int(rng.integers(1, 6))):
            w = rng.integers(2, 13) * 0.55 * h
            if x + w > right or len(words) >= count:
                break
            top = y + rng.uniform(-1, 1) * scale
            quad = np.array([[x, top], [x + w, top], [x + w, top + h], [x, top + h]])
            words.append(quad + rng.normal(0, 0.6 * scale, (4, 2)))
            x += w + rng.uniform(0.6, 2.5) * h
        y += h + rng.uniform(4, 14) * scale
        if y > 0.97 * size:  # wrap into a second column rather than fall off the page
            y, left, right = 0.06 * size, left + 3, right + 3
    angle = np.deg2rad(rng.uniform(-3, 3))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([size / 2, size / 2])
    return [((q - centre) @ rot.T + centre).astype(np.float32) for q in words]


# ----------------------------------------------------------------------------- timing


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def max_map_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, short scaling curve")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    repeats, ref_repeats = (5, 2) if args.quick else (30, 5)
    counts = (18, 72, 144) if args.quick else (18, 72, 144, 288, 500)

    polys = receipt_words(WORDS)
    ours = make_targets(polys, IMAGE_SIZE, IMAGE_SIZE)
    ref = reference_targets(polys, IMAGE_SIZE, IMAGE_SIZE)
    diff = max_map_diff(ours, ref)
    t_ours = median_ms(lambda: make_targets(polys, IMAGE_SIZE, IMAGE_SIZE), repeats)
    t_ref = median_ms(lambda: reference_targets(polys, IMAGE_SIZE, IMAGE_SIZE), ref_repeats)

    print(f"make_targets, {IMAGE_SIZE}x{IMAGE_SIZE}, {WORDS} receipt words, 1 thread, median ms")
    print(f"{'':>12} {'ms':>9}")
    print(f"{'ours':>12} {t_ours:9.2f}")
    print(f"{'reference':>12} {t_ref:9.2f}")
    print(f"{'speed-up':>12} {t_ref / t_ours:8.1f}x")
    print(f"max abs diff over the four maps: {diff:.2e} ({'ok' if diff <= 1e-3 else 'FAIL'})")
    print()
    print(f"{'words':>6} {'ours ms':>9} {'us/word':>8} {'ref ms':>9} {'max diff':>9}")
    worst = diff
    for n in counts:
        p = receipt_words(n, seed=n)
        t = median_ms(lambda: make_targets(p, IMAGE_SIZE, IMAGE_SIZE), repeats)
        r = median_ms(lambda: reference_targets(p, IMAGE_SIZE, IMAGE_SIZE), 1)
        d = max_map_diff(make_targets(p, IMAGE_SIZE, IMAGE_SIZE), reference_targets(p, IMAGE_SIZE, IMAGE_SIZE))
        worst = max(worst, d)
        print(f"{n:6d} {t:9.2f} {1e3 * t / n:8.1f} {r:9.2f} {d:9.1e}")
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
