"""Benchmark `hrnet_sweep.metric` against the `cleval` package on the same inputs.

    .venv/bin/python benchmarks/bench_metric.py [--images 50] [--boxes 72] [--repeats 3]

Builds deterministic receipt-like images (rows of word boxes, integer and float, some
tilted) with jittered, split, merged, dropped and false-positive detections; times
`evaluate_image` per image (convention "cleval", cap 10, no detection cap: what the
package computes; and the default "competition" convention) and the package's own `evaluation`; prints the times
per image, the speed-up, the largest |difference| of precision / recall / H-Mean (must be
<= 1e-6) and how the time grows with boxes per image. Times are the best of `--repeats`
passes, in wall-clock and CPU seconds (CPU time is steadier on a shared machine). Without
the package installed only our half runs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hrnet_sweep.metric import evaluate_image  # noqa: E402

# ----------------------------------------------------------------------------- data
#
# tests/test_metric.py builds its cases from these helpers (through tests/_util.py's
# load_benchmark), so the benchmark and the tests score the same kind of receipt.


def rect(x, y, w, h):
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)


def receipt_rows(rng: np.random.Generator, n_words: int) -> list[np.ndarray]:
    """Axis-aligned word boxes of a receipt: rows of 1-5 words of varied width."""
    boxes, y = [], 20.0
    while len(boxes) < n_words:
        h, x = rng.uniform(14, 30), rng.uniform(5, 40)
        for _ in range(rng.integers(1, 6)):
            w = rng.uniform(15, 160)
            boxes.append(rect(x, y, w, h))
            x += w + rng.uniform(4, 25)
            if len(boxes) == n_words:
                break
        y += h + rng.uniform(2, 12)
    return boxes


def split(box, t=0.5):
    top = box[0] + t * (box[1] - box[0])
    bottom = box[3] + t * (box[2] - box[3])
    return [np.array([box[0], top, bottom, box[3]]), np.array([top, box[1], box[2], bottom])]


def merge(a, b):
    return np.array([a[0], b[1], b[2], a[3]])


def noisy(rng, gt, *, jitter=2.0, p_drop=0.05, p_split=0.05, p_merge=0.05, p_fp=0.03):
    """Detections of `gt`: each box dropped, split in two, merged with the next one or
    jittered (normal noise of scale `jitter`, or of a scale drawn per box from the range
    `jitter` when it is a tuple), plus random false positives."""
    out, i = [], 0
    while i < len(gt):
        r = rng.random()
        if r < p_drop:
            pass
        elif r < p_drop + p_split:
            out += split(gt[i], rng.uniform(0.3, 0.7))
        elif r < p_drop + p_split + p_merge and i + 1 < len(gt):
            out.append(merge(gt[i], gt[i + 1]))
            i += 1
        else:
            scale = rng.uniform(*jitter) if isinstance(jitter, tuple) else jitter
            out.append(gt[i] + rng.normal(0, scale, (4, 2)))
        if rng.random() < p_fp:
            out.append(rect(*rng.uniform(0, 600, 2), rng.uniform(10, 80), rng.uniform(8, 30)))
        i += 1
    return out


def make_image(rng: np.random.Generator, n_words: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(GT quads, detections) of one receipt-like image."""
    gt = receipt_rows(rng, n_words)
    angle = rng.uniform(-0.25, 0.25) if rng.random() < 0.5 else 0.0
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        gt = [(b - 300) @ np.array([[c, -s], [s, c]]).T + 400 for b in gt]
    integer = rng.random() < 0.5
    if integer:
        gt = [np.round(b) for b in gt]
    det = noisy(rng, gt, jitter=(0.5, 3.0), p_drop=0.04)
    if integer:
        det = [np.round(d) for d in det]
    return gt, det


def make_images(n_images: int, n_words: int, seed: int):
    rng = np.random.default_rng(seed)
    return [make_image(rng, n_words) for _ in range(n_images)]


# ----------------------------------------------------------------------------- the package


class PackageOptions:
    """The package's `evaluation` options: detection only, penalties 1, area precision 0.3."""

    E2E = ORIENTATION = DUMP_SAMPLE_RESULT = False
    CASE_SENSITIVE = True
    RECALL_GRANULARITY_PENALTY_WEIGHT = PRECISION_GRANULARITY_PENALTY_WEIGHT = 1.0
    VERTICAL_ASPECT_RATIO_THRESH = 0.5
    AREA_PRECISION_CONSTRAINT = 0.3


def package_stats(gt, det):
    """Detection-only CLEval stats (`.stats.det`) of the `cleval` package on quads.

    The package has no transcription-free mode (CLEvalMetric(det, gt) fails on len(None)),
    so each GT box gets a transcription as long as its own pseudo count, and the core
    `evaluation` runs with E2E off, as CLEvalMetric.update would.
    """
    from cleval.box_types import QUAD
    from cleval.eval_functions import evaluation

    gts = []
    for q in gt:
        box = QUAD(np.asarray(q, dtype=np.float64).reshape(-1), transcription="", is_dc=False)
        box.transcription = "#" * box.pseudo_transcription_length()
        gts.append(box)
    dets = [QUAD(np.asarray(q, dtype=np.float64).reshape(-1), transcription="", is_dc=False) for q in det]
    return evaluation(PackageOptions, gts, dets).stats.det


def package_image(gt, det):
    """(precision, recall, hmean) of the package (see `package_stats`)."""
    s = package_stats(gt, det)
    return s.precision, s.recall, s.hmean


def ours_cleval(gt, det):
    # the package itself has no 500-detection cap (the competition's wrapper adds it)
    r = evaluate_image(gt, det, pseudo_char_cap=10, convention="cleval", max_detections=None)
    return r.precision, r.recall, r.hmean


def ours_competition(gt, det):
    r = evaluate_image(gt, det)
    return r.precision, r.recall, r.hmean


# ----------------------------------------------------------------------------- timing


def timed(fn, images, repeats: int):
    """(results, best wall s/image, best CPU s/image) over `repeats` passes."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        results = [fn(gt, det) for gt, det in images]
        best_wall = min(best_wall, (time.perf_counter() - w0) / len(images))
        best_cpu = min(best_cpu, (time.process_time() - c0) / len(images))
    return np.array(results), best_wall, best_cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--boxes", type=int, default=72)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="18,72,144,288,500", help="boxes per image for the scaling table")
    parser.add_argument("--scaling-images", type=int, default=4, help="images per size in the scaling table")
    parser.add_argument("--no-cleval", action="store_true", help="skip the package even if installed")
    args = parser.parse_args(argv)

    have_pkg = False
    if not args.no_cleval:
        try:
            import cleval  # noqa: F401

            have_pkg = True
        except ImportError:
            print("cleval package not installed: timing hrnet_sweep.metric only "
                  "(pip install cleval to compare)\n")

    images = make_images(args.images, args.boxes, args.seed)
    n_det = np.mean([len(d) for _, d in images])
    print(f"{args.images} images, {args.boxes} GT boxes and {n_det:.1f} detections per image, "
          f"best of {args.repeats} passes")
    ours_cleval(*images[0]), ours_competition(*images[0])  # warm-up (imports)
    if have_pkg:
        package_image(*images[0])  # warm-up: the package compiles numba functions
    res_ours, wall_ours, cpu_ours = timed(ours_cleval, images, args.repeats)
    _, wall_comp, cpu_comp = timed(ours_competition, images, args.repeats)
    print(f"{'':38}{'wall ms/img':>12}{'CPU ms/img':>12}")
    print(f"{'hrnet_sweep.metric (cleval, cap 10)':38}{wall_ours * 1e3:12.3f}{cpu_ours * 1e3:12.3f}")
    print(f"{'hrnet_sweep.metric (competition)':38}{wall_comp * 1e3:12.3f}{cpu_comp * 1e3:12.3f}")
    ok = True
    if have_pkg:
        res_pkg, wall_pkg, cpu_pkg = timed(package_image, images, args.repeats)
        diff = float(np.abs(res_pkg - res_ours).max())
        ok = diff <= 1e-6
        print(f"{'cleval package':38}{wall_pkg * 1e3:12.3f}{cpu_pkg * 1e3:12.3f}")
        print(f"speed-up vs the package: {wall_pkg / wall_ours:.1f}x wall, {cpu_pkg / cpu_ours:.1f}x CPU")
        print(f"max |difference| of precision/recall/hmean: {diff:.3g} ({'OK' if ok else 'FAIL'}: must be <= 1e-6)")

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"\nscaling ({args.scaling_images} images per size, CPU ms per image; us per GT box)")
    header = f"{'boxes':>6}{'ours':>10}{'us/box':>9}{'competition':>13}{'us/box':>9}"
    print(header + (f"{'cleval pkg':>12}{'us/box':>9}{'max diff':>10}" if have_pkg else ""))
    for n in sizes:
        imgs = make_images(args.scaling_images, n, args.seed + n)
        r_ours, _, c_ours = timed(ours_cleval, imgs, args.repeats)
        _, _, c_comp = timed(ours_competition, imgs, args.repeats)
        line = f"{n:6d}{c_ours * 1e3:10.2f}{c_ours * 1e6 / n:9.1f}{c_comp * 1e3:13.2f}{c_comp * 1e6 / n:9.1f}"
        if have_pkg:
            r_pkg, _, c_pkg = timed(package_image, imgs, 1)
            d = float(np.abs(r_pkg - r_ours).max())
            ok &= d <= 1e-6
            line += f"{c_pkg * 1e3:12.1f}{c_pkg * 1e6 / n:9.1f}{d:10.2g}"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
